//! The helper's operations. Each is linear, idempotent where it can be, and checks its
//! arguments before touching anything.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use banger_fc::launch::{JailerConfig, LaunchConfig};
use banger_fc::pid;
use banger_helper::{
    AllowGuest, ArgError, BootFile, BootFiles, BuildImage, CreateTap, CreateVmDirs, DeleteTap,
    Dirs, Exited, Failure, FailureKind, HelperRequest, ImageBuilt, LaunchInfo, LaunchList,
    LaunchVmm, Launched, Launches, Ping, Pong, RemoveVmRuntime, RemoveVmState, Request, Response,
    SetupNetwork, SignalVmm, Signalled, TeardownNetwork, VmId, VmmExit, VmmExited, VmmPaths,
    VmmSignal,
};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

pub use crate::safe::Caller;
use crate::safe::{self, RunAs, as_caller};

/// How VMMs this helper launched ended: (pid, start time) -> exit, kept while the
/// helper runs so the daemon can tell a crash from a clean guest shutdown.
type Exits = Arc<Mutex<HashMap<(i32, u64), (VmId, VmmExit)>>>;

#[derive(Debug, Clone)]
pub struct Helper {
    dirs: Dirs,
    vmm: PathBuf,
    vmm_name: String,
    vmm_version: Option<String>,
    jailer: Option<PathBuf>,
    /// Whom VMMs run as when the daemon is root (`--vmm-user`); `None` when that user
    /// does not exist, and then a root daemon's launches are refused.
    vmm_user: Option<(String, RunAs)>,
    /// Root's own directory for jails, checked by [`safe::check_root_owned`].
    jail_base: PathBuf,
    /// The VM network and the helper's netlink connection.
    net: crate::net::Net,
    mirror: String,
    exits: Exits,
    /// One lock per VM: a request a dead daemon left running (a launch, say) finishes
    /// before the next daemon's request for the same VM (its clean-up) starts.
    vm_locks: Arc<Mutex<HashMap<VmId, Arc<Mutex<()>>>>>,
}

/// A launch record on disk (root's, beneath the jail base): see [`banger_helper::LaunchInfo`].
type LaunchRecord = banger_helper::LaunchInfo;

/// The files a jail holds, by their names inside it.
const JAIL_FILES: [&str; 4] = ["kernel", "initrd", "rootfs", "vmm.log"];

fn bad(e: ArgError) -> Failure {
    Failure {
        kind: FailureKind::BadArgument,
        message: e.to_string(),
    }
}

fn failed(msg: impl Into<String>) -> Failure {
    Failure {
        kind: FailureKind::Failed,
        message: msg.into(),
    }
}

fn io_failed(what: impl std::fmt::Display, e: io::Error) -> Failure {
    failed(format!("{what}: {e}"))
}

/// Runs `f` as the caller, folding a failure to switch identity into the result.
fn caller_does<T: Send>(
    caller: Caller,
    f: impl FnOnce() -> Result<T, Failure> + Send,
) -> Result<T, Failure> {
    as_caller(caller, f).map_err(|e| io_failed("cannot act as the caller", e))?
}

impl Helper {
    pub fn new(
        dirs: Dirs,
        vmm: PathBuf,
        jailer: Option<PathBuf>,
        vmm_user: Option<(String, RunAs)>,
        jail_base: PathBuf,
        network: banger_helper::NetworkConfig,
        mirror: String,
    ) -> anyhow::Result<Self> {
        let vmm_name = vmm
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow::anyhow!("VMM path {} has no file name", vmm.display()))?
            .to_string();
        let vmm_version = crate::vmm_version(&vmm, &vmm_name)?;
        Ok(Self {
            dirs,
            vmm,
            vmm_name,
            vmm_version,
            jailer,
            vmm_user,
            jail_base,
            net: crate::net::Net::new(network),
            mirror,
            exits: Arc::default(),
            vm_locks: Arc::default(),
        })
    }

    pub fn vmm(&self) -> &Path {
        &self.vmm
    }

    /// Runs one request for a caller already authenticated as `caller` (uid, gid):
    /// files and directories it creates, and the VMM itself, belong to that user.
    pub fn handle(&self, caller: Caller, req: &Request) -> Response {
        let vm = match req {
            Request::CreateVmDirs(CreateVmDirs { vm_id })
            | Request::LaunchVmm(LaunchVmm { vm_id, .. })
            | Request::SignalVmm(SignalVmm { vm_id, .. })
            | Request::RemoveVmRuntime(RemoveVmRuntime { vm_id })
            | Request::RemoveVmState(RemoveVmState { vm_id }) => Some(vm_id.clone()),
            _ => None,
        };
        let lock = vm.map(|id| {
            self.vm_locks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(id)
                .or_default()
                .clone()
        });
        let _serialized = lock
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()));
        match req {
            Request::Ping(r @ Ping {}) => Ok(r.answer(Pong {
                version: option_env!("BANGER_VERSION")
                    .unwrap_or(env!("CARGO_PKG_VERSION"))
                    .into(),
                vmm: self.vmm_name.clone(),
                vmm_version: self.vmm_version.clone(),
                jailed: self.jailer.is_some(),
                instance: {
                    let me = std::process::id() as i32;
                    format!("{me}-{}", pid::start_time(me).unwrap_or(0))
                },
                network: self.net.cfg.clone(),
            })),
            Request::BuildImage(
                r @ BuildImage {
                    build_id,
                    release,
                    packages,
                },
            ) => self
                .build_image(build_id, release, packages, caller)
                .map(|built| r.answer(built)),
            Request::SetupNetwork(r @ SetupNetwork {}) => {
                self.net()
                    .setup()
                    .map_err(|e| failed(banger_api::error_chain(&e)))?;
                Ok(r.answer(()))
            }
            Request::TeardownNetwork(r @ TeardownNetwork {}) => {
                self.net()
                    .teardown()
                    .map_err(|e| failed(banger_api::error_chain(&e)))?;
                Ok(r.answer(()))
            }
            Request::CreateTap(
                r @ CreateTap {
                    vm_id,
                    guest_ip,
                    element,
                },
            ) => {
                self.check_guest_ip(*guest_ip)?;
                // The tap is the VMM's to attach: its owner is whom the VMM runs as.
                let vmm = self.vmm_identity(caller)?;
                self.net()
                    .create_tap(vm_id, vmm.uid, vmm.gid)
                    .map_err(|e| failed(banger_api::error_chain(&e)))?;
                if *element {
                    self.net()
                        .allow_guest(vm_id, *guest_ip)
                        .map_err(|e| failed(banger_api::error_chain(&e)))?;
                }
                Ok(r.answer(()))
            }
            Request::AllowGuest(r @ AllowGuest { vm_id, guest_ip }) => {
                self.check_guest_ip(*guest_ip)?;
                self.net()
                    .allow_guest(vm_id, *guest_ip)
                    .map_err(|e| failed(banger_api::error_chain(&e)))?;
                Ok(r.answer(()))
            }
            Request::DeleteTap(r @ DeleteTap { vm_id }) => {
                self.net()
                    .delete_tap(vm_id)
                    .map_err(|e| failed(banger_api::error_chain(&e)))?;
                Ok(r.answer(()))
            }
            Request::CreateVmDirs(r @ CreateVmDirs { vm_id }) => {
                self.create_vm_dirs(vm_id, caller)?;
                Ok(r.answer(()))
            }
            Request::LaunchVmm(
                r @ LaunchVmm {
                    vm_id,
                    files,
                    owner,
                },
            ) => self
                .launch(vm_id, files, caller, *owner)
                .map(|launched| r.answer(launched)),
            Request::Launches(r @ Launches {}) => Ok(r.answer(LaunchList {
                launches: self.running_launches(),
            })),
            Request::VmmExited(
                r @ VmmExited {
                    vm_id,
                    pid,
                    start_time,
                },
            ) => {
                let known = {
                    let exits = self.exits.lock().unwrap_or_else(|e| e.into_inner());
                    exits
                        .get(&(*pid, *start_time))
                        .filter(|(id, _)| id == vm_id)
                        .map(|(_, e)| e.clone())
                };
                // Just ended: the reaper thread may not have recorded it yet, but the
                // zombie (still our child, same start time) tells its status. A
                // multithreaded VMM's leader shows as a zombie a little before the
                // kernel lets its parent wait for it: give it a moment.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                let mut exit = known;
                while exit.is_none()
                    && *pid > 1
                    && pid::start_time_even_if_ended(*pid) == Some(*start_time)
                    && pid::start_time(*pid).is_none()
                {
                    exit = peek_exit(*pid, false).or_else(|| {
                        let exits = self.exits.lock().unwrap_or_else(|e| e.into_inner());
                        exits
                            .get(&(*pid, *start_time))
                            .filter(|(id, _)| id == vm_id)
                            .map(|(_, e)| e.clone())
                    });
                    if std::time::Instant::now() > deadline {
                        break;
                    }
                    if exit.is_none() {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                }
                if exit.is_none() {
                    let exits = self.exits.lock().unwrap_or_else(|e| e.into_inner());
                    exit = exits
                        .get(&(*pid, *start_time))
                        .filter(|(id, _)| id == vm_id)
                        .map(|(_, e)| e.clone());
                }
                Ok(r.answer(Exited { exit }))
            }
            Request::SignalVmm(
                r @ SignalVmm {
                    vm_id,
                    pid,
                    start_time,
                    signal,
                },
            ) => self
                .signal(caller, vm_id, *pid, *start_time, *signal)
                .map(|signalled| r.answer(signalled)),
            Request::RemoveVmRuntime(r @ RemoveVmRuntime { vm_id }) => {
                self.end_recorded(vm_id)?;
                self.clear_jail(vm_id)?;
                let run_dir = self.dirs.vm_run_dir(vm_id);
                caller_does(caller, || {
                    safe::remove_tree(&run_dir)
                        .map_err(|e| io_failed(format!("cannot remove {}", run_dir.display()), e))
                })?;
                Ok(r.answer(()))
            }
            Request::RemoveVmState(r @ RemoveVmState { vm_id }) => {
                let dir = self.dirs.vm_state_dir(vm_id);
                caller_does(caller, || {
                    safe::remove_tree(&dir)
                        .map_err(|e| io_failed(format!("cannot remove {}", dir.display()), e))
                })?;
                Ok(r.answer(()))
            }
        }
    }

    fn net(&self) -> &crate::net::Net {
        &self.net
    }

    /// A guest address must be a host address of the subnet, not the gateway.
    fn check_guest_ip(&self, ip: std::net::Ipv4Addr) -> Result<(), Failure> {
        let n = &self.net.cfg;
        if n.is_guest_address(ip) {
            Ok(())
        } else {
            Err(bad(ArgError::Address {
                ip,
                network: format!("{}/{}", n.gateway, n.prefix_len),
            }))
        }
    }

    fn build_image(
        &self,
        id: &VmId,
        release: &banger_helper::Release,
        packages: &[banger_helper::PackageName],
        caller: Caller,
    ) -> Result<ImageBuilt, Failure> {
        // The daemon's directory for the result: made as the caller (it must be new),
        // with the progress file the daemon reads while the build runs.
        let out = self.dirs.image_build(id);
        let progress = caller_does(caller, || {
            let images = self.dirs.images();
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&images)
                .map_err(|e| io_failed(format!("cannot create {}", images.display()), e))?;
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&out)
                .map_err(|e| io_failed(format!("cannot create {}", out.display()), e))?;
            OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(out.join("progress"))
                .map_err(|e| io_failed("cannot create the build's progress file", e))
        })?;
        let remove_out = || {
            let _ = caller_does(caller, || {
                safe::remove_tree(&out).map_err(|e| io_failed("cannot remove the build", e))
            });
        };
        // Root's workspace: debootstrap and mkfs run as root, so only beneath root's
        // own checked base, where nobody else can redirect a path.
        let work = self.builds_dir().join(id.as_str());
        let prepared = (|| {
            for d in [self.jail_base.join("builds"), self.builds_dir()] {
                safe::ensure_root_dir(&d, 0o700)?;
            }
            safe::remove_tree(&work)?;
            safe::ensure_root_dir(&work, 0o700)
        })();
        if let Err(e) = prepared {
            remove_out();
            return Err(io_failed(format!("cannot prepare {}", work.display()), e));
        }
        let build = crate::image::Build {
            dir: &work,
            progress: &progress,
            release,
            packages,
            mirror: &self.mirror,
        };
        let built = build
            .run_all()
            .map_err(|e| failed(banger_api::error_chain(&e)))
            .and_then(|()| {
                // Hand the results over as the caller: new files of its own in its own
                // directory, data copied from root's descriptors (nothing chowned).
                let mut sources = Vec::new();
                for name in crate::image::OUTPUTS {
                    match File::open(work.join(name)) {
                        Ok(f) => sources.push((name, f)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound && name == "vmlinux" => {}
                        Err(e) => {
                            return Err(io_failed(format!("cannot open the built {name}"), e));
                        }
                    }
                }
                caller_does(caller, || {
                    for (name, from) in &sources {
                        let to = OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o644)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(out.join(name))
                            .map_err(|e| {
                                io_failed(format!("cannot create {name} in {}", out.display()), e)
                            })?;
                        banger_helper::copy::clone_data(from, &to)
                            .map_err(|e| io_failed(format!("cannot copy the built {name}"), e))?;
                    }
                    Ok(())
                })
            });
        let _ = safe::remove_tree(&work);
        if let Err(e) = built {
            remove_out();
            return Err(e);
        }
        Ok(ImageBuilt { dir: out })
    }

    /// `<jail base>/builds/<installation>/`: root's workspace for image builds.
    pub fn builds_dir(&self) -> PathBuf {
        self.jail_base.join("builds").join(self.installation())
    }

    /// The VM's directories are the caller's: made with its rights, private to it.
    fn create_vm_dirs(&self, id: &VmId, caller: Caller) -> Result<(), Failure> {
        let dirs = [self.dirs.vm_run_dir(id), self.dirs.vm_state_dir(id)];
        caller_does(caller, || {
            for d in &dirs {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(d)
                    .map_err(|e| io_failed(format!("cannot create {}", d.display()), e))?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// `<jail base>/launches/<installation>/`: this installation's launch records.
    /// Root's, beneath the checked jail base; keyed by the state directory so that
    /// two installations on one host never see each other's VMMs.
    /// An exclusive lock on `<jail base>/launches/<installation>.lock` (root's
    /// directory, so no other user can plant or hold the file), or an error naming
    /// the helper that holds it.
    pub fn lock_instance(&self) -> anyhow::Result<nix::fcntl::Flock<fs::File>> {
        use anyhow::Context as _;
        let dir = self.jail_base.join("launches");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{}.lock", self.installation()));
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // A helper killed a moment ago holds the lock until the kernel has ended it.
        match banger_helper::lock_exclusive(f, std::time::Duration::from_secs(3)) {
            Ok(mut l) => {
                use std::io::{Seek, Write};
                l.set_len(0)?;
                l.rewind()?;
                write!(l, "{}", std::process::id())?;
                Ok(l)
            }
            Err(e) => {
                let other = fs::read_to_string(&path).unwrap_or_default();
                anyhow::bail!(
                    "another bangerd-root (pid {}) is already running for {} ({e})",
                    other.trim(),
                    self.dirs.state.display()
                )
            }
        }
    }

    pub fn records_dir(&self) -> PathBuf {
        self.jail_base.join("launches").join(self.installation())
    }

    /// A stable name for this installation (FNV-1a of the state directory's path).
    fn installation(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.dirs.state.as_os_str().as_encoded_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    fn write_record(&self, r: &LaunchRecord) -> Result<(), Failure> {
        let dir = self.records_dir();
        let err = |e| {
            io_failed(
                format!("cannot write the launch record in {}", dir.display()),
                e,
            )
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(err)?;
        let tmp = dir.join(format!(".{}.tmp", r.vm_id));
        fs::write(&tmp, serde_json::to_vec(r).expect("records serialize")).map_err(err)?;
        fs::rename(&tmp, dir.join(r.vm_id.as_str())).map_err(err)
    }

    fn read_record(&self, id: &VmId) -> Option<LaunchRecord> {
        let bytes = fs::read(self.records_dir().join(id.as_str())).ok()?;
        // A record of another boot names no process of this one.
        serde_json::from_slice::<LaunchRecord>(&bytes)
            .ok()
            .filter(|r| {
                &r.vm_id == id && !r.boot_id.is_empty() && r.boot_id == banger_helper::boot_id()
            })
    }

    /// Records whose process still runs (same pid, same start time).
    fn running_launches(&self) -> Vec<LaunchInfo> {
        let Ok(rd) = fs::read_dir(self.records_dir()) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| VmId::new(e.file_name().to_string_lossy().into_owned()).ok())
            .filter_map(|id| self.read_record(&id))
            .filter(|r| pid::start_time(r.pid) == Some(r.start_time))
            .collect()
    }

    /// Ends the VMM the VM's launch record names, if it still runs, and drops the
    /// record. The record was written by this helper before that process could exec,
    /// so (pid, start time) identifies it positively.
    fn end_recorded(&self, id: &VmId) -> Result<(), Failure> {
        if let Some(r) = self.read_record(id)
            && pid::start_time(r.pid) == Some(r.start_time)
        {
            tracing::warn!(vm = %id, pid = r.pid, "ending a VMM that still runs");
            let _ = signal::kill(Pid::from_raw(r.pid), Signal::SIGKILL);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while pid::start_time(r.pid) == Some(r.start_time) {
                if std::time::Instant::now() > deadline {
                    return Err(failed(format!(
                        "the VMM (pid {}) of VM {id} did not end after SIGKILL",
                        r.pid
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        match fs::remove_file(self.records_dir().join(id.as_str())) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_failed("cannot remove the launch record", e)),
        }
    }

    /// `<jail base>/<vmm>/<id>`: the jailer's directory for this VM.
    fn jail_dir(&self, id: &VmId) -> PathBuf {
        self.jail_base.join(&self.vmm_name).join(id.as_str())
    }

    /// Unmounts what a launch bound into the VM's jail, then removes the jail. The
    /// jail's `root` belongs to the VMM's user once the jailer ran, so nothing in it
    /// is followed: mounts are detached with UMOUNT_NOFOLLOW and the tree is removed
    /// without following symlinks.
    fn clear_jail(&self, id: &VmId) -> Result<(), Failure> {
        let dir = self.jail_dir(id);
        for name in JAIL_FILES {
            let target = dir.join("root").join(name);
            safe::unbind(&target)
                .map_err(|e| io_failed(format!("cannot unmount {}", target.display()), e))?;
        }
        safe::remove_tree(&dir)
            .map_err(|e| io_failed(format!("cannot remove {}", dir.display()), e))
    }

    /// Opens a boot file with the caller's rights (run inside [`as_caller`]), read-only
    /// or read-write, and says which host path it is.
    fn open_boot_file(
        &self,
        id: &VmId,
        f: &BootFile,
        write: bool,
    ) -> Result<(File, PathBuf), Failure> {
        let path = match f {
            BootFile::Image { digest, file } => self
                .dirs
                .images()
                .join(digest.as_str())
                .join(file.file_name()),
            BootFile::VmDisk {} => self.dirs.vm_disk(id),
            BootFile::Named { path } => {
                if !path.is_absolute() {
                    return Err(bad(ArgError::NotAbsolute(path.clone())));
                }
                path.clone()
            }
        };
        // Non-blocking and never a controlling terminal: a FIFO or a device someone
        // named must not hang the helper or change its session. Only a regular file
        // is kept.
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
            .map_err(|e| io_failed(format!("cannot open {}", path.display()), e))?;
        if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
            return Err(failed(format!("{} is not a regular file", path.display())));
        }
        Ok((file, path))
    }

    /// Whom the VMMs of `caller` run as: the caller itself, unless the caller is root;
    /// then the VMM user, because a VMM (the process a guest attacks first) never runs
    /// as root.
    fn vmm_identity(&self, caller: Caller) -> Result<RunAs, Failure> {
        if caller.uid != 0 {
            return Ok(RunAs {
                uid: caller.uid,
                gid: caller.gid,
                groups: Vec::new(),
            });
        }
        self.vmm_user.as_ref().map(|(_, u)| u.clone()).ok_or_else(|| {
            failed(
                "the daemons run as root and VMMs never do, but the user VMMs run as (--vmm-user, BANGER_VMM_USER; \
                 default banger-vmm) does not exist: create it (`useradd --system --user-group banger-vmm`, as \
                 scripts/install-deps does) or name another",
            )
        })
    }

    fn launch(
        &self,
        id: &VmId,
        files: &BootFiles,
        caller: Caller,
        owner: Option<banger_helper::Identity>,
    ) -> Result<Launched, Failure> {
        let api_sock = self.dirs.api_socket(id);
        let console = self.dirs.console_log(id);
        let vmm_log = self.dirs.vmm_log(id);

        // 0. A VMM an earlier launch left running (the helper or the daemon died
        //    mid-start) is an orphan: the daemon launches only a VM it holds stopped.
        self.end_recorded(id)?;

        // 0b. Whom the VMM runs as. For a root daemon that is the VMM user, apart from
        //     the daemon: the VMM then gets its files as descriptors (its own
        //     directory for its sockets), since it cannot reach root's directories.
        //     Firecracker reopens files by path and needs /dev/kvm, so it runs apart
        //     only inside the jailer's chroot.
        let run_as = self.vmm_identity(caller)?;
        let apart = run_as.uid != caller.uid;
        let jailed = self.jailer.is_some();
        let fds_only = apart && !jailed;
        if fds_only && self.vmm_name != "banger-vmm-qemu" {
            return Err(failed(format!(
                "the daemons run as root and VMMs never do: {} runs as uid {} only through the jailer \
                 (set --jailer, BANGER_JAILER)",
                self.vmm_name, run_as.uid
            )));
        }
        let vmm_dir = self.dirs.vmm_dir(id);

        // 1. As the caller: its own directory and logs, and every boot file. A symlink
        //    the caller planted leads nowhere it could not go itself, and a file a user
        //    named opens only if the caller may read (and, for a disk, write) it.
        //    Files a user named go further: a root daemon says whose VM this is (it
        //    could take any identity itself, so believing it gives nothing away) and
        //    they are opened with that user's rights, never root's; any other daemon's
        //    word is ignored and its own rights stand.
        let named_as = owner
            .filter(|o| caller.uid == 0 && o.uid != 0)
            .map(|o| Caller {
                uid: o.uid,
                gid: o.gid,
            });
        let open = |f: &BootFile, write: bool| match (f, named_as) {
            (BootFile::Named { .. }, Some(who)) => {
                caller_does(who, || self.open_boot_file(id, f, write)).map_err(|e| {
                    failed(format!(
                        "{e} (opened as uid {}, whose request created the VM)",
                        who.uid
                    ))
                })
            }
            _ => self.open_boot_file(id, f, write),
        };
        let opened = caller_does(caller, || {
            // (As the caller: a jail's socket symlink and pidfile are followed with
            // the caller's rights.)
            if let Ok(p) = pid::find_pid(&api_sock, &self.vmm_name) {
                return Err(failed(format!(
                    "a VMM (pid {p}) is already serving {}",
                    api_sock.display()
                )));
            }
            // The VMM's directory, fresh for each launch: stale sockets go with it.
            // Removed without following anything a VMM user could have left in it.
            safe::remove_tree(&vmm_dir)
                .map_err(|e| io_failed(format!("cannot remove {}", vmm_dir.display()), e))?;
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&vmm_dir)
                .map_err(|e| io_failed(format!("cannot create {}", vmm_dir.display()), e))?;
            let vmm_dir_fd = if fds_only {
                // Made by root in root's directory just now: nobody else can have
                // replaced it yet. The VMM enters it by descriptor (it cannot reach
                // it by path) and binds its socket there.
                chown(
                    &vmm_dir,
                    Caller {
                        uid: run_as.uid,
                        gid: run_as.gid,
                    },
                )?;
                Some(
                    OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                        .open(&vmm_dir)
                        .map_err(|e| io_failed(format!("cannot open {}", vmm_dir.display()), e))?,
                )
            } else {
                None
            };
            let stdout = open_log(&console, false)?;
            // One VMM log per boot: Firecracker writes its --log-path from offset 0.
            let stderr = open_log(&vmm_log, true)?;
            let kernel = open(&files.kernel, false)?;
            let initrd = files.initrd.as_ref().map(|f| open(f, false)).transpose()?;
            let rootfs = files.rootfs.as_ref().map(|f| open(f, true)).transpose()?;
            Ok((stdout, stderr, kernel, initrd, rootfs, vmm_dir_fd))
        })?;
        let (stdout, stderr, kernel, initrd, rootfs, vmm_dir_fd) = opened;

        // 1b. QEMU wants a read-only descriptor of a disk beside the read-write one:
        //     the same file, reopened through our own descriptor with the rights that
        //     opened it (never a second lookup of the path).
        let rootfs_ro = match (&files.rootfs, &rootfs) {
            (Some(f), Some((file, path))) if fds_only => {
                let who = match (f, named_as) {
                    (BootFile::Named { .. }, Some(w)) => w,
                    _ => caller,
                };
                let own = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
                Some(caller_does(who, || {
                    OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                        .open(&own)
                        .map_err(|e| {
                            io_failed(format!("cannot reopen {} read-only", path.display()), e)
                        })
                })?)
            }
            _ => None,
        };

        // 1c. Apart from a root daemon, the VMM must be able to use what it is given.
        //     The VM's own disk and the VMM's log are root's (banger's) files, given to
        //     the VMM user by descriptor. A file a user named is never given away: a
        //     VMM that reopens it by path must already be allowed to.
        if apart {
            let give = |f: &File, what: &Path| {
                nix::unistd::fchown(f, Some(run_as.uid.into()), Some(run_as.gid.into())).map_err(
                    |e| {
                        failed(format!(
                            "cannot give {} to the VMM's user: {e}",
                            what.display()
                        ))
                    },
                )
            };
            give(&stderr, &vmm_log)?;
            if let (Some(BootFile::VmDisk {}), Some((f, p))) = (&files.rootfs, &rootfs) {
                give(f, p)?;
            }
            let check = |f: &BootFile, opened: &(File, PathBuf), write: bool, reopened: bool| {
                if !reopened
                    || matches!(f, BootFile::VmDisk {})
                    || safe::usable_by(&opened.0, &run_as, write)
                {
                    return Ok(());
                }
                Err(failed(format!(
                    "{} runs as uid {} (never root) and opens {} itself, which that user may not {}; \
                     make it {} for uid {} or group {}, or import it as an image",
                    self.vmm_name,
                    run_as.uid,
                    opened.1.display(),
                    if write { "read and write" } else { "read" },
                    if write {
                        "readable and writable"
                    } else {
                        "readable"
                    },
                    run_as.uid,
                    run_as.gid
                )))
            };
            // banger-vmm-qemu hands the disk's descriptor to QEMU (no reopen); kernel
            // and initrd are reopened. Firecracker reopens everything.
            check(&files.kernel, &kernel, false, true)?;
            if let (Some(f), Some(o)) = (&files.initrd, &initrd) {
                check(f, o, false, true)?;
            }
            if let (Some(f), Some(o)) = (&files.rootfs, &rootfs) {
                check(f, o, true, !fds_only)?;
            }
        }

        // 2. Plan the command line (direct or jailed).
        let jailer = self.jailer.as_ref().map(|j| JailerConfig {
            jailer: j.clone(),
            chroot_base: self.jail_base.clone(),
            uid: run_as.uid,
            gid: run_as.gid,
        });
        let cfg = LaunchConfig {
            vmm: self.vmm.clone(),
            id: id.to_string(),
            // Apart, the socket is named from the VMM's working directory (its own).
            api_sock: if fds_only {
                PathBuf::from("/proc/self/cwd/api.sock")
            } else {
                api_sock.clone()
            },
            // Apart, the VMM cannot reach the log by path: its stderr is the same file.
            log_path: Some(if fds_only {
                PathBuf::from("/proc/self/fd/2")
            } else {
                vmm_log.clone()
            }),
            jailer,
        };
        let plan = cfg
            .plan()
            .map_err(|e| failed(banger_api::error_chain(&e)))?;
        let host = |p: &PathBuf| p.display().to_string();
        // Apart, the VMM gets kernel, initrd and disk as descriptors 3, 4 and 5.
        let mut inherit = Vec::new();
        let paths = match &plan.chroot {
            None if fds_only => {
                let mut pass = |f: &File, n: i32| {
                    inherit.push((std::os::fd::AsRawFd::as_raw_fd(f), n));
                    format!("/proc/self/fd/{n}")
                };
                let paths = VmmPaths {
                    kernel: pass(&kernel.0, 3),
                    initrd: initrd.as_ref().map(|f| pass(&f.0, 4)),
                    rootfs: rootfs.as_ref().map(|f| pass(&f.0, 5)),
                };
                // The disk's read-only twin at the next number (banger-vmm-qemu checks
                // that it is the same file).
                if let Some(ro) = &rootfs_ro {
                    pass(ro, 6);
                }
                paths
            }
            None => VmmPaths {
                kernel: host(&kernel.1),
                initrd: initrd.as_ref().map(|f| host(&f.1)),
                rootfs: rootfs.as_ref().map(|f| host(&f.1)),
            },
            Some(chroot) => {
                // 3. The jail is root's: cleared of any earlier run, then built here,
                //    with each file bind-mounted from the descriptor the caller opened.
                self.clear_jail(id)?;
                let jail = self.jail_dir(id);
                for d in [jail.parent().unwrap_or(&jail), &jail] {
                    safe::ensure_root_dir(d, 0o711)
                        .map_err(|e| io_failed(format!("cannot create {}", d.display()), e))?;
                }
                safe::ensure_root_dir(chroot, 0o700)
                    .map_err(|e| io_failed(format!("cannot create {}", chroot.display()), e))?;
                let bind = |file: &File, what: &Path, name: &str| -> Result<String, Failure> {
                    let target = chroot.join(name);
                    safe::bind_file(file, &target).map_err(|e| {
                        failed(format!(
                            "cannot make {} visible in the jail at {} without a copy (a bind mount failed: {e}); \
                             banger never copies a disk into a jail",
                            what.display(),
                            target.display()
                        ))
                    })?;
                    Ok(format!("/{name}"))
                };
                let paths = (|| {
                    bind(&stderr, &vmm_log, "vmm.log")?;
                    Ok(VmmPaths {
                        kernel: bind(&kernel.0, &kernel.1, "kernel")?,
                        initrd: initrd
                            .as_ref()
                            .map(|f| bind(&f.0, &f.1, "initrd"))
                            .transpose()?,
                        rootfs: rootfs
                            .as_ref()
                            .map(|f| bind(&f.0, &f.1, "rootfs"))
                            .transpose()?,
                    })
                })();
                match paths {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = self.clear_jail(id);
                        return Err(e);
                    }
                }
            }
        };

        // 4. Fork the VMM held, record it, then let it run: it never runs before
        //    something durable and root's says whose it is. Own session, default
        //    signal dispositions, files not pipes. Least privilege: a direct VMM runs
        //    as the daemon's user, so the daemon can reach its socket and no
        //    guest-facing process runs as root. (The jailer drops privileges itself
        //    with --uid/--gid.)
        let drop_to = (plan.chroot.is_none() && run_as.uid != 0).then_some(run_as.clone());
        let (program, args, child_drop) = match systemd_run() {
            // Under systemd, each VMM gets its own transient scope in banger.slice, so
            // it is outside the helper's cgroup and no stop or restart of the helper's
            // unit can reach it. systemd-run registers the scope and execs the VMM:
            // the pid stays the same.
            Some(systemd_run) => {
                let mut a: Vec<std::ffi::OsString> =
                    ["--scope", "--quiet", "--collect", "--slice=banger.slice"]
                        .map(Into::into)
                        .to_vec();
                a.push(format!("--unit=banger-vm-{id}-{}", now_millis()).into());
                if let Some(u) = &drop_to {
                    a.push(format!("--uid={}", u.uid).into());
                    a.push(format!("--gid={}", u.gid).into());
                }
                a.push("--".into());
                a.push(plan.program.clone().into());
                a.extend(plan.args.iter().cloned());
                (systemd_run.to_path_buf(), a, None)
            }
            None => (plan.program.clone(), plan.args.clone(), drop_to),
        };
        let spawn = crate::spawn::Spawn {
            program: program.clone(),
            args,
            stdout,
            stderr,
            inherit,
            cwd: vmm_dir_fd,
            drop_to: child_drop,
        };
        let held = match crate::spawn::spawn_held(&spawn) {
            Ok(h) => h,
            Err(e) => {
                let _ = self.clear_jail(id);
                return Err(io_failed(format!("cannot start {}", program.display()), e));
            }
        };
        let pid = held.pid;
        banger_helper::fault_point("helper:launch:forked");
        // The start time is fixed at fork, so it is already the VMM's.
        let Some(start_time) = pid::start_time(pid) else {
            let _ = self.clear_jail(id);
            return Err(failed(format!(
                "the VMM (pid {pid}) ended before it started"
            )));
        };
        if let Err(e) = self.write_record(&LaunchRecord {
            vm_id: id.clone(),
            pid,
            start_time,
            boot_id: banger_helper::boot_id(),
        }) {
            // Dropping `held` ends the child before it execs.
            drop(held);
            let _ = self.clear_jail(id);
            return Err(e);
        }
        banger_helper::fault_point("helper:launch:recorded");
        // The helper is the parent until it exits: reap the VMM so it never lingers as
        // a zombie, and keep how it ended for `VmmExited`.
        let exits = self.exits.clone();
        let vm = id.clone();
        std::thread::spawn(move || {
            // Record the status before reaping: once the pid is gone from /proc the
            // daemon may ask, and must find the answer.
            if let Some(exit) = peek_exit(pid, true) {
                tracing::info!(vm = %vm, pid, "VMM ended with {exit}");
                exits
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((pid, start_time), (vm, exit));
            }
            // Reaping our own child; how it ended is already recorded above.
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        });
        held.release()
            .map_err(|e| io_failed("cannot release the VMM", e))?;
        banger_helper::fault_point("helper:launch:released");

        // 5. With a jail, the host-side socket is a symlink into it, in the caller's
        //    directory and so made as the caller.
        if plan.chroot.is_some() {
            let target = plan.bound_socket.clone();
            caller_does(caller, || {
                std::os::unix::fs::symlink(&target, &api_sock)
                    .map_err(|e| io_failed(format!("cannot link {}", api_sock.display()), e))
            })?;
        }
        tracing::info!(vm = %id, pid, jailed = plan.chroot.is_some(), "launched VMM");
        Ok(Launched {
            pid,
            start_time,
            vmm_name: self.vmm_name.clone(),
            api_sock,
            chroot: plan.chroot,
            pidfile: plan.pidfile,
            paths,
        })
    }

    fn signal(
        &self,
        caller: Caller,
        id: &VmId,
        p: i32,
        start_time: u64,
        sig: VmmSignal,
    ) -> Result<Signalled, Failure> {
        if p <= 1 {
            return Err(failed(format!("refusing to signal pid {p}")));
        }
        if pid::start_time(p) != Some(start_time) {
            // Gone, or the pid now belongs to another process: nothing to do.
            return Ok(Signalled { was_alive: false });
        }
        // This VM's VMM: the one its launch record names (root's record, written
        // before that process could run: spawn.rs), or else the one serving its
        // socket (an exact argument, or the jail's pidfile with the VMM's comm) *and*
        // running as the user this caller's VMMs run as. The socket's link and that
        // pidfile are the caller's to write, so they are followed with the caller's
        // rights, and what they name is believed only for a process of the VMM user:
        // never root's, nor anyone else's that is merely called like the VMM.
        let recorded = self
            .read_record(id)
            .is_some_and(|r| (r.pid, r.start_time) == (p, start_time));
        let identified = recorded || {
            let sock = self.dirs.api_socket(id);
            let served = caller_does(caller, || Ok(pid::find_pid(&sock, &self.vmm_name)))? == Ok(p);
            let vmm_uid = self.vmm_identity(caller).ok().map(|r| r.uid);
            served && vmm_uid.is_some() && pid::euid(p) == vmm_uid
        };
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
            Ok(()) => Ok(Signalled { was_alive: true }),
            Err(nix::errno::Errno::ESRCH) => Ok(Signalled { was_alive: false }),
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

fn chown(path: &Path, caller: Caller) -> Result<(), Failure> {
    std::os::unix::fs::lchown(path, Some(caller.uid), Some(caller.gid))
        .map_err(|e| io_failed(format!("cannot chown {}", path.display()), e))
}

/// Reads the status of the child `pid` once it has ended, without reaping it;
/// `block` waits for the end, else a child still running (or not ours) is `None`.
/// Raw `waitid`, not nix's: its `WaitStatus` cannot hold a real-time signal, and a
/// VMM killed by one must still be reported with its number.
fn peek_exit(pid: i32, block: bool) -> Option<VmmExit> {
    // SAFETY: a zeroed siginfo_t is valid for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOWAIT | if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: waitid on our own child with a valid siginfo_t.
        let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
        if r == 0 {
            // With WNOHANG, a child that has not ended leaves si_pid at 0.
            // SAFETY: waitid filled (or left zeroed) a SIGCHLD siginfo.
            if unsafe { info.si_pid() } == 0 {
                return None;
            }
            break;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
    // SAFETY: waitid filled a SIGCHLD siginfo.
    let status = unsafe { info.si_status() };
    Some(match info.si_code {
        libc::CLD_EXITED => VmmExit {
            code: Some(status),
            signal: None,
        },
        _ => VmmExit {
            code: None,
            signal: Some(status),
        },
    })
}

/// A log the VMM writes, opened (as the caller) without following a symlink, private
/// to its owner.
fn open_log(path: &Path, truncate: bool) -> Result<File, Failure> {
    let mut o = OpenOptions::new();
    if truncate {
        o.write(true).truncate(true);
    } else {
        o.append(true);
    }
    o.create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| io_failed(format!("cannot open {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_helper::Reply;
    use std::os::unix::fs::MetadataExt;

    fn helper(dir: &Path) -> Helper {
        let dirs = Dirs::under(fs::canonicalize(dir).unwrap());
        let network = banger_helper::NetworkConfig {
            bridge: "bgtest0".into(),
            gateway: "10.200.0.1".parse().unwrap(),
            prefix_len: 24,
            nft_table: "banger_test".into(),
        };
        let jail_base = dirs.state.join("jail");
        Helper::new(
            dirs,
            "/bin/sleep".into(),
            None,
            None,
            jail_base,
            network,
            "http://deb.debian.org/debian".into(),
        )
        .unwrap()
    }

    #[test]
    fn a_second_helper_for_the_same_installation_is_refused_until_the_first_ends() {
        let d = tempfile::tempdir().unwrap();
        let first = helper(d.path()).lock_instance().unwrap();
        let second = helper(d.path()).lock_instance().unwrap_err().to_string();
        assert!(
            second.contains(&format!(
                "another bangerd-root (pid {}) is already running",
                std::process::id()
            )),
            "{second}"
        );
        // Another installation is not held by this one.
        let other = tempfile::tempdir().unwrap();
        drop(helper(other.path()).lock_instance().unwrap());
        drop(first);
        let again = helper(d.path()).lock_instance().unwrap();
        let m = std::fs::metadata(d.path().join("jail/launches")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        drop(again);
    }

    const ROOT: Caller = Caller { uid: 0, gid: 0 };
    const NOBODY: Caller = Caller {
        uid: 65534,
        gid: 65534,
    };

    fn id() -> VmId {
        VmId::new("0123456789ab").unwrap()
    }

    fn named(kernel: &Path, rootfs: Option<&Path>) -> BootFiles {
        BootFiles {
            kernel: BootFile::Named {
                path: kernel.into(),
            },
            initrd: None,
            rootfs: rootfs.map(|p| BootFile::Named { path: p.into() }),
        }
    }

    /// A state directory the daemon's user (here: nobody) owns, as in system mode.
    fn nobody_s(dir: &Path) -> Helper {
        std::os::unix::fs::chown(dir, Some(NOBODY.uid), Some(NOBODY.gid)).unwrap();
        let h = helper(dir);
        for parent in [&h.dirs.state, &h.dirs.run] {
            fs::create_dir_all(parent).unwrap();
            std::os::unix::fs::chown(parent, Some(NOBODY.uid), Some(NOBODY.gid)).unwrap();
            safe::ensure_owned_subdir(parent, "vms", NOBODY, 0o700).unwrap();
        }
        h
    }

    #[test]
    fn files_a_caller_names_are_opened_with_its_rights_not_root_s() {
        let dir = tempfile::tempdir().unwrap();
        let h = nobody_s(dir.path());
        h.handle(NOBODY, &Request::CreateVmDirs(CreateVmDirs { vm_id: id() }))
            .unwrap();
        // Root's own files: the VMM would read or write them as root's helper could.
        for (kernel, rootfs) in [
            (Path::new("/etc/shadow"), None),
            (Path::new("/bin/sleep"), Some(Path::new("/etc/passwd"))),
        ] {
            let f = h
                .handle(
                    NOBODY,
                    &Request::LaunchVmm(LaunchVmm {
                        vm_id: id(),
                        owner: None,
                        files: named(kernel, rootfs),
                    }),
                )
                .unwrap_err();
            assert_eq!(f.kind, FailureKind::Failed, "{}", f.message);
            let culprit = rootfs.unwrap_or(kernel);
            assert!(
                f.message
                    .contains(&format!("cannot open {}", culprit.display()))
                    && f.message.contains("Permission denied"),
                "{}",
                f.message
            );
        }
        // A relative path is refused before anything is opened.
        let f = h
            .handle(
                NOBODY,
                &Request::LaunchVmm(LaunchVmm {
                    vm_id: id(),
                    owner: None,
                    files: named(Path::new("vmlinux"), None),
                }),
            )
            .unwrap_err();
        assert_eq!(f.kind, FailureKind::BadArgument, "{}", f.message);
        assert!(!h.dirs.api_socket(&id()).exists());
    }

    #[test]
    fn a_symlink_the_daemon_s_user_plants_in_its_directories_reaches_nothing_of_root_s() {
        let dir = tempfile::tempdir().unwrap();
        let h = nobody_s(dir.path());
        let victim = tempfile::tempdir().unwrap();
        let root_file = victim.path().join("root-owned");
        fs::write(&root_file, b"root's").unwrap();
        // The VM's state directory is a symlink to a root directory: the console and
        // VMM logs would be created (and chowned) there by a naive helper.
        fs::create_dir_all(h.dirs.vm_run_dir(&id())).unwrap();
        std::os::unix::fs::chown(h.dirs.vm_run_dir(&id()), Some(NOBODY.uid), Some(NOBODY.gid))
            .unwrap();
        std::os::unix::fs::symlink(victim.path(), h.dirs.vm_state_dir(&id())).unwrap();
        let f = h
            .handle(
                NOBODY,
                &Request::LaunchVmm(LaunchVmm {
                    vm_id: id(),
                    owner: None,
                    files: named(Path::new("/bin/sleep"), None),
                }),
            )
            .unwrap_err();
        assert!(
            f.message.contains("console.log") && f.message.contains("Permission denied"),
            "{}",
            f.message
        );
        assert!(!victim.path().join("console.log").exists());
        // The stale-socket clean-up unlinks as the caller: a socket path that is a
        // link to root's file removes the link at most, never the file.
        std::os::unix::fs::symlink(&root_file, h.dirs.api_socket(&id())).unwrap();
        let _ = h.handle(
            NOBODY,
            &Request::LaunchVmm(LaunchVmm {
                vm_id: id(),
                owner: None,
                files: named(Path::new("/bin/sleep"), None),
            }),
        );
        assert_eq!(fs::read(&root_file).unwrap(), b"root's");
        // Removing the VM's directories through the link removes nothing of root's.
        h.handle(
            NOBODY,
            &Request::RemoveVmState(RemoveVmState { vm_id: id() }),
        )
        .unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(fs::read(&root_file).unwrap(), b"root's");
        assert_eq!(fs::metadata(&root_file).unwrap().uid(), 0);
    }

    /// The daemon's user points the VM's socket at a directory of its own whose
    /// pidfile names a process of root's called like the VMM: a process the launch
    /// record does not name is believed only if it runs as the VMM user, so root's
    /// process lives.
    #[test]
    fn signal_believes_the_launch_record_not_a_pidfile_the_caller_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let h = nobody_s(dir.path());
        h.handle(NOBODY, &Request::CreateVmDirs(CreateVmDirs { vm_id: id() }))
            .unwrap();
        let mut victim = std::process::Command::new("/bin/sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let vpid = victim.id() as i32;
        let st = pid::start_time(vpid).unwrap();
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        fs::write(theirs.join("sleep.pid"), vpid.to_string()).unwrap();
        let vmm_dir = h.dirs.vmm_dir(&id());
        fs::create_dir_all(&vmm_dir).unwrap();
        std::os::unix::fs::symlink(theirs.join("firecracker.socket"), h.dirs.api_socket(&id()))
            .unwrap();
        for d in [&theirs, &vmm_dir] {
            std::os::unix::fs::chown(d, Some(NOBODY.uid), Some(NOBODY.gid)).unwrap();
        }
        // (The planted link does lead to that process: banger-fc's own lookup finds it.)
        assert_eq!(pid::find_pid(&h.dirs.api_socket(&id()), "sleep"), Ok(vpid));
        let f = h
            .handle(
                NOBODY,
                &Request::SignalVmm(SignalVmm {
                    vm_id: id(),
                    pid: vpid,
                    start_time: st,
                    signal: VmmSignal::Kill,
                }),
            )
            .unwrap_err();
        assert!(f.message.contains("not the VMM"), "{}", f.message);
        assert!(
            victim.try_wait().unwrap().is_none(),
            "root's process was signalled"
        );
        let _ = victim.kill();
        let _ = victim.wait();
    }

    #[test]
    fn signal_refuses_a_pid_that_is_not_the_vm_s_vmm() {
        let dir = tempfile::tempdir().unwrap();
        let h = helper(dir.path());
        // Our own test process: alive, but neither its comm nor its cmdline match.
        let me = std::process::id() as i32;
        let st = pid::start_time(me).unwrap();
        let f = h
            .handle(
                ROOT,
                &Request::SignalVmm(SignalVmm {
                    vm_id: id(),
                    pid: me,
                    start_time: st,
                    signal: VmmSignal::Kill,
                }),
            )
            .unwrap_err();
        assert!(f.message.contains("not the VMM"), "{}", f.message);
        // A wrong start time means the pid was reused: reported dead, nothing sent.
        let r = h
            .handle(
                ROOT,
                &Request::SignalVmm(SignalVmm {
                    vm_id: id(),
                    pid: me,
                    start_time: st + 1,
                    signal: VmmSignal::Kill,
                }),
            )
            .unwrap();
        assert_eq!(r, Reply::Signalled(Signalled { was_alive: false }));
    }

    #[test]
    fn guest_addresses_must_be_hosts_of_the_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let h = helper(dir.path());
        assert!(h.check_guest_ip("10.200.0.2".parse().unwrap()).is_ok());
        assert!(h.check_guest_ip("10.200.0.254".parse().unwrap()).is_ok());
        for bad in [
            "10.200.0.1",
            "10.200.0.0",
            "10.200.0.255",
            "10.201.0.2",
            "8.8.8.8",
        ] {
            assert!(h.check_guest_ip(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn removing_directories_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let h = helper(dir.path());
        h.handle(ROOT, &Request::CreateVmDirs(CreateVmDirs { vm_id: id() }))
            .unwrap();
        for _ in 0..2 {
            h.handle(
                ROOT,
                &Request::RemoveVmRuntime(RemoveVmRuntime { vm_id: id() }),
            )
            .unwrap();
            h.handle(ROOT, &Request::RemoveVmState(RemoveVmState { vm_id: id() }))
                .unwrap();
        }
        assert!(!h.dirs.vm_run_dir(&id()).exists() && !h.dirs.vm_state_dir(&id()).exists());
    }
}
