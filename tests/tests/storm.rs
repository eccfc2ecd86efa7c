//! A fault storm: live jailed-Firecracker VMs, a client creating, starting and
//! removing other VMs all the while, and random faults (SIGKILL or SIGTERM of either
//! daemon, `daemon stop`), each followed by starting what is down. Every live VM keeps
//! its VMM (same pid, still running) and no VMM is left that no VM owns. The seed is
//! printed; `BANGER_STORM_SEED=<n>` replays a run.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use banger_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// xorshift64*: enough randomness for choosing faults, and replayable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const LIVE: usize = 6;
const FAULTS: usize = 16;

#[test]
fn a_fault_storm_keeps_every_live_vm_and_orphans_nothing() {
    let seed: u64 = std::env::var("BANGER_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    println!("storm seed: {seed} (BANGER_STORM_SEED={seed} replays it)");
    let mut rng = Rng(seed.max(1));
    let mut env = Env::with_firecracker(true, None);
    env.start();
    let fc = firecracker();
    let k = fc.tiny_guest.to_str().unwrap().to_string();
    let mut live = Vec::new();
    for i in 0..LIVE {
        let vm = env.json(&[
            "vm",
            "create",
            &format!("live{i}"),
            "--kernel",
            &k,
            "--memory",
            "128",
            "--start",
        ]);
        live.push((format!("live{i}"), vm["pid"].as_i64().unwrap()));
    }
    let stop = AtomicBool::new(false);
    let churned = AtomicUsize::new(0);
    let base = env.jail_base.as_ref().unwrap().path().to_path_buf();
    std::thread::scope(|s| {
        // The concurrent client: its verbs may fail while a daemon is down.
        s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("churn{}", n % 3);
                let _ = env.banger(&["vm", "rm", "-f", &name]);
                let _ = env.banger(&[
                    "vm", "create", &name, "--kernel", &k, "--memory", "128", "--start",
                ]);
                n += 1;
                churned.store(n, Ordering::SeqCst);
            }
        });
        for f in 0..FAULTS {
            // Let the client get somewhere between faults.
            std::thread::sleep(Duration::from_millis(rng.below(150)));
            let what = rng.below(5);
            let (label, pid) = match what {
                0 => ("SIGKILL bangerd", Some((env.daemon_pid(), Signal::SIGKILL))),
                1 => ("SIGTERM bangerd", Some((env.daemon_pid(), Signal::SIGTERM))),
                2 => (
                    "SIGKILL bangerd-root",
                    Some((env.helper_pid(), Signal::SIGKILL)),
                ),
                3 => (
                    "SIGTERM bangerd-root",
                    Some((env.helper_pid(), Signal::SIGTERM)),
                ),
                _ => ("daemon stop", None),
            };
            match pid {
                Some((p, sig)) => {
                    let _ = kill(Pid::from_raw(p), sig);
                    wait_for(
                        Duration::from_secs(10),
                        &format!("seed {seed} fault {f}: {label}"),
                        || !alive(p),
                    );
                }
                None => {
                    let out = env
                        .netns
                        .cmd(bin("banger"))
                        .args(["daemon", "stop"])
                        .env("BANGER_STATE_DIR", env.state())
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "seed {seed} fault {f}: daemon stop: {}",
                        stderr(&out)
                    );
                }
            }
            env.restart();
            for (name, pid) in &live {
                let vm = env.json(&["vm", "show", name]);
                assert_eq!(
                    (vm["state"].as_str(), vm["pid"].as_i64()),
                    (Some("running"), Some(*pid)),
                    "seed {seed} fault {f} ({label}): {name} lost its VMM: {vm}"
                );
            }
        }
        stop.store(true, Ordering::SeqCst);
    });
    // Converged: every jailed VMM belongs to a running VM.
    let owned = || -> Vec<i64> {
        env.json(&["vm", "list"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["state"] == "running")
            .filter_map(|v| v["pid"].as_i64())
            .collect()
    };
    let mut orphans = Vec::new();
    wait_for(
        Duration::from_secs(10),
        &format!("seed {seed}: orphans to be ended"),
        || {
            let o = owned();
            orphans = jailed_processes(&base)
                .into_iter()
                .filter(|p| !o.contains(&(*p as i64)))
                .collect();
            orphans.is_empty()
        },
    );
    println!(
        "storm: {FAULTS} faults injected, {LIVE} of {LIVE} live VMs kept, {} churn cycles, {} orphans",
        churned.load(Ordering::SeqCst),
        orphans.len()
    );
    for v in env.json(&["vm", "list"]).as_array().unwrap() {
        env.ok(&["vm", "rm", "-f", v["name"].as_str().unwrap()]);
    }
    wait_for(Duration::from_secs(10), "every VMM to end", || {
        jailed_processes(&base).is_empty()
    });
    assert_eq!(
        mounts_under(&base),
        Vec::<std::path::PathBuf>::new(),
        "seed {seed}: mounts left"
    );
}
