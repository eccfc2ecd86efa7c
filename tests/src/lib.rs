//! Test harness for end-to-end scenarios: real `bangerd-root`, `bangerd` and `banger`
//! processes on a temporary state directory, real guests booted by banger-vmm-qemu
//! from the assets `scripts/guest-assets` prepares.
//!
//! Binaries are taken from the cargo target directory this test binary lives in (or
//! `BANGER_BIN_DIR`); `scripts/test` builds them before running the tests.
//!
//! Tests stay on this machine's own networks: every [`Env`] has a network namespace
//! of its own ([`Netns`]), and its daemons, bridge, taps, nftables table, VMMs and
//! SSH live there, never in the host's namespace.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where the workspace's binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BANGER_BIN_DIR") {
        return d.into();
    }
    // target/<profile>/deps/<test-binary>, or target/<profile>/<bench-binary>
    let exe = std::env::current_exe().expect("current exe");
    let parent = exe.parent().expect("exe dir");
    let dir = if parent.join("banger").exists() {
        parent.to_path_buf()
    } else {
        parent.parent().expect("target dir").to_path_buf()
    };
    for b in ["banger", "bangerd", "bangerd-root", "banger-vmm-qemu"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the workspace first (scripts/test does: cargo build --workspace --bins)",
            dir.join(b).display()
        );
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The test guest: kernel, initrd and a small ext4 disk.
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
}

pub fn guest() -> Guest {
    let root = std::env::var_os("BANGER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache"))
        .join("guest");
    let g = Guest {
        kernel: root.join("vmlinuz"),
        initrd: root.join("initrd.img"),
        rootfs: root.join("rootfs.ext4"),
    };
    for p in [&g.kernel, &g.initrd, &g.rootfs] {
        assert!(
            p.exists(),
            "{} is missing: run scripts/guest-assets (scripts/test does)",
            p.display()
        );
    }
    g
}

/// A private banger installation: its own state directory, network namespace,
/// daemons, bridge, subnet and nftables table, so environments never collide and
/// never touch the host's network.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Where everything this environment runs lives: the CLI, the daemons it spawns,
    /// the helper started by hand, the VMMs, the bridge, taps and nftables table, and
    /// SSH to the guests. Deleted (with all of that) when the environment drops.
    pub netns: Netns,
    /// A relay to the Debian mirror for `image build` ([`Env::with_mirror`]).
    mirror: Option<MirrorRelay>,
    /// Extra arguments for bangerd-root (e.g. another --vmm).
    helper_args: Vec<String>,
    /// The helper's VMM settings as environment variables too (`BANGER_VMM`, ...): a
    /// helper that a CLI starts (after a fault, say) gets the same VMM as ours.
    helper_env: Vec<(&'static str, String)>,
    pub bridge: String,
    pub gateway: String,
    pub nft_table: String,
    /// Run banger from here instead of the build's target directory (update tests
    /// replace the binaries they run).
    pub bin_dir: Option<PathBuf>,
    /// Run `banger` (and so bangerd, which `daemon start` spawns) as this uid; the
    /// helper is then started by the test, as root.
    pub daemon_uid: Option<u32>,
    /// This environment's jail base (root's, on /dev/shm: another filesystem than
    /// the state directory's).
    pub jail_base: Option<tempfile::TempDir>,
}

/// The real Firecracker and jailer and the tiny guest (`scripts/firecracker-assets`).
pub struct Firecracker {
    pub firecracker: PathBuf,
    pub jailer: PathBuf,
    /// An ELF guest that prints `BANGER_TICK <n>` about five times a second.
    pub tiny_guest: PathBuf,
    /// The same guest, deaf to Ctrl-Alt-Del (it never stops gracefully).
    pub stubborn_guest: PathBuf,
}

pub fn firecracker() -> Firecracker {
    let root = std::env::var_os("BANGER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache"))
        .join("firecracker");
    let f = Firecracker {
        firecracker: root.join("bin/firecracker"),
        jailer: root.join("bin/jailer"),
        tiny_guest: root.join("tiny-guest"),
        stubborn_guest: root.join("tiny-guest-stubborn"),
    };
    for p in [&f.firecracker, &f.jailer, &f.tiny_guest, &f.stubborn_guest] {
        assert!(
            p.exists(),
            "{} is missing: run scripts/firecracker-assets (scripts/test does)",
            p.display()
        );
    }
    f
}

/// The system user VMMs of root daemons run as (scripts/install-deps creates it).
pub fn vmm_user() -> (u32, u32) {
    let u = nix::unistd::User::from_name("banger-vmm")
        .ok()
        .flatten()
        .expect(
            "the system user banger-vmm is missing: run scripts/install-deps (scripts/test does)",
        );
    (u.uid.as_raw(), u.gid.as_raw())
}

static NEXT_ENV: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Env {
    pub fn new() -> Self {
        // Short paths keep Unix socket paths far below the 108-byte limit.
        let dir = tempfile::Builder::new()
            .prefix("bg")
            .tempdir_in("/tmp")
            .expect("tempdir");
        Self::in_dir(dir)
    }

    /// An environment whose state lives in `dir` (e.g. on a btrfs mount).
    pub fn in_dir(dir: tempfile::TempDir) -> Self {
        let n = NEXT_ENV.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::process::id() % 1000;
        Self {
            dir,
            netns: Netns::new(),
            mirror: None,
            helper_args: Vec::new(),
            helper_env: Vec::new(),
            daemon_uid: None,
            jail_base: None,
            bridge: format!("btst{p}x{n}"),
            gateway: format!("10.{}.{}.1/24", 100 + p % 100, n % 250),
            nft_table: format!("banger_t{p}_{n}"),
            bin_dir: None,
        }
    }

    /// An environment with its own gateway/prefix (e.g. a tiny subnet).
    pub fn with_gateway(gateway: &str) -> Self {
        let mut e = Self::new();
        e.gateway = gateway.to_string();
        e
    }

    /// An environment whose `image build` reaches the Debian mirror: its namespace has
    /// no route out, so a relay in this process ([`MirrorRelay`]) listens on the
    /// namespace's loopback and the daemons get it as their `http_proxy`.
    pub fn with_mirror() -> Self {
        let mut e = Self::new();
        e.mirror = Some(MirrorRelay::new(&e.netns));
        e
    }

    /// An environment whose helper launches `vmm` instead of banger-vmm-qemu.
    pub fn with_vmm(vmm: &Path) -> Self {
        let mut e = Self::new();
        e.use_vmm(vmm);
        e
    }

    /// Makes this environment's helper launch `vmm` instead of banger-vmm-qemu.
    pub fn use_vmm(&mut self, vmm: &Path) {
        self.helper_args
            .extend(["--vmm".into(), vmm.display().to_string()]);
        self.helper_env
            .push(("BANGER_VMM", vmm.display().to_string()));
    }

    /// An environment whose helper launches the real Firecracker, directly or through
    /// the jailer, and whose daemon runs as `daemon_uid` (root when `None`).
    pub fn with_firecracker(jailed: bool, daemon_uid: Option<u32>) -> Self {
        let fc = firecracker();
        let mut e = Self::new();
        e.use_vmm(&fc.firecracker);
        if jailed {
            let base = tempfile::Builder::new()
                .prefix("bgjail")
                .tempdir_in("/dev/shm")
                .expect("jail base");
            std::fs::set_permissions(
                base.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o711),
            )
            .unwrap();
            e.helper_args.extend([
                "--jailer".into(),
                fc.jailer.display().to_string(),
                "--jail-base".into(),
                base.path().display().to_string(),
            ]);
            e.helper_env
                .push(("BANGER_JAILER", fc.jailer.display().to_string()));
            e.helper_env
                .push(("BANGER_JAIL_BASE", base.path().display().to_string()));
            e.jail_base = Some(base);
        }
        if let Some(uid) = daemon_uid {
            e.run_daemon_as(uid);
        }
        e
    }

    /// Makes this environment's daemon run as `uid` (its state directory that user's,
    /// the helper allowing it): the system-mode setup, where VMMs run as that user.
    pub fn run_daemon_as(&mut self, uid: u32) {
        std::os::unix::fs::chown(self.state(), Some(uid), Some(uid)).unwrap();
        self.helper_args
            .extend(["--allow-uid".into(), uid.to_string()]);
        self.daemon_uid = Some(uid);
    }

    /// A file for this environment's VMs, owned by the daemon's user.
    /// (A VMM of a root daemon runs as banger-vmm and, under Firecracker, opens its
    /// files itself: the copy is that user's, as the helper's error tells a user to do.)
    pub fn own_copy(&self, src: &Path, name: &str) -> PathBuf {
        let dst = self.state().join(name);
        std::fs::copy(src, &dst).expect("copy");
        let (uid, gid) = self.vmm_user();
        std::os::unix::fs::chown(&dst, Some(uid), Some(gid)).unwrap();
        dst
    }

    /// Whom this environment's VMMs run as: the daemon's user, or banger-vmm when the
    /// daemon is root (VMMs never run as root).
    pub fn vmm_user(&self) -> (u32, u32) {
        match self.daemon_uid {
            Some(uid) => (uid, uid),
            None => vmm_user(),
        }
    }

    pub fn state(&self) -> &Path {
        self.dir.path()
    }
    pub fn run_dir(&self) -> PathBuf {
        self.state().join("run")
    }

    /// `banger ARGS` against this environment, not yet run: in its network namespace,
    /// as `daemon_uid` if set. Do not add `CommandExt::uid` to it (the namespace is
    /// entered after std has dropped privileges, which then fails): use
    /// [`Env::cmd_as`].
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_as(self.daemon_uid, args)
    }

    /// `banger ARGS` against this environment in its network namespace, as `uid`
    /// (root when `None`), whatever `daemon_uid` is.
    pub fn cmd_as(&self, uid: Option<u32>, args: &[&str]) -> Command {
        let banger = match &self.bin_dir {
            Some(d) => d.join("banger"),
            None => bin("banger"),
        };
        let mut c = Command::new(banger);
        c.args(args)
            .env("BANGER_STATE_DIR", self.state())
            // Keys and known_hosts of the tests stay inside the environment.
            .env("XDG_CONFIG_HOME", self.state().join("config"))
            .env("HOME", self.state().join("home"));
        self.net_env(&mut c);
        self.netns.enter_as(&mut c, uid);
        c
    }

    /// This environment's network settings in `c`'s environment.
    fn net_env(&self, c: &mut Command) {
        c.env("BANGER_BRIDGE", &self.bridge)
            .env("BANGER_GATEWAY", &self.gateway)
            .env("BANGER_NFT_TABLE", &self.nft_table);
        for (k, v) in &self.helper_env {
            c.env(k, v);
        }
        if let Some(m) = &self.mirror {
            c.env("http_proxy", format!("http://127.0.0.1:{}", m.port));
        }
    }

    /// Runs `banger ARGS` against this environment.
    pub fn banger(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run banger")
    }

    /// Runs `banger ARGS`, requiring success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.banger(args);
        assert!(
            out.status.success(),
            "banger {args:?} failed ({}):\nstdout: {}\nstderr: {}\n--- bangerd log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.state().join("bangerd.log")).unwrap_or_default()
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    /// `banger --json ARGS`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("json output")
    }

    /// Starts both daemons. With extra helper args, the helper is started by hand
    /// first (daemon start then only starts bangerd).
    pub fn start(&mut self) {
        self.start_with_fault(None);
    }

    /// Starts whichever daemon is not running (after a crash or `daemon stop`).
    pub fn restart(&self) {
        self.start_with_fault(None);
    }

    /// [`Env::start`], with `BANGER_FAULT=<point>` in both daemons' environments: the
    /// daemon that reaches that point SIGKILLs itself (banger_helper::fault_point).
    pub fn start_with_fault(&self, fault: Option<&str>) {
        if !self.helper_args.is_empty() {
            let mut c = self.helper_cmd();
            if let Some(f) = fault {
                c.env("BANGER_FAULT", f);
            }
            detach(&mut c);
            c.spawn().expect("spawn helper");
            wait_for(Duration::from_secs(10), "helper socket", || {
                std::os::unix::net::UnixStream::connect(self.run_dir().join("root.sock")).is_ok()
            });
        }
        let mut c = self.cmd(&["daemon", "start"]);
        if let Some(f) = fault {
            c.env("BANGER_FAULT", f);
        }
        let out = c.output().expect("run banger");
        assert!(
            out.status.success(),
            "daemon start failed ({}): {}\n--- helper log ---\n{}\n--- daemon log ---\n{}",
            out.status,
            stderr(&out),
            std::fs::read_to_string(self.state().join("bangerd-root.log")).unwrap_or_default(),
            std::fs::read_to_string(self.state().join("bangerd.log")).unwrap_or_default(),
        );
    }

    /// This environment's root helper, not yet run: its arguments, network and log
    /// (`bangerd-root.log` in the state directory). `start` runs it detached.
    pub fn helper_cmd(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state().join("bangerd-root.log"))
            .expect("log");
        let mut c = Command::new(bin("bangerd-root"));
        c.arg("--state-dir")
            .arg(self.state())
            .args(&self.helper_args);
        self.net_env(&mut c);
        self.netns.enter(&mut c);
        c.stdout(log.try_clone().expect("log")).stderr(log);
        c
    }

    /// Creates and starts a VM from the test guest, with its own copy of the disk
    /// (QEMU locks an image it writes; per-VM clones are the images issue's job).
    pub fn boot(&self, name: &str) -> Value {
        let g = guest();
        let disk = self.state().join(format!("{name}.ext4"));
        std::fs::copy(&g.rootfs, &disk).expect("copy the test disk");
        self.json(&[
            "vm",
            "create",
            name,
            "--kernel",
            g.kernel.to_str().unwrap(),
            "--initrd",
            g.initrd.to_str().unwrap(),
            "--rootfs",
            disk.to_str().unwrap(),
            "--memory",
            "256",
            "--start",
        ])
    }

    /// The VM's console, via `banger vm logs`.
    pub fn console(&self, name: &str) -> String {
        self.ok(&["vm", "logs", name])
    }

    /// Waits until the console shows `marker`; returns the console.
    pub fn wait_console(&self, name: &str, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let c = self.console(name);
            if c.contains(marker) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "{marker} never appeared on {name}'s console:\n{c}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The boot ids the guest printed, in order.
    pub fn boot_ids(&self, name: &str) -> Vec<String> {
        self.console(name)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("BANGER_BOOT_ID=").map(String::from))
            .collect()
    }

    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.json(&["vm", "show", name])["pid"]
            .as_i64()
            .map(|p| p as i32)
    }

    pub fn daemon_pid(&self) -> i32 {
        std::fs::read_to_string(self.run_dir().join("bangerd.lock"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn helper_pid(&self) -> i32 {
        std::fs::read_to_string(self.run_dir().join("bangerd-root.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Every process whose command line mentions this environment's directory.
    pub fn processes(&self) -> Vec<(i32, String)> {
        let needle = self.state().to_str().unwrap().to_string();
        let me = std::process::id() as i32;
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            // Zombies have an empty cmdline and are not running.
            if cmd.contains(&needle) {
                out.push((pid, cmd));
            }
        }
        out
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Kill whatever this environment started, VMs included, so a failed test
        // does not leave guests running.
        for (pid, _) in self.processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(base) = &self.jail_base {
            for pid in jailed_processes(base.path()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            for m in mounts_under(base.path()) {
                let _ = nix::mount::umount2(m.as_path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // The bridge, the taps (persistent ones too) and the nftables table go with
        // the network namespace when `self.netns` drops.
    }
}

static NEXT_NETNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A network namespace of the test's own (`ip netns add bgt<pid>x<n>`, loopback up),
/// so that bridges, taps, nftables tables and guests never reach the host's
/// namespace. Dropping it kills what still runs in it and deletes it, and with it
/// every device and table made there. While debugging: `ip netns exec NAME ...`.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let n = NEXT_NETNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("bgt{}x{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            stderr(&out)
        );
        let ns = Netns { name };
        let out = ns
            .cmd("ip")
            .args(["link", "set", "lo", "up"])
            .output()
            .expect("run ip link set lo up");
        assert!(
            out.status.success(),
            "lo up in {}: {}",
            ns.name,
            stderr(&out)
        );
        ns
    }

    /// `/run/netns/NAME`, what `ip netns` and `nsenter --net=` take.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn file(&self) -> std::fs::File {
        std::fs::File::open(self.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()))
    }

    /// Makes `c` run in this namespace (setns between fork and exec: the pid is the
    /// program's own).
    pub fn enter<'c>(&self, c: &'c mut Command) -> &'c mut Command {
        self.enter_as(c, None)
    }

    /// Makes `c` run in this namespace as `uid` (gid `uid`, no supplementary groups)
    /// if set: the namespace is entered first, as root, then privileges are dropped.
    pub fn enter_as<'c>(&self, c: &'c mut Command, uid: Option<u32>) -> &'c mut Command {
        use std::os::unix::process::CommandExt;
        let ns = self.file();
        // SAFETY: setns, setgroups, setgid and setuid are plain system calls, safe
        // between fork and exec; nothing is allocated.
        unsafe {
            c.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                if let Some(uid) = uid {
                    nix::unistd::setgroups(&[])?;
                    nix::unistd::setgid(nix::unistd::Gid::from_raw(uid))?;
                    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
                }
                Ok(())
            })
        }
    }

    /// `prog` in this namespace, not yet run.
    pub fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(prog);
        self.enter(&mut c);
        c
    }

    /// `prog` in this namespace as `uid`, not yet run.
    pub fn cmd_as(&self, prog: impl AsRef<std::ffi::OsStr>, uid: u32) -> Command {
        let mut c = Command::new(prog);
        self.enter_as(&mut c, Some(uid));
        c
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it makes (a
    /// listener on the bridge address, a server on loopback) live there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = self.file();
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Whether the link `name` exists in this namespace.
    pub fn link_exists(&self, name: &str) -> bool {
        self.cmd("ip")
            .args(["link", "show", "dev", name])
            .output()
            .expect("run ip")
            .status
            .success()
    }

    /// Whether the nftables table `inet TABLE` exists in this namespace.
    pub fn nft_table_exists(&self, table: &str) -> bool {
        self.cmd("nft")
            .args(["list", "table", "inet", table])
            .output()
            .expect("run nft")
            .status
            .success()
    }

    /// The processes whose network namespace this is.
    pub fn pids(&self) -> Vec<i32> {
        use std::os::unix::fs::MetadataExt;
        let Ok(want) = std::fs::metadata(self.path()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if std::fs::metadata(e.path().join("ns/net"))
                .is_ok_and(|m| (m.dev(), m.ino()) == (want.dev(), want.ino()))
            {
                out.push(pid);
            }
        }
        out
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs here would keep the namespace (and its devices) alive
        // after `ip netns del`.
        let me = std::process::id() as i32;
        for pid in self.pids().into_iter().filter(|p| *p != me) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A TCP relay from a namespace's loopback to the Debian mirror (`BANGER_MIRROR`'s
/// host, else deb.debian.org:80), for `image build`: the namespace has no route out,
/// and this process, still in the host's namespace, makes the outgoing connections.
/// Only this one destination is reachable through it. debootstrap's wget takes it
/// as `http_proxy` and sends absolute-form requests, which the mirror accepts.
pub struct MirrorRelay {
    pub port: u16,
    listener: std::net::TcpListener,
}

impl MirrorRelay {
    pub fn new(ns: &Netns) -> Self {
        let listener = ns
            .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .expect("relay listener");
        let port = listener.local_addr().unwrap().port();
        let mirror = std::env::var("BANGER_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
        let host = mirror
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let target = if host.contains(':') {
            host
        } else {
            format!("{host}:80")
        };
        let l = listener.try_clone().expect("clone listener");
        std::thread::spawn(move || {
            // Ends when the relay drops (shutdown makes accept fail).
            for inner in l.incoming() {
                let Ok(inner) = inner else { break };
                let target = target.clone();
                std::thread::spawn(move || {
                    let Ok(outer) = std::net::TcpStream::connect(&target) else {
                        return;
                    };
                    let (mut i2, mut o2) = (inner.try_clone().unwrap(), outer.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut i2, &mut o2);
                        let _ = o2.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut inner, mut outer) = (inner, outer);
                    let _ = std::io::copy(&mut outer, &mut inner);
                    let _ = inner.shutdown(std::net::Shutdown::Both);
                    let _ = up.join();
                });
            }
        });
        MirrorRelay { port, listener }
    }
}

impl Drop for MirrorRelay {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

/// Processes chrooted beneath `base` (jailed VMMs: their command line names only
/// paths inside the jail, but `/proc/PID/root` shows where the jail is).
pub fn jailed_processes(base: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_link(e.path().join("root")).is_ok_and(|r| r.starts_with(base))
            && alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// Mount points at or beneath `base`, from this process's mountinfo.
pub fn mounts_under(base: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|m| m.starts_with(base))
        .collect()
}

fn detach(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
}

/// Polls `cond` until it holds, failing the test with `what` after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The Debian image the guest tests share, built once per machine with
/// `banger image build` (through a throwaway environment) and cached in
/// `.cache/test-image/` keyed by the image builder's source, so an image built by an
/// older builder is never reused. Returns (vmlinuz, initrd.img, rootfs.ext4).
pub fn debian_image() -> (PathBuf, PathBuf, PathBuf) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = std::env::var_os("BANGER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache"))
        .join("test-image");
    let stamp = format!("{:x}", {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        include_str!("../../crates/bangerd-root/src/image.rs").hash(&mut h);
        h.finish()
    });
    let files = (
        root.join("vmlinuz"),
        root.join("initrd.img"),
        root.join("rootfs.ext4"),
    );
    if std::fs::read_to_string(root.join("stamp")).is_ok_and(|s| s == stamp) {
        return files;
    }
    let _ = std::fs::remove_dir_all(&root);
    let mut env = Env::with_mirror();
    env.start();
    let img = env.json(&["image", "build", "debian", "--quiet"]);
    assert_eq!(img["name"], "debian-bookworm");
    let tmp = root.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    for (key, name) in [
        ("kernel", "vmlinuz"),
        ("initrd", "initrd.img"),
        ("rootfs", "rootfs.ext4"),
    ] {
        let src = PathBuf::from(img[key].as_str().unwrap());
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(&src)
            .arg(tmp.join(name))
            .status()
            .unwrap();
        assert!(st.success());
    }
    std::fs::write(tmp.join("stamp"), &stamp).unwrap();
    std::fs::rename(&tmp, &root).unwrap();
    files
}

impl Env {
    /// Imports the shared Debian image as `debian-bookworm`.
    pub fn import_debian(&self) {
        let (k, i, r) = debian_image();
        self.ok(&[
            "image",
            "import",
            "--name",
            "debian-bookworm",
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            i.to_str().unwrap(),
            "--rootfs",
            r.to_str().unwrap(),
        ]);
    }

    /// Waits until `vm ssh NAME -- true` succeeds.
    pub fn wait_ssh(&self, name: &str) {
        wait_for(Duration::from_secs(240), &format!("SSH on {name}"), || {
            self.banger(&["vm", "ssh", name, "--", "true"])
                .status
                .success()
        });
    }

    /// `vm ssh NAME -- CMD`, requiring success; returns stdout trimmed.
    pub fn ssh(&self, name: &str, cmd: &str) -> String {
        self.ok(&["vm", "ssh", name, "--", cmd]).trim().to_string()
    }
}

/// Signed releases made with `scripts/release` and openssl keys, served by
/// `python3 -m http.server` on the loopback of a test's network namespace (where the
/// `banger update` under test runs): `latest` and `v9.1.0` (9.1.0), `v9.0.0`.
pub struct Releases {
    pub dir: tempfile::TempDir,
    server: std::process::Child,
    pub port: u16,
}

impl Drop for Releases {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl {args:?}");
}

/// The same tree built with BANGER_VERSION=9.1.0 (scripts/test makes it).
pub fn next_bin_dir() -> PathBuf {
    let d = bin_dir().parent().expect("target dir").join("next-bin");
    assert!(
        d.join("bangerd").exists(),
        "{} is missing: scripts/test builds it (BANGER_VERSION=9.1.0)",
        d.display()
    );
    d
}

/// `scripts/release` of the built binaries as `root/name`; version 9.1.0 uses the
/// 9.1.0 build, so the installed binaries really change and report it.
pub fn release(root: &Path, name: &str, version: &str, key: &str, extra: &[&str]) -> PathBuf {
    let out = root.join(name);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/release");
    let st = Command::new(script)
        .args(["--version", version, "--key", key, "--out"])
        .arg(&out)
        .arg("--bin-dir")
        .arg(if version == "9.1.0" {
            next_bin_dir()
        } else {
            bin_dir()
        })
        .args(extra)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    out
}

impl Releases {
    /// Releases served in `netns` (e.g. `&env.netns`), reachable at [`Releases::url`]
    /// from what runs there.
    pub fn new(netns: &Netns) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "key.pem",
            ],
        );
        openssl(d, &["ec", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "other.pem",
            ],
        );
        let key = d.join("key.pem");
        let k = key.to_str().unwrap();
        release(d, "latest", "9.1.0", k, &[]);
        release(d, "v9.1.0", "9.1.0", k, &[]);
        release(d, "v9.0.0", "9.0.0", k, &[]);
        let mut server = netns
            .cmd("python3")
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
            .current_dir(d)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        Releases { dir, server, port }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}/manifest.json", self.port)
    }

    /// A copy of the good release with `tamper` applied, served as `name`.
    pub fn variant(&self, name: &str, tamper: impl FnOnce(&Path)) -> String {
        let dst = self.dir.path().join(name);
        let st = Command::new("cp")
            .arg("-r")
            .arg(self.dir.path().join("latest"))
            .arg(&dst)
            .status()
            .unwrap();
        assert!(st.success());
        tamper(&dst);
        self.url(name)
    }

    /// Release `bad` (9.5.0): this tree's binaries, except a `bangerd` that passes
    /// `--check-migrations` (by running `real_bangerd`) and exits 1 as a daemon.
    pub fn failing_daemon_release(&self, real_bangerd: &str) -> String {
        let bad_bins = self.dir.path().join("bad-bins");
        std::fs::create_dir_all(&bad_bins).unwrap();
        for b in ["banger", "bangerd", "bangerd-root", "banger-vmm-qemu"] {
            std::fs::copy(bin(b), bad_bins.join(b)).unwrap();
        }
        std::fs::write(bad_bins.join("bangerd"), format!(
            "#!/bin/sh\nfor a; do [ \"$a\" = --check-migrations ] && exec {real_bangerd} \"$@\"; done\necho 'bangerd: simulated startup failure' >&2\nexit 1\n"
        )).unwrap();
        std::fs::set_permissions(
            bad_bins.join("bangerd"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let key = self.dir.path().join("key.pem");
        let st = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/release"))
            .args([
                "--version",
                "9.5.0",
                "--key",
                key.to_str().unwrap(),
                "--out",
            ])
            .arg(self.dir.path().join("bad"))
            .arg("--bin-dir")
            .arg(&bad_bins)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        self.url("bad")
    }

    pub fn resign(&self, rel: &Path, key: &str) {
        openssl(
            rel,
            &[
                "dgst",
                "-sha256",
                "-sign",
                &self.dir.path().join(key).display().to_string(),
                "-out",
                "s.der",
                "SHA256SUMS",
            ],
        );
        openssl(
            rel,
            &["base64", "-A", "-in", "s.der", "-out", "SHA256SUMS.sig"],
        );
    }
}
