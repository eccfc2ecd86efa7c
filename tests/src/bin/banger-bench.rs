//! banger-bench: side-by-side figures for docs/performance.md.
//!
//! 1. `vm create` + `vm start` until InstanceStart returns (guest boot excluded),
//!    against the floor: the same VMM binary launched and configured from this one
//!    process with the same API calls banger makes (banger_fc's client; no shell, no
//!    curl), its tap made here too with the same ioctls. Runs alternate so a noisy
//!    machine hits both sides alike; medians and the ratio are printed. With
//!    banger-vmm-qemu (the test guest and its disk) and, with `--vmm firecracker`,
//!    the real Firecracker (its tiny guest, no disk).
//! 2. `vm list` with 1,000 VMs in the store against `vm list` with 1.
//! 3. Disk clones of a 1 GiB and an 8 GiB image, per method (reflink on a
//!    loop-mounted btrfs, sparse copy on ext4), through `vm create`, beside `cp`.
//! 4. `vm run` to SSH-ready, split into banger's steps and the guest's boot.
//! 5. Daemon start to ready with 0, 10 and 30 running VMs (reconcile cost); with
//!    `--vmm firecracker`, live jailed Firecracker VMs and bangerd's memory.
//!
//! Needs root, scripts/guest-assets (and scripts/firecracker-assets for
//! `--vmm firecracker`), and for `run` the cached Debian test image.

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

/// What to measure; every figure of a part is printed with its floor.
#[derive(Debug, clap::Parser)]
#[command(
    name = "banger-bench",
    about = "Side-by-side figures for docs/performance.md"
)]
struct Args {
    /// Runs per figure (medians are printed).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// VMs in the store for the `list` part.
    #[arg(long, default_value_t = 1000)]
    list_vms: usize,
    /// Parts to run (default: all).
    #[arg(long, value_delimiter = ',', value_parser = ["start", "list", "disk", "run", "reconcile"])]
    only: Vec<String>,
    /// The VMM banger runs.
    #[arg(long, default_value = "qemu", value_parser = ["qemu", "firecracker"])]
    vmm: String,
}

fn main() {
    let a = <Args as clap::Parser>::parse();
    let only = |part: &str| a.only.is_empty() || a.only.iter().any(|p| p == part);
    if a.vmm == "firecracker" {
        if only("start") {
            fc::bench_start(a.runs);
        }
        if only("reconcile") {
            fc::bench_reconcile();
        }
        return;
    }
    if only("start") {
        bench_start(a.runs);
    }
    if only("list") {
        bench_list(a.runs, a.list_vms);
    }
    if only("disk") {
        bench_disk();
    }
    if only("run") {
        bench_run();
    }
    if only("reconcile") {
        bench_reconcile();
    }
}

/// The floor's own tap, made as the helper makes one (TUNSETIFF, TUNSETPERSIST on
/// /dev/net/tun, in the environment's network namespace) and removed after.
mod tap {
    use std::os::fd::AsRawFd;

    nix::ioctl_write_int!(tunsetiff, b'T', 202);
    nix::ioctl_write_int!(tunsetpersist, b'T', 203);

    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }

    nix::ioctl_write_int!(tunsetowner, b'T', 204);

    /// Sets `name` persistent (`on`) or removes it (EBUSY while a VMM still holds it).
    pub fn persist(name: &str, on: bool) -> nix::Result<()> {
        persist_owned(name, on, None)
    }

    /// [`persist`], owned by `owner` (a VMM that runs as that user opens it).
    pub fn persist_owned(name: &str, on: bool, owner: Option<u32>) -> nix::Result<()> {
        const IFF_TAP: libc::c_short = 0x0002;
        const IFF_NO_PI: libc::c_short = 0x1000;
        const IFF_VNET_HDR: libc::c_short = 0x4000;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("/dev/net/tun");
        if name.len() >= libc::IFNAMSIZ {
            return Err(nix::errno::Errno::ENAMETOOLONG);
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: an open /dev/net/tun and a properly laid out struct ifreq.
        unsafe {
            tunsetiff(f.as_raw_fd(), &req as *const IfReq as u64)?;
            if let Some(uid) = owner {
                tunsetowner(f.as_raw_fd(), u64::from(uid))?;
            }
            tunsetpersist(f.as_raw_fd(), on as u64)?;
        }
        Ok(())
    }
}

/// What the floor's VMM is given, as banger gives it.
pub struct FloorVm<'a> {
    pub vmm: &'a Path,
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub rootfs: Option<&'a Path>,
    pub memory_mib: u32,
}

/// The floor, once: in `netns`, make a tap, launch the VMM, wait for its API socket,
/// PUT machine-config, boot-source, the NIC and the root drive, InstanceStart.
/// Returns the time from before the tap to InstanceStart's answer.
pub fn floor_once(
    rt: &tokio::runtime::Runtime,
    netns: &banger_tests::Netns,
    vm: &FloorVm,
) -> Duration {
    let dir = tempfile::Builder::new()
        .prefix("fl")
        .tempdir_in("/tmp")
        .unwrap();
    let sock = dir.path().join("api.sock");
    let console = std::fs::File::create(dir.path().join("console.log")).unwrap();
    let tap_name = next_tap();
    let t = Instant::now();
    netns
        .run(|| tap::persist(&tap_name, true))
        .expect("the floor's tap");
    let mut cmd = Command::new(vm.vmm);
    cmd.arg("--api-sock").arg(&sock).args(["--id", "floor"]);
    cmd.stdin(std::process::Stdio::null())
        .stdout(console.try_clone().unwrap())
        .stderr(console);
    netns.enter(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let kernel = vm.kernel.display().to_string();
    let initrd = vm.initrd.map(|p| p.display().to_string());
    let rootfs = vm.rootfs.map(|p| p.display().to_string());
    floor_configure(rt, &sock, vm.memory_mib, &tap_name, &kernel, initrd, rootfs);
    let d = t.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    // The VMM's own children (QEMU) let go of the tap as they die.
    banger_tests::wait_for(
        Duration::from_secs(10),
        "the floor's tap to be free",
        || netns.run(|| tap::persist(&tap_name, false)).is_ok(),
    );
    d
}

/// The jailed floor, once: as [`floor_once`], with Firecracker run by the jailer as
/// `uid:gid` from `jail_base` (banger_fc's own launch plan, the one banger uses) and
/// the kernel linked into the jail beforehand (banger bind-mounts it).
pub fn floor_jailed_once(
    rt: &tokio::runtime::Runtime,
    netns: &banger_tests::Netns,
    fc: &banger_tests::Firecracker,
    jail_base: &Path,
    (uid, gid): (u32, u32),
) -> Duration {
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = format!(
        "floor{}",
        RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let plan = banger_fc::launch::LaunchConfig {
        vmm: fc.firecracker.clone(),
        id: id.clone(),
        api_sock: jail_base.join("unused.sock"),
        log_path: None,
        jailer: Some(banger_fc::launch::JailerConfig {
            jailer: fc.jailer.clone(),
            chroot_base: jail_base.to_path_buf(),
            uid,
            gid,
        }),
    }
    .plan()
    .unwrap();
    let chroot = plan.chroot.clone().unwrap();
    std::fs::create_dir_all(&chroot).unwrap();
    std::fs::copy(&fc.tiny_guest, chroot.join("kernel")).unwrap();
    let console = std::fs::File::create(jail_base.join(format!("{id}.console"))).unwrap();
    let tap_name = next_tap();
    let t = Instant::now();
    netns
        .run(|| tap::persist_owned(&tap_name, true, Some(uid)))
        .expect("the floor's tap");
    let mut cmd = Command::new(&plan.program);
    cmd.args(&plan.args);
    cmd.stdin(std::process::Stdio::null())
        .stdout(console.try_clone().unwrap())
        .stderr(console);
    netns.enter(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    floor_configure(
        rt,
        &plan.bound_socket,
        128,
        &tap_name,
        "/kernel",
        None,
        None,
    );
    let d = t.elapsed();
    // The jailer execs Firecracker in place: the child is the VMM.
    let _ = child.kill();
    let _ = child.wait();
    banger_tests::wait_for(
        Duration::from_secs(10),
        "the floor's tap to be free",
        || netns.run(|| tap::persist(&tap_name, false)).is_ok(),
    );
    let _ = std::fs::remove_dir_all(chroot.parent().unwrap());
    d
}

fn next_tap() -> String {
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "bgfl{}",
        RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

/// The calls banger makes, from this process: wait for the socket to answer, then
/// machine-config, boot-source, the NIC, the root drive, InstanceStart.
fn floor_configure(
    rt: &tokio::runtime::Runtime,
    sock: &Path,
    memory_mib: u32,
    tap_name: &str,
    kernel: &str,
    initrd: Option<String>,
    rootfs: Option<String>,
) {
    use banger_fc::models::{BootSource, Drive, MachineConfiguration, NetworkInterface};
    rt.block_on(async {
        let c = banger_fc::Client::new(sock).with_timeout(Duration::from_secs(60));
        while c.instance_info().await.is_err() {
            tokio::task::yield_now().await;
        }
        c.put_machine_config(&MachineConfiguration {
            vcpu_count: 1,
            mem_size_mib: memory_mib as usize,
            ..Default::default()
        })
        .await
        .unwrap();
        c.put_boot_source(&BootSource {
            kernel_image_path: kernel.into(),
            initrd_path: initrd,
            boot_args: Some("console=ttyS0 reboot=k panic=1".into()),
        })
        .await
        .unwrap();
        c.put_network_interface(&NetworkInterface::new(
            "eth0",
            tap_name,
            Some("06:00:0a:00:00:02".into()),
        ))
        .await
        .unwrap();
        if let Some(rootfs) = rootfs {
            c.put_drive(&Drive::on_file("rootfs", &rootfs, true, false))
                .await
                .unwrap();
        }
        c.instance_start().await.unwrap();
    });
}

fn bench_start(runs: usize) {
    let g = guest();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

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
            "vm",
            "create",
            &name,
            "--kernel",
            g.kernel.to_str().unwrap(),
            "--initrd",
            g.initrd.to_str().unwrap(),
            "--rootfs",
            disk.to_str().unwrap(),
        ]);
        env.ok(&["vm", "start", &name]);
        ours.push(t.elapsed());
        env.ok(&["vm", "rm", "--force", &name]);

        floor.push(floor_once(
            &rt,
            &env.netns,
            &FloorVm {
                vmm: &bin("banger-vmm-qemu"),
                kernel: &g.kernel,
                initrd: Some(&g.initrd),
                rootfs: Some(&disk),
                memory_mib: 256,
            },
        ));
        let _ = std::fs::remove_file(&disk);
    }
    let (o, f) = (median(ours.clone()), median(floor.clone()));
    println!(
        "start: banger vm create + vm start (median of {runs}): {:.1} ms",
        ms(o)
    );
    println!(
        "start: floor, same VMM and calls from one process, tap included (median of {runs}): {:.1} ms",
        ms(f)
    );
    println!(
        "start: ratio banger / floor: {:.3}",
        o.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "start: banger min/max {:.1}/{:.1} ms, floor min/max {:.1}/{:.1} ms",
        ms(*ours.iter().min().unwrap()),
        ms(*ours.iter().max().unwrap()),
        ms(*floor.iter().min().unwrap()),
        ms(*floor.iter().max().unwrap())
    );
    drop(env);
}

fn bench_list(runs: usize, list_vms: usize) {
    let g = guest();
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
    // Every VM gets an address: 1,000 need more than a /24.
    let mut many = Env::with_gateway(&format!(
        "10.{}.0.1/20",
        160 + std::process::id() % 60 / 16 * 16
    ));
    many.start();
    let k = g.kernel.to_str().unwrap().to_string();
    one.ok(&["vm", "create", "only", "--kernel", &k]);
    let sock = many.run_dir().join("bangerd.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = banger_client_for_bench::client(&sock);
        for i in 0..list_vms {
            c.create(&format!("vm-{i:04}"), &k).await;
        }
    });
    for (label, args) in [
        ("--json vm list", &["--json", "vm", "list"][..]),
        ("vm list (table)", &["vm", "list"][..]),
    ] {
        let (t1, tn) = (time_list(&one, args), time_list(&many, args));
        println!(
            "list: {label} with 1 VM (median of {runs}): {:.1} ms",
            ms(t1)
        );
        println!(
            "list: {label} with {list_vms} VMs (median of {runs}): {:.1} ms",
            ms(tn)
        );
        println!(
            "list: {label} ratio: {:.2}",
            tn.as_secs_f64() / t1.as_secs_f64()
        );
    }
}

/// Writes `size` bytes of non-zero data, then makes it an ext4 filesystem (mkfs writes
/// metadata only, so every block stays allocated, as in a full image).
fn full_ext4(path: &Path, size: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block: Vec<u8> = (0..(4usize << 20))
        .map(|i| (i * 7 % 251) as u8 + 1)
        .collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
    // -E nodiscard: mke2fs would otherwise punch the data out of a regular file.
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "nodiscard"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

fn time_cmd(c: &mut Command) -> Duration {
    let t = Instant::now();
    let st = c.status().unwrap();
    assert!(st.success(), "{c:?} failed");
    t.elapsed()
}

fn bench_disk() {
    let g = guest();
    // A btrfs file system on a loop device, for reflink clones.
    let backing = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    backing.as_file().set_len(40 << 30).unwrap();
    assert!(
        Command::new("mkfs.btrfs")
            .args(["-q", "-f"])
            .arg(backing.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let mnt = tempfile::Builder::new()
        .prefix("bgbench")
        .tempdir_in("/tmp")
        .unwrap();
    assert!(
        Command::new("mount")
            .args(["-o", "loop"])
            .arg(backing.path())
            .arg(mnt.path())
            .status()
            .unwrap()
            .success()
    );
    {
        let btrfs_state = tempfile::Builder::new()
            .prefix("bg")
            .tempdir_in(mnt.path())
            .unwrap();
        let fs_envs = [
            ("reflink (btrfs)", Env::in_dir(btrfs_state)),
            ("copy (ext4)", Env::new()),
        ];
        for (label, mut env) in fs_envs {
            env.start();
            for gib in [1u64, 8] {
                let img = env.state().join(format!("img{gib}.ext4"));
                full_ext4(&img, gib << 30);
                let name = format!("img{gib}g");
                env.ok(&[
                    "image",
                    "import",
                    "--name",
                    &name,
                    "--kernel",
                    g.kernel.to_str().unwrap(),
                    "--initrd",
                    g.initrd.to_str().unwrap(),
                    "--rootfs",
                    img.to_str().unwrap(),
                ]);
                let mut creates = Vec::new();
                for i in 0..3 {
                    let vm = format!("c{gib}x{i}");
                    let mut c = env.cmd(&["vm", "create", &vm, "--image", &name]);
                    creates.push(time_cmd(c.stdout(std::process::Stdio::null())));
                    env.ok(&["vm", "rm", &vm]);
                }
                // A plain byte copy, flushed like banger's copies are. (cp would use
                // copy_file_range, which btrfs turns into a clone.)
                let copy = env.state().join("cp-copy");
                let cp = time_cmd(
                    Command::new("dd")
                        .arg(format!("if={}", img.display()))
                        .arg(format!("of={}", copy.display()))
                        .args(["bs=4M", "conv=fsync", "status=none"]),
                );
                let _ = std::fs::remove_file(&copy);
                let _ = std::fs::remove_file(&img);
                println!(
                    "disk: {label}: {gib} GiB image: vm create (clone + keys) median of 3: {:.0} ms; plain copy (dd bs=4M conv=fsync): {:.0} ms",
                    ms(median(creates)),
                    ms(cp)
                );
                env.ok(&["image", "rm", &name]);
            }
        }
    }
    let _ = Command::new("umount").arg(mnt.path()).status();
}

fn bench_run() {
    let mut env = Env::new();
    env.start();
    env.import_debian();
    let mut rows = Vec::new();
    for i in 0..3 {
        let name = format!("r{i}");
        let t0 = Instant::now();
        env.ok(&["vm", "create", &name, "--image", "debian-bookworm"]);
        let t1 = Instant::now();
        env.ok(&["vm", "start", &name]);
        let t2 = Instant::now();
        env.wait_ssh(&name);
        let t3 = Instant::now();
        rows.push((t1 - t0, t2 - t1, t3 - t2));
        env.ok(&["vm", "rm", "-f", &name]);
    }
    let m =
        |f: fn(&(Duration, Duration, Duration)) -> Duration| median(rows.iter().map(f).collect());
    let (create, start, boot) = (m(|r| r.0), m(|r| r.1), m(|r| r.2));
    let total = create + start + boot;
    println!(
        "run: vm create (address, disk clone, SSH keys) median of 3: {:.0} ms",
        ms(create)
    );
    println!(
        "run: vm start (tap, VMM launch, API calls, InstanceStart) median of 3: {:.0} ms",
        ms(start)
    );
    println!(
        "run: guest boot until SSH answers, median of 3: {:.0} ms",
        ms(boot)
    );
    println!(
        "run: banger's share of vm run to SSH-ready: {:.1} %",
        100.0 * (create + start).as_secs_f64() / total.as_secs_f64()
    );
}

fn bench_reconcile() {
    let g = guest();
    let mut env = Env::new();
    env.start();
    let mut booted = 0;
    let mut medians = Vec::new();
    for target in [0usize, 10, 30] {
        while booted < target {
            let disk = env.state().join(format!("r{booted}.ext4"));
            std::fs::copy(&g.rootfs, &disk).unwrap();
            env.ok(&[
                "vm",
                "create",
                &format!("r{booted}"),
                "--kernel",
                g.kernel.to_str().unwrap(),
                "--initrd",
                g.initrd.to_str().unwrap(),
                "--rootfs",
                disk.to_str().unwrap(),
                "--memory",
                "128",
                "--start",
            ]);
            booted += 1;
        }
        // Measure with the guests idle: 30 guests booting under TCG would saturate
        // both cores and measure their boot, not reconcile.
        for i in 0..booted {
            env.wait_console(&format!("r{i}"), "BANGER_READY");
        }
        let mut times = Vec::new();
        for _ in 0..5 {
            env.ok(&["daemon", "stop"]);
            let t = Instant::now();
            env.ok(&["daemon", "start"]);
            times.push(t.elapsed());
        }
        let running = env.json(&["daemon", "status"])["running"].as_u64().unwrap();
        assert_eq!(running as usize, target, "all VMs re-adopted");
        let m = median(times);
        medians.push(m);
        println!(
            "reconcile: daemon start to ready with {target} running VMs (median of 5): {:.1} ms",
            ms(m)
        );
    }
    println!(
        "reconcile: ratio 30 VMs / none: {:.2}",
        medians[2].as_secs_f64() / medians[0].as_secs_f64()
    );
    println!(
        "reconcile: per-VM cost: {:.2} ms",
        ms(medians[2].saturating_sub(medians[0])) / 30.0
    );
}

/// Creating 1,000 records through the CLI would time process start-up 1,000 times:
/// the bench seeds through banger's own client, the API the CLI uses.
mod banger_client_for_bench {
    use std::path::Path;

    pub struct C(banger_client::Client);

    pub fn client(sock: &Path) -> C {
        C(banger_client::Client::new(sock))
    }

    impl C {
        pub async fn create(&self, name: &str, kernel: &str) {
            let spec: banger_api::VmSpec =
                serde_json::from_value(serde_json::json!({ "name": name, "kernel": kernel }))
                    .unwrap();
            self.0
                .create(&spec)
                .await
                .unwrap_or_else(|e| panic!("seeding {name} failed: {e}"));
        }
    }
}

/// The same figures with the real Firecracker and the tiny guest.
mod fc {
    use std::time::{Duration, Instant};

    use banger_tests::{Env, firecracker, wait_for};

    use super::{median, ms};

    pub fn bench_start(runs: usize) {
        let fc = firecracker();
        let k = fc.tiny_guest.to_str().unwrap().to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Jailed: a root daemon runs Firecracker only through the jailer (VMMs never
        // run as root). Two floors: the same jailer, user and calls from one process
        // (the same work), and the bare binary (the least machinery of all).
        let mut env = Env::with_firecracker(true, None);
        env.start();
        let vmm_user = nix::unistd::User::from_name("banger-vmm")
            .unwrap()
            .expect("the banger-vmm user");
        let ids = (vmm_user.uid.as_raw(), vmm_user.gid.as_raw());
        let floor_base = tempfile::Builder::new()
            .prefix("bgfloor")
            .tempdir_in("/dev/shm")
            .unwrap();
        let (mut ours, mut jailed, mut bare) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            let name = format!("b{i}");
            let t = Instant::now();
            env.ok(&["vm", "create", &name, "--kernel", &k, "--memory", "128"]);
            env.ok(&["vm", "start", &name]);
            ours.push(t.elapsed());
            env.ok(&["vm", "rm", "--force", &name]);
            jailed.push(super::floor_jailed_once(
                &rt,
                &env.netns,
                &fc,
                floor_base.path(),
                ids,
            ));
            bare.push(super::floor_once(
                &rt,
                &env.netns,
                &super::FloorVm {
                    vmm: &fc.firecracker,
                    kernel: &fc.tiny_guest,
                    initrd: None,
                    rootfs: None,
                    memory_mib: 128,
                },
            ));
        }
        let (o, j, b) = (median(ours), median(jailed), median(bare));
        println!(
            "firecracker start: banger vm create + vm start, jailed (median of {runs}): {:.1} ms",
            ms(o)
        );
        println!(
            "firecracker start: floor, the same jailer, user and calls from one process: {:.1} ms",
            ms(j)
        );
        println!(
            "firecracker start: floor, the bare binary and the same calls from one process: {:.1} ms",
            ms(b)
        );
        println!(
            "firecracker start: ratio banger / jailed floor: {:.2}",
            o.as_secs_f64() / j.as_secs_f64()
        );
        println!(
            "firecracker start: ratio banger / bare floor: {:.2}",
            o.as_secs_f64() / b.as_secs_f64()
        );
    }

    fn rss_kib(pid: i32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    pub fn bench_reconcile() {
        let fc = firecracker();
        let k = fc.tiny_guest.to_str().unwrap().to_string();
        let mut env = Env::with_firecracker(true, None);
        env.start();
        let mut booted = 0;
        let (mut medians, mut rss) = (Vec::new(), Vec::new());
        let targets = [0usize, 10, 30, 100];
        for target in targets {
            while booted < target {
                env.ok(&[
                    "vm",
                    "create",
                    &format!("r{booted}"),
                    "--kernel",
                    &k,
                    "--memory",
                    "128",
                    "--start",
                ]);
                booted += 1;
            }
            let mut times = Vec::new();
            for _ in 0..5 {
                let pid = env.daemon_pid();
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                )
                .unwrap();
                wait_for(Duration::from_secs(10), "bangerd to exit", || {
                    !banger_tests::alive(pid)
                });
                let t = Instant::now();
                env.ok(&["daemon", "start"]);
                times.push(t.elapsed());
            }
            let running = env.json(&["daemon", "status"])["running"].as_u64().unwrap();
            assert_eq!(running as usize, target, "all VMs re-adopted");
            let m = median(times);
            medians.push(m);
            rss.push(rss_kib(env.daemon_pid()));
            println!(
                "firecracker reconcile: bangerd start to ready with {target} live VMs (median of 5): {:.1} ms; bangerd RSS {} KiB",
                ms(m),
                rss.last().unwrap()
            );
        }
        let last = targets.len() - 1;
        println!(
            "firecracker reconcile: ratio {} VMs / none: {:.2}",
            targets[last],
            medians[last].as_secs_f64() / medians[0].as_secs_f64()
        );
        println!(
            "firecracker memory: bangerd {:.1} KiB per live VM",
            (rss[last] as f64 - rss[0] as f64) / targets[last] as f64
        );
    }
}
