//! banger-bench: side-by-side figures for docs/performance.md.
//!
//! 1. `vm create` + `vm start` until InstanceStart returns (guest boot excluded),
//!    against the floor: the same VMM launched and configured by hand with the same
//!    API calls by `scripts/bench-floor` (curl over the socket). Runs alternate so a
//!    noisy machine hits both sides alike; medians and the ratio are printed.
//! 2. `vm list` with 1,000 VMs in the store against `vm list` with 1.
//!
//! Usage: banger-bench [--runs N] [--list-vms N]   (needs root and scripts/guest-assets)

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use banger_tests::{Env, bin, guest};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runs = arg("--runs", 20);
    let list_vms = arg("--list-vms", 1000);
    let g = guest();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");

    // --- 1. start latency against the floor ---
    let mut env = Env::new();
    env.start();
    let mut ours = Vec::new();
    let mut floor = Vec::new();
    for i in 0..runs {
        let disk = env.state().join(format!("d{i}.ext4"));
        std::fs::copy(&g.rootfs, &disk).unwrap();
        let name = format!("b{i}");

        let t = Instant::now();
        env.ok(&[
            "vm", "create", &name,
            "--kernel", g.kernel.to_str().unwrap(),
            "--initrd", g.initrd.to_str().unwrap(),
            "--rootfs", disk.to_str().unwrap(),
        ]);
        env.ok(&["vm", "start", &name]);
        ours.push(t.elapsed());
        env.ok(&["vm", "rm", "--force", &name]);

        let dir = tempfile::Builder::new().prefix("fl").tempdir_in("/tmp").unwrap();
        let t = Instant::now();
        let out = Command::new(repo.join("scripts/bench-floor"))
            .arg(bin("banger-vmm-qemu"))
            .arg(dir.path())
            .args([&g.kernel, &g.initrd, &disk])
            .output()
            .unwrap();
        floor.push(t.elapsed());
        assert!(out.status.success(), "floor script failed: {}", String::from_utf8_lossy(&out.stderr));
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("floor prints the VMM pid");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let _ = std::fs::remove_file(&disk);
    }
    let (o, f) = (median(ours.clone()), median(floor.clone()));
    println!("start: banger vm create + vm start (median of {runs}): {:.1} ms", ms(o));
    println!("start: floor, curl over the socket (median of {runs}):  {:.1} ms", ms(f));
    println!("start: ratio banger / floor: {:.3}", o.as_secs_f64() / f.as_secs_f64());
    println!(
        "start: banger min/max {:.1}/{:.1} ms, floor min/max {:.1}/{:.1} ms",
        ms(*ours.iter().min().unwrap()),
        ms(*ours.iter().max().unwrap()),
        ms(*floor.iter().min().unwrap()),
        ms(*floor.iter().max().unwrap())
    );
    drop(env);

    // --- 2. vm list with 1 and with N VMs ---
    let time_list = |env: &Env, args: &[&str]| {
        let mut v = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            env.ok(args);
            v.push(t.elapsed());
        }
        median(v)
    };
    let mut one = Env::new();
    one.start();
    let mut many = Env::new();
    many.start();
    let k = g.kernel.to_str().unwrap().to_string();
    one.ok(&["vm", "create", "only", "--kernel", &k]);
    let sock = many.run_dir().join("bangerd.sock");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = banger_client_for_bench::client(&sock);
        for i in 0..list_vms {
            c.create(&format!("vm-{i:04}"), &k).await;
        }
    });
    for (label, args) in [("--json vm list", &["--json", "vm", "list"][..]), ("vm list (table)", &["vm", "list"][..])] {
        let (t1, tn) = (time_list(&one, args), time_list(&many, args));
        println!("list: {label} with 1 VM (median of {runs}): {:.1} ms", ms(t1));
        println!("list: {label} with {list_vms} VMs (median of {runs}): {:.1} ms", ms(tn));
        println!("list: {label} ratio: {:.2}", tn.as_secs_f64() / t1.as_secs_f64());
    }
}

/// Creating 1,000 records through the CLI would time process start-up 1,000 times;
/// the bench seeds through the same HTTP API the CLI uses, with curl's wire format.
mod banger_client_for_bench {
    use std::path::{Path, PathBuf};

    pub struct C(PathBuf);

    pub fn client(sock: &Path) -> C {
        C(sock.to_path_buf())
    }

    impl C {
        pub async fn create(&self, name: &str, kernel: &str) {
            let body = serde_json::json!({ "name": name, "kernel": kernel }).to_string();
            let out = std::process::Command::new("curl")
                .args(["-sf", "--unix-socket"])
                .arg(&self.0)
                .args(["-H", "content-type: application/json", "-d", &body, "http://bangerd/v1/vms"])
                .output()
                .unwrap();
            assert!(out.status.success(), "seeding {name} failed");
        }
    }
}
