//! The VM state machine. Every verb is refresh → check (`can_*`) → act → save, with
//! the state persisted before and after each step that touches a process, so a crash
//! between two steps leaves something [`Service::reconcile`] can finish.
//!
//! One file per verb (`create`, `start`, `stop`, `kill`, `rm`), with `boot` (the
//! boot plan and the VMM's configuration), `reconcile` and `ssh_keys`; what they
//! share (the opening, refresh, the helper, errors) is here.

mod boot;
mod create;
#[cfg(test)]
pub(crate) mod fake;
mod kill;
mod reconcile;
mod rm;
mod ssh_keys;
mod start;
mod stop;
mod timeline;

use boot::configure;
pub(crate) use ssh_keys::{GUEST_AGENT, GUEST_UNIT, GuestIdentity, IdentityError, MMDS_MARKER};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_api::{DEFAULT_BOOT_ARGS, ErrorKind, ValidationError, Vm, VmSpec, VmState, VmSummary};
use banger_fc::models::{BootSource, Drive, MachineConfiguration};
use banger_fc::pid;
use banger_helper::{
    AllowGuest, BootFile, BootFiles, ClientError, CreateTap, CreateVmDirs, DeleteTap, Digest, Dirs,
    Exited, HelperClient, HelperRequest, Identity, ImageFile, LaunchList, LaunchVmm, Launched,
    Launches, NetworkConfig, Ping, Pong, RemoveVmRuntime, RemoveVmState, Reply, Request, SignalVmm,
    VmId, VmmExited, VmmSignal,
};
use rand::Rng;

use crate::handles::{self, Handles};
use crate::store::{StateUpdate, Store, StoreError, VmRecord};

/// How long InstanceStart may take (QEMU under TCG is slower than Firecracker).
const INSTANCE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the VMM may take to answer on its socket after launch.
const API_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a guest gets to shut down after Ctrl-Alt-Del.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A build's release or package name, refused before anything runs.
    #[error(transparent)]
    BuildArgument(#[from] banger_helper::ArgError),
    #[error("no VM named {0:?}")]
    NotFound(String),
    #[error(
        "VM {name} belongs to uid {owner}; only its creator, root and the daemon's user may act on it"
    )]
    NotOwner { name: String, owner: u32 },
    #[error("a VM named {0} already exists")]
    NameTaken(String),
    #[error("an image named {0} already exists")]
    ImageNameTaken(String),
    #[error("an image named {0} is being built; wait for that build or choose another name")]
    ImageBuilding(String),
    #[error("no free guest address left in {0}; remove a VM or configure a larger subnet")]
    PoolExhausted(String),
    #[error("VM {name} is {state}; cannot {action} it{hint}")]
    InvalidState {
        name: String,
        state: VmState,
        action: &'static str,
        hint: &'static str,
    },
    #[error("VM {name} failed to start: {reason}")]
    StartFailed { name: String, reason: String },
    #[error(
        "no image named {0:?}; build one with `banger image build` or list them with `banger image ls`"
    )]
    ImageNotFound(String),
    #[error("image {name} is used by {users}; remove those VMs first")]
    ImageInUse { name: String, users: String },
    #[error("cannot import {path}: {reason}")]
    ImportRefused { path: String, reason: String },
    #[error("cannot use {path} as uid {uid}, whose request this is: {reason}")]
    FileRefused {
        path: String,
        uid: u32,
        reason: String,
    },
    #[error("image build failed: {0}")]
    BuildFailed(String),
    #[error("cannot prepare the disk of {name}: {reason}")]
    Disk { name: String, reason: String },
    #[error("the root helper failed")]
    Helper(#[from] ClientError),
    #[error("state store failed")]
    Store(#[source] StoreError),
    #[error("cannot read the console log of {name}")]
    Console {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(n) => ServiceError::NameTaken(n.to_string()),
            StoreError::ImageTaken(n) => ServiceError::ImageNameTaken(n),
            StoreError::PoolExhausted(net) => ServiceError::PoolExhausted(net),
            other => ServiceError::Store(other),
        }
    }
}

impl ServiceError {
    /// The one place errors become kinds (and so HTTP statuses and exit codes).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::Invalid(_)
            | ServiceError::BuildArgument(_)
            | ServiceError::ImportRefused { .. }
            | ServiceError::FileRefused { .. } => ErrorKind::BadRequest,
            ServiceError::NotOwner { .. } => ErrorKind::Forbidden,
            ServiceError::NotFound(_) | ServiceError::ImageNotFound(_) => ErrorKind::NotFound,
            ServiceError::NameTaken(_)
            | ServiceError::ImageNameTaken(_)
            | ServiceError::ImageBuilding(_)
            | ServiceError::InvalidState { .. }
            | ServiceError::PoolExhausted(_)
            | ServiceError::ImageInUse { .. } => ErrorKind::Conflict,
            ServiceError::StartFailed { .. }
            | ServiceError::BuildFailed(_)
            | ServiceError::Disk { .. }
            | ServiceError::Helper(_)
            | ServiceError::Store(_)
            | ServiceError::Console { .. } => ErrorKind::Internal,
        }
    }
}

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// The privileged boundary as the service sees it: one closed [`Request`] in, its
/// wire [`Reply`] out. [`HelperClient`] talks to bangerd-root over its socket; the
/// unit tests put a recording fake behind it, so the lifecycle's rules run without
/// root. The service calls it only through [`call`](Self::call), typed by the request,
/// so the fake's answers go through the same reply mapping as the helper's.
pub trait Helper: Send + Sync + 'static {
    fn exchange(&self, req: &Request) -> std::result::Result<Reply, ClientError>;
}

impl dyn Helper {
    /// `req`, answered with the reply its [`HelperRequest`] declares.
    pub fn call<R: HelperRequest>(&self, req: R) -> std::result::Result<R::Reply, ClientError> {
        banger_helper::typed_reply::<R>(self.exchange(&req.into())?)
    }
}

impl Helper for HelperClient {
    fn exchange(&self, req: &Request) -> std::result::Result<Reply, ClientError> {
        HelperClient::exchange(self, req)
    }
}

pub struct Service {
    pub(crate) dirs: Dirs,
    pub(crate) store: Store,
    helper: Arc<dyn Helper>,
    /// One lock per VM id: verbs on one VM are serialized, different VMs run in parallel.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The helper's network (bridge, gateway, prefix), learnt at start.
    network: std::sync::OnceLock<NetworkConfig>,
    /// The helper's VMM, learnt at start.
    vmm: std::sync::OnceLock<VmmInfo>,
    /// The helper instance last seen (see [`Service::watch_helper`]).
    helper_instance: Mutex<String>,
    /// Image builds in progress: image name -> build directory (for progress).
    pub(crate) builds: Mutex<HashMap<String, PathBuf>>,
}

/// The VMM the helper launches, as its Pong says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmInfo {
    pub name: String,
    pub version: Option<String>,
    pub jailed: bool,
}

impl VmmInfo {
    /// banger-vmm-qemu boots the compressed kernel best (QEMU's own loader);
    /// Firecracker, and any other VMM of its API, loads only an ELF vmlinux.
    pub fn boots_bzimage(&self) -> bool {
        self.name == "banger-vmm-qemu"
    }
}

impl std::fmt::Display for VmmInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(v) = &self.version {
            write!(f, " v{}", v.trim_start_matches('v'))?;
        }
        if self.jailed {
            f.write_str(" (jailed)")?;
        }
        Ok(())
    }
}

/// What reconcile did with one VM, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    Adopted { pid: i32 },
    Cleaned { reason: String },
    LeftAlone { reason: String },
}

impl Service {
    pub fn new(dirs: Dirs, store: Store, helper: impl Helper) -> Self {
        Self {
            dirs,
            store,
            helper: Arc::new(helper),
            locks: Mutex::new(HashMap::new()),
            network: std::sync::OnceLock::new(),
            vmm: std::sync::OnceLock::new(),
            helper_instance: Mutex::new(String::new()),
            builds: Mutex::new(HashMap::new()),
        }
    }

    pub fn dirs(&self) -> &Dirs {
        &self.dirs
    }

    /// The opening every verb shares (refresh, check, act, save): find the VM by name,
    /// hold its lock for the verb, and see it as it is now: a VMM that died while
    /// nobody looked is recorded as ended before the verb decides anything.
    async fn open(&self, name: &str) -> Result<(VmRecord, tokio::sync::OwnedMutexGuard<()>)> {
        let first = self.record(name)?;
        let guard = self.lock_for(&first.id).lock_owned().await;
        let rec = self.record(name)?;
        if rec.id != first.id {
            // Removed and made anew under the same name while we waited: not this VM.
            return Err(ServiceError::NotFound(name.to_string()));
        }
        Ok((self.refresh(rec).await?, guard))
    }

    /// Whether `who` may act on VM `name`: its creator, root, and the daemon's own
    /// user (who owns all of banger's state anyway). Other members of group
    /// `banger` see it in `vm list` and nothing more: not its console, its errors or
    /// its verbs. A VM recorded before creators were (schema < 3) is root's.
    pub fn authorize(&self, name: &str, who: Identity) -> Result<()> {
        if who.uid == 0 || who.uid == nix::unistd::geteuid().as_raw() {
            return Ok(());
        }
        let rec = self.record(name)?;
        match rec.owner {
            Some((uid, _)) if uid == who.uid => Ok(()),
            owner => Err(ServiceError::NotOwner {
                name: name.into(),
                owner: owner.map_or(0, |(uid, _)| uid),
            }),
        }
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// The helper, to call from a blocking thread of one's own.
    pub fn helper_client(&self) -> Arc<dyn Helper> {
        self.helper.clone()
    }

    pub(crate) async fn helper<R>(&self, req: R) -> Result<R::Reply>
    where
        R: HelperRequest + Send + 'static,
        R::Reply: Send + 'static,
    {
        let client = self.helper.clone();
        tokio::task::spawn_blocking(move || client.call(req))
            .await
            .expect("helper call does not panic")
            .map_err(ServiceError::Helper)
    }

    /// Checks the helper answers; learns its VMM and network.
    pub async fn helper_ping(&self) -> Result<VmmInfo> {
        let Pong {
            vmm,
            vmm_version,
            jailed,
            network,
            instance,
            ..
        } = self.helper(Ping {}).await?;
        let _ = self.network.set(network);
        *self
            .helper_instance
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = instance;
        let info = VmmInfo {
            name: vmm,
            version: vmm_version,
            jailed,
        };
        let _ = self.vmm.set(info.clone());
        Ok(info)
    }

    fn record(&self, name: &str) -> Result<VmRecord> {
        self.store
            .get_by_name(name)?
            .ok_or_else(|| ServiceError::NotFound(name.into()))
    }

    pub fn to_api(&self, r: &VmRecord) -> Vm {
        let id = r.id.clone();
        Vm {
            id: r.id.to_string(),
            name: r.name.clone(),
            state: r.state,
            spec: r.spec.clone(),
            created_at: r.created_at.clone(),
            updated_at: r.updated_at.clone(),
            pid: if r.state.has_vmm() { r.pid } else { None },
            vmm: r.vmm.clone(),
            last_error: r.last_error.clone(),
            console_log: self.dirs.console_log(&id),
            ip: r.ip.clone(),
            disk: r.image_digest.as_ref().map(|_| self.dirs.vm_disk(&id)),
            disk_method: r.disk_method.clone(),
            image_digest: r.image_digest.clone(),
            host_key: std::fs::read_to_string(
                self.dirs.vm_state_dir(&id).join("ssh_host_ed25519_key.pub"),
            )
            .ok()
            .map(|k| k.trim().to_string()),
        }
    }

    fn network(&self) -> &NetworkConfig {
        self.network.get().expect("helper_ping ran before serving")
    }

    pub async fn get(&self, name: &str) -> Result<Vm> {
        let rec = self.record(name)?;
        let rec = self.refresh_unlocked(rec).await?;
        Ok(self.to_api(&rec))
    }

    pub async fn list(&self) -> Result<Vec<VmSummary>> {
        let mut out = self.store.summaries();
        // Only VMs that should have a VMM need a look at /proc.
        for line in out.iter_mut().filter(|l| l.state.has_vmm()) {
            if let Some(rec) = self.store.get_by_id(&line.id)? {
                *line = crate::store::summary(&self.refresh_unlocked(rec).await?);
            }
        }
        Ok(out)
    }

    /// Refreshes a VM nobody is working on; one under a verb is reported as is.
    async fn refresh_unlocked(&self, rec: VmRecord) -> Result<VmRecord> {
        if !rec.state.has_vmm() {
            return Ok(rec);
        }
        let lock = self.lock_for(&rec.id);
        let Ok(_g) = lock.try_lock() else {
            return Ok(rec);
        };
        let rec = self
            .store
            .get_by_id(&rec.id)?
            .ok_or_else(|| ServiceError::NotFound(rec.name.to_string()))?;
        self.refresh(rec).await
    }

    /// If the record says a VMM exists but that process is gone, the VM is stopped
    /// (or failed, if it never finished starting) and its runtime directory released.
    async fn refresh(&self, rec: VmRecord) -> Result<VmRecord> {
        if !rec.state.has_vmm() {
            return Ok(rec);
        }
        let alive = match (rec.pid, rec.pid_start_time) {
            (Some(p), Some(st)) => pid::start_time(p) == Some(st),
            _ => false,
        };
        if alive {
            return Ok(rec);
        }
        let (state, err) = self.how_it_ended(&rec).await;
        tracing::info!(vm = %rec.name, "VMM is gone; marking {state}");
        self.release_runtime(&rec.id).await?;
        self.store.set_state(
            &rec.id,
            StateUpdate::to(state).error(err.as_deref().or(rec.last_error.as_deref())),
        )?;
        Ok(self.store.get_by_id(&rec.id)?.expect("row exists"))
    }

    /// A VMM that ended by itself: `stopped` after a clean exit (the guest shut down),
    /// `failed` with its exit status and the last lines of its log otherwise. The
    /// helper that launched it knows the status; after a helper restart it is unknown
    /// and the VM is `stopped` with a note saying so.
    async fn how_it_ended(&self, rec: &VmRecord) -> (VmState, Option<String>) {
        let vm_id = rec.id.clone();
        let exit = match (rec.pid, rec.pid_start_time) {
            (Some(pid), Some(start_time)) => {
                match self
                    .helper(VmmExited {
                        vm_id: vm_id.clone(),
                        pid,
                        start_time,
                    })
                    .await
                {
                    Ok(Exited { exit }) => exit,
                    _ => None,
                }
            }
            _ => None,
        };
        let tail = |reason: String| with_console_tail(&reason, None, &self.dirs.vmm_log(&vm_id));
        match (rec.state, exit) {
            (VmState::Starting, e) => (
                VmState::Failed,
                Some(tail(match e {
                    Some(e) => format!("the VMM ended ({e}) before the VM finished starting"),
                    None => "the VMM exited before the VM finished starting".into(),
                })),
            ),
            (_, Some(e)) if e.is_clean() => (VmState::Stopped, None),
            (_, Some(e)) => (VmState::Failed, Some(tail(format!("the VMM ended unexpectedly ({e})")))),
            (_, None) => (
                VmState::Stopped,
                Some("the VMM ended by itself; its exit status is unknown (the root helper restarted since it launched it)".into()),
            ),
        }
    }

    /// Releases what only a running VM holds: its tap and its run directory. The
    /// address and disk stay until `rm`, so a VM keeps its address across restarts.
    async fn release_runtime(&self, vm_id: &VmId) -> Result<()> {
        self.helper(DeleteTap {
            vm_id: vm_id.clone(),
        })
        .await?;
        self.helper(RemoveVmRuntime {
            vm_id: vm_id.clone(),
        })
        .await?;
        Ok(())
    }

    /// The console log from `offset`; returns the bytes and the next offset.
    pub async fn console(&self, name: &str, offset: u64) -> Result<(Vec<u8>, u64)> {
        use std::io::{Read, Seek, SeekFrom};
        let rec = self.record(name)?;
        let vm_id = rec.id.clone();
        let path = self.dirs.console_log(&vm_id);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(source) => {
                return Err(ServiceError::Console {
                    name: name.into(),
                    source,
                });
            }
        };
        let err = |source| ServiceError::Console {
            name: name.into(),
            source,
        };
        let len = f.metadata().map_err(err)?.len();
        let start = offset.min(len);
        f.seek(SeekFrom::Start(start)).map_err(err)?;
        let mut buf = Vec::new();
        f.take(8 * 1024 * 1024).read_to_end(&mut buf).map_err(err)?;
        let next = start + buf.len() as u64;
        Ok((buf, next))
    }

    pub fn counts(&self) -> Result<(usize, usize)> {
        Ok(self.store.counts())
    }
}

/// True once the process (pid, start time) no longer exists; false on timeout.
async fn wait_gone(p: i32, st: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pid::start_time(p) == Some(st) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// An error and its causes on one line (the one formatter: [`banger_api::error_chain`]).
pub use banger_api::error_chain as chain;

/// Lines of each log [`with_console_tail`] appends.
const TAIL_LINES: usize = 5;
/// How much of each log, from its offset, [`with_console_tail`] reads at most.
const TAIL_READ_LIMIT: u64 = 1 << 20;

/// Appends the last lines of the console (from `offset`: this boot's part) and of the
/// VMM log (one per boot), which usually say why. A log that cannot be read or holds
/// only blank lines adds nothing.
fn with_console_tail(reason: &str, console: Option<(&PathBuf, u64)>, vmm_log: &PathBuf) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut s = reason.to_string();
    let console = console.map(|(p, off)| ("console", p, off));
    for (label, path, offset) in console.into_iter().chain([("VMM log", vmm_log, 0)]) {
        let mut text = Vec::new();
        let read = std::fs::File::open(path).and_then(|mut f| {
            f.seek(SeekFrom::Start(offset))?;
            f.take(TAIL_READ_LIMIT).read_to_end(&mut text)
        });
        if read.is_err() {
            continue;
        }
        let tail = banger_api::last_lines(&text, TAIL_LINES);
        if !tail.is_empty() {
            s.push_str(&format!(
                "\n--- last lines of the {label} ({}) ---\n{tail}",
                path.display()
            ));
        }
    }
    s
}

/// Under a root daemon, opens each file the spec names as `owner` would (read-only for
/// kernel and initrd, read-write for the disk), so a caller learns now, not at start,
/// that a file is not theirs to use. The helper repeats this at every start: the check
/// here is for the error message, the helper's is the rule.
///
/// A non-root daemon cannot take another identity; there the caller must be allowed
/// the socket, which in system mode makes it a `banger` group member, trusted with the
/// daemon user's files (docs/security.md).
pub(crate) async fn check_named_files(spec: &VmSpec, owner: Identity) -> Result<()> {
    if !nix::unistd::geteuid().is_root() || owner.uid == 0 {
        return Ok(());
    }
    let files: Vec<(std::path::PathBuf, bool)> = [
        (&spec.kernel, false),
        (&spec.initrd, false),
        (&spec.rootfs, true),
    ]
    .into_iter()
    .filter_map(|(p, w)| p.clone().map(|p| (p, w)))
    .collect();
    tokio::task::spawn_blocking(move || {
        for (path, write) in files {
            open_as(owner, &path, write).map_err(|e| ServiceError::FileRefused {
                path: path.display().to_string(),
                uid: owner.uid,
                reason: e.to_string(),
            })?;
        }
        Ok(())
    })
    .await
    .expect("file check does not panic")
}

/// Opens `path` as `who` (a regular file only; never blocking on a FIFO, never a
/// controlling terminal). Root's own opens go through here too, unchanged.
/// A daemon that is not root opens with its own rights (it cannot take another's).
pub(crate) fn open_as(
    who: Identity,
    path: &std::path::Path,
    write: bool,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
    };
    let f = if nix::unistd::geteuid().is_root() {
        banger_helper::as_identity(who, open)??
    } else {
        open()?
    };
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    //! The lifecycle's rules without root: a real store (SQLite in a temporary
    //! directory), real processes for VMMs (`sleep`, checked by pid and start time as
    //! the daemon does), and a recording fake behind [`Helper`].

    use super::fake::*;
    use super::*;
    use banger_helper::VmmExit;

    #[tokio::test]
    async fn a_vmm_that_died_unseen_is_recorded_with_how_it_ended_and_its_runtime_released() {
        for (exit, state, error) in [
            (
                Some(VmmExit {
                    code: None,
                    signal: Some(9),
                }),
                VmState::Failed,
                Some("the VMM ended unexpectedly (killed by signal 9)"),
            ),
            (
                Some(VmmExit {
                    code: Some(0),
                    signal: None,
                }),
                VmState::Stopped,
                None,
            ),
            (None, VmState::Stopped, Some("its exit status is unknown")),
        ] {
            let e = exit.clone();
            let t = service(move |r| match r {
                Request::VmmExited(r) => Ok(r.answer(Exited { exit: e.clone() })),
                r => done(r),
            });
            let pid = dead_pid();
            running(&t, "gone", "0123456789ab", pid, 1);
            // `stop` finds nothing to stop once it has seen the VMM is gone.
            let vm = t.svc.stop("gone", Duration::from_secs(1)).await.unwrap();
            assert_eq!(vm.state, state, "{exit:?}");
            let rec = t.state("gone");
            assert_eq!((rec.pid, rec.pid_start_time), (None, None), "{exit:?}");
            match error {
                Some(e) => assert!(
                    rec.last_error.as_deref().unwrap_or_default().contains(e),
                    "{exit:?}: {:?}",
                    rec.last_error
                ),
                None => assert_eq!(rec.last_error, None),
            }
            assert_eq!(
                t.ops(),
                ["vmm_exited", "delete_tap", "remove_vm_runtime"],
                "{exit:?}"
            );
            let Request::VmmExited(VmmExited {
                vm_id,
                pid: p,
                start_time,
            }) = &t.seen.lock().unwrap()[0]
            else {
                unreachable!()
            };
            assert_eq!(
                (vm_id.as_str(), *p, *start_time),
                ("0123456789ab", pid, 1),
                "the helper is asked about that VMM"
            );
        }
    }

    #[tokio::test]
    async fn verbs_the_state_does_not_allow_are_refused_without_asking_the_helper() {
        let t = service(done);
        let me = std::process::id() as i32;
        let st = pid::start_time(me).unwrap();
        running(&t, "live", "00000000000a", me, st);
        match t.svc.start("live").await {
            Err(ServiceError::InvalidState { state, action, .. }) => {
                assert_eq!((state, action), (VmState::Running, "start"))
            }
            other => panic!("{other:?}"),
        }
        match t.svc.remove("live", false).await {
            Err(ServiceError::InvalidState { state, action, .. }) => {
                assert_eq!((state, action), (VmState::Running, "remove"))
            }
            other => panic!("{other:?}"),
        }
        // Stopping or killing a VM that never ran is a no-op, as `docker stop` is.
        t.svc
            .store
            .insert("00000000000b", &spec("new"), (0, 0))
            .unwrap();
        assert_eq!(
            t.svc
                .stop("new", Duration::from_secs(1))
                .await
                .unwrap()
                .state,
            VmState::Created
        );
        assert_eq!(t.svc.kill("new").await.unwrap().state, VmState::Created);
        assert!(matches!(
            t.svc.stop("nope", Duration::from_secs(1)).await,
            Err(ServiceError::NotFound(_))
        ));
        assert_eq!(t.ops(), Vec::<String>::new(), "nothing reached the helper");
        assert_eq!(t.state("live").state, VmState::Running);
    }

    #[tokio::test]
    async fn kill_and_rm_force_end_exactly_the_recorded_vmm_then_release_it() {
        for force_rm in [false, true] {
            let child = Arc::new(Mutex::new(
                std::process::Command::new("sleep")
                    .arg("60")
                    .spawn()
                    .unwrap(),
            ));
            let pid = child.lock().unwrap().id() as i32;
            let st = pid::start_time(pid).unwrap();
            let c = child.clone();
            let t = service(move |r| {
                if let Request::SignalVmm(SignalVmm {
                    pid: p,
                    start_time,
                    signal: VmmSignal::Kill,
                    ..
                }) = r
                {
                    // The helper's own checks: the recorded (pid, start time) only.
                    assert_eq!((*p, *start_time), (pid, st));
                    let mut c = c.lock().unwrap();
                    c.kill().unwrap();
                    c.wait().unwrap();
                }
                done(r)
            });
            running(&t, "vm", "0123456789ab", pid, st);
            if force_rm {
                t.svc.remove("vm", true).await.unwrap();
                assert!(t.svc.store.get_by_name("vm").unwrap().is_none());
                assert_eq!(
                    t.ops(),
                    [
                        "signal_vmm",
                        "delete_tap",
                        "remove_vm_runtime",
                        "delete_tap",
                        "remove_vm_runtime",
                        "remove_vm_state"
                    ]
                );
            } else {
                assert_eq!(t.svc.kill("vm").await.unwrap().state, VmState::Stopped);
                assert_eq!(t.ops(), ["signal_vmm", "delete_tap", "remove_vm_runtime"]);
                let rec = t.state("vm");
                assert_eq!((rec.pid, rec.pid_start_time), (None, None));
            }
            assert_eq!(pid::start_time(pid), None, "the VMM is gone");
        }
    }

    #[tokio::test]
    async fn reconcile_kills_nothing_it_cannot_identify() {
        let t = service(done);
        // Run directory gone (a reboot): stopped, nothing signalled.
        let me = std::process::id() as i32;
        let st = pid::start_time(me).unwrap();
        let a = running(&t, "rebooted", "00000000000a", me, st);
        std::fs::remove_dir_all(t.svc.dirs.vm_run_dir(&a.id)).unwrap();
        // A recorded pid that is now another process (this test, not a VMM): stopped,
        // and that process left alone.
        running(&t, "reused", "00000000000b", me, st);
        let out = t.svc.reconcile().await.unwrap();
        let find = |n: &str| {
            out.iter()
                .find(|(name, _)| name == n)
                .map(|(_, r)| r.clone())
                .unwrap()
        };
        assert!(
            matches!(find("rebooted"), Reconciled::Cleaned { reason } if reason.contains("run directory is gone"))
        );
        assert!(
            matches!(find("reused"), Reconciled::LeftAlone { reason } if reason.contains("neither adopted nor killed"))
        );
        assert_eq!(t.state("rebooted").state, VmState::Stopped);
        assert_eq!(t.state("reused").state, VmState::Stopped);
        assert!(
            !t.ops().contains(&"signal_vmm".to_string()),
            "{:?}",
            t.ops()
        );
    }

    /// A stand-in VMM: `sleep` under the VMM's name (its comm is what reconcile checks).
    fn fake_vmm(dir: &Path) -> std::process::Child {
        let exe = dir.join("banger-vmm-qemu");
        if !exe.exists() {
            std::fs::copy("/bin/sleep", &exe).unwrap();
        }
        std::process::Command::new(exe).arg("30").spawn().unwrap()
    }

    #[tokio::test]
    async fn reconcile_adopts_a_vm_saved_as_running_from_proc_alone_and_asks_the_others() {
        use std::os::unix::fs::MetadataExt;
        let t = service(done);
        let bin = tempfile::tempdir().unwrap();
        let mut vmms = [fake_vmm(bin.path()), fake_vmm(bin.path())];
        let pid = |c: &std::process::Child| c.id() as i32;
        let (p0, p1) = (pid(&vmms[0]), pid(&vmms[1]));
        wait_for_comm(p0);
        wait_for_comm(p1);
        let (st0, st1) = (pid::start_time(p0).unwrap(), pid::start_time(p1).unwrap());
        let saved = running(&t, "saved", "00000000000a", p0, st0);
        let stopping = running(&t, "stopping", "00000000000b", p1, st1);
        let to_stopping = StateUpdate::to(VmState::Stopping)
            .vmm(Some("banger-vmm-qemu"))
            .process(Some((p1, st1)));
        t.svc.store.set_state(&stopping.id, to_stopping).unwrap();
        // Each VM's API socket: a listener that only counts who connects.
        let listen = |id: &VmId| {
            let sock = t.svc.dirs.api_socket(id);
            std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
            let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        };
        let (api0, api1) = (listen(&saved.id), listen(&stopping.id));
        // handles.json as reconcile would write it for the saved VM.
        let h = Handles {
            vm_id: saved.id.to_string(),
            pid: p0,
            start_time: st0,
            vmm_name: "banger-vmm-qemu".into(),
            api_sock: t.svc.dirs.api_socket(&saved.id),
            chroot: None,
            pidfile: None,
        };
        handles::write(&t.svc.dirs.handles(&saved.id), &h).unwrap();
        let inode = std::fs::metadata(t.svc.dirs.handles(&saved.id))
            .unwrap()
            .ino();

        let out = t.svc.reconcile().await.unwrap();
        for (name, p) in [("saved", p0), ("stopping", p1)] {
            let r = out.iter().find(|(n, _)| n == name).map(|(_, r)| r.clone());
            assert!(
                matches!(r, Some(Reconciled::Adopted { pid }) if pid == p),
                "{name}: {r:?}"
            );
            assert_eq!(t.state(name).state, VmState::Running, "{name}");
        }
        // The saved VM: no API round trip, its handles not written again.
        assert!(
            api0.accept().is_err(),
            "reconcile asked the API of a VM saved as running"
        );
        let after = std::fs::metadata(t.svc.dirs.handles(&saved.id))
            .unwrap()
            .ino();
        assert_eq!(after, inode, "handles.json was written again");
        // The interrupted stop: its VMM was asked, and the VM says what happened.
        assert!(
            api1.accept().is_ok(),
            "reconcile did not ask the API of an interrupted stop"
        );
        assert!(
            t.state("stopping")
                .last_error
                .unwrap()
                .contains("stop was interrupted")
        );
        assert!(t.state("saved").last_error.is_none());
        for v in &mut vmms {
            let _ = v.kill();
            let _ = v.wait();
        }
    }

    /// Until the child has exec'd (its comm is the VMM's name).
    fn wait_for_comm(p: i32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid::comm(Path::new("/proc"), p).as_deref() != Some("banger-vmm-qemu") {
            assert!(
                Instant::now() < deadline,
                "pid {p} never became banger-vmm-qemu"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A helper that answers with another kind of reply than the request declares
    /// (one that does not keep the protocol) is an error, never read as something
    /// else: the ping fails, and a launch answered "done" fails the start cleanly.
    #[tokio::test]
    async fn a_reply_of_the_wrong_kind_is_an_error_and_a_start_fails_cleanly() {
        let t = service(done);
        match t.svc.helper_ping().await {
            Err(ServiceError::Helper(ClientError::UnexpectedReply(r))) => {
                assert_eq!(*r, Reply::Done)
            }
            other => panic!("{other:?}"),
        }

        let t = service(|r| match r {
            // Not a `Launched`.
            Request::LaunchVmm(_) => Ok(Reply::Done),
            r => pong(r),
        });
        t.svc.helper_ping().await.unwrap();
        t.svc
            .store
            .insert("0123456789ab", &spec("vm"), (0, 0))
            .unwrap();
        match t.svc.start("vm").await {
            Err(ServiceError::StartFailed { reason, .. }) => {
                assert!(reason.contains("unexpected reply"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let rec = t.state("vm");
        assert_eq!((rec.state, rec.pid), (VmState::Failed, None));
        let ops = t.ops();
        assert_eq!(
            ops[..3],
            ["ping", "create_vm_dirs", "launch_vmm"],
            "{ops:?}"
        );
        assert_eq!(
            ops.last().map(String::as_str),
            Some("remove_vm_runtime"),
            "{ops:?}"
        );
        assert!(
            !ops.contains(&"signal_vmm".to_string()),
            "nothing was launched: {ops:?}"
        );
    }

    #[tokio::test]
    async fn members_act_on_their_own_vms_only() {
        let t = service(done);
        t.svc
            .store
            .insert("00000000000a", &spec("alices"), (1000, 1000))
            .unwrap();
        t.svc
            .store
            .insert("00000000000b", &spec("roots"), (0, 0))
            .unwrap();
        let alice = Identity {
            uid: 1000,
            gid: 1000,
        };
        let bob = Identity {
            uid: 1001,
            gid: 1000,
        };
        t.svc.authorize("alices", alice).unwrap();
        for (who, vm, owner) in [(bob, "alices", 1000), (alice, "roots", 0)] {
            match t.svc.authorize(vm, who) {
                Err(ServiceError::NotOwner { name, owner: o }) => {
                    assert_eq!((name.as_str(), o), (vm, owner))
                }
                other => panic!("{who:?} on {vm}: {other:?}"),
            }
        }
        assert_eq!(
            ServiceError::NotOwner {
                name: "x".into(),
                owner: 0
            }
            .kind(),
            ErrorKind::Forbidden
        );
        // Root and the daemon's own user act on any VM.
        t.svc
            .authorize("alices", Identity { uid: 0, gid: 0 })
            .unwrap();
        let me = nix::unistd::geteuid().as_raw();
        t.svc
            .authorize("alices", Identity { uid: me, gid: me })
            .unwrap();
        assert!(matches!(
            t.svc.authorize("nope", bob),
            Err(ServiceError::NotFound(_))
        ));
    }

    /// A failure's reason ends with the last non-blank lines of this boot's part of
    /// the console and of the VMM log, each labelled with its file; a log that is
    /// missing or blank adds nothing, and only the first MiB after the offset is read.
    #[test]
    fn a_failure_reason_ends_with_the_last_lines_of_this_boot_s_logs() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        let vmm_log = dir.path().join("vmm.log");
        let earlier = "an earlier boot\n";
        std::fs::write(&console, format!("{earlier}1\n2\n\n   \n3\n4\n5\n6\n\n")).unwrap();
        std::fs::write(&vmm_log, "qemu: cannot open /dev/kvm\n").unwrap();
        let offset = earlier.len() as u64;
        assert_eq!(
            with_console_tail("it failed", Some((&console, offset)), &vmm_log),
            format!(
                "it failed\n--- last lines of the console ({}) ---\n2\n3\n4\n5\n6\
                 \n--- last lines of the VMM log ({}) ---\nqemu: cannot open /dev/kvm",
                console.display(),
                vmm_log.display()
            )
        );
        // From offset 0 the earlier boot is in reach, but only the last five lines show.
        std::fs::write(&console, format!("{earlier}1\n")).unwrap();
        assert_eq!(
            with_console_tail("x", Some((&console, 0)), &vmm_log),
            format!(
                "x\n--- last lines of the console ({}) ---\nan earlier boot\n1\
                 \n--- last lines of the VMM log ({}) ---\nqemu: cannot open /dev/kvm",
                console.display(),
                vmm_log.display()
            )
        );

        // Missing and blank logs add nothing.
        let missing = dir.path().join("missing.log");
        std::fs::write(&console, " \n\n").unwrap();
        assert_eq!(with_console_tail("x", Some((&console, 0)), &missing), "x");
        assert_eq!(with_console_tail("x", None, &missing), "x");

        // Reading stops one MiB after the offset: all of it is read, nothing after.
        let mut big = "skipped\n".to_string();
        let offset = big.len() as u64;
        // Exactly the limit: the last line in reach is "z".
        big.push_str(&"y\n".repeat((TAIL_READ_LIMIT / 2) as usize - 1));
        big.push_str("z\n");
        big.push_str("past the limit\n");
        std::fs::write(&console, big).unwrap();
        assert_eq!(
            with_console_tail("x", Some((&console, offset)), &missing),
            format!(
                "x\n--- last lines of the console ({}) ---\ny\ny\ny\ny\nz",
                console.display()
            )
        );
    }
}
