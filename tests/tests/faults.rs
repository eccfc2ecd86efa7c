//! Fault injection: a daemon or the helper SIGKILLed exactly at each step of create,
//! start, stop and rm (`BANGER_FAULT=<point>`, banger_helper::fault_point), for
//! banger-vmm-qemu and the real Firecracker (jailed: with root daemons, the only way
//! Firecracker runs, as banger-vmm; a direct Firecracker as a non-root VMM needs
//! /dev/kvm, which is root's alone on these hosts). After `daemon start`,
//! every VMM that runs belongs to a running VM (no orphan), every VM is in a state the
//! next verb accepts, and `vm rm -f` leaves nothing behind.

use std::path::PathBuf;
use std::time::Duration;

use banger_tests::*;
use serde_json::Value;

/// Every injection point, in the order a VM meets them.
const POINTS: [&str; 10] = [
    "daemon:create:inserted",
    "helper:launch:forked",
    "helper:launch:recorded",
    "helper:launch:released",
    "daemon:start:launched",
    "daemon:start:saved",
    "daemon:start:configured",
    "daemon:stop:stopping",
    "daemon:kill:signalled",
    "daemon:rm:killed",
];

#[derive(Clone, Copy, Debug)]
enum Vmm {
    Qemu,
    JailedFirecracker,
}

impl Vmm {
    fn env(self) -> Env {
        match self {
            Vmm::Qemu => Env::new(),
            Vmm::JailedFirecracker => Env::with_firecracker(true, None),
        }
    }
    fn comm(self) -> &'static str {
        match self {
            Vmm::Qemu => "banger-vmm-qemu",
            _ => "firecracker",
        }
    }
}

/// The VMM processes of this environment: by command line (direct) or by jail.
fn vmms(env: &Env, vmm: Vmm) -> Vec<i32> {
    let mut pids: Vec<i32> = env
        .processes()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == vmm.comm())
        })
        .collect();
    if let Some(base) = &env.jail_base {
        pids.extend(jailed_processes(base.path()));
    }
    pids.sort();
    pids.dedup();
    pids.retain(|p| alive(*p));
    // banger-vmm-qemu's own child carries its comm between fork and exec of QEMU.
    let parents = pids.clone();
    pids.retain(|p| !ppid(*p).is_some_and(|pp| parents.contains(&pp)));
    pids
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn create_args(env: &Env, vmm: Vmm, name: &str) -> Vec<String> {
    let g = guest();
    let disk = env.own_copy(&g.rootfs, &format!("{name}.ext4"));
    let mut a: Vec<String> = vec!["vm".into(), "create".into(), name.into()];
    match vmm {
        Vmm::Qemu => a.extend([
            "--kernel".into(),
            g.kernel.display().to_string(),
            "--initrd".into(),
            g.initrd.display().to_string(),
        ]),
        _ => a.extend([
            "--kernel".into(),
            firecracker().tiny_guest.display().to_string(),
        ]),
    }
    a.extend([
        "--rootfs".into(),
        disk.display().to_string(),
        "--memory".into(),
        "128".into(),
    ]);
    a
}

fn run_point(vmm: Vmm, point: &str) {
    let env = vmm.env();
    env.start_with_fault(Some(point));
    let name = "f";
    let args = create_args(&env, vmm, name);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    // The verbs up to the fault; the one that meets it fails (its daemon died).
    let mut met = false;
    let create = env.banger(&a);
    if !create.status.success() {
        met = true;
    } else {
        let start = env.banger(&["vm", "start", name]);
        if !start.status.success() {
            met = true;
        } else {
            for verb in [
                &["vm", "stop", name, "--timeout", "2"][..],
                &["vm", "start", name][..],
                &["vm", "kill", name][..],
                &["vm", "rm", "-f", name][..],
            ] {
                if !env.banger(verb).status.success() {
                    met = true;
                    break;
                }
            }
        }
    }
    assert!(met, "{vmm:?} {point}: no verb met the fault");

    // Recover: both daemons started again, without the fault.
    env.start_with_fault(None);
    // The daemon notices a new helper within a second and ends what no VM owns.
    let owned = |vms: &Value| -> Vec<i32> {
        vms.as_array()
            .unwrap()
            .iter()
            .filter(|v| v["state"] == "running" || v["state"] == "stopping")
            .filter_map(|v| v["pid"].as_i64().map(|p| p as i32))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (vms, running, live) = loop {
        let vms = env.json(&["vm", "list"]);
        let running = owned(&vms);
        let live = vmms(&env, vmm);
        if live.iter().all(|p| running.contains(p)) || std::time::Instant::now() > deadline {
            break (vms, running, live);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for p in &live {
        assert!(
            running.contains(p),
            "{vmm:?} {point}: VMM pid {p} runs but no VM owns it (orphan); VMs: {vms}\n--- helper log ---\n{}\n--- daemon log ---\n{}",
            std::fs::read_to_string(env.state().join("bangerd-root.log")).unwrap_or_default(),
            std::fs::read_to_string(env.state().join("bangerd.log")).unwrap_or_default(),
        );
    }
    // Whatever state the VM is in, the next verbs accept it: start it (unless it
    // runs), then remove it, leaving nothing.
    let vm: Option<Value> = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .cloned();
    if let Some(vm) = vm {
        let state = vm["state"].as_str().unwrap().to_string();
        assert!(
            ["created", "stopped", "failed", "running"].contains(&state.as_str()),
            "{vmm:?} {point}: {vm}"
        );
        if state != "running" {
            let out = env.banger(&["vm", "start", name]);
            assert!(
                out.status.success(),
                "{vmm:?} {point}: vm start from {state}: {}",
                stderr(&out)
            );
        }
        let id = vm["id"].as_str().unwrap().to_string();
        env.ok(&["vm", "rm", "-f", name]);
        for d in [
            env.state().join("vms").join(&id),
            env.run_dir().join("vms").join(&id),
        ] {
            assert!(!d.exists(), "{vmm:?} {point}: {} is left", d.display());
        }
        let tap = format!("bg{id}");
        assert!(
            !env.netns.link_exists(&tap),
            "{vmm:?} {point}: tap {tap} is left"
        );
        let set = env
            .netns
            .cmd("nft")
            .args(["list", "set", "inet", &env.nft_table, "guests"])
            .output()
            .unwrap();
        assert!(
            set.status.success(),
            "{vmm:?} {point}: nft: {}",
            stderr(&set)
        );
        assert!(
            !String::from_utf8_lossy(&set.stdout).contains(&tap),
            "{vmm:?} {point}: nft element for {tap} is left"
        );
    }
    // Every address is free again: a new VM gets the first host address.
    let args = create_args(&env, vmm, "again");
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = env.json(&a);
    let first = env
        .gateway
        .split('/')
        .next()
        .unwrap()
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.2"))
        .unwrap();
    assert_eq!(
        again["ip"].as_str(),
        Some(first.as_str()),
        "{vmm:?} {point}: an address was not freed: {again}"
    );
    env.ok(&["vm", "rm", "again"]);
    wait_for(
        Duration::from_secs(10),
        &format!("{vmm:?} {point}: every VMM to end"),
        || vmms(&env, vmm).is_empty(),
    );
    if let Some(base) = &env.jail_base {
        assert_eq!(
            mounts_under(base.path()),
            Vec::<PathBuf>::new(),
            "{vmm:?} {point}: mounts left"
        );
        let jails: Vec<_> = std::fs::read_dir(base.path().join("firecracker"))
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        assert!(jails.is_empty(), "{vmm:?} {point}: jails left: {jails:?}");
        let records: Vec<_> = std::fs::read_dir(base.path().join("launches"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .collect();
        assert!(
            records.is_empty(),
            "{vmm:?} {point}: launch records left: {records:?}"
        );
    }
}

fn every_point(vmm: Vmm) {
    for point in POINTS {
        run_point(vmm, point);
    }
}

#[test]
fn no_fault_at_any_step_orphans_a_banger_vmm_qemu() {
    every_point(Vmm::Qemu);
}

#[test]
fn no_fault_at_any_step_orphans_a_jailed_firecracker() {
    every_point(Vmm::JailedFirecracker);
}

#[test]
fn an_import_interrupted_by_the_daemon_s_death_leaves_no_partial_image() {
    let env = Env::new();
    env.start_with_fault(Some("daemon:import:copied"));
    let g = guest();
    let out = env.banger(&[
        "image",
        "import",
        "--name",
        "half",
        "--kernel",
        g.kernel.to_str().unwrap(),
        "--rootfs",
        g.rootfs.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "the import met the fault");
    let partial = || image_work(&env, ".import-");
    assert_eq!(partial().len(), 1, "the daemon died with its copy in place");
    env.start_with_fault(None);
    assert_eq!(
        partial(),
        Vec::<String>::new(),
        "the next daemon removed the partial import"
    );
    let images = env.json(&["image", "ls"]);
    assert_eq!(images.as_array().map(Vec::len), Some(0), "{images}");
    // And the same import now succeeds.
    env.ok(&[
        "image",
        "import",
        "--name",
        "half",
        "--kernel",
        g.kernel.to_str().unwrap(),
        "--rootfs",
        g.rootfs.to_str().unwrap(),
    ]);
}

#[test]
fn a_build_finished_while_the_daemon_died_is_removed_not_published() {
    // A real debootstrap build (about a minute): the daemon dies once the helper has
    // handed it the finished build, before publishing it.
    let env = Env::with_mirror();
    env.start_with_fault(Some("daemon:build:built"));
    let out = env.banger(&["image", "build", "debian", "--quiet"]);
    assert!(!out.status.success(), "the build met the fault");
    let partial = || image_work(&env, ".build-");
    assert_eq!(
        partial().len(),
        1,
        "the finished build is in place when the daemon dies: {}",
        stderr(&out)
    );
    env.start_with_fault(None);
    assert_eq!(
        partial(),
        Vec::<String>::new(),
        "the next daemon removed the unpublished build"
    );
    let images = env.json(&["image", "ls"]);
    assert_eq!(images.as_array().map(Vec::len), Some(0), "{images}");
}

/// The unpublished image work (`images/<prefix>*`) of an environment.
fn image_work(env: &Env, prefix: &str) -> Vec<String> {
    std::fs::read_dir(env.state().join("images"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}
