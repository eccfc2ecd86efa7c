//! The helper's operations. Each is linear, idempotent where it can be, and checks its
//! arguments before touching anything.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use banger_fc::launch::{JailerConfig, LaunchConfig};
use banger_fc::pid;
use banger_helper::{
    ArgError, Dirs, Failure, FailureKind, Launched, Reply, Request, Response, VmId, VmmSignal,
};
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

#[derive(Debug, Clone)]
pub struct Helper {
    dirs: Dirs,
    vmm: PathBuf,
    vmm_name: String,
    jailer: Option<PathBuf>,
    network: banger_helper::NetworkConfig,
    mirror: String,
}

fn bad(e: ArgError) -> Failure {
    Failure { kind: FailureKind::BadArgument, message: e.to_string() }
}

fn failed(msg: impl Into<String>) -> Failure {
    Failure { kind: FailureKind::Failed, message: msg.into() }
}

fn io_failed(what: impl std::fmt::Display, e: io::Error) -> Failure {
    failed(format!("{what}: {e}"))
}

impl Helper {
    pub fn new(
        dirs: Dirs,
        vmm: PathBuf,
        jailer: Option<PathBuf>,
        network: banger_helper::NetworkConfig,
        mirror: String,
    ) -> anyhow::Result<Self> {
        let vmm_name = vmm
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow::anyhow!("VMM path {} has no file name", vmm.display()))?
            .to_string();
        Ok(Self { dirs, vmm, vmm_name, jailer, network, mirror })
    }

    pub fn vmm(&self) -> &Path {
        &self.vmm
    }

    /// Runs one request for a caller already authenticated as `caller` (uid, gid):
    /// files and directories it creates, and the VMM itself, belong to that user.
    pub fn handle(&self, caller: Caller, req: &Request) -> Response {
        match req {
            Request::Ping {} => Ok(Reply::Pong {
                version: option_env!("BANGER_VERSION").unwrap_or(env!("CARGO_PKG_VERSION")).into(),
                vmm: self.vmm_name.clone(),
                network: self.network.clone(),
            }),
            Request::BuildImage { build_id, release, packages } => {
                self.build_image(build_id, release, packages, caller)
            }
            Request::SetupNetwork {} => {
                self.net().setup().map_err(|e| failed(e.to_string()))?;
                Ok(Reply::Done)
            }
            Request::TeardownNetwork {} => {
                self.net().teardown().map_err(|e| failed(e.to_string()))?;
                Ok(Reply::Done)
            }
            Request::CreateTap { vm_id, guest_ip } => {
                self.check_guest_ip(*guest_ip)?;
                self.net()
                    .create_tap(vm_id, *guest_ip, caller.uid, caller.gid)
                    .map_err(|e| failed(e.to_string()))?;
                Ok(Reply::Done)
            }
            Request::DeleteTap { vm_id } => {
                self.net().delete_tap(vm_id).map_err(|e| failed(e.to_string()))?;
                Ok(Reply::Done)
            }
            Request::CreateVmDirs { vm_id } => self.create_vm_dirs(vm_id, caller),
            Request::LaunchVmm { vm_id, api_sock, console_log, vmm_log } => {
                self.launch(vm_id, api_sock, console_log, vmm_log, caller)
            }
            Request::SignalVmm { vm_id, pid, start_time, signal } => {
                self.signal(vm_id, *pid, *start_time, *signal)
            }
            Request::RemoveVmRuntime { vm_id } => {
                remove_dir(&self.dirs.vm_run_dir(vm_id))?;
                remove_dir(&self.dirs.jail_base().join(&self.vmm_name).join(vm_id.as_str()))?;
                Ok(Reply::Done)
            }
            Request::RemoveVmState { vm_id } => {
                remove_dir(&self.dirs.vm_state_dir(vm_id))?;
                Ok(Reply::Done)
            }
        }
    }

    fn net(&self) -> crate::net::Net {
        crate::net::Net { cfg: self.network.clone() }
    }

    /// A guest address must be a host address of the subnet, not the gateway.
    fn check_guest_ip(&self, ip: std::net::Ipv4Addr) -> Result<(), Failure> {
        let n = &self.network;
        let mask = u32::MAX.checked_shl(32 - n.prefix_len as u32).unwrap_or(0);
        let (net, host) = (u32::from(ip) & mask, u32::from(ip) & !mask);
        let ok = net == u32::from(n.gateway) & mask && host != 0 && host != !mask && ip != n.gateway;
        if ok {
            Ok(())
        } else {
            Err(bad(ArgError::Address { ip, network: format!("{}/{}", n.gateway, n.prefix_len) }))
        }
    }

    fn build_image(
        &self,
        id: &VmId,
        release: &banger_helper::Release,
        packages: &[banger_helper::PackageName],
        caller: Caller,
    ) -> Response {
        let dir = self.dirs.image_build(id);
        if dir.exists() {
            return Err(failed(format!("build {id} already exists")));
        }
        fs::create_dir_all(&dir).map_err(|e| io_failed(format!("cannot create {}", dir.display()), e))?;
        chown(&self.dirs.images(), caller)?;
        let build = crate::image::Build { dir: &dir, release, packages, mirror: &self.mirror };
        if let Err(e) = build.run_all() {
            let _ = fs::remove_dir_all(&dir);
            return Err(failed(e.to_string()));
        }
        for e in fs::read_dir(&dir).map_err(|e| io_failed("cannot list the build", e))?.flatten() {
            chown(&e.path(), caller)?;
        }
        chown(&dir, caller)?;
        Ok(Reply::ImageBuilt { dir })
    }

    fn create_vm_dirs(&self, id: &VmId, caller: Caller) -> Response {
        for d in [self.dirs.vm_run_dir(id), self.dirs.vm_state_dir(id)] {
            fs::create_dir_all(&d).map_err(|e| io_failed(format!("cannot create {}", d.display()), e))?;
            chown(&d, caller)?;
        }
        Ok(Reply::Done)
    }

    fn launch(
        &self,
        id: &VmId,
        api_sock: &Path,
        console: &Path,
        vmm_log: &Path,
        caller: Caller,
    ) -> Response {
        // 1. Every path must be in this VM's own directories.
        let run_dir = self.dirs.vm_run_dir(id);
        let state_dir = self.dirs.vm_state_dir(id);
        let api_sock = Dirs::confine(api_sock, &run_dir).map_err(bad)?;
        let console = Dirs::confine(console, &state_dir).map_err(bad)?;
        let vmm_log = Dirs::confine(vmm_log, &state_dir).map_err(bad)?;

        // 2. A live VMM on this socket means a double start; a dead one left its file.
        if fs::symlink_metadata(&api_sock).is_ok() {
            if let Ok(p) = pid::find_pid(&api_sock, &self.vmm_name) {
                return Err(failed(format!(
                    "a VMM (pid {p}) is already serving {}",
                    api_sock.display()
                )));
            }
            fs::remove_file(&api_sock)
                .map_err(|e| io_failed(format!("cannot remove stale {}", api_sock.display()), e))?;
        }

        // 3. Plan the command line (direct or jailed).
        let jailer = self.jailer.as_ref().map(|j| JailerConfig {
            jailer: j.clone(),
            chroot_base: self.dirs.jail_base(),
            uid: caller.uid,
            gid: caller.gid,
        });
        let cfg = LaunchConfig {
            vmm: self.vmm.clone(),
            id: id.to_string(),
            api_sock: api_sock.clone(),
            log_path: if jailer.is_some() { None } else { Some(vmm_log.clone()) },
            jailer,
        };
        let plan = cfg.plan().map_err(|e| failed(e.to_string()))?;
        if let Some(chroot) = &plan.chroot {
            // A stale jail from an earlier run makes the jailer's mknod fail with EEXIST.
            let jail_dir = chroot.parent().unwrap_or(chroot);
            remove_dir(jail_dir)?;
            fs::create_dir_all(self.dirs.jail_base())
                .map_err(|e| io_failed("cannot create the jail base", e))?;
        }

        // 4. Spawn detached: own session, default signal dispositions, files not pipes.
        let stdout = append(&console)?;
        let stderr = append(&vmm_log)?;
        chown(&console, caller)?;
        chown(&vmm_log, caller)?;
        // Least privilege: a direct VMM runs as the daemon's user, so the daemon can
        // reach its socket and no guest-facing process runs as root. (The jailer
        // drops privileges itself with --uid/--gid.)
        let drop_to = (plan.chroot.is_none() && caller.uid != 0).then_some(caller);
        let mut cmd = match systemd_run() {
            // Under systemd, each VMM gets its own transient scope in banger.slice, so
            // it is outside the helper's cgroup and no stop or restart of the helper's
            // unit can reach it. systemd-run registers the scope and execs the VMM:
            // the pid stays the same.
            Some(systemd_run) => {
                let mut c = Command::new(systemd_run);
                c.args(["--scope", "--quiet", "--collect", "--slice=banger.slice"]);
                c.arg(format!("--unit=banger-vm-{id}-{}", now_millis()));
                if let Some(u) = drop_to {
                    c.arg(format!("--uid={}", u.uid)).arg(format!("--gid={}", u.gid));
                }
                c.arg("--").arg(&plan.program).args(&plan.args);
                c
            }
            None => {
                let mut c = Command::new(&plan.program);
                c.args(&plan.args);
                if let Some(u) = drop_to {
                    c.uid(u.uid).gid(u.gid);
                }
                c
            }
        };
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(io::Error::from)?;
                reset_signals();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| io_failed(format!("cannot start {}", plan.program.display()), e))?;
        let pid = child.id() as i32;
        // The helper is the parent until it exits; reap the VMM so it never lingers
        // as a zombie. Dropping `child` does not wait, so a thread does.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });

        // 5. With a jail, the host-side socket is a symlink into it.
        if plan.chroot.is_some() {
            std::os::unix::fs::symlink(&plan.bound_socket, &api_sock)
                .map_err(|e| io_failed(format!("cannot link {}", api_sock.display()), e))?;
        }
        let start_time = pid::start_time(pid)
            .ok_or_else(|| failed(format!("the VMM (pid {pid}) exited immediately; see {}", vmm_log.display())))?;
        tracing::info!(vm = %id, pid, "launched VMM");
        Ok(Reply::Launched(Launched {
            pid,
            start_time,
            vmm_name: self.vmm_name.clone(),
            api_sock,
            chroot: plan.chroot,
            pidfile: plan.pidfile,
        }))
    }

    fn signal(&self, id: &VmId, p: i32, start_time: u64, sig: VmmSignal) -> Response {
        if p <= 1 {
            return Err(failed(format!("refusing to signal pid {p}")));
        }
        if pid::start_time(p) != Some(start_time) {
            // Gone, or the pid now belongs to another process: nothing to do.
            return Ok(Reply::Signalled { was_alive: false });
        }
        let sock = self.dirs.api_socket(id);
        let identified = pid::find_pid(&sock, &self.vmm_name) == Ok(p)
            || pid::comm(Path::new("/proc"), p).as_deref()
                == Some(pid::expected_comm(&self.vmm_name).as_str());
        if !identified {
            return Err(failed(format!(
                "pid {p} is not the VMM of VM {id}; it was not signalled"
            )));
        }
        let s = match sig {
            VmmSignal::Term => Signal::SIGTERM,
            VmmSignal::Kill => Signal::SIGKILL,
        };
        match signal::kill(Pid::from_raw(p), s) {
            Ok(()) => Ok(Reply::Signalled { was_alive: true }),
            Err(nix::errno::Errno::ESRCH) => Ok(Reply::Signalled { was_alive: false }),
            Err(e) => Err(failed(format!("cannot signal pid {p}: {e}"))),
        }
    }
}

/// `systemd-run`, when systemd is PID 1 and scopes are not disabled
/// (`BANGER_NO_SCOPE=1`).
fn systemd_run() -> Option<&'static Path> {
    let p = Path::new("/usr/bin/systemd-run");
    let pid1_is_systemd = Path::new("/run/systemd/system").is_dir();
    (pid1_is_systemd && p.exists() && std::env::var_os("BANGER_NO_SCOPE").is_none()).then_some(p)
}

fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Who is asking, from SO_PEERCRED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

fn chown(path: &Path, caller: Caller) -> Result<(), Failure> {
    std::os::unix::fs::lchown(path, Some(caller.uid), Some(caller.gid))
        .map_err(|e| io_failed(format!("cannot chown {}", path.display()), e))
}

fn append(path: &Path) -> Result<File, Failure> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| io_failed(format!("cannot open {}", path.display()), e))
}

fn remove_dir(dir: &Path) -> Result<(), Failure> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_failed(format!("cannot remove {}", dir.display()), e)),
    }
}

/// Runs in the forked child before exec: every signal back to its default action and
/// nothing blocked, whatever the helper (or its service manager) had set.
fn reset_signals() {
    for s in Signal::iterator() {
        if matches!(s, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: restoring SIG_DFL is async-signal-safe.
        let _ = unsafe { signal::signal(s, signal::SigHandler::SigDfl) };
    }
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn helper(dir: &Path) -> Helper {
        let dirs = Dirs::under(fs::canonicalize(dir).unwrap());
        let network = banger_helper::NetworkConfig {
            bridge: "bgtest0".into(),
            gateway: "10.200.0.1".parse().unwrap(),
            prefix_len: 24,
            nft_table: "banger_test".into(),
        };
        Helper::new(dirs, "/bin/sleep".into(), None, network, "http://deb.debian.org/debian".into()).unwrap()
    }

    const ROOT: Caller = Caller { uid: 0, gid: 0 };

    fn id() -> VmId {
        VmId::new("0123456789ab").unwrap()
    }

    #[test]
    fn launch_refuses_paths_outside_the_vm_directories() {
        let dir = tempfile::tempdir().unwrap();
        let h = helper(dir.path());
        h.handle(ROOT, &Request::CreateVmDirs { vm_id: id() }).unwrap();
        let d = h.dirs.clone();
        let cases = [
            (PathBuf::from("/tmp/evil.sock"), d.console_log(&id()), d.vmm_log(&id())),
            (d.api_socket(&id()), PathBuf::from("/etc/passwd"), d.vmm_log(&id())),
            (d.api_socket(&id()), d.vm_state_dir(&id()).join("../../../x"), d.vmm_log(&id())),
            (d.api_socket(&id()), d.console_log(&id()), PathBuf::from("relative.log")),
            // Another VM's directory is outside this VM's.
            (
                d.api_socket(&VmId::new("ffffffffffff").unwrap()),
                d.console_log(&id()),
                d.vmm_log(&id()),
            ),
        ];
        for (api_sock, console_log, vmm_log) in cases {
            let r = h.handle(ROOT, &Request::LaunchVmm {
                vm_id: id(),
                api_sock: api_sock.clone(),
                console_log,
                vmm_log,
            });
            let f = r.unwrap_err();
            assert_eq!(f.kind, FailureKind::BadArgument, "{api_sock:?}: {}", f.message);
        }
        assert!(!Path::new("/tmp/evil.sock").exists());
    }

    #[test]
    fn signal_refuses_a_pid_that_is_not_the_vm_s_vmm() {
        let dir = tempfile::tempdir().unwrap();
        let h = helper(dir.path());
        // Our own test process: alive, but neither its comm nor its cmdline match.
        let me = std::process::id() as i32;
        let st = pid::start_time(me).unwrap();
        let f = h
            .handle(ROOT, &Request::SignalVmm { vm_id: id(), pid: me, start_time: st, signal: VmmSignal::Kill })
            .unwrap_err();
        assert!(f.message.contains("not the VMM"), "{}", f.message);
        // A wrong start time means the pid was reused: reported dead, nothing sent.
        let r = h
            .handle(ROOT, &Request::SignalVmm { vm_id: id(), pid: me, start_time: st + 1, signal: VmmSignal::Kill })
            .unwrap();
        assert_eq!(r, Reply::Signalled { was_alive: false });
    }

    #[test]
    fn guest_addresses_must_be_hosts_of_the_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let h = helper(dir.path());
        assert!(h.check_guest_ip("10.200.0.2".parse().unwrap()).is_ok());
        assert!(h.check_guest_ip("10.200.0.254".parse().unwrap()).is_ok());
        for bad in ["10.200.0.1", "10.200.0.0", "10.200.0.255", "10.201.0.2", "8.8.8.8"] {
            assert!(h.check_guest_ip(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn removing_directories_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let h = helper(dir.path());
        h.handle(ROOT, &Request::CreateVmDirs { vm_id: id() }).unwrap();
        for _ in 0..2 {
            h.handle(ROOT, &Request::RemoveVmRuntime { vm_id: id() }).unwrap();
            h.handle(ROOT, &Request::RemoveVmState { vm_id: id() }).unwrap();
        }
        assert!(!h.dirs.vm_run_dir(&id()).exists() && !h.dirs.vm_state_dir(&id()).exists());
    }
}
