//! VMs outlive their daemons: signals to bangerd or bangerd-root never reach a VMM,
//! and a restarted bangerd re-adopts what it can identify and cleans up the rest.
//! Plain processes here (no systemd).

use std::time::Duration;

use banger_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn signal_and_wait(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap();
    wait_for(
        Duration::from_secs(10),
        &format!("pid {pid} to exit after {sig}"),
        || !alive(pid),
    );
}

#[test]
fn vms_survive_sigterm_and_sigkill_of_the_daemon_and_any_signal_to_the_helper() {
    let mut env = Env::new();
    env.start();
    let pid = env.boot("keep")["pid"].as_i64().unwrap() as i32;
    env.wait_console("keep", "BANGER_READY");
    let boot_id = env.boot_ids("keep");

    for sig in [Signal::SIGTERM, Signal::SIGKILL] {
        signal_and_wait(env.daemon_pid(), sig);
        assert!(alive(pid), "the VMM died with bangerd ({sig})");
        env.ok(&["daemon", "start"]);
        let vm = env.json(&["vm", "show", "keep"]);
        assert_eq!(vm["state"], "running", "after {sig}: {vm}");
        assert_eq!(
            vm["pid"].as_i64().unwrap() as i32,
            pid,
            "re-adopted the same VMM"
        );
        let log = std::fs::read_to_string(env.state().join("bangerd.log")).unwrap();
        assert!(log.contains("reconcile: adopted"), "{log}");
    }
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        signal_and_wait(env.helper_pid(), sig);
        assert!(alive(pid), "the VMM died with bangerd-root ({sig})");
        env.ok(&["daemon", "start"]);
    }
    // Still the same guest: no second boot, and it still works (a graceful stop).
    assert_eq!(env.boot_ids("keep"), boot_id);
    env.ok(&["vm", "stop", "keep"]);
    assert!(!alive(pid));
}

#[test]
fn reconcile_cleans_up_dead_vmms_and_never_kills_what_it_cannot_identify() {
    let mut env = Env::new();
    env.start();
    let dead = env.boot("dead")["pid"].as_i64().unwrap() as i32;
    let corrupt = env.boot("corrupt")["pid"].as_i64().unwrap() as i32;
    let orphan = env.boot("orphan")["pid"].as_i64().unwrap() as i32;
    let id = |name: &str| {
        env.json(&["vm", "show", name])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (dead_id, corrupt_id, orphan_id) = (id("dead"), id("corrupt"), id("orphan"));

    signal_and_wait(env.daemon_pid(), Signal::SIGTERM);
    // While the daemon is down: one VMM dies, one handles.json is corrupted, and one
    // VM's run directory disappears (as after a host reboot, but with its VMM still
    // running: the helper's launch record, root's and outside that directory, still
    // identifies it, so it is ended rather than left unmanaged).
    signal_and_wait(dead, Signal::SIGKILL);
    std::fs::write(
        env.run_dir()
            .join("vms")
            .join(&corrupt_id)
            .join("handles.json"),
        b"{garbage",
    )
    .unwrap();
    std::fs::remove_dir_all(env.run_dir().join("vms").join(&orphan_id)).unwrap();

    env.ok(&["daemon", "start"]);
    let show = |name: &str| env.json(&["vm", "show", name]);
    // Killed from outside, with the helper (its parent) still up: a crash, not a
    // shutdown, and the status says so.
    let d = show("dead");
    assert_eq!(d["state"], "failed", "{d}");
    assert!(
        d["last_error"]
            .as_str()
            .unwrap()
            .contains("killed by signal 9"),
        "{d}"
    );
    assert!(
        !env.run_dir().join("vms").join(&dead_id).exists(),
        "runtime of the dead VM released"
    );
    let c = show("corrupt");
    assert_eq!(
        c["state"], "running",
        "adopted through the database's pid: {c}"
    );
    assert_eq!(c["pid"].as_i64().unwrap() as i32, corrupt);
    let reseeded = std::fs::read_to_string(
        env.run_dir()
            .join("vms")
            .join(&corrupt_id)
            .join("handles.json"),
    )
    .unwrap();
    assert!(
        reseeded.contains(&format!("\"pid\": {corrupt}")),
        "handles.json re-seeded: {reseeded}"
    );
    assert_eq!(show("orphan")["state"], "stopped");
    wait_for(
        Duration::from_secs(10),
        "the unmanaged VMM to be ended",
        || !alive(orphan),
    );

    let log = std::fs::read_to_string(env.state().join("bangerd.log")).unwrap();
    for want in [
        "vm=dead",
        "vm=corrupt",
        "vm=orphan",
        "host rebooted",
        "exited while the daemon was down",
        &format!("ended its orphaned VMM (pid {orphan})"),
    ] {
        assert!(log.contains(want), "reconcile log lacks {want:?}:\n{log}");
    }
}

#[test]
fn a_recorded_pid_that_now_belongs_to_another_process_is_left_alone() {
    let mut env = Env::new();
    env.start();
    let pid = env.boot("reused")["pid"].as_i64().unwrap() as i32;
    let vm_id = env.json(&["vm", "show", "reused"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    signal_and_wait(env.daemon_pid(), Signal::SIGTERM);
    signal_and_wait(pid, Signal::SIGKILL);
    // Point handles.json at an unrelated live process (as if the pid had been reused).
    let mut other = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let other_pid = other.id() as i32;
    wait_for(Duration::from_secs(5), "sleep to exec", || {
        std::fs::read_to_string(format!("/proc/{other_pid}/comm"))
            .is_ok_and(|c| c.trim() == "sleep")
    });
    let st = std::fs::read_to_string(format!("/proc/{other_pid}/stat")).unwrap();
    let start_time: u64 = st
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let handles = env.run_dir().join("vms").join(&vm_id).join("handles.json");
    let mut h: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&handles).unwrap()).unwrap();
    h["pid"] = other_pid.into();
    h["start_time"] = start_time.into();
    std::fs::write(&handles, h.to_string()).unwrap();

    env.ok(&["daemon", "start"]);
    assert_eq!(env.json(&["vm", "show", "reused"])["state"], "stopped");
    assert!(alive(other_pid), "an unrelated process was killed");
    let log = std::fs::read_to_string(env.state().join("bangerd.log")).unwrap();
    assert!(log.contains("neither adopted nor killed"), "{log}");
    other.kill().unwrap();
    other.wait().unwrap();
}
