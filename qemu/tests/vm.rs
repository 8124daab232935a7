//! Boots real VMs under TCG. Every test here is named `vm_*` (CI runs them in the nextest profile `vm`),
//! skips with a message when QEMU, OVMF, the test kernel or busybox is missing, and bounds every wait.

mod common;

use std::time::Duration;

use common::{BOOT_TIMEOUT, QEMU_IMG, firmware_kit, kit, sha256_file, write_image};
use ingot_qemu::bench::time_to_marker;
use ingot_qemu::{Accel, AccelUsed, Firmware, Vm, VmConfig, WaitFailure};

const MARKER: &str = "ingot-test: marker";

#[test]
fn vm_direct_kernel_writes_disk_but_image_is_unchanged() {
    let Some(kit) = kit("vm_direct_kernel_writes_disk_but_image_is_unchanged") else {
        return;
    };
    let image = kit.image("disk.raw", 16);
    let before = sha256_file(&image);
    let initrd = kit.initramfs(
        "write.cpio",
        "i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
         printf INGOT-GUEST-WROTE-THIS | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null\n\
         sync\n\
         echo \"readback=$(head -c 22 /dev/vda)\"\n\
         echo 'ingot-test: marker'\n",
    );
    let log = kit.dir.path().join("serial.log");
    let mut cfg = kit.direct_config(&image, &initrd);
    cfg.serial_log = Some(log.clone());

    let mut vm = Vm::start(cfg).unwrap();
    assert_eq!(vm.accel(), AccelUsed::Tcg);
    let scratch = vm.scratch_dir().to_path_buf();
    let cmd = vm.command_line();
    assert!(
        cmd.contains("snapshot=on") && cmd.contains("restrict=on"),
        "{cmd}"
    );

    let readback = vm.wait_for("readback=", BOOT_TIMEOUT).unwrap();
    assert_eq!(
        readback.line, "readback=INGOT-GUEST-WROTE-THIS",
        "the guest's write did not reach its disk"
    );
    // The overlay holding that write is a (deleted) file QEMU keeps open in the scratch directory.
    let open_files: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", vm.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        open_files
            .iter()
            .any(|p| p.starts_with(&*scratch.to_string_lossy()) && !p.ends_with("OVMF_VARS.fd")),
        "no disk overlay in {}: {open_files:?}",
        scratch.display()
    );

    let m = vm.wait_for(MARKER, BOOT_TIMEOUT).unwrap();
    let status = vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
    let kernel_at = vm.first_os_line_at().expect("no kernel line");
    eprintln!(
        "OVMF + direct kernel under TCG: first kernel line {kernel_at:.2?}, marker {:.2?}",
        m.elapsed
    );
    assert!(vm.console_lines().iter().any(|l| l.contains("Linux version")));
    drop(vm);

    assert_eq!(sha256_file(&image), before, "the image was modified");
    assert!(
        !scratch.exists(),
        "scratch directory {} was not removed",
        scratch.display()
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(MARKER) && logged.contains("Linux version"),
        "serial log incomplete"
    );
    assert!(!logged.contains('\u{1b}'), "escape sequences in the serial log");
}

#[test]
fn vm_ovmf_starts_from_a_blank_disk() {
    let Some(dir) = firmware_kit("vm_ovmf_starts_from_a_blank_disk") else {
        return;
    };
    let image = write_image(dir.path(), "blank.raw", 8);
    let before = sha256_file(&image);
    let ovmf = ingot_qemu::find_ovmf().unwrap();
    let vars_before = sha256_file(&ovmf.vars);
    let mut cfg = VmConfig::new(&image);
    cfg.accel = Accel::Tcg;
    cfg.memory_mib = 256;

    let mut vm = Vm::start(cfg).unwrap();
    // OVMF's boot manager reports on the serial console that the disk holds nothing to boot.
    let m = vm.wait_for("BdsDxe", BOOT_TIMEOUT).unwrap();
    eprintln!("OVMF boot manager line after {:.2?}: {}", m.elapsed, m.line);
    assert!(
        !m.line.contains('\u{1b}'),
        "escape sequences left in {:?}",
        m.line
    );
    assert_eq!(
        vm.first_os_line_at(),
        None,
        "firmware lines must not count as OS lines"
    );
    vm.kill();
    assert!(vm.try_exit_status().is_some());
    drop(vm);

    assert_eq!(sha256_file(&image), before, "the image was modified");
    assert_eq!(
        sha256_file(&ovmf.vars),
        vars_before,
        "the OVMF vars template was modified"
    );
}

#[test]
fn vm_waits_report_exit_timeout_and_console_tail() {
    let Some(kit) = kit("vm_waits_report_exit_timeout_and_console_tail") else {
        return;
    };
    let image = kit.image("disk.raw", 1);
    let initrd = kit.initramfs("quick.cpio", "sleep 2\necho 'ingot-test: marker'\n");
    let mut cfg = kit.direct_config(&image, &initrd);
    cfg.firmware = Firmware::LegacyBios;
    let mut vm = Vm::start(cfg).unwrap();

    let early = vm
        .wait_for("never printed", Duration::from_millis(200))
        .unwrap_err();
    assert_eq!(early.failure, WaitFailure::Timeout);
    assert!(early.to_string().contains("still running"), "{early}");

    let err = vm.wait_for("never printed", BOOT_TIMEOUT).unwrap_err();
    assert_eq!(err.failure, WaitFailure::Exited, "{err}");
    assert!(err.exit.is_some_and(|s| s.success()), "{err}");
    assert!(err.tail.len() <= ingot_qemu::WaitError::TAIL_LINES);
    assert!(err.tail.iter().any(|l| l.contains("Power down")), "{err}");
    let text = err.to_string();
    assert!(text.contains("QEMU exited") && text.contains(MARKER), "{text}");

    // Lines that arrived before a wait still match it.
    let m = vm.wait_for(MARKER, Duration::from_secs(1)).unwrap();
    assert_eq!(m.line, MARKER);
    assert!(vm.wait_exit(Duration::from_secs(1)).unwrap().success());
}

#[test]
fn vm_boot_times_to_marker() {
    let Some(kit) = kit("vm_boot_times_to_marker") else {
        return;
    };
    let image = kit.image("disk.raw", 1);
    let initrd = kit.initramfs("marker.cpio", "echo 'ingot-test: marker'\n");
    let mut bios = kit.direct_config(&image, &initrd);
    bios.firmware = Firmware::LegacyBios;
    let uefi = kit.direct_config(&image, &initrd);
    let b = time_to_marker(bios, MARKER, BOOT_TIMEOUT).unwrap();
    let u = time_to_marker(uefi, MARKER, BOOT_TIMEOUT).unwrap();
    eprintln!("legacy BIOS: {b:?}");
    eprintln!("OVMF:        {u:?}");
    for t in [&b, &u] {
        let os = t.first_os_line.expect("no kernel line");
        assert!(os <= t.marker);
        assert_eq!(t.accel, AccelUsed::Tcg);
    }
}

/// Serves one canned HTTP response per connection on a loopback port; counts connections.
fn http_server(
    body: &'static str,
) -> (
    std::net::SocketAddrV4,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let c = std::sync::Arc::clone(&count);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                // Answer after the request arrives: the guestfwd connection opens long before the guest uses it.
                let mut buf = [0u8; 1024];
                if conn.read(&mut buf).is_ok_and(|n| n > 0) {
                    let _ = write!(
                        conn,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    (addr, count)
}

#[test]
fn vm_network_reaches_only_forwarded_addresses() {
    use ingot_qemu::GuestFwd;
    use std::net::Ipv4Addr;
    use std::sync::atomic::Ordering;
    let Some(kit) = kit("vm_network_reaches_only_forwarded_addresses") else {
        return;
    };
    let (allowed, _) = http_server("hello-through-guestfwd\n");
    let (forbidden, forbidden_hits) = http_server("must-not-be-seen\n");
    let script = format!(
        "ip link set eth0 up\n\
         ip addr add 10.0.2.15/24 dev eth0\n\
         ip route add default via 10.0.2.2\n\
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' > /req\n\
         # The forward keeps the connection open after the reply, so nc ends by timeout.\n\
         timeout 10 nc 10.0.2.100 8080 < /req > /fwd 2>/dev/null\n\
         echo \"forwarded=$(tail -n 1 /fwd)\"\n\
         timeout 5 nc 10.0.2.2 {} < /req > /host 2>/dev/null\n\
         echo \"host=$(tail -n 1 /host)\"\n\
         echo 'ingot-test: marker'\n",
        forbidden.port()
    );
    let initrd = kit.initramfs_with("net.cpio", &common::VIRTIO_NET_MODULES, &script);
    let image = kit.image("disk.raw", 1);
    let mut cfg = kit.direct_config(&image, &initrd);
    cfg.firmware = Firmware::LegacyBios;
    cfg.net.guestfwd.push(GuestFwd {
        guest_addr: Ipv4Addr::new(10, 0, 2, 100),
        guest_port: 8080,
        target: allowed,
    });
    let mut vm = Vm::start(cfg).unwrap();

    let fwd = vm.wait_for("forwarded=", BOOT_TIMEOUT).unwrap();
    assert_eq!(
        fwd.line, "forwarded=hello-through-guestfwd",
        "the guestfwd entry did not work"
    );
    let host = vm.wait_for("host=", BOOT_TIMEOUT).unwrap();
    assert!(
        !host.line.contains("must-not-be-seen"),
        "the guest reached the host: {}",
        host.line
    );
    vm.wait_for(MARKER, BOOT_TIMEOUT).unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
    assert_eq!(
        forbidden_hits.load(Ordering::SeqCst),
        0,
        "the guest connected to the host's loopback"
    );
}

#[test]
fn vm_powerdown_presses_the_guest_power_button() {
    let Some(kit) = kit("vm_powerdown_presses_the_guest_power_button") else {
        return;
    };
    // The guest waits on the ACPI power button's input device and powers off when it is pressed.
    let script = "for d in /sys/class/input/event*; do\n\
           if grep -q 'Power Button' \"$d/device/name\"; then\n\
             (dd if=/dev/input/${d##*/} of=/dev/null bs=24 count=1 2>/dev/null; echo pressed > /pressed) &\n\
           fi\n\
         done\n\
         echo 'ingot-test: waiting for the power button'\n\
         while [ ! -e /pressed ]; do sleep 0.1; done\n\
         echo 'ingot-test: power button pressed'\n";
    let initrd = kit.initramfs_with(
        "button.cpio",
        &["drivers/acpi/button.ko", "drivers/input/evdev.ko"],
        script,
    );
    let image = kit.image("disk.raw", 1);
    let mut cfg = kit.direct_config(&image, &initrd);
    cfg.firmware = Firmware::LegacyBios;
    cfg.net.enabled = false;
    let mut vm = Vm::start(cfg).unwrap();
    vm.wait_for("ingot-test: waiting for the power button", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        vm.wait_for("power button pressed", Duration::from_secs(2))
            .is_err(),
        "the guest saw a press before there was one"
    );
    vm.powerdown().unwrap();
    vm.wait_for("ingot-test: power button pressed", Duration::from_secs(60))
        .unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
}

/// Waits for the virtio disk, then either records a first boot on it and reboots, or reports what the first
/// boot wrote. `image_bytes` is where the image ends and the grown part of the disk begins.
fn reboot_script(image_bytes: u64) -> String {
    let sector = image_bytes / 512;
    format!(
        "i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
         if [ \"$(head -c 5 /dev/vda)\" = BOOT1 ]; then\n\
           echo \"second boot: start=$(head -c 5 /dev/vda) grown=$(dd if=/dev/vda bs=512 skip={sector} count=1 2>/dev/null | head -c 8)\"\n\
           echo 'ingot-test: marker'\n\
         else\n\
           echo \"first boot: sectors=$(cat /sys/block/vda/size)\"\n\
           printf BOOT1 | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null\n\
           printf GROWN-OK | dd of=/dev/vda bs=512 seek={sector} conv=notrunc,fsync 2>/dev/null\n\
           sync\n\
           echo 'ingot-test: rebooting'\n\
           reboot -f\n\
         fi\n"
    )
}

#[test]
fn vm_reboot_keeps_the_grown_disk_and_the_console() {
    let Some(kit) = kit("vm_reboot_keeps_the_grown_disk_and_the_console") else {
        return;
    };
    if !ingot_testkit::require_tools("vm_reboot_keeps_the_grown_disk_and_the_console", &[QEMU_IMG]) {
        return;
    }
    let image = kit.image("disk.raw", 4);
    let before = sha256_file(&image);
    let initrd = kit.initramfs("reboot.cpio", &reboot_script(4 << 20));
    let mut cfg = kit.direct_config(&image, &initrd);
    cfg.firmware = Firmware::LegacyBios;
    cfg.net.enabled = false;
    cfg.exit_on_reboot = false;
    cfg.disk_size = Some(16 << 20);
    let mut vm = Vm::start(cfg).unwrap();
    let pid = vm.pid();

    let first = vm.wait_for("first boot:", BOOT_TIMEOUT).unwrap();
    assert_eq!(
        first.line,
        format!("first boot: sectors={}", (16 << 20) / 512),
        "the guest does not see the grown disk"
    );
    vm.wait_for("ingot-test: rebooting", BOOT_TIMEOUT).unwrap();
    // The same QEMU boots the guest again; its console continues in the same stream.
    let second = vm.wait_for("second boot:", BOOT_TIMEOUT).unwrap();
    assert_eq!(second.line, "second boot: start=BOOT1 grown=GROWN-OK");
    assert!(second.elapsed > first.elapsed);
    assert_eq!(vm.pid(), pid);
    let banners = vm
        .console_lines()
        .iter()
        .filter(|l| l.contains("Linux version"))
        .count();
    assert_eq!(banners, 2, "expected two kernel boots in one console");
    vm.wait_for(MARKER, BOOT_TIMEOUT).unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
    drop(vm);
    assert_eq!(sha256_file(&image), before, "the image was modified");
}

#[test]
fn vm_reboot_keeps_snapshot_writes() {
    let Some(kit) = kit("vm_reboot_keeps_snapshot_writes") else {
        return;
    };
    let image = kit.image("disk.raw", 4);
    let before = sha256_file(&image);
    // Without a disk size the disk ends with the image: the "grown" write fails and reads back empty.
    let initrd = kit.initramfs("reboot.cpio", &reboot_script(4 << 20));
    let mut cfg = kit.direct_config(&image, &initrd);
    cfg.firmware = Firmware::LegacyBios;
    cfg.net.enabled = false;
    cfg.exit_on_reboot = false;
    let mut vm = Vm::start(cfg).unwrap();
    let first = vm.wait_for("first boot:", BOOT_TIMEOUT).unwrap();
    assert_eq!(first.line, format!("first boot: sectors={}", (4 << 20) / 512));
    let second = vm.wait_for("second boot:", BOOT_TIMEOUT).unwrap();
    assert_eq!(second.line, "second boot: start=BOOT1 grown=");
    vm.wait_for(MARKER, BOOT_TIMEOUT).unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
    drop(vm);
    assert_eq!(sha256_file(&image), before, "the image was modified");
}

#[test]
fn vm_exit_on_reboot_ends_qemu_at_the_first_reboot() {
    let Some(kit) = kit("vm_exit_on_reboot_ends_qemu_at_the_first_reboot") else {
        return;
    };
    let image = kit.image("disk.raw", 4);
    let initrd = kit.initramfs("reboot.cpio", &reboot_script(4 << 20));
    let mut cfg = kit.direct_config(&image, &initrd);
    cfg.firmware = Firmware::LegacyBios;
    cfg.net.enabled = false;
    assert!(cfg.exit_on_reboot);
    let mut vm = Vm::start(cfg).unwrap();
    vm.wait_for("ingot-test: rebooting", BOOT_TIMEOUT).unwrap();
    let err = vm.wait_for("second boot:", BOOT_TIMEOUT).unwrap_err();
    assert_eq!(err.failure, WaitFailure::Exited, "{err}");
    assert!(vm.wait_exit(Duration::from_secs(10)).unwrap().success());
}

#[test]
fn vm_tap_in_a_netns_carries_dhcp_from_a_host_service() {
    let test = "vm_tap_in_a_netns_carries_dhcp_from_a_host_service";
    let Some(kit) = kit(test) else { return };
    if !ingot_testkit::require_tools(test, &["dnsmasq"])
        || !ingot_testkit::require_root(test, "a network namespace with a tap device")
    {
        return;
    }
    let dnsmasq = ingot_testkit::find_program("dnsmasq").unwrap();
    // Declared before the VM and the service, so both are gone before the namespace is deleted.
    let ns = ingot_qemu::TestNetns::create("ingot-qemu-vm").unwrap_or_else(|e| panic!("{e}"));
    let d = kit.dir.path();
    let log = std::fs::File::create(d.join("dnsmasq.log")).unwrap();
    let mut server = ns
        .exec(&dnsmasq)
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--user=root",
            "--interface=tap0",
            "--bind-interfaces",
            "--dhcp-range=10.0.3.50,10.0.3.60,255.255.255.0,1h",
            "--log-dhcp",
            "--log-facility=-",
        ])
        .arg(format!("--dhcp-leasefile={}", d.join("leases").display()))
        .arg(format!("--pid-file={}", d.join("dnsmasq.pid").display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();

    // udhcpc runs the script with "bound" once the server's offer is acknowledged.
    let script = "cat > /dhcp.sh <<'EOS'\n\
         #!/bin/sh\n\
         [ \"$1\" = bound ] || exit 0\n\
         ip addr add \"$ip/$mask\" dev \"$interface\"\n\
         echo \"lease=$ip server=$serverid\"\n\
         EOS\n\
         chmod +x /dhcp.sh\n\
         ip link set lo up\n\
         ip link set eth0 up\n\
         udhcpc -i eth0 -f -q -n -t 10 -T 1 -s /dhcp.sh 2>&1 | grep lease=\n\
         if ping -c 1 -W 5 10.0.3.1 >/dev/null 2>&1; then echo ping=ok; else echo ping=failed; fi\n\
         if ping -c 1 -W 2 10.0.2.2 >/dev/null 2>&1; then echo outside=reached; else echo outside=unreachable; fi\n\
         echo 'ingot-test: marker'\n";
    let initrd = kit.initramfs_with("dhcp.cpio", &common::VIRTIO_NET_MODULES, script);
    let image = kit.image("disk.raw", 1);
    let mut cfg = kit.direct_config(&image, &initrd);
    cfg.firmware = Firmware::LegacyBios;
    ns.attach(&mut cfg);
    let mut vm = Vm::start(cfg).unwrap();

    let lease = vm.wait_for("lease=", BOOT_TIMEOUT).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(d.join("dnsmasq.log")).unwrap_or_default();
        panic!("{e}\n--- dnsmasq ---\n{log}")
    });
    assert!(
        lease.line.starts_with("lease=10.0.3.5") && lease.line.ends_with("server=10.0.3.1"),
        "{}",
        lease.line
    );
    assert_eq!(vm.wait_for("ping=", BOOT_TIMEOUT).unwrap().line, "ping=ok");
    assert_eq!(
        vm.wait_for("outside=", BOOT_TIMEOUT).unwrap().line,
        "outside=unreachable"
    );
    vm.wait_for(MARKER, BOOT_TIMEOUT).unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
    let _ = server.kill();
    let _ = server.wait();
    let log = std::fs::read_to_string(d.join("dnsmasq.log")).unwrap();
    assert!(log.contains("DHCPACK(tap0) 10.0.3.5"), "{log}");
}
