//! banger under a real systemd (PID 1 of a systemd-nspawn container, the harness's
//! [`Container`]): `banger system install`, a VM, then restarts of both units.
//! The VM keeps its VMM pid and its boot id, and the VMM lives in its own scope under
//! banger.slice, outside both units' cgroups. Only the scenarios are here.

use std::path::Path;
use std::time::Duration;

use banger_tests::*;

#[test]
fn under_systemd_unit_restarts_never_touch_a_vm() {
    let c = Container::boot(0);
    let (bridge, gateway, table) = container_net_names(0);
    c.ok(&["sh", "-c", &format!(
        "printf 'BANGER_BRIDGE={bridge}\\nBANGER_GATEWAY={gateway}\\nBANGER_NFT_TABLE={table}\\n' > /etc/default/banger"
    )]);
    c.ok(&["/opt/banger/banger", "system", "install"]);
    // Idempotent: a second install refreshes and restarts, and still works.
    c.ok(&["/opt/banger/banger", "system", "install"]);
    let status = c.ok(&["banger", "system", "status"]);
    assert!(
        status.contains("bangerd.service") && status.contains("active"),
        "{status}"
    );
    let info = c.json(&["daemon", "status"]);
    assert_eq!(info["state_dir"], "/var/lib/banger");
    assert!(
        c.netns.link_exists(&bridge),
        "the helper used /etc/default/banger"
    );
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "the bridge is not in the host's namespace"
    );

    c.ok(&[
        "install",
        "-o",
        "banger",
        "-g",
        "banger",
        "-m",
        "0644",
        "/opt/guest/rootfs.ext4",
        "/var/tmp/sd.ext4",
    ]);
    let vm = c.json(&[
        "vm",
        "create",
        "sd",
        "--kernel",
        "/opt/guest/vmlinuz",
        "--initrd",
        "/opt/guest/initrd.img",
        "--rootfs",
        "/var/tmp/sd.ext4",
        "--memory",
        "256",
        "--start",
    ]);
    let pid = vm["pid"].as_i64().unwrap().to_string();
    wait_for(Duration::from_secs(90), "the guest to boot", || {
        c.ok(&["banger", "vm", "logs", "sd"])
            .contains("BANGER_READY")
    });
    let boot_ids = c.boot_ids("sd");
    assert_eq!(boot_ids.len(), 1);

    // The VMM runs as the banger user, in its own scope under banger.slice.
    let tap = format!("bg{}", vm["id"].as_str().unwrap());
    assert!(c.netns.link_exists(&tap), "tap {tap} missing");
    let cgroup = c.ok(&["cat", &format!("/proc/{pid}/cgroup")]);
    assert!(
        cgroup.contains("banger.slice/banger-vm-"),
        "VMM not in its own scope: {cgroup}"
    );
    let owner = c.ok(&["stat", "-c", "%U", &format!("/proc/{pid}")]);
    assert_eq!(owner.trim(), "banger");

    for unit in ["bangerd-root.service", "bangerd.service"] {
        c.ok(&["systemctl", "restart", unit]);
        c.ok(&["systemctl", "is-active", unit]);
        let vm = c.json(&["vm", "show", "sd"]);
        assert_eq!(vm["state"], "running", "after restarting {unit}: {vm}");
        assert_eq!(
            vm["pid"].as_i64().unwrap().to_string(),
            pid,
            "after restarting {unit}"
        );
        assert_eq!(
            c.boot_ids("sd"),
            boot_ids,
            "the guest rebooted when {unit} restarted"
        );
    }
    // `banger daemon stop` (systemctl stop) leaves the VM running too.
    c.ok(&["banger", "daemon", "stop"]);
    c.ok(&["test", "-d", &format!("/proc/{pid}")]);
    c.ok(&["banger", "daemon", "start"]);
    assert_eq!(
        c.json(&["vm", "show", "sd"])["pid"]
            .as_i64()
            .unwrap()
            .to_string(),
        pid
    );

    // uninstall refuses while a VM runs.
    let out = c.inside(&["banger", "system", "uninstall"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success()
            && err.contains("1 VM(s) are running; stop them first or use --force"),
        "{err}"
    );
    c.ok(&["systemctl", "is-active", "bangerd.service"]);

    c.ok(&["banger", "vm", "stop", "sd"]);
    c.ok(&["banger", "vm", "rm", "sd"]);
    c.ok(&["banger", "system", "uninstall"]);
}

/// The update smoke scenarios under systemd, with releases signed by `openssl` and
/// served by `python3 -m http.server` on the loopback of the container's network
/// namespace: check, unknown version, dry run, a real swap that keeps the VM, a
/// release whose daemon fails to start (rolled back and restarted), and the daemon
/// admin commands.
#[test]
fn under_systemd_updates_swap_restart_and_roll_back_with_the_vm_alive() {
    let netns = Netns::new();
    let r = Releases::new(&netns);
    // A release whose bangerd passes --check-migrations but exits 1 as the daemon.
    r.failing_daemon_release("/opt/banger/bangerd");

    let (kernel, _, _) = debian_image();
    let image_dir = kernel.parent().unwrap().to_path_buf();
    let c = Container::boot_with(
        1,
        netns,
        &[(r.dir.path(), "/opt/rel"), (&image_dir, "/opt/img")],
    );
    let (bridge, gateway, table) = container_net_names(1);
    c.ok(&["sh", "-c", &format!(
        "printf 'BANGER_BRIDGE={bridge}\\nBANGER_GATEWAY={gateway}\\nBANGER_NFT_TABLE={table}\\n' > /etc/default/banger"
    )]);
    c.ok(&["/opt/banger/banger", "system", "install"]);
    let update = |name: &str, extra: &[&str]| {
        let url = r.url(name);
        let mut a = vec![
            "banger",
            "update",
            "--manifest-url",
            url.as_str(),
            "--pubkey-file",
            "/opt/rel/pub.pem",
        ];
        a.extend_from_slice(extra);
        c.inside(&a)
    };
    let sums = || {
        let paths = banger_api::BINARIES.map(|b| format!("/usr/local/bin/{b}"));
        c.ok(&["sh", "-c", &format!("sha256sum {}", paths.join(" "))])
    };
    let installed = sums();

    // daemon_admin
    assert_eq!(
        c.ok(&["banger", "daemon", "socket"]).trim(),
        "/run/banger/bangerd.sock"
    );
    c.ok(&["bangerd", "--check-migrations", "--system"]);

    // A Debian guest, reached over SSH from inside the container.
    c.ok(&[
        "banger",
        "image",
        "import",
        "--name",
        "debian-bookworm",
        "--kernel",
        "/opt/img/vmlinuz",
        "--initrd",
        "/opt/img/initrd.img",
        "--rootfs",
        "/opt/img/rootfs.ext4",
    ]);
    let out = c.ok(&[
        "banger",
        "vm",
        "run",
        "--name",
        "up",
        "--quiet",
        "--",
        "cat",
        "/proc/sys/kernel/random/boot_id",
    ]);
    let boot_id = out.trim().to_string();
    assert_eq!(boot_id.len(), 36, "{out:?}");
    let pid = c.json(&["vm", "show", "up"])["pid"].as_i64().unwrap();
    let alive_and_same = |what: &str| {
        let v = c.json(&["vm", "show", "up"]);
        assert_eq!(
            (v["state"].as_str(), v["pid"].as_i64()),
            (Some("running"), Some(pid)),
            "{what}"
        );
        let now = c.ok(&[
            "banger",
            "vm",
            "ssh",
            "up",
            "--",
            "cat /proc/sys/kernel/random/boot_id",
        ]);
        assert_eq!(now.trim(), boot_id, "{what}: not the same boot");
    };

    // update_check, update_to_unknown, update_dry_run
    let out = update("latest", &["--check"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("9.1.0 is available"),
        "{out:?}"
    );
    let out = update("latest", &["--to", "9.9.9"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("v9.9.9/SHA256SUMS") && err.contains("404"),
        "{err}"
    );
    assert_eq!(sums(), installed, "unknown version changed the install");
    let url = r.url("latest");
    let out = c.inside(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "banger",
        "update",
        "--manifest-url",
        &url,
        "--pubkey-file",
        "/opt/rel/pub.pem",
    ]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("needs root"),
        "{out:?}"
    );
    assert_eq!(
        sums(),
        installed,
        "a refused non-root update changed the install"
    );
    let out = update("latest", &["--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sums(), installed, "dry run changed the install");

    // update_rollback_keeps_vm_alive
    let out = update("bad", &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("rolled back") && err.contains("restarted it"),
        "{err}"
    );
    assert_eq!(sums(), installed, "rollback restored the binaries");
    assert_eq!(
        c.json(&["version"])["version"],
        banger_api::VERSION,
        "banger version is the old one"
    );
    c.ok(&[
        "systemctl",
        "is-active",
        "bangerd.service",
        "bangerd-root.service",
    ]);
    alive_and_same("after the rollback");

    // update_keeps_vm_alive
    let out = update("latest", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(sums(), installed, "the 9.1.0 binaries are installed");
    assert_eq!(c.json(&["version"])["version"], "9.1.0");
    assert_eq!(
        c.json(&["daemon", "status"])["version"],
        "9.1.0",
        "the restarted daemon is the new one"
    );
    c.ok(&["test", "-f", "/usr/local/bin/bangerd.previous"]);
    c.ok(&["test", "!", "-e", "/usr/local/bin/.banger-update.json"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("-> 9.1.0"),
        "{out:?}"
    );
    c.ok(&[
        "systemctl",
        "is-active",
        "bangerd.service",
        "bangerd-root.service",
    ]);
    alive_and_same("after the update");

    // daemon_admin: stopping the daemons leaves the VM running.
    c.ok(&["banger", "daemon", "stop"]);
    c.ok(&["test", "-d", &format!("/proc/{pid}")]);
    c.ok(&["banger", "daemon", "start"]);
    alive_and_same("after daemon stop/start");
    c.ok(&["banger", "vm", "kill", "up"]);
}

/// The last counter the tiny guest printed, from `banger vm logs` in the container.
fn tiny_counter(c: &Container, vm: &str) -> u64 {
    c.ok(&["banger", "vm", "logs", vm])
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("BANGER_TICK ")
                .and_then(|n| n.parse().ok())
        })
        .next_back()
        .unwrap_or(0)
}

/// Jailed real Firecracker under systemd: unit restarts, the real update swap and the
/// rollback, with a tiny-guest VM alive throughout (same pid, counter advancing).
#[test]
fn under_systemd_a_jailed_firecracker_vm_survives_restarts_updates_and_rollbacks() {
    let netns = Netns::new();
    let r = Releases::new(&netns);
    r.failing_daemon_release("/opt/banger/bangerd");
    let fc = firecracker();
    let fc_dir = fc.tiny_guest.parent().unwrap().to_path_buf();
    let c = Container::boot_with(
        2,
        netns,
        &[(r.dir.path(), "/opt/rel"), (&fc_dir, "/opt/fc")],
    );
    let (bridge, gateway, table) = container_net_names(2);
    c.ok(&["sh", "-c", &format!(
        "printf 'BANGER_BRIDGE={bridge}\\nBANGER_GATEWAY={gateway}\\nBANGER_NFT_TABLE={table}\\n\
         BANGER_VMM=/opt/fc/bin/firecracker\\nBANGER_JAILER=/opt/fc/bin/jailer\\n' > /etc/default/banger"
    )]);
    c.ok(&["/opt/banger/banger", "system", "install"]);
    let info = c.json(&["daemon", "status"]);
    assert_eq!(info["vmm"], "firecracker v1.12.1 (jailed)", "{info}");

    c.ok(&[
        "install",
        "-o",
        "banger",
        "-g",
        "banger",
        "-m",
        "0644",
        "/opt/guest/rootfs.ext4",
        "/var/tmp/fc.ext4",
    ]);
    let vm = c.json(&[
        "vm",
        "create",
        "fc",
        "--kernel",
        "/opt/fc/tiny-guest",
        "--rootfs",
        "/var/tmp/fc.ext4",
        "--memory",
        "128",
        "--start",
    ]);
    assert_eq!(vm["state"], "running", "{vm}");
    let pid = vm["pid"].as_i64().unwrap();
    let owner = c.ok(&["stat", "-c", "%U", &format!("/proc/{pid}")]);
    assert_eq!(
        owner.trim(),
        "banger",
        "the jailer ran Firecracker as the daemon's user"
    );
    let cgroup = c.ok(&["cat", &format!("/proc/{pid}/cgroup")]);
    assert!(
        cgroup.contains("banger.slice/banger-vm-"),
        "VMM not in its own scope: {cgroup}"
    );
    let mut seen = 0;
    let mut alive_and_counting = |what: &str| {
        let v = c.json(&["vm", "show", "fc"]);
        assert_eq!(
            (v["state"].as_str(), v["pid"].as_i64()),
            (Some("running"), Some(pid)),
            "{what}: {v}"
        );
        wait_for(
            Duration::from_secs(20),
            &format!("the counter to advance {what}"),
            || {
                let now = tiny_counter(&c, "fc");
                let advanced = now > seen;
                if advanced {
                    seen = now;
                }
                advanced
            },
        );
    };
    alive_and_counting("after the start");
    for unit in ["bangerd-root.service", "bangerd.service"] {
        c.ok(&["systemctl", "restart", unit]);
        c.ok(&["systemctl", "is-active", unit]);
        alive_and_counting(&format!("after restarting {unit}"));
    }
    let update = |name: &str| {
        let url = r.url(name);
        c.inside(&[
            "banger",
            "update",
            "--manifest-url",
            url.as_str(),
            "--pubkey-file",
            "/opt/rel/pub.pem",
        ])
    };
    let out = update("bad");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("rolled back"),
        "{err}"
    );
    alive_and_counting("after the rolled-back update");
    let out = update("latest");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.json(&["daemon", "status"])["version"], "9.1.0");
    alive_and_counting("after the update");
    c.ok(&["banger", "vm", "rm", "-f", "fc"]);
    c.ok(&["test", "!", "-d", &format!("/proc/{pid}")]);
    let jails = c.ok(&["sh", "-c", "ls /var/lib/banger-jail/firecracker | wc -l"]);
    assert_eq!(
        jails.trim(),
        "0",
        "jails left: {}\n{}\n{}",
        c.ok(&["sh", "-c", "ls -laR /var/lib/banger-jail/firecracker; grep banger-jail /proc/self/mountinfo || true"]),
        c.ok(&["journalctl", "-u", "bangerd-root", "-n", "30", "--no-pager"]),
        c.ok(&["journalctl", "-u", "bangerd", "-n", "30", "--no-pager"])
    );
}
