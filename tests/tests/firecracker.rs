//! banger with the real Firecracker v1.12.1 and its jailer (scripts/firecracker-assets),
//! directly and jailed, with a root daemon and with a non-root daemon (jailer
//! `--uid/--gid`). Guests are the tiny guest (tests/guest/tiny-guest.S): the nested
//! KVM of these machines cannot run a Linux kernel under Firecracker, and the tiny
//! guest's counter shows that a VM is still running.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use banger_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// The daemon's user in the non-root runs.
const NOBODY: u32 = 65534;

/// `vm create NAME --kernel <tiny guest> --rootfs <own disk> --start`.
fn tiny_vm(env: &Env, name: &str) -> (Value, PathBuf) {
    let fc = firecracker();
    let disk = env.own_copy(&guest().rootfs, &format!("{name}.ext4"));
    let vm = env.json(&[
        "vm",
        "create",
        name,
        "--kernel",
        fc.tiny_guest.to_str().unwrap(),
        "--rootfs",
        disk.to_str().unwrap(),
        "--memory",
        "128",
        "--start",
    ]);
    (vm, disk)
}

/// The last counter value the tiny guest printed.
fn counter(env: &Env, name: &str) -> u64 {
    env.console(name)
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("BANGER_TICK ")
                .and_then(|n| n.parse().ok())
        })
        .next_back()
        .unwrap_or(0)
}

/// Waits until the guest's counter passes `after`.
fn counter_passes(env: &Env, name: &str, after: u64) -> u64 {
    let mut now = 0;
    wait_for(
        Duration::from_secs(20),
        &format!("{name}'s counter to pass {after}"),
        || {
            now = counter(env, name);
            now > after
        },
    );
    now
}

fn jail_of(env: &Env, id: &str) -> Option<PathBuf> {
    env.jail_base
        .as_ref()
        .map(|b| b.path().join("firecracker").join(id))
}

/// The file the VMM holds open as its disk is the VM's disk itself: same device and
/// inode (no copy), whatever filesystem the jail is on.
fn assert_vmm_holds_disk(pid: i32, disk: &Path) {
    let want = std::fs::metadata(disk).unwrap();
    let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .any(|m| m.dev() == want.dev() && m.ino() == want.ino());
    assert!(
        held,
        "pid {pid} does not hold {} (dev {} ino {}) open",
        disk.display(),
        want.dev(),
        want.ino()
    );
}

/// Nothing of the VM is left: no process, jail, mount, tap, nft element, directory.
fn assert_no_leftovers(env: &Env, id: &str, pid: i32) {
    wait_for(
        Duration::from_secs(10),
        &format!("pid {pid} to end"),
        || !alive(pid),
    );
    if let Some(jail) = jail_of(env, id) {
        assert!(!jail.exists(), "{} is left", jail.display());
        let base = env.jail_base.as_ref().unwrap().path();
        assert_eq!(
            mounts_under(base),
            Vec::<PathBuf>::new(),
            "mounts left under the jail base"
        );
        assert_eq!(
            jailed_processes(base),
            Vec::<i32>::new(),
            "jailed processes left"
        );
    }
    let tap = format!("bg{id}");
    assert!(!env.netns.link_exists(&tap), "tap {tap} is left");
    let set = env
        .netns
        .cmd("nft")
        .args(["list", "set", "inet", &env.nft_table, "guests"])
        .output()
        .unwrap();
    assert!(
        set.status.success(),
        "nft list set failed: {}",
        stderr(&set)
    );
    assert!(
        !String::from_utf8_lossy(&set.stdout).contains(&tap),
        "nft element for {tap} is left"
    );
    for d in [
        env.state().join("vms").join(id),
        env.run_dir().join("vms").join(id),
    ] {
        assert!(!d.exists(), "{} is left", d.display());
    }
}

/// create, start, logs, stop (graceful), start, kill, rm: with the real binaries.
fn lifecycle(jailed: bool, daemon_uid: Option<u32>) {
    let mut env = Env::with_firecracker(jailed, daemon_uid);
    env.start();
    let status = env.ok(&["daemon", "status"]);
    assert!(status.contains("firecracker v1.12.1"), "{status}");
    assert_eq!(status.contains("(jailed)"), jailed, "{status}");

    let (vm, disk) = tiny_vm(&env, "tiny");
    assert_eq!(vm["state"], "running", "{vm}");
    assert_eq!(vm["vmm"], "firecracker");
    let id = vm["id"].as_str().unwrap().to_string();
    let pid = vm["pid"].as_i64().unwrap() as i32;
    counter_passes(&env, "tiny", 2);
    assert_vmm_holds_disk(pid, &disk);
    let uid = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
    if let Some(jail) = jail_of(&env, &id) {
        // The pid banger records is the jail's pidfile; the VMM runs as the daemon's
        // user, and its own log is the VM's vmm.log, not the console.
        let pidfile = std::fs::read_to_string(jail.join("root/firecracker.pid")).unwrap();
        assert_eq!(pidfile.trim(), pid.to_string());
        assert_eq!(uid, env.vmm_user().0, "never root");
        let disk_dev = std::fs::metadata(&disk).unwrap().dev();
        assert_ne!(
            disk_dev,
            std::fs::metadata(&jail).unwrap().dev(),
            "the jail is on another filesystem here"
        );
        // The user's own disk keeps its owner and mode.
        let m = std::fs::metadata(&disk).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (env.vmm_user().0, 0o644));
        let vmm_log =
            std::fs::read_to_string(env.state().join("vms").join(&id).join("vmm.log")).unwrap();
        assert!(vmm_log.contains("Running Firecracker v1.12.1"), "{vmm_log}");
        assert!(
            !env.console("tiny").contains("Running Firecracker"),
            "the VMM's log is not in the console"
        );
    } else {
        assert_eq!(uid, env.vmm_user().0, "never root");
    }

    // A graceful stop: Ctrl-Alt-Del, the guest resets the machine, Firecracker exits 0.
    let vm = env.json(&["vm", "stop", "tiny", "--timeout", "20"]);
    assert_eq!(vm["state"], "stopped", "{vm}");
    assert!(vm["last_error"].is_null(), "{vm}");
    assert!(env.console("tiny").contains("BANGER_SHUTDOWN"));
    wait_for(Duration::from_secs(10), "the VMM to end", || !alive(pid));
    if let Some(jail) = jail_of(&env, &id) {
        assert!(!jail.exists(), "the jail is removed at stop");
    }

    // Start again on the same disk, then kill and remove.
    let vm = env.json(&["vm", "start", "tiny"]);
    assert_eq!(vm["state"], "running", "{vm}");
    let pid2 = vm["pid"].as_i64().unwrap() as i32;
    assert_ne!(pid2, pid);
    counter_passes(&env, "tiny", 2);
    assert_vmm_holds_disk(pid2, &disk);
    let vm = env.json(&["vm", "kill", "tiny"]);
    assert_eq!(vm["state"], "stopped", "{vm}");
    env.ok(&["vm", "rm", "tiny"]);
    assert_no_leftovers(&env, &id, pid2);
}

/// VMMs never run as root. Firecracker reopens its files by path and opens /dev/kvm,
/// so with a root daemon it runs as banger-vmm only inside the jailer's chroot; a
/// direct launch is refused, clearly, and leaves nothing behind.
#[test]
fn direct_firecracker_with_a_root_daemon_is_refused_because_vmms_never_run_as_root() {
    let mut env = Env::with_firecracker(false, None);
    env.start();
    let fc = firecracker();
    let disk = env.own_copy(&guest().rootfs, "d.ext4");
    let out = env.banger(&[
        "vm",
        "create",
        "d",
        "--kernel",
        fc.tiny_guest.to_str().unwrap(),
        "--rootfs",
        disk.to_str().unwrap(),
        "--memory",
        "128",
        "--start",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("VMMs never do") && err.contains("only through the jailer"),
        "{err}"
    );
    let vm = env.json(&["vm", "show", "d"]);
    assert_eq!(vm["state"], "failed", "{vm}");
    let vmms: Vec<i32> = env
        .processes()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "firecracker")
        })
        .collect();
    assert_eq!(vmms, Vec::<i32>::new(), "a VMM was started");
    env.ok(&["vm", "rm", "d"]);
}

#[test]
fn jailed_firecracker_with_a_root_daemon_runs_the_whole_lifecycle() {
    lifecycle(true, None);
}

#[test]
fn jailed_firecracker_with_a_non_root_daemon_runs_the_whole_lifecycle() {
    lifecycle(true, Some(NOBODY));
}

/// SIGKILL of both daemons, then `daemon stop`/`start`: the same pid is adopted each
/// time and the guest's counter keeps advancing; handles.json keeps the jail.
fn adoption(jailed: bool, daemon_uid: Option<u32>) {
    let mut env = Env::with_firecracker(jailed, daemon_uid);
    env.start();
    let (vm, _) = tiny_vm(&env, "keep");
    let pid = vm["pid"].as_i64().unwrap() as i32;
    let id = vm["id"].as_str().unwrap().to_string();
    let mut seen = counter_passes(&env, "keep", 1);
    let handles = env.run_dir().join("vms").join(&id).join("handles.json");

    for round in ["SIGKILL both", "daemon stop"] {
        match round {
            "SIGKILL both" => {
                for p in [env.daemon_pid(), env.helper_pid()] {
                    kill(Pid::from_raw(p), Signal::SIGKILL).unwrap();
                    wait_for(Duration::from_secs(10), "a daemon to die", || !alive(p));
                }
            }
            _ => {
                // `daemon stop` needs root for the helper.
                let out = env
                    .netns
                    .cmd(bin("banger"))
                    .args(["daemon", "stop"])
                    .env("BANGER_STATE_DIR", env.state())
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", stderr(&out));
            }
        }
        assert!(alive(pid), "the VMM died ({round})");
        env.start();
        let vm = env.json(&["vm", "show", "keep"]);
        assert_eq!(vm["state"], "running", "{round}: {vm}");
        assert_eq!(
            vm["pid"].as_i64().unwrap() as i32,
            pid,
            "{round}: the same VMM is adopted"
        );
        seen = counter_passes(&env, "keep", seen);
        let h: Value = serde_json::from_str(&std::fs::read_to_string(&handles).unwrap()).unwrap();
        assert_eq!(h["pid"].as_i64().unwrap() as i32, pid);
        if let Some(jail) = jail_of(&env, &id) {
            assert_eq!(
                h["chroot"].as_str().map(PathBuf::from),
                Some(jail.join("root")),
                "{round}: {h}"
            );
            assert_eq!(
                h["pidfile"].as_str().map(PathBuf::from),
                Some(jail.join("root/firecracker.pid")),
                "{round}: {h}"
            );
        }
    }
    env.ok(&["vm", "rm", "-f", "keep"]);
    assert_no_leftovers(&env, &id, pid);
}

#[test]
fn a_jailed_firecracker_vm_of_a_root_daemon_is_adopted_after_sigkill_of_both_daemons_and_daemon_stop()
 {
    adoption(true, None);
}

#[test]
fn a_jailed_firecracker_vm_of_a_non_root_daemon_is_adopted_after_sigkill_and_daemon_stop() {
    adoption(true, Some(NOBODY));
}

#[test]
fn a_vmm_that_dies_by_itself_leaves_the_vm_failed_with_its_status_and_log() {
    let mut env = Env::with_firecracker(true, None);
    env.start();
    let (vm, _) = tiny_vm(&env, "crash");
    let pid = vm["pid"].as_i64().unwrap() as i32;
    counter_passes(&env, "crash", 1);
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    wait_for(Duration::from_secs(10), "the VMM to end", || !alive(pid));
    let vm = env.json(&["vm", "show", "crash"]);
    assert_eq!(
        vm["state"],
        "failed",
        "{vm}\n{}",
        std::fs::read_to_string(env.state().join("bangerd-root.log")).unwrap_or_default()
    );
    let err = vm["last_error"].as_str().unwrap();
    assert!(
        err.contains("the VMM ended unexpectedly (killed by signal 9)"),
        "{err}"
    );
    assert!(
        err.contains("last lines of the VMM log") && err.contains(":fc_api]"),
        "{err}"
    );
    // A failed VM starts again; the next failure's message quotes only its own boot.
    let vm = env.json(&["vm", "start", "crash"]);
    assert_eq!(vm["state"], "running", "{vm}");
    env.ok(&["vm", "rm", "-f", "crash"]);
}

#[test]
fn image_vms_boot_firecracker_with_an_elf_kernel_and_no_initrd() {
    let mut env = Env::with_firecracker(true, None);
    env.start();
    let fc = firecracker();
    // An image of the tiny guest, imported without an initrd: its kernel is ELF
    // already and becomes the image's vmlinux.
    env.ok(&[
        "image",
        "import",
        "--name",
        "tiny",
        "--kernel",
        fc.tiny_guest.to_str().unwrap(),
        "--rootfs",
        guest().rootfs.to_str().unwrap(),
    ]);
    let img = env.json(&["image", "show", "tiny"]);
    assert!(img["initrd"].is_null(), "{img}");
    let vmlinux = img["vmlinux"].as_str().expect("the image has a vmlinux");
    assert_eq!(
        std::fs::read(vmlinux).unwrap(),
        std::fs::read(&fc.tiny_guest).unwrap()
    );
    let vm = env.json(&[
        "vm", "create", "img", "--image", "tiny", "--memory", "128", "--start",
    ]);
    assert_eq!(vm["state"], "running", "{vm}");
    let pid = vm["pid"].as_i64().unwrap() as i32;
    counter_passes(&env, "img", 2);
    // The disk it writes is the VM's own clone, bind-mounted, not a copy in the jail.
    assert_vmm_holds_disk(pid, Path::new(vm["disk"].as_str().unwrap()));
    let id = vm["id"].as_str().unwrap().to_string();
    env.ok(&["vm", "rm", "-f", "img"]);
    assert_no_leftovers(&env, &id, pid);
}

#[test]
fn the_debian_image_s_kernel_is_accepted_by_firecracker() {
    // The real Debian cloud kernel, as `image build` made it and banger extracted its
    // vmlinux: Firecracker loads it and the VM reaches Running. (Under this host's
    // nested KVM the kernel then prints nothing; SSH is tested under QEMU.)
    let mut env = Env::with_firecracker(true, None);
    env.start();
    env.import_debian();
    let vm = env.json(&[
        "vm",
        "create",
        "deb",
        "--image",
        "debian-bookworm",
        "--memory",
        "256",
        "--start",
    ]);
    assert_eq!(vm["state"], "running", "{vm}");
    let id = vm["id"].as_str().unwrap().to_string();
    let log = std::fs::read_to_string(env.state().join("vms").join(&id).join("vmm.log")).unwrap();
    assert!(!log.contains("Invalid Elf"), "{log}");
    assert!(log.contains("InstanceStart"), "{log}");
    // The image has banger's identity unit: the real Firecracker took the MMDS
    // config and holds the VM's identity for the guest (hostname, keys, host key).
    let handles: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.run_dir().join("vms").join(&id).join("handles.json")).unwrap(),
    )
    .unwrap();
    let get = |path: &str| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sS", "--unix-socket"])
            .arg(handles["api_sock"].as_str().unwrap())
            .arg(format!("http://localhost{path}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let mmds = get("/mmds");
    assert_eq!(mmds["banger"]["hostname"], "deb", "{mmds}");
    let host_key = mmds["banger"]["ssh_host_ed25519_key_pub"].as_str().unwrap();
    assert_eq!(
        host_key.split_whitespace().nth(1),
        vm["host_key"].as_str().unwrap().split_whitespace().nth(1),
        "MMDS serves the host key banger pins"
    );
    assert!(
        mmds["banger"]["ssh_host_ed25519_key"]
            .as_str()
            .unwrap()
            .contains("OPENSSH PRIVATE KEY")
    );
    let config = get("/vm/config");
    assert_eq!(
        config["mmds-config"]["network_interfaces"],
        serde_json::json!(["eth0"]),
        "{config}"
    );
    assert_eq!(config["mmds-config"]["version"], "V2", "{config}");
    assert!(
        config["boot-source"]["boot_args"]
            .as_str()
            .unwrap()
            .contains("banger.mmds=1"),
        "{config}"
    );
    let pid = vm["pid"].as_i64().unwrap() as i32;
    env.ok(&["vm", "rm", "-f", "deb"]);
    assert_no_leftovers(&env, &id, pid);
}

#[test]
fn an_image_without_an_elf_kernel_is_refused_on_firecracker_with_a_clear_error() {
    let mut env = Env::with_firecracker(false, None);
    env.start();
    // The test guest's bzImage-less "kernel": a file that is neither ELF nor bzImage.
    let junk = env.own_copy(&guest().initrd, "not-a-kernel");
    env.ok(&[
        "image",
        "import",
        "--name",
        "nokernel",
        "--kernel",
        junk.to_str().unwrap(),
        "--rootfs",
        guest().rootfs.to_str().unwrap(),
    ]);
    env.ok(&["vm", "create", "nk", "--image", "nokernel"]);
    let out = env.banger(&["vm", "start", "nk"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("image nokernel has no ELF vmlinux, and firecracker loads only an ELF kernel"),
        "{err}"
    );
    let fc = firecracker().firecracker.display().to_string();
    assert!(
        env.processes().iter().all(|(_, c)| !c.starts_with(&fc)),
        "nothing was launched: {:?}",
        env.processes()
    );
}

#[test]
fn kill_does_not_wait_behind_a_long_stop_and_bad_stops_and_boot_args_are_refused() {
    let mut env = Env::with_firecracker(true, None);
    env.start();
    let fc = firecracker();
    let k = fc.stubborn_guest.to_str().unwrap();
    let vm = env.json(&[
        "vm", "create", "deaf", "--kernel", k, "--memory", "128", "--start",
    ]);
    let pid = vm["pid"].as_i64().unwrap() as i32;
    counter_passes(&env, "deaf", 1);

    // A stop timeout beyond the limit (2^64-1 used to panic the handler and leave the
    // VM `stopping`) is refused; the VM still runs.
    let sock = env.run_dir().join("bangerd.sock");
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/stderr",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&sock)
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"timeout_secs":18446744073709551615}"#,
        ])
        .arg("http://bangerd/v1/vms/deaf/stop")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "400",
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("stop timeout of 18446744073709551615 s is too long"),
        "{}",
        stderr(&out)
    );
    let out = env.banger(&["vm", "stop", "deaf", "--timeout", "3601"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(env.json(&["vm", "show", "deaf"])["state"], "running");

    // A graceful stop the guest ignores would hold the VM for a minute; `vm kill`
    // ends it now, and the stop returns as soon as the VMM is gone.
    std::thread::scope(|s| {
        let stop = s.spawn(|| env.banger(&["vm", "stop", "deaf", "--timeout", "60"]));
        wait_for(Duration::from_secs(10), "the stop to begin", || {
            env.json(&["vm", "show", "deaf"])["state"] == "stopping"
        });
        let t = std::time::Instant::now();
        let vm = env.json(&["vm", "kill", "deaf"]);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "vm kill waited {:?} behind the stop",
            t.elapsed()
        );
        assert_eq!(vm["state"], "stopped", "{vm}");
        let out = stop.join().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    });
    assert!(!alive(pid));

    // Boot arguments that would not fit the kernel's command line once banger and
    // Firecracker add theirs are refused at create, not at every start.
    let long = "x".repeat(1537);
    let out = env.banger(&["vm", "create", "long", "--kernel", k, "--boot-args", &long]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("boot arguments are 1537 bytes long; the limit is 1536"),
        "{}",
        stderr(&out)
    );
    env.ok(&["vm", "rm", "deaf"]);
}
