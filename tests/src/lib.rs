//! Test harness for end-to-end scenarios: real `bangerd-root`, `bangerd` and `banger`
//! processes on a temporary state directory, real guests booted by banger-vmm-qemu
//! from the assets `scripts/guest-assets` prepares.
//!
//! Binaries are taken from the cargo target directory this test binary lives in (or
//! `BANGER_BIN_DIR`); `scripts/test` builds them before running the tests.

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
        assert!(p.exists(), "{} is missing: run scripts/guest-assets (scripts/test does)", p.display());
    }
    g
}

/// A private banger installation: its own state directory, daemons, bridge, subnet
/// and nftables table, so environments never collide.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Extra arguments for bangerd-root (e.g. another --vmm).
    helper_args: Vec<String>,
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
        assert!(p.exists(), "{} is missing: run scripts/firecracker-assets (scripts/test does)", p.display());
    }
    f
}

static NEXT_ENV: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Env {
    pub fn new() -> Self {
        // Short paths keep Unix socket paths far below the 108-byte limit.
        let dir = tempfile::Builder::new().prefix("bg").tempdir_in("/tmp").expect("tempdir");
        Self::in_dir(dir)
    }

    /// An environment whose state lives in `dir` (e.g. on a btrfs mount).
    pub fn in_dir(dir: tempfile::TempDir) -> Self {
        let n = NEXT_ENV.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::process::id() % 1000;
        Self {
            dir,
            helper_args: Vec::new(),
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

    /// An environment whose helper launches `vmm` instead of banger-vmm-qemu.
    pub fn with_vmm(vmm: &Path) -> Self {
        let mut e = Self::new();
        e.helper_args = vec!["--vmm".into(), vmm.display().to_string()];
        e
    }

    /// An environment whose helper launches the real Firecracker, directly or through
    /// the jailer, and whose daemon runs as `daemon_uid` (root when `None`).
    pub fn with_firecracker(jailed: bool, daemon_uid: Option<u32>) -> Self {
        let fc = firecracker();
        let mut e = Self::new();
        e.helper_args = vec!["--vmm".into(), fc.firecracker.display().to_string()];
        if jailed {
            let base = tempfile::Builder::new().prefix("bgjail").tempdir_in("/dev/shm").expect("jail base");
            std::fs::set_permissions(base.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
            e.helper_args.extend([
                "--jailer".into(),
                fc.jailer.display().to_string(),
                "--jail-base".into(),
                base.path().display().to_string(),
            ]);
            e.jail_base = Some(base);
        }
        if let Some(uid) = daemon_uid {
            std::os::unix::fs::chown(e.state(), Some(uid), Some(uid)).unwrap();
            e.helper_args.extend(["--allow-uid".into(), uid.to_string()]);
            e.daemon_uid = Some(uid);
        }
        e
    }

    /// A file for this environment's VMs, owned by the daemon's user.
    pub fn own_copy(&self, src: &Path, name: &str) -> PathBuf {
        let dst = self.state().join(name);
        std::fs::copy(src, &dst).expect("copy");
        if let Some(uid) = self.daemon_uid {
            std::os::unix::fs::chown(&dst, Some(uid), Some(uid)).unwrap();
        }
        dst
    }

    pub fn state(&self) -> &Path {
        self.dir.path()
    }
    pub fn run_dir(&self) -> PathBuf {
        self.state().join("run")
    }

    /// `banger ARGS` against this environment, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let banger = match &self.bin_dir {
            Some(d) => d.join("banger"),
            None => bin("banger"),
        };
        let mut c = Command::new(banger);
        c.args(args)
            .env("BANGER_STATE_DIR", self.state())
            .env("BANGER_BRIDGE", &self.bridge)
            .env("BANGER_GATEWAY", &self.gateway)
            .env("BANGER_NFT_TABLE", &self.nft_table)
            // Keys and known_hosts of the tests stay inside the environment.
            .env("XDG_CONFIG_HOME", self.state().join("config"))
            .env("HOME", self.state().join("home"));
        if let Some(uid) = self.daemon_uid {
            use std::os::unix::process::CommandExt;
            c.uid(uid).gid(uid);
        }
        c
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
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.state().join("bangerd-root.log"))
                .expect("log");
            let mut c = Command::new(bin("bangerd-root"));
            c.arg("--state-dir").arg(self.state()).args(&self.helper_args);
            c.env("BANGER_BRIDGE", &self.bridge).env("BANGER_GATEWAY", &self.gateway).env("BANGER_NFT_TABLE", &self.nft_table);
            if let Some(f) = fault {
                c.env("BANGER_FAULT", f);
            }
            c.stdout(log.try_clone().expect("log")).stderr(log);
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
        assert!(out.status.success(), "daemon start failed: {}", stderr(&out));
    }

    /// Creates and starts a VM from the test guest, with its own copy of the disk
    /// (QEMU locks an image it writes; per-VM clones are the images issue's job).
    pub fn boot(&self, name: &str) -> Value {
        let g = guest();
        let disk = self.state().join(format!("{name}.ext4"));
        std::fs::copy(&g.rootfs, &disk).expect("copy the test disk");
        self.json(&[
            "vm", "create", name,
            "--kernel", g.kernel.to_str().unwrap(),
            "--initrd", g.initrd.to_str().unwrap(),
            "--rootfs", disk.to_str().unwrap(),
            "--memory", "256",
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
            assert!(Instant::now() < deadline, "{marker} never appeared on {name}'s console:\n{c}");
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
        self.json(&["vm", "show", name])["pid"].as_i64().map(|p| p as i32)
    }

    pub fn daemon_pid(&self) -> i32 {
        std::fs::read_to_string(self.run_dir().join("bangerd.lock")).unwrap().trim().parse().unwrap()
    }

    pub fn helper_pid(&self) -> i32 {
        std::fs::read_to_string(self.run_dir().join("bangerd-root.pid")).unwrap().trim().parse().unwrap()
    }

    /// Every process whose command line mentions this environment's directory.
    pub fn processes(&self) -> Vec<(i32, String)> {
        let needle = self.state().to_str().unwrap().to_string();
        let me = std::process::id() as i32;
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if pid == me {
                continue;
            }
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
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
        // Remove this environment's bridge and nftables table (the helper may be gone).
        let _ = banger_helper::HelperClient::new(self.run_dir().join("root.sock"))
            .call(&banger_helper::Request::TeardownNetwork {});
        let _ = Command::new("nft").args(["delete", "table", "inet", &self.nft_table]).output();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        // Persistent taps outlive their VMMs; remove those of this environment's VMs.
        for sub in ["vms", "run/vms"] {
            for e in std::fs::read_dir(self.state().join(sub)).into_iter().flatten().flatten() {
                let tap = format!("bg{}", e.file_name().to_string_lossy());
                if tap.len() == 14 {
                    let _ = Command::new("ip").args(["link", "del", &tap]).output();
                }
            }
        }
        // Kill whatever this environment started, VMs included, so a failed test
        // does not leave guests running.
        for (pid, _) in self.processes() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(base) = &self.jail_base {
            for pid in jailed_processes(base.path()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            for m in mounts_under(base.path()) {
                let _ = nix::mount::umount2(m.as_path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// Processes chrooted beneath `base` (jailed VMMs: their command line names only
/// paths inside the jail, but `/proc/PID/root` shows where the jail is).
pub fn jailed_processes(base: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if std::fs::read_link(e.path().join("root")).is_ok_and(|r| r.starts_with(base)) && alive(pid) {
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
        c.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
}

/// Polls `cond` until it holds, failing the test with `what` after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')),
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
    let files = (root.join("vmlinuz"), root.join("initrd.img"), root.join("rootfs.ext4"));
    if std::fs::read_to_string(root.join("stamp")).is_ok_and(|s| s == stamp) {
        return files;
    }
    let _ = std::fs::remove_dir_all(&root);
    let mut env = Env::new();
    env.start();
    let img = env.json(&["image", "build", "debian", "--quiet"]);
    assert_eq!(img["name"], "debian-bookworm");
    let tmp = root.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    for (key, name) in [("kernel", "vmlinuz"), ("initrd", "initrd.img"), ("rootfs", "rootfs.ext4")] {
        let src = PathBuf::from(img[key].as_str().unwrap());
        let st = Command::new("cp").arg("--sparse=always").arg(&src).arg(tmp.join(name)).status().unwrap();
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
            "image", "import", "--name", "debian-bookworm",
            "--kernel", k.to_str().unwrap(), "--initrd", i.to_str().unwrap(), "--rootfs", r.to_str().unwrap(),
        ]);
    }

    /// Waits until `vm ssh NAME -- true` succeeds.
    pub fn wait_ssh(&self, name: &str) {
        wait_for(Duration::from_secs(240), &format!("SSH on {name}"), || {
            self.banger(&["vm", "ssh", name, "--", "true"]).status.success()
        });
    }

    /// `vm ssh NAME -- CMD`, requiring success; returns stdout trimmed.
    pub fn ssh(&self, name: &str, cmd: &str) -> String {
        self.ok(&["vm", "ssh", name, "--", cmd]).trim().to_string()
    }
}

/// Signed releases made with `scripts/release` and openssl keys, served by
/// `python3 -m http.server` on loopback: `latest` and `v9.1.0` (9.1.0), `v9.0.0`.
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
    let st = Command::new("openssl").args(args).current_dir(dir).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().unwrap();
    assert!(st.success(), "openssl {args:?}");
}

/// The same tree built with BANGER_VERSION=9.1.0 (scripts/test makes it).
pub fn next_bin_dir() -> PathBuf {
    let d = bin_dir().parent().expect("target dir").join("next-bin");
    assert!(d.join("bangerd").exists(), "{} is missing: scripts/test builds it (BANGER_VERSION=9.1.0)", d.display());
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
        .arg(if version == "9.1.0" { next_bin_dir() } else { bin_dir() })
        .args(extra)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    out
}

impl Releases {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "key.pem"]);
        openssl(d, &["ec", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
        openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "other.pem"]);
        let key = d.join("key.pem");
        let k = key.to_str().unwrap();
        release(d, "latest", "9.1.0", k, &[]);
        release(d, "v9.1.0", "9.1.0", k, &[]);
        release(d, "v9.0.0", "9.0.0", k, &[]);
        let mut server = Command::new("python3")
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
            .current_dir(d)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line.split_whitespace().skip_while(|w| *w != "port").nth(1).unwrap().parse().unwrap();
        Releases { dir, server, port }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}/manifest.json", self.port)
    }

    /// A copy of the good release with `tamper` applied, served as `name`.
    pub fn variant(&self, name: &str, tamper: impl FnOnce(&Path)) -> String {
        let dst = self.dir.path().join(name);
        let st = Command::new("cp").arg("-r").arg(self.dir.path().join("latest")).arg(&dst).status().unwrap();
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
        std::fs::set_permissions(bad_bins.join("bangerd"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let key = self.dir.path().join("key.pem");
        let st = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/release"))
            .args(["--version", "9.5.0", "--key", key.to_str().unwrap(), "--out"])
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
        openssl(rel, &["dgst", "-sha256", "-sign", &self.dir.path().join(key).display().to_string(), "-out", "s.der", "SHA256SUMS"]);
        openssl(rel, &["base64", "-A", "-in", "s.der", "-out", "SHA256SUMS.sig"]);
    }
}

