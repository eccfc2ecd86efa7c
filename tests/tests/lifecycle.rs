//! The main lifecycle with a real guest: create → start → console marker → stop
//! (graceful) → start (new boot) → kill → rm, leaving nothing behind.

use banger_tests::*;

#[test]
fn a_guest_boots_prints_its_boot_id_and_stop_start_kill_rm_clean_up() {
    let mut env = Env::new();
    env.start();

    let vm = env.boot("life");
    assert_eq!(vm["state"], "running", "{vm}");
    let pid = vm["pid"].as_i64().expect("pid") as i32;
    assert!(alive(pid));
    let id = vm["id"].as_str().unwrap().to_string();

    // The guest printed its boot id and read the marker from its root disk.
    let console = env.wait_console("life", "BANGER_READY");
    assert!(
        console.contains("BANGER_ROOTFS=banger-test-disk"),
        "{console}"
    );
    let first = env.boot_ids("life");
    assert_eq!(first.len(), 1, "{console}");

    // list and show agree, as tables and as JSON.
    let list = env.json(&["vm", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "life");
    let table = env.ok(&["vm", "list"]);
    assert!(
        table.contains("life") && table.contains("running"),
        "{table}"
    );

    // Graceful stop: Ctrl-Alt-Del reaches the guest, which syncs and reboots.
    let stopped = env.json(&["vm", "stop", "life", "--timeout", "60"]);
    assert_eq!(stopped["state"], "stopped");
    assert!(!alive(pid), "VMM {pid} survived stop");
    assert!(
        env.console("life").contains("BANGER_SHUTDOWN"),
        "the guest was not asked to shut down"
    );
    assert!(
        !env.run_dir().join("vms").join(&id).exists(),
        "runtime dir left after stop"
    );
    // Stopping a stopped VM is not an error.
    env.ok(&["vm", "stop", "life"]);

    // Start again: a new boot.
    let again = env.json(&["vm", "start", "life"]);
    let pid2 = again["pid"].as_i64().unwrap() as i32;
    assert_ne!(pid, pid2);
    wait_for(
        std::time::Duration::from_secs(90),
        "a second boot id",
        || env.boot_ids("life").len() == 2,
    );
    let ids = env.boot_ids("life");
    assert_ne!(ids[0], ids[1], "the second start did not boot a new kernel");

    // Kill: immediate.
    let killed = env.json(&["vm", "kill", "life"]);
    assert_eq!(killed["state"], "stopped");
    assert!(!alive(pid2));

    // rm: nothing of the VM is left: no process, no socket, no file.
    env.ok(&["vm", "rm", "life"]);
    assert!(!env.state().join("vms").join(&id).exists());
    assert!(!env.run_dir().join("vms").join(&id).exists());
    assert_eq!(env.json(&["vm", "list"]).as_array().unwrap().len(), 0);
    let procs: Vec<_> = env
        .processes()
        .into_iter()
        .filter(|(_, c)| c.contains(&id))
        .collect();
    assert!(procs.is_empty(), "processes left: {procs:?}");
    let out = env.banger(&["vm", "show", "life"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

#[test]
fn rm_force_kills_a_running_vm_and_plain_rm_refuses() {
    let mut env = Env::new();
    env.start();
    let vm = env.boot("doomed");
    let pid = vm["pid"].as_i64().unwrap() as i32;

    let out = env.banger(&["vm", "rm", "doomed"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stop it first or use --force"),
        "{}",
        stderr(&out)
    );
    assert!(alive(pid), "a refused rm must not touch the VM");

    env.ok(&["vm", "rm", "--force", "doomed"]);
    assert!(!alive(pid));
    assert_eq!(env.json(&["vm", "list"]).as_array().unwrap().len(), 0);
}

#[test]
fn daemon_commands_report_socket_status_and_refuse_a_second_daemon() {
    let mut env = Env::new();
    let sock = env.ok(&["daemon", "socket"]);
    assert_eq!(
        sock.trim(),
        env.run_dir().join("bangerd.sock").to_str().unwrap()
    );

    let out = env.banger(&["daemon", "status"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "status without a daemon: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("banger daemon start"),
        "{}",
        stderr(&out)
    );

    env.start();
    let st = env.json(&["daemon", "status"]);
    assert_eq!(st["vmm"], "banger-vmm-qemu");
    assert_eq!(st["pid"].as_i64().unwrap() as i32, env.daemon_pid());

    // A second bangerd on the same state directory refuses, naming the first.
    let out = env
        .netns
        .cmd(bin("bangerd"))
        .arg("--state-dir")
        .arg(env.state())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("already running") && err.contains(&env.daemon_pid().to_string()),
        "{err}"
    );

    // `daemon start` again is a no-op.
    env.ok(&["daemon", "start"]);
    assert_eq!(st["pid"].as_i64().unwrap() as i32, env.daemon_pid());

    env.ok(&["daemon", "stop"]);
    assert!(env.processes().is_empty(), "{:?}", env.processes());
    assert!(!env.run_dir().join("bangerd.sock").exists());
}

#[test]
fn version_and_completion_work_without_a_daemon() {
    let env = Env::new();
    assert!(env.ok(&["version"]).starts_with("banger "));
    assert_eq!(env.json(&["version"])["version"], env!("CARGO_PKG_VERSION"));
    for shell in ["bash", "zsh", "fish"] {
        let s = env.ok(&["completion", shell]);
        assert!(s.contains("banger") && s.len() > 500, "{shell}");
    }
}

/// The rule "tests stay on this machine's own networks": the environment's bridge,
/// nftables table and the VM's tap are in the namespace the test made, never in the
/// host's, and so are the daemons and the VMM; deleting the namespace leaves nothing.
#[test]
fn an_environment_s_bridge_table_taps_and_processes_live_in_its_own_network_namespace() {
    let mut env = Env::new();
    env.start();
    let vm = env.boot("ns");
    let pid = vm["pid"].as_i64().unwrap() as i32;
    let tap = format!("bg{}", vm["id"].as_str().unwrap());
    env.wait_console("ns", "BANGER_READY");

    for link in [&env.bridge, &tap] {
        assert!(
            env.netns.link_exists(link),
            "{link} is not in {}",
            env.netns.name
        );
        let host = std::process::Command::new("ip")
            .args(["link", "show", "dev", link])
            .output()
            .unwrap();
        assert!(!host.status.success(), "{link} is in the host's namespace");
    }
    assert!(
        env.netns.nft_table_exists(&env.nft_table),
        "table {} is not in {}",
        env.nft_table,
        env.netns.name
    );
    let host = std::process::Command::new("nft")
        .args(["list", "table", "inet", &env.nft_table])
        .output()
        .unwrap();
    assert!(
        !host.status.success(),
        "table {} is in the host's namespace",
        env.nft_table
    );
    let inside = env.netns.pids();
    for (what, p) in [
        ("bangerd", env.daemon_pid()),
        ("bangerd-root", env.helper_pid()),
        ("the VMM", pid),
    ] {
        assert!(
            inside.contains(&p),
            "{what} (pid {p}) is not in {}",
            env.netns.name
        );
    }

    let (ns, bridge, table) = (env.netns.path(), env.bridge.clone(), env.nft_table.clone());
    drop(env);
    assert!(!ns.exists(), "{} is left", ns.display());
    for link in [&bridge, &tap] {
        let host = std::process::Command::new("ip")
            .args(["link", "show", "dev", link])
            .output()
            .unwrap();
        assert!(
            !host.status.success(),
            "{link} reached the host's namespace when the environment ended"
        );
    }
    let host = std::process::Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()
        .unwrap();
    assert!(
        !host.status.success(),
        "table {table} is in the host's namespace"
    );
}
