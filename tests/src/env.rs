//! [`Env`]: a private banger installation per test.

use std::path::{Path, PathBuf};

use std::process::{Command, Output};

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::*;

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
