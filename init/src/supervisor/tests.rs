//! The supervisor against the recording fake: virtual time, simulated processes with real output pipes.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use ingot_spec::config::{Readiness, Restart, Service, ServiceKind};

use super::graph::tests::service;
use super::*;
use crate::event_loop::{EventLoop, Outcome};
use crate::sys::fake::FakeSys;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn oneshot(name: &str, after: &[&str]) -> Service {
    Service {
        kind: ServiceKind::Oneshot,
        ..service(name, after)
    }
}

fn ready_on(mut s: Service, r: Readiness) -> Service {
    s.ready = Some(r);
    s
}

/// A supervisor in a fake machine, with every event it emitted and when.
struct Node {
    sys: FakeSys,
    ev: EventLoop,
    sup: Supervisor,
    events: Rc<RefCell<Vec<(u64, Event)>>>,
}

impl Node {
    fn new(services: Vec<Service>) -> Node {
        Node {
            sys: FakeSys::new(),
            ev: EventLoop::new(),
            sup: Supervisor::new(services),
            events: Rc::default(),
        }
    }

    fn collect(&mut self) {
        let t = status::millis(self.sys.now());
        for e in self.sup.take_events() {
            self.events.borrow_mut().push((t, e));
        }
    }

    fn start(&mut self) {
        self.sup.start(&self.sys);
        self.collect();
    }

    /// Runs the loop until `until` holds (or a virtual hour passed: a failure).
    fn run_until(&mut self, mut until: impl FnMut(&Supervisor) -> bool) {
        let events = Rc::clone(&self.events);
        let sys = &self.sys;
        let deadline = sys.now() + Duration::from_secs(3600);
        let outcome = self
            .ev
            .run_until(sys, &mut self.sup, &mut [], Some(deadline), |s| {
                let t = status::millis(sys.now());
                for e in s.take_events() {
                    events.borrow_mut().push((t, e));
                }
                until(s)
            });
        assert_eq!(outcome, Outcome::Done, "at {:?}", sys.now());
    }

    /// Runs the loop until the virtual clock reaches `t`.
    fn run_to(&mut self, t: Duration) {
        let events = Rc::clone(&self.events);
        let sys = &self.sys;
        let outcome = self.ev.run_until(sys, &mut self.sup, &mut [], Some(t), |s| {
            let t = status::millis(sys.now());
            for e in s.take_events() {
                events.borrow_mut().push((t, e));
            }
            false
        });
        assert_eq!(outcome, Outcome::TimedOut);
    }

    fn in_state(&mut self, name: &str, state: State) {
        let name = name.to_owned();
        self.run_until(move |s| s.state(&name) == Some(state));
    }

    fn pid(&self, name: &str) -> i32 {
        self.sys.last_pid(&format!("/usr/bin/{name}"))
    }

    fn events(&self) -> Vec<(u64, Event)> {
        self.events.borrow().clone()
    }

    fn spawned(&self) -> Vec<String> {
        self.sys.spawned().iter().map(|c| c.argv.join(" ")).collect()
    }

    fn status(&mut self) -> serde_json::Value {
        self.sup.status.touch();
        self.sup.flush_status(&self.sys, self.sys.now());
        let text = std::fs::read_to_string(self.sys.host(status::STATUS_PATH)).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

fn ready(name: &str) -> Event {
    Event::Ready(name.to_owned())
}

fn failed(name: &str) -> Event {
    Event::Failed(name.to_owned())
}

/// Makes a Unix socket listen at `path` in the fake tree at `at` (kept open for the test's life).
fn listen_at(sys: &FakeSys, at: Duration, path: &'static str) {
    sys.at(at, move |root| {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let l = std::os::unix::net::UnixListener::bind(p).unwrap();
        std::mem::forget(l);
    });
}

#[test]
fn starts_in_dependency_order_once_dependencies_are_ready_or_done() {
    let sock = "/run/containerd/containerd.sock";
    let mut n = Node::new(vec![
        service("kubelet", &["containerd", "images"]),
        oneshot("images", &["containerd"]),
        ready_on(service("containerd", &[]), Readiness::Socket(sock.to_owned())),
        service("chrony", &[]),
    ]);
    listen_at(&n.sys, ms(2000), sock);
    assert_eq!(n.sup.state("containerd"), Some(State::Waiting));
    n.run_to(ms(1700));
    assert!(n.spawned().is_empty(), "nothing starts before start()");

    n.start();
    assert_eq!(n.spawned(), ["/usr/bin/containerd", "/usr/bin/chrony"]);
    assert_eq!(n.sup.state("containerd"), Some(State::Starting));
    // Started at 1.7 s, checked at 1.8 s and 2.0 s: the socket listens from 2.0 s.
    n.run_to(ms(2500));
    assert_eq!(
        n.spawned(),
        ["/usr/bin/containerd", "/usr/bin/chrony", "/usr/bin/images"]
    );
    assert_eq!(n.sup.state("kubelet"), Some(State::Waiting));
    let images = n.pid("images");
    n.sys.exit_at(ms(3000), images, ExitStatus::Code(0));
    n.run_to(ms(4000));
    assert_eq!(n.spawned().last().unwrap(), "/usr/bin/kubelet");
    assert_eq!(
        n.events(),
        [
            (1700, ready("chrony")),
            (2000, ready("containerd")),
            (3000, ready("images")),
            (3000, ready("kubelet")),
            (3000, Event::AllReady),
        ]
    );
    assert!(n.sup.all_ready());
    assert_eq!(n.sup.state("images"), Some(State::Exited));
}

#[test]
fn a_service_that_fails_for_good_keeps_its_dependents_from_starting() {
    let mut n = Node::new(vec![
        Service {
            restart: Restart::Never,
            ..oneshot("setup", &[])
        },
        service("app", &["setup"]),
        service("web", &["app"]),
        service("other", &[]),
        service("looped", &["looped2"]),
        service("looped2", &["looped"]),
    ]);
    n.start();
    let setup = n.pid("setup");
    n.sys.exit_at(ms(1600), setup, ExitStatus::Code(2));
    n.run_to(ms(2000));
    assert_eq!(n.spawned(), ["/usr/bin/setup", "/usr/bin/other"]);
    assert_eq!(
        n.events(),
        [
            (1500, failed("looped")),
            (1500, failed("looped2")),
            (1500, ready("other")),
            (1600, failed("setup")),
            (1600, failed("app")),
            (1600, failed("web")),
        ]
    );
    let console = n.sys.console_lines();
    for line in [
        "ingot: service looped not started: dependency cycle between looped, looped2",
        "ingot: service setup exited (code 2), not restarted (restart=never)",
        "ingot: service app not started: dependency setup failed",
        "ingot: service web not started: dependency app failed",
    ] {
        assert!(console.iter().any(|l| l == line), "{line} in {console:#?}");
    }
    assert!(!n.sup.all_ready());
    assert_eq!(n.sup.state("web"), Some(State::Failed));
}

#[test]
fn restarts_back_off_doubling_to_30s_and_reset_after_a_stable_minute() {
    let mut n = Node::new(vec![service("crashy", &[])]);
    n.start();
    let mut starts = Vec::new();
    for _ in 0..12 {
        n.in_state("crashy", State::Ready);
        starts.push(status::millis(n.sys.now()));
        let pid = n.pid("crashy");
        n.sys.exit_at(n.sys.now(), pid, ExitStatus::Signal(9));
        n.in_state("crashy", State::Backoff);
    }
    n.in_state("crashy", State::Ready);
    starts.push(status::millis(n.sys.now()));
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps,
        [
            100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
        ]
    );
    // Up for a minute, then down: restarted after 0.1 s again.
    let up_at = n.sys.now();
    let pid = n.pid("crashy");
    n.sys
        .exit_at(up_at + STABLE_UPTIME_FOR_TEST, pid, ExitStatus::Code(1));
    n.in_state("crashy", State::Backoff);
    n.in_state("crashy", State::Ready);
    assert_eq!(n.sys.now(), up_at + STABLE_UPTIME_FOR_TEST + ms(100));

    let console = n.sys.console_lines();
    assert!(console.contains(&"ingot: service crashy exited (signal 9), restart 1 in 0.1s".to_owned()));
    assert!(console.contains(&"ingot: started crashy (pid 101, restart 1)".to_owned()));
    assert!(console.contains(&"ingot: service crashy exited (signal 9), restart 12 in 30.0s".to_owned()));
    assert!(console.contains(&"ingot: service crashy exited (code 1), restart 13 in 0.1s".to_owned()));
    // Only the first readiness is an event; a daemon without a check has nothing more to say.
    assert_eq!(n.events(), [(1500, ready("crashy")), (1500, Event::AllReady)]);
    assert!(!console.iter().any(|l| l.contains("ready again")));
}

const STABLE_UPTIME_FOR_TEST: Duration = backoff::STABLE_UPTIME;

#[test]
fn restart_policies_decide_on_exit_status() {
    let mut n = Node::new(vec![
        Service {
            restart: Restart::OnFailure,
            ..service("clean", &[])
        },
        Service {
            restart: Restart::OnFailure,
            ..service("dirty", &[])
        },
        Service {
            restart: Restart::Always,
            ..service("always", &[])
        },
    ]);
    n.start();
    for name in ["clean", "always"] {
        let pid = n.pid(name);
        n.sys.exit_at(ms(2000), pid, ExitStatus::Code(0));
    }
    let pid = n.pid("dirty");
    n.sys.exit_at(ms(2000), pid, ExitStatus::Code(1));
    n.run_to(ms(5000));
    assert_eq!(n.sup.state("clean"), Some(State::Exited));
    assert_eq!(n.sup.state("dirty"), Some(State::Ready));
    assert_eq!(n.sup.state("always"), Some(State::Ready));
    assert_eq!(
        n.spawned(),
        [
            "/usr/bin/clean",
            "/usr/bin/dirty",
            "/usr/bin/always",
            "/usr/bin/dirty",
            "/usr/bin/always"
        ]
    );
    assert!(
        n.sys
            .console_lines()
            .contains(&"ingot: service clean exited (code 0), not restarted (restart=on-failure)".to_owned())
    );
}

#[test]
fn one_shots_run_once_per_boot_and_are_retried_only_after_failing() {
    let mut n = Node::new(vec![
        Service {
            restart: Restart::OnFailure,
            ..oneshot("migrate", &[])
        },
        oneshot("hello", &[]),
        service("app", &["migrate", "hello"]),
    ]);
    n.start();
    assert_eq!(n.sup.state("migrate"), Some(State::Running));
    let first = n.pid("migrate");
    n.sys.exit_at(ms(1700), first, ExitStatus::Code(1));
    let hello = n.pid("hello");
    n.sys.exit_at(ms(1600), hello, ExitStatus::Code(0));
    n.in_state("migrate", State::Backoff);
    n.in_state("migrate", State::Running);
    assert_eq!(n.sys.now(), ms(1800));
    let second = n.pid("migrate");
    assert_ne!(first, second);
    n.sys.exit_at(ms(2500), second, ExitStatus::Code(0));
    n.run_to(ms(3_600_000));
    assert_eq!(
        n.spawned(),
        [
            "/usr/bin/migrate",
            "/usr/bin/hello",
            "/usr/bin/migrate",
            "/usr/bin/app"
        ],
        "a one-shot that exited 0 never runs again, even under restart=always"
    );
    assert_eq!(
        n.events(),
        [
            (1600, ready("hello")),
            (2500, ready("migrate")),
            (2500, ready("app")),
            (2500, Event::AllReady),
        ]
    );
    assert!(
        n.sys
            .console_lines()
            .contains(&"ingot: service migrate finished".to_owned())
    );
}

#[test]
fn a_start_that_fails_counts_as_a_failed_run() {
    let mut n = Node::new(vec![
        service("missing", &[]),
        Service {
            restart: Restart::Never,
            exec: vec!["/usr/bin/gone".into()],
            ..service("gone", &[])
        },
    ]);
    n.sys.fail("spawn /usr/bin/missing", Errno::NOENT);
    n.sys.fail("spawn /usr/bin/gone", Errno::ACCESS);
    n.start();
    n.run_to(ms(1850));
    assert_eq!(
        n.sys.calls_matching(&["spawn"]),
        [
            "spawn /usr/bin/missing",
            "spawn /usr/bin/gone",
            "spawn /usr/bin/missing",
            "spawn /usr/bin/missing"
        ]
    );
    let console = n.sys.console_lines();
    assert_eq!(
        console[..3],
        [
            "ingot: service missing did not start (No such file or directory (os error 2)), restart 1 in 0.1s",
            "ingot: service gone did not start (Permission denied (os error 13)), not restarted (restart=never)",
            "ingot: service missing did not start (No such file or directory (os error 2)), restart 2 in 0.2s",
        ]
    );
    assert_eq!(n.sup.state("gone"), Some(State::Failed));
    assert_eq!(n.events(), [(1500, failed("gone"))]);
}

#[test]
fn services_get_their_argv_path_and_environment() {
    let mut env = BTreeMap::new();
    env.insert("FOO".to_owned(), "bar".to_owned());
    env.insert("PATH".to_owned(), "/opt/bin".to_owned());
    let mut n = Node::new(vec![
        Service {
            exec: vec!["/usr/bin/a".into(), "--flag".into(), "x y".into()],
            ..service("a", &[])
        },
        Service {
            env,
            ..service("b", &[])
        },
    ]);
    n.start();
    let spawned = n.sys.spawned();
    assert_eq!(spawned[0].argv, ["/usr/bin/a", "--flag", "x y"]);
    assert_eq!(spawned[0].env, [("PATH".to_owned(), SERVICE_PATH.to_owned())]);
    assert_eq!(
        spawned[1].env,
        [
            ("PATH".to_owned(), "/opt/bin".to_owned()),
            ("FOO".to_owned(), "bar".to_owned())
        ]
    );
}

#[test]
fn readiness_file_check_polls_faster_first_and_warns_after_a_minute() {
    let mut n = Node::new(vec![
        ready_on(service("slow", &[]), Readiness::File("/run/slow.ready".into())),
        service("after", &["slow"]),
    ]);
    n.sys.at(Duration::from_secs(100), |root| {
        std::fs::write(root.join("run/slow.ready"), "").unwrap();
    });
    n.start();
    n.run_to(Duration::from_secs(62));
    assert_eq!(n.sup.state("slow"), Some(State::Running));
    assert_eq!(
        n.sys.console_lines().last().unwrap(),
        "ingot: warning service slow is not ready after 60.0s (file /run/slow.ready), still checking every 1.0s"
    );
    assert_eq!(n.spawned(), ["/usr/bin/slow"]);
    n.in_state("after", State::Ready);
    // Checked every second by now: ready at most a second after the file appeared.
    let t = n.sys.now();
    assert!(
        t >= Duration::from_secs(100) && t <= Duration::from_secs(101),
        "{t:?}"
    );
    assert_eq!(n.events()[0].1, ready("slow"));
}

#[test]
fn readiness_command_runs_one_at_a_time_through_the_reaper_with_a_timeout() {
    let mut n = Node::new(vec![ready_on(
        service("db", &[]),
        Readiness::Command(vec!["/usr/bin/db-ready".into(), "-q".into()]),
    )]);
    n.start();
    let db = n.pid("db");
    // Check 1 (pid db+1) at 1.6 s hangs and is killed at 6.6 s; check 2 at 6.8 s fails; check 3 at
    // 7.2 s passes.
    n.sys.exit_at(ms(6900), db + 2, ExitStatus::Code(1));
    n.sys.exit_at(ms(7350), db + 3, ExitStatus::Code(0));
    n.in_state("db", State::Ready);
    assert_eq!(n.sys.now(), ms(7350));
    let checks: Vec<i32> = n
        .sys
        .spawned()
        .iter()
        .filter(|c| c.argv[0] == "/usr/bin/db-ready")
        .map(|c| c.pid)
        .collect();
    assert_eq!(checks, [db + 1, db + 2, db + 3]);
    assert_eq!(
        n.sys.calls_matching(&["kill-group", "spawn"]),
        [
            "spawn /usr/bin/db",
            "spawn /usr/bin/db-ready -q",
            format!("kill-group {} kill", db + 1).as_str(),
            "spawn /usr/bin/db-ready -q",
            "spawn /usr/bin/db-ready -q",
        ]
    );
    assert!(n.sys.running(db), "the service itself is untouched");
    assert_eq!(n.events(), [(7350, ready("db")), (7350, Event::AllReady)]);
}

#[test]
fn readiness_http_check_against_a_real_server() {
    use std::io::{Read as _, Write as _};
    let listener = Rc::new(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    let mut n = Node::new(vec![ready_on(service("api", &[]), Readiness::Http(url))]);
    let answered = Rc::new(RefCell::new(Vec::new()));
    // A server driven by the virtual clock: every 50 ms it answers what connected, 503 before 3 s.
    for k in 0..100u64 {
        let (l, answered) = (Rc::clone(&listener), Rc::clone(&answered));
        let t = ms(1500 + 50 * k);
        n.sys.at(t, move |_| {
            while let Ok((mut s, _)) = l.accept() {
                s.set_nonblocking(false).unwrap();
                let mut req = [0u8; 512];
                let len = s.read(&mut req).unwrap();
                let head = String::from_utf8_lossy(&req[..len]).into_owned();
                assert!(head.starts_with("GET /healthz HTTP/1.0\r\n"), "{head}");
                let answer: &[u8] = if t < ms(3000) {
                    b"HTTP/1.1 503 Service Unavailable\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\n\r\nok"
                };
                s.write_all(answer).unwrap();
                answered.borrow_mut().push(t);
            }
        });
    }
    n.start();
    n.in_state("api", State::Ready);
    let t = n.sys.now();
    assert!(t >= ms(3000) && t <= ms(4000), "{t:?}");
    assert!(answered.borrow().len() >= 3, "{:?}", answered.borrow());
}

#[test]
fn output_is_split_into_lines_prefixed_on_the_console_and_kept_in_the_log_file() {
    let mut n = Node::new(vec![service("web", &[])]);
    n.start();
    let pid = n.pid("web");
    n.sys.output(pid, b"hello\nwor");
    n.run_to(ms(1600));
    n.sys.output(pid, b"ld\nlast words");
    n.sys.exit_at(ms(1700), pid, ExitStatus::Code(3));
    n.run_to(ms(1750));
    let console = n.sys.console_lines();
    assert_eq!(
        console,
        [
            "ingot: started web (pid 100)",
            "web| hello",
            "web| world",
            "web| last words",
            "ingot: service web exited (code 3), restart 1 in 0.1s",
        ]
    );
    let log = std::fs::read_to_string(n.sys.host("/var/log/ingot/web.log")).unwrap();
    assert_eq!(log, "hello\nworld\nlast words\n");
}

#[test]
fn shutdown_stops_dependents_first_and_kills_what_ignores_sigterm() {
    let mut n = Node::new(vec![
        service("containerd", &[]),
        Service {
            stop_timeout_ms: 2000,
            phase: None,
            ..service("kubelet", &["containerd"])
        },
        service("chrony", &[]),
        service("never", &["nope"]),
    ]);
    n.start();
    n.run_to(ms(2000));
    let (containerd, kubelet, chrony) = (n.pid("containerd"), n.pid("kubelet"), n.pid("chrony"));
    n.sys.ignore_term(kubelet);
    let before = n.sys.calls().len();
    let err = n.ev.shutdown(&n.sys, &mut n.sup, Shutdown::PowerOff);
    assert_eq!(err.to_string(), "fake reboot returned");
    let calls: Vec<String> = n.sys.calls()[before..]
        .iter()
        .filter(|c| !c.contains("remount") && !c.contains("mountinfo") && !c.starts_with("write-atomic"))
        .cloned()
        .collect();
    assert_eq!(
        calls,
        [
            "console ingot: shutdown poweroff".to_owned(),
            "console ingot: stopping kubelet".to_owned(),
            format!("kill-group {kubelet} term"),
            "console ingot: stopping chrony".to_owned(),
            format!("kill-group {chrony} term"),
            format!("kill-group {chrony} kill"),
            "console ingot: stopped chrony in 0.0s".to_owned(),
            "console ingot: warning kubelet did not stop within 2.0s, sending SIGKILL".to_owned(),
            format!("kill-group {kubelet} kill"),
            format!("kill-group {kubelet} kill"),
            "console ingot: stopped kubelet in 2.0s".to_owned(),
            "console ingot: stopping containerd".to_owned(),
            format!("kill-group {containerd} term"),
            format!("kill-group {containerd} kill"),
            "console ingot: stopped containerd in 0.0s".to_owned(),
            "kill-all term".to_owned(),
            "sync".to_owned(),
            "console ingot: powering off".to_owned(),
            "reboot poweroff".to_owned(),
        ]
    );
    assert_eq!(n.sys.now(), ms(4000));
    for s in ["containerd", "kubelet", "chrony"] {
        assert_eq!(n.sup.state(s), Some(State::Stopped));
    }
    assert_eq!(n.sup.state("never"), Some(State::Failed));
    // No descriptor of PID 1 keeps /var busy for the unmount.
    let logs = n.sys.host("/var/log/ingot");
    assert!(logs.join("kubelet.log").exists());
    for fd in std::fs::read_dir("/proc/self/fd").unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert!(!target.starts_with(&logs), "{} still open", target.display());
    }
    let status = n.status();
    assert_eq!(status["services"][1]["state"], "stopped");
    assert_eq!(status["services"][1]["last_exit"]["signal"], 9);
}

#[test]
fn status_file_shows_phases_and_every_service() {
    let mut n = Node::new(vec![
        service("containerd", &[]),
        Service {
            restart: Restart::Never,
            ..oneshot("images", &["containerd"])
        },
        service("kubelet", &["images"]),
        ready_on(service("slow", &[]), Readiness::File("/run/never".into())),
    ]);
    n.sup.record_phase("stage2", 1400);
    n.sup.record_phase("network", 1450);
    n.start();
    n.run_to(ms(1600));
    let images = n.pid("images");
    n.sys.exit_at(ms(1700), images, ExitStatus::Signal(11));
    n.run_to(ms(1800));
    let v = n.status();
    let expected = serde_json::json!({
        "t_ms": 1800,
        "phases": [{"name": "stage2", "t_ms": 1400}, {"name": "network", "t_ms": 1450}],
        "services": [
            {"name": "containerd", "kind": "daemon", "state": "ready", "pid": 100, "restarts": 0, "since_ms": 1500},
            {"name": "images", "kind": "oneshot", "state": "failed", "restarts": 0,
             "last_exit": {"signal": 11}, "since_ms": 1700,
             "reason": "exited (signal 11), not restarted (restart=never)"},
            {"name": "kubelet", "kind": "daemon", "state": "failed", "restarts": 0, "since_ms": 1700,
             "reason": "not started: dependency images failed"},
            {"name": "slow", "kind": "daemon", "state": "starting", "pid": 102, "restarts": 0, "since_ms": 1500},
        ]
    });
    assert_eq!(v, expected);
}

#[test]
fn status_file_is_rewritten_at_most_four_times_a_second() {
    let mut n = Node::new(vec![service("flappy", &[])]);
    n.start();
    n.run_to(ms(1501));
    let path = n.sys.host(status::STATUS_PATH);
    let first = std::fs::read_to_string(&path).unwrap();
    assert!(first.contains("\"ready\""), "{first}");
    let pid = n.pid("flappy");
    n.sys.exit_at(ms(1510), pid, ExitStatus::Code(1));
    n.run_to(ms(1700));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first, "written at 1.5 s");
    n.run_to(ms(1760));
    let later: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(later["t_ms"], 1750);
    assert_eq!(later["services"][0]["restarts"], 1);
}
