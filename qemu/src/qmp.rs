//! QEMU's machine protocol (QMP) on the VM's unix socket: one short connection per command.
//!
//! A session is: QEMU's greeting (`{"QMP": …}`), `qmp_capabilities` to leave negotiation mode, then the
//! command. Replies are one JSON object per line: `{"return": …}` or `{"error": {"class", "desc"}}`;
//! asynchronous `{"event": …}` lines may come in between and are skipped.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::QemuError;

/// How long one QMP command may take, connecting included.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest reply line accepted.
const MAX_REPLY_BYTES: u64 = 1 << 20;

/// How often to retry connecting while QEMU has not created its socket yet.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// One message from QEMU.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `{"QMP": {...}}`, sent once when a client connects.
    Greeting,
    /// `{"return": VALUE}`; holds VALUE as compact JSON.
    Return(String),
    /// `{"error": {"class": …, "desc": …}}`.
    Error { class: String, desc: String },
    /// `{"event": NAME, …}`.
    Event,
}

/// Classifies one line from QEMU; `None` for anything that is not a QMP message.
pub(crate) fn parse_reply(line: &str) -> Option<Reply> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    let o = v.as_object()?;
    if let Some(r) = o.get("return") {
        return Some(Reply::Return(r.to_string()));
    }
    if let Some(e) = o.get("error") {
        let field = |k: &str| {
            e.get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        return Some(Reply::Error {
            class: field("class"),
            desc: field("desc"),
        });
    }
    if o.get("event").is_some_and(serde_json::Value::is_string) {
        return Some(Reply::Event);
    }
    if o.contains_key("QMP") {
        return Some(Reply::Greeting);
    }
    None
}

/// The `execute` member of a command, if `command` is a JSON object with one.
pub(crate) fn command_name(command: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(command).ok()?;
    Some(v.as_object()?.get("execute")?.as_str()?.to_string())
}

/// Runs `command` (a JSON object with `execute`) on the QMP socket at `socket` and returns the JSON text of
/// its `return` value. Waits for the socket to appear while `alive` says QEMU runs; the whole exchange is
/// bounded by `timeout`.
pub(crate) fn execute(
    socket: &Path,
    command: &str,
    timeout: Duration,
    alive: &dyn Fn() -> bool,
) -> Result<String, QemuError> {
    let name = command_name(command).ok_or_else(|| QemuError::QmpBadCommand {
        command: command.to_string(),
    })?;
    let deadline = Instant::now() + timeout;
    let io = |what: String| {
        let name = name.clone();
        move |source| QemuError::QmpIo {
            command: name,
            what,
            source,
        }
    };
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) => {
                if !alive() {
                    return Err(QemuError::QmpQemuGone { command: name });
                }
                let not_yet = matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                );
                if !not_yet || Instant::now() >= deadline {
                    return Err(io(format!("connect to {}", socket.display()))(e));
                }
                std::thread::sleep(CONNECT_RETRY);
            }
        }
    };
    let mut session = Session {
        reader: BufReader::new(&stream),
        writer: &stream,
        deadline,
        name: &name,
    };
    match session.read()? {
        Reply::Greeting => {}
        other => {
            return Err(QemuError::QmpProtocol {
                command: name.clone(),
                expected: "the QMP greeting",
                got: format!("{other:?}"),
            });
        }
    }
    session.send(r#"{"execute":"qmp_capabilities"}"#)?;
    session.answer()?;
    session.send(command)?;
    session.answer()
}

struct Session<'a> {
    reader: BufReader<&'a UnixStream>,
    writer: &'a UnixStream,
    deadline: Instant,
    name: &'a str,
}

impl Session<'_> {
    fn io(&self, what: &str, source: std::io::Error) -> QemuError {
        QemuError::QmpIo {
            command: self.name.to_string(),
            what: what.to_string(),
            source,
        }
    }

    fn left(&self) -> Result<Duration, QemuError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.io(
                "finish within the QMP timeout",
                std::io::ErrorKind::TimedOut.into(),
            ));
        }
        Ok(left)
    }

    fn send(&mut self, line: &str) -> Result<(), QemuError> {
        let left = self.left()?;
        let w = self.writer;
        w.set_write_timeout(Some(left))
            .and_then(|()| {
                let mut w = w;
                w.write_all(line.as_bytes())?;
                w.write_all(b"\n")
            })
            .map_err(|e| self.io("send a command", e))
    }

    /// Reads the next message that is not an event and is a QMP message.
    fn read(&mut self) -> Result<Reply, QemuError> {
        loop {
            let left = self.left()?;
            let mut line = String::new();
            let n = self
                .writer
                .set_read_timeout(Some(left))
                .and_then(|()| (&mut self.reader).take(MAX_REPLY_BYTES).read_line(&mut line))
                .map_err(|e| self.io("read a reply", e))?;
            if n == 0 {
                return Err(self.io("read a reply", std::io::ErrorKind::UnexpectedEof.into()));
            }
            if !line.ends_with('\n') && n as u64 == MAX_REPLY_BYTES {
                return Err(QemuError::QmpProtocol {
                    command: self.name.to_string(),
                    expected: "a reply line shorter than 1 MiB",
                    got: line.chars().take(80).collect(),
                });
            }
            match parse_reply(&line) {
                Some(Reply::Event) => {}
                Some(r) => return Ok(r),
                None => {
                    return Err(QemuError::QmpProtocol {
                        command: self.name.to_string(),
                        expected: "a QMP message (a JSON object per line)",
                        got: line.trim_end().chars().take(200).collect(),
                    });
                }
            }
        }
    }

    /// Reads the answer to the last command: the JSON text of `return`, or QEMU's error.
    fn answer(&mut self) -> Result<String, QemuError> {
        match self.read()? {
            Reply::Return(v) => Ok(v),
            Reply::Error { class, desc } => Err(QemuError::QmpRefused {
                command: self.name.to_string(),
                class,
                desc,
            }),
            other => Err(QemuError::QmpProtocol {
                command: self.name.to_string(),
                expected: "\"return\" or \"error\"",
                got: format!("{other:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn replies_are_classified() {
        assert_eq!(
            parse_reply(
                r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#
            ),
            Some(Reply::Greeting)
        );
        assert_eq!(
            parse_reply("{\"return\": {}}\r\n"),
            Some(Reply::Return("{}".into()))
        );
        assert_eq!(
            parse_reply(r#"{"return": {"status": "running", "running": true}}"#),
            Some(Reply::Return(r#"{"running":true,"status":"running"}"#.into()))
        );
        assert_eq!(
            parse_reply(
                r#"{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#
            ),
            Some(Reply::Error {
                class: "CommandNotFound".into(),
                desc: "The command nope has not been found".into()
            })
        );
        assert_eq!(
            parse_reply(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}"#),
            Some(Reply::Event)
        );
        for junk in [
            "",
            "[]",
            "42",
            "{}",
            "{\"event\": 1}",
            "not json",
            "{\"return\": ",
        ] {
            assert_eq!(parse_reply(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn command_names() {
        assert_eq!(
            command_name(r#"{"execute": "query-status"}"#).as_deref(),
            Some("query-status")
        );
        assert_eq!(
            command_name(r#"{"execute":"system_powerdown","arguments":{}}"#).as_deref(),
            Some("system_powerdown")
        );
        for bad in ["query-status", "{}", r#"{"execute": 1}"#, "[]"] {
            assert_eq!(command_name(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_lines_never_panic(line in ".{0,200}") {
            let _ = parse_reply(&line);
            let _ = command_name(&line);
        }

        #[test]
        fn errors_keep_class_and_desc(class in "[A-Za-z]{0,20}", desc in "[ -~]{0,80}") {
            let line = serde_json::json!({"error": {"class": class, "desc": desc}}).to_string();
            prop_assert_eq!(parse_reply(&line), Some(Reply::Error { class, desc }));
        }

        #[test]
        fn mutated_replies_never_panic(
            cut in 0usize..60,
            byte in any::<u8>(),
            at in 0usize..60,
        ) {
            let mut b = br#"{"return": {"status": "running", "running": true}}"#.to_vec();
            let at = at.min(b.len() - 1);
            b[at] = byte;
            b.truncate(b.len().saturating_sub(cut));
            let _ = parse_reply(&String::from_utf8_lossy(&b));
        }
    }
}
