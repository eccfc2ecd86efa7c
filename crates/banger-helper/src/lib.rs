//! The closed protocol between `bangerd` and `bangerd-root`.
//!
//! One JSON object per line in each direction over a Unix socket: a [`Request`], then
//! a [`Response`]. The operation set is closed (there is no "run this command"), and
//! every argument is a validated type. Requests carry ids, never paths of banger's own
//! files: the helper derives every path from [`Dirs`] and a [`VmId`] or [`Digest`]
//! itself. The one exception is a file a VM's creator named ([`BootFile::Named`]),
//! which the helper opens with the caller's rights, never with root's.

pub mod copy;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A VM's internal id: 12 lowercase hex digits. Used as a path component and as the
/// VMM instance id, so it is never anything else.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct VmId(String);

impl VmId {
    pub const LEN: usize = 12;
    pub fn new(s: impl Into<String>) -> Result<Self, ArgError> {
        let s = s.into();
        if s.len() == Self::LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s))
        } else {
            Err(ArgError::VmId(s))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A `&VmId` reads as the `&str` it holds (it is only ever made by [`VmId::new`]), so
/// code that stores or prints ids takes it as it is.
impl std::ops::Deref for VmId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for VmId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        VmId::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for VmId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    #[error("invalid VM id {0:?}: expected 12 lowercase hex digits")]
    VmId(String),
    #[error("unknown release {0:?}: use one of bookworm, trixie, bullseye")]
    Release(String),
    #[error("invalid package name {0:?}")]
    Package(String),
    #[error("address {ip} is not a host address of {network}")]
    Address {
        ip: std::net::Ipv4Addr,
        network: String,
    },
    #[error("invalid image digest {0:?}: expected 64 lowercase hex digits")]
    Digest(String),
    #[error("path {0} is not absolute")]
    NotAbsolute(PathBuf),
}

/// banger's directories. The helper and the daemon derive every per-VM path from them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dirs {
    /// Persistent state: database, per-VM logs (`/var/lib/banger` in system mode).
    pub state: PathBuf,
    /// Runtime state: sockets, handles (`/run/banger` in system mode).
    pub run: PathBuf,
}

impl Dirs {
    /// System mode layout.
    pub fn system() -> Self {
        Self {
            state: "/var/lib/banger".into(),
            run: "/run/banger".into(),
        }
    }
    /// Development and test layout: everything under one directory.
    pub fn under(state: impl Into<PathBuf>) -> Self {
        let state = state.into();
        let run = state.join("run");
        Self { state, run }
    }
    pub fn daemon_socket(&self) -> PathBuf {
        self.run.join("bangerd.sock")
    }
    pub fn helper_socket(&self) -> PathBuf {
        self.run.join("root.sock")
    }
    pub fn database(&self) -> PathBuf {
        self.state.join("banger.db")
    }
    pub fn vm_run_dir(&self, id: &VmId) -> PathBuf {
        self.run.join("vms").join(id.as_str())
    }
    pub fn vm_state_dir(&self, id: &VmId) -> PathBuf {
        self.state.join("vms").join(id.as_str())
    }
    /// The VMM's own directory: its API socket (and banger-vmm-qemu's QMP socket)
    /// live here. It belongs to the user the VMM runs as, which is not the daemon's
    /// user when the daemons run as root, so nothing of the daemon's is kept in it.
    pub fn vmm_dir(&self, id: &VmId) -> PathBuf {
        self.vm_run_dir(id).join("vmm")
    }
    pub fn api_socket(&self, id: &VmId) -> PathBuf {
        self.vmm_dir(id).join("api.sock")
    }
    pub fn handles(&self, id: &VmId) -> PathBuf {
        self.vm_run_dir(id).join("handles.json")
    }
    pub fn console_log(&self, id: &VmId) -> PathBuf {
        self.vm_state_dir(id).join("console.log")
    }
    pub fn vmm_log(&self, id: &VmId) -> PathBuf {
        self.vm_state_dir(id).join("vmm.log")
    }
    pub fn images(&self) -> PathBuf {
        self.state.join("images")
    }
    pub fn image_build(&self, build_id: &VmId) -> PathBuf {
        self.images().join(format!(".build-{build_id}"))
    }
    pub fn vm_disk(&self, id: &VmId) -> PathBuf {
        self.vm_state_dir(id).join("rootfs.ext4")
    }
}

/// An image's content digest (its directory name): 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    pub fn new(s: impl Into<String>) -> Result<Self, ArgError> {
        let s = s.into();
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s))
        } else {
            Err(ArgError::Digest(s))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Digest::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The files of an image directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFile {
    /// The ELF kernel Firecracker loads.
    Vmlinux,
    /// The compressed kernel (bzImage) QEMU boots.
    Vmlinuz,
    Initrd,
}

impl ImageFile {
    pub fn file_name(self) -> &'static str {
        match self {
            ImageFile::Vmlinux => "vmlinux",
            ImageFile::Vmlinuz => "vmlinuz",
            ImageFile::Initrd => "initrd.img",
        }
    }
}

/// A file the VMM boots from, named so that the helper derives its path itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BootFile {
    /// `<state>/images/<digest>/<file>`.
    Image { digest: Digest, file: ImageFile },
    /// The VM's own disk, `<state>/vms/<id>/rootfs.ext4`.
    VmDisk {},
    /// A file the VM's creator named (`vm create --kernel/--initrd/--rootfs`). The
    /// helper opens it with the caller's rights (its fsuid, fsgid and no supplementary
    /// groups), never with root's.
    Named { path: PathBuf },
}

/// What a VMM boots: kernel, optional initrd, optional root disk (read-write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFiles {
    pub kernel: BootFile,
    pub initrd: Option<BootFile>,
    pub rootfs: Option<BootFile>,
}

/// The paths to give the VMM's API for [`BootFiles`]: host paths for a direct VMM,
/// paths inside the jail (`/kernel`, `/initrd`, `/rootfs`) for a jailed one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPaths {
    pub kernel: String,
    pub initrd: Option<String>,
    pub rootfs: Option<String>,
}

/// How a VMM the helper launched ended, as its parent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmExit {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
}

impl VmmExit {
    /// Exit code 0: the guest shut down or the VMM was asked to stop.
    pub fn is_clean(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for VmmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => f.write_str("an unknown status"),
        }
    }
}

/// A Debian release the image builder accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Release(String);

impl Release {
    pub const KNOWN: [&'static str; 3] = ["bookworm", "trixie", "bullseye"];
    pub fn new(s: impl Into<String>) -> Result<Self, ArgError> {
        let s = s.into();
        if Self::KNOWN.contains(&s.as_str()) {
            Ok(Self(s))
        } else {
            Err(ArgError::Release(s))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Release {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Release::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A Debian package name (policy 5.6.1): lowercase letters, digits, `+ - .`, at
/// least two characters, starting with a letter or digit. Never an option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PackageName(String);

impl PackageName {
    pub fn new(s: impl Into<String>) -> Result<Self, ArgError> {
        let s = s.into();
        let b = s.as_bytes();
        let ok = b.len() >= 2
            && b.len() <= 128
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+-.".contains(c));
        if ok {
            Ok(Self(s))
        } else {
            Err(ArgError::Package(s))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for PackageName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PackageName::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The helper's network: one bridge, its subnet and gateway (helper configuration,
/// never chosen by callers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub bridge: String,
    pub gateway: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub nft_table: String,
}

impl NetworkConfig {
    /// The tap of a VM: `bg` + its id (14 characters, under IFNAMSIZ).
    pub fn tap_name(id: &VmId) -> String {
        format!("bg{}", id.as_str())
    }

    /// The subnet the gateway is in.
    pub fn subnet(&self) -> ipnet::Ipv4Net {
        subnet(self.gateway, self.prefix_len)
    }

    /// Whether `ip` may be a guest's: a host address of the subnet, not the gateway.
    pub fn is_guest_address(&self, ip: std::net::Ipv4Addr) -> bool {
        let net = self.subnet();
        net.contains(&ip) && ip != net.network() && ip != net.broadcast() && ip != self.gateway
    }
}

/// The subnet of `gateway/prefix_len` (a prefix over 32 is taken as 32).
pub fn subnet(gateway: std::net::Ipv4Addr, prefix_len: u8) -> ipnet::Ipv4Net {
    ipnet::Ipv4Net::new(gateway, prefix_len.min(32))
        .expect("prefix within 32")
        .trunc()
}

/// Every address a guest may have in `gateway/prefix_len`, lowest first: neither
/// the network's nor the broadcast address, nor the gateway's.
pub fn guest_addresses(
    gateway: std::net::Ipv4Addr,
    prefix_len: u8,
) -> impl Iterator<Item = std::net::Ipv4Addr> {
    let net = subnet(gateway, prefix_len);
    let (first, last) = (net.network(), net.broadcast());
    net.hosts()
        .filter(move |ip| *ip != first && *ip != last && *ip != gateway)
}

/// A system tool by absolute path (banger never relies on `PATH` for what it runs).
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// A user's file system identity: uid and primary gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// Runs `f` with `who`'s file system identity: on a thread of its own (fsuid, fsgid
/// and the group list are per thread for the raw system calls), with no supplementary
/// groups, so the kernel checks every path component and file as it would for `who`
/// (a file reachable only through a supplementary group is refused: fail closed).
/// For root, `f` simply runs here. Needs CAP_SETUID/CAP_SETGID (root) for anyone
/// else; without them the identity check fails and `f` does not run.
pub fn as_identity<T: Send>(who: Identity, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    if who.uid == 0 {
        return Ok(f());
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: raw system calls on this thread only; glibc's wrappers would
            // change every thread of the process.
            unsafe {
                if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::syscall(libc::SYS_setfsgid, who.gid);
                libc::syscall(libc::SYS_setfsuid, who.uid);
                // setfs*id report the previous id, never an error: read them back.
                let fsuid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
                let fsgid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
                if (fsuid, fsgid) != (who.uid, who.gid) {
                    return Err(std::io::Error::other(format!(
                        "cannot take the file system identity of uid {} gid {}",
                        who.uid, who.gid
                    )));
                }
            }
            Ok(f())
        })
        .join()
        .map_err(|_| std::io::Error::other("a file operation as another user panicked"))?
    })
}

/// A signal the helper may send to a VMM it has identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmSignal {
    Term,
    Kill,
}

fn yes() -> bool {
    true
}

/// Every operation `bangerd-root` performs. Nothing else is possible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness and version check. Always legal.
    Ping {},
    /// Create `<run>/vms/<id>` and `<state>/vms/<id>` (0700) with the caller's rights,
    /// so they belong to the caller. Idempotent.
    CreateVmDirs { vm_id: VmId },
    /// Launch the VMM for `vm_id` in its own session, detached from the helper:
    /// stdin from /dev/null, stdout (the serial console) appended to
    /// `<state>/vms/<id>/console.log`, stderr and `--log-path` to `vmm.log` beside it,
    /// the API socket at `<run>/vms/<id>/api.sock`. With a jailer, every file in
    /// `files` is bind-mounted into the jail (never copied, never chowned). Legal when
    /// no VMM serves the VM's socket.
    ///
    /// `owner` is the user whose request made the VM: files it named
    /// ([`BootFile::Named`]) are opened with that user's rights. The helper honours it
    /// only from a root daemon (which could take any identity anyway); from any other
    /// caller, named files are opened with the caller's own rights.
    LaunchVmm {
        vm_id: VmId,
        files: BootFiles,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<Identity>,
    },
    /// The VMMs this helper's launch records name that are still running: the daemon
    /// ends those it does not own (orphans of a crash mid-start). Always legal.
    Launches {},
    /// How the VMM `(pid, start_time)` of `vm_id` ended, if this helper launched it
    /// and saw it end. Always legal.
    VmmExited {
        vm_id: VmId,
        pid: i32,
        start_time: u64,
    },
    /// Signal the VMM of `vm_id`, but only if `pid` still has `start_time` and is the
    /// VMM serving that VM's API socket. Reports whether it was alive.
    SignalVmm {
        vm_id: VmId,
        pid: i32,
        start_time: u64,
        signal: VmmSignal,
    },
    /// End the VMM the VM's launch record names if it still runs (legal only when the
    /// daemon holds no running VMM for the VM), then remove `<run>/vms/<id>` (sockets,
    /// handles) and the VM's jail, unmounting what was bind-mounted into it.
    /// Idempotent.
    RemoveVmRuntime { vm_id: VmId },
    /// Remove `<state>/vms/<id>` (logs). Idempotent.
    RemoveVmState { vm_id: VmId },
    /// Build a Debian image with debootstrap into `<state>/images/.build-<id>/`
    /// (rootfs.ext4, vmlinuz, vmlinux when extractable, initrd.img, build.log), owned
    /// by the caller. Progress lines go to `progress` in that directory. On failure
    /// the directory is removed.
    BuildImage {
        build_id: VmId,
        release: Release,
        packages: Vec<PackageName>,
    },
    /// Create the bridge with the gateway address, enable forwarding and install
    /// banger's nftables table (NAT for the subnet). Idempotent.
    SetupNetwork {},
    /// Create the VM's tap (owned by the caller, attached to the bridge, up) and,
    /// unless `element` is false, the nftables element that lets only `guest_ip` out
    /// of it ([`Request::AllowGuest`]). Idempotent.
    CreateTap {
        vm_id: VmId,
        guest_ip: std::net::Ipv4Addr,
        /// False: the tap alone, so the element can be added while the VMM is
        /// configured. A daemon that does not send it gets both, as before.
        #[serde(default = "yes")]
        element: bool,
    },
    /// Add the nftables element that lets only `guest_ip` out of the VM's tap: until
    /// it exists, nothing the guest sends leaves the tap. Idempotent.
    AllowGuest {
        vm_id: VmId,
        guest_ip: std::net::Ipv4Addr,
    },
    /// Delete the VM's tap and its nftables rules. Idempotent.
    DeleteTap { vm_id: VmId },
    /// Delete the bridge and banger's nftables table. Idempotent.
    TeardownNetwork {},
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Pong {
        version: String,
        vmm: String,
        /// The VMM's version (`firecracker --version`), when it reports one.
        #[serde(default)]
        vmm_version: Option<String>,
        /// Whether VMMs are launched through the jailer.
        #[serde(default)]
        jailed: bool,
        /// This helper process (`<pid>-<start time>`): a new value means the helper
        /// restarted, and the daemon looks for VMMs orphaned by the old one.
        #[serde(default)]
        instance: String,
        network: NetworkConfig,
    },
    ImageBuilt {
        dir: PathBuf,
    },
    Done,
    Launched(Launched),
    Signalled {
        was_alive: bool,
    },
    Exited {
        exit: Option<VmmExit>,
    },
    Launches {
        launches: Vec<LaunchInfo>,
    },
}

/// A launch record: the VMM `(pid, start_time)` the helper forked for `vm_id`,
/// written before that process could run the VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchInfo {
    pub vm_id: VmId,
    pub pid: i32,
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when it was written: (pid, start time) names
    /// one process only within one boot, and a record may outlive a reboot.
    #[serde(default)]
    pub boot_id: String,
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Fault injection for the crash tests: a daemon started with `BANGER_FAULT=<point>`
/// SIGKILLs itself when it reaches that point (points are named
/// `<daemon>:<verb>:<step>`, listed in docs/testing.md). Unset, this is one cached
/// environment lookup.
pub fn fault_point(name: &str) {
    static WANT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if WANT
        .get_or_init(|| std::env::var("BANGER_FAULT").ok())
        .as_deref()
        == Some(name)
    {
        eprintln!("BANGER_FAULT: killing myself at {name}");
        // SAFETY: kill(2) on our own pid.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// Takes an exclusive `flock` on `f`, waiting up to `patience` for a holder that is
/// going away: a daemon SIGKILLed a moment ago holds its lock until the kernel has
/// torn it down, and the daemon started in its place must not give up on that. The
/// lock lasts while `f` is open. A holder that stays is an `EWOULDBLOCK` error.
pub fn lock_exclusive(f: &std::fs::File, patience: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + patience;
    loop {
        // SAFETY: flock(2) on a descriptor this File owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) || std::time::Instant::now() >= deadline {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a launch produced: enough to find, verify and signal the VMM later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    pub pid: i32,
    pub start_time: u64,
    /// The VMM executable's file name, which is also its `comm`.
    pub vmm_name: String,
    pub api_sock: PathBuf,
    pub chroot: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    /// What to give the VMM's API for the boot files.
    pub paths: VmmPaths,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The caller is not root or the daemon's user.
    Denied,
    /// An argument failed validation.
    BadArgument,
    /// The operation was valid but failed.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

pub type Response = Result<Reply, Failure>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the root helper at {path} (is bangerd-root running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lost the connection to the root helper")]
    Io(#[from] std::io::Error),
    #[error("the root helper sent an unreadable reply")]
    Decode(#[from] serde_json::Error),
    #[error("the root helper refused: {0}")]
    Refused(#[source] Failure),
    #[error("the root helper answered {0:?} with an unexpected reply")]
    UnexpectedReply(Reply),
}

/// How long the client waits for the helper's reply: image builds run for minutes
/// (debootstrap), everything else is quick.
fn reply_deadline(req: &Request) -> Duration {
    match req {
        Request::BuildImage { .. } => Duration::from_secs(30 * 60),
        _ => Duration::from_secs(60),
    }
}

/// Blocking client: one connection per call, like the helper's synchronous design.
#[derive(Debug, Clone)]
pub struct HelperClient {
    socket: PathBuf,
}

impl HelperClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn call(&self, req: &Request) -> Result<Reply, ClientError> {
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        stream.set_read_timeout(Some(reply_deadline(req)))?;
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        // A refused caller is answered (and closed) before the helper reads: the
        // write may fail, and the reply still says why.
        let written = stream.write_all(&line);
        let mut reader = BufReader::new(stream);
        let mut buf = String::new();
        let read = reader.read_line(&mut buf);
        if buf.is_empty() {
            written?;
            read?;
        }
        let resp: Response = serde_json::from_str(&buf)?;
        resp.map_err(ClientError::Refused)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_exclusive_lock_waits_for_a_holder_that_goes_and_refuses_one_that_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let (first, second) = (open(), open());
        super::lock_exclusive(&first, std::time::Duration::ZERO).unwrap();
        // A holder that stays: refused once the patience is spent, not before.
        let t = std::time::Instant::now();
        let e = super::lock_exclusive(&second, std::time::Duration::from_millis(100)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EWOULDBLOCK));
        assert!(t.elapsed() >= std::time::Duration::from_millis(100));
        // A holder that goes (its file closed) while the second waits.
        let going = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(first);
        });
        super::lock_exclusive(&second, std::time::Duration::from_secs(30)).unwrap();
        going.join().unwrap();
        let third = open();
        assert!(super::lock_exclusive(&third, std::time::Duration::ZERO).is_err());
    }

    #[test]
    fn guest_addresses_are_the_subnet_s_hosts_but_the_gateway() {
        let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
        let n = super::NetworkConfig {
            bridge: "b".into(),
            gateway: ip("10.0.0.1"),
            prefix_len: 29,
            nft_table: "t".into(),
        };
        let all: Vec<_> = super::guest_addresses(n.gateway, n.prefix_len).collect();
        assert_eq!(
            all,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip)
        );
        assert_eq!(n.subnet().to_string(), "10.0.0.0/29");
        for a in &all {
            assert!(n.is_guest_address(*a), "{a}");
        }
        for bad in [
            "10.0.0.0", "10.0.0.1", "10.0.0.7", "10.0.0.8", "10.0.1.2", "0.0.0.0",
        ] {
            assert!(!n.is_guest_address(ip(bad)), "{bad}");
        }
        // A gateway anywhere in the subnet; a /31 or /32 has no guest address.
        assert_eq!(
            super::guest_addresses(ip("192.168.5.6"), 30).collect::<Vec<_>>(),
            [ip("192.168.5.5")]
        );
        assert_eq!(super::guest_addresses(ip("10.0.0.0"), 31).count(), 0);
        assert_eq!(super::guest_addresses(ip("10.0.0.1"), 32).count(), 0);
        assert_eq!(super::guest_addresses(ip("10.0.0.1"), 40).count(), 0);
    }

    use super::*;

    #[test]
    fn vm_ids_are_twelve_lowercase_hex_digits() {
        assert!(VmId::new("0123456789ab").is_ok());
        for bad in [
            "",
            "0123456789a",
            "0123456789abc",
            "0123456789AB",
            "../../etc/x",
            "0123456789a/",
        ] {
            assert!(VmId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_vm_id_reads_as_its_digits() {
        let id = VmId::new("0123456789ab").unwrap();
        let s: &str = &id;
        assert_eq!(
            (s, id.as_str(), id.to_string().as_str()),
            ("0123456789ab", "0123456789ab", "0123456789ab")
        );
    }

    #[test]
    fn requests_with_bad_ids_do_not_deserialize() {
        let r: Result<Request, _> =
            serde_json::from_str(r#"{"op":"create_vm_dirs","vm_id":"../../../etc"}"#);
        assert!(r.is_err());
    }

    #[test]
    fn unknown_operations_and_fields_are_refused() {
        for bad in [
            r#"{"op":"exec","cmd":"/bin/sh"}"#,
            r#"{"op":"ping","extra":1}"#,
            r#"{"op":"remove_vm_state","vm_id":"0123456789ab","path":"/"}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_are_sixty_four_lowercase_hex_digits() {
        let good = "0123456789abcdef".repeat(4);
        assert_eq!(Digest::new(good.clone()).unwrap().as_str(), good);
        for bad in [
            String::new(),
            good[..63].to_string(),
            format!("{good}0"),
            good.to_uppercase(),
            format!("../{}", &good[3..]),
            format!("{}/", &good[..63]),
        ] {
            assert_eq!(
                Digest::new(bad.clone()),
                Err(ArgError::Digest(bad.clone())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn launch_requests_name_files_by_id_and_refuse_paths_of_banger_s_own_files() {
        let ok = r#"{"op":"launch_vmm","vm_id":"0123456789ab","files":{"kernel":{"kind":"image","digest":"DIGEST","file":"vmlinux"},"initrd":null,"rootfs":{"kind":"vm_disk"}}}"#
            .replace("DIGEST", &"ab".repeat(32));
        assert!(serde_json::from_str::<Request>(&ok).is_ok());
        for bad in [
            // A traversal in the digest.
            ok.replace(&"ab".repeat(32), "../../../../etc"),
            // An unknown image file.
            ok.replace("vmlinux", "shadow"),
            // The old path-carrying form.
            r#"{"op":"launch_vmm","vm_id":"0123456789ab","api_sock":"/etc/x","console_log":"/etc/y","vmm_log":"/etc/z"}"#.into(),
            // A path smuggled into the VM's own disk.
            ok.replace(r#"{"kind":"vm_disk"}"#, r#"{"kind":"vm_disk","path":"/etc/shadow"}"#),
        ] {
            assert!(serde_json::from_str::<Request>(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_status_is_clean_only_for_exit_code_zero() {
        assert!(
            VmmExit {
                code: Some(0),
                signal: None
            }
            .is_clean()
        );
        assert!(
            !VmmExit {
                code: Some(1),
                signal: None
            }
            .is_clean()
        );
        assert!(
            !VmmExit {
                code: None,
                signal: Some(9)
            }
            .is_clean()
        );
        assert_eq!(
            VmmExit {
                code: None,
                signal: Some(9)
            }
            .to_string(),
            "killed by signal 9"
        );
        assert_eq!(
            VmmExit {
                code: Some(1),
                signal: None
            }
            .to_string(),
            "exit code 1"
        );
    }

    #[test]
    fn releases_and_package_names_are_allow_listed() {
        assert!(Release::new("bookworm").is_ok());
        assert!(Release::new("sid; rm -rf /").is_err());
        for ok in ["vim", "g++", "libc6-dev", "python3.11"] {
            assert!(PackageName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "--include=x", "Vim", "a b", "x/../y", "pkg;ls"] {
            assert!(PackageName::new(bad).is_err(), "{bad}");
        }
    }

    /// The layout as docs/architecture.md documents it (written out, not derived).
    #[test]
    fn the_directory_layout_is_the_documented_one() {
        let id = VmId::new("0123456789ab").unwrap();
        assert_eq!(id.to_string(), "0123456789ab");
        let d = Dirs::under("/s");
        let want: [(PathBuf, &str); 14] = [
            (d.daemon_socket(), "/s/run/bangerd.sock"),
            (d.helper_socket(), "/s/run/root.sock"),
            (d.database(), "/s/banger.db"),
            (d.vm_run_dir(&id), "/s/run/vms/0123456789ab"),
            (d.vm_state_dir(&id), "/s/vms/0123456789ab"),
            (d.vmm_dir(&id), "/s/run/vms/0123456789ab/vmm"),
            (d.api_socket(&id), "/s/run/vms/0123456789ab/vmm/api.sock"),
            (d.handles(&id), "/s/run/vms/0123456789ab/handles.json"),
            (d.console_log(&id), "/s/vms/0123456789ab/console.log"),
            (d.vmm_log(&id), "/s/vms/0123456789ab/vmm.log"),
            (d.images(), "/s/images"),
            (d.image_build(&id), "/s/images/.build-0123456789ab"),
            (d.vm_disk(&id), "/s/vms/0123456789ab/rootfs.ext4"),
            (Dirs::system().daemon_socket(), "/run/banger/bangerd.sock"),
        ];
        for (got, want) in want {
            assert_eq!(got, Path::new(want));
        }
        assert_eq!(
            Dirs::system().database(),
            Path::new("/var/lib/banger/banger.db")
        );
        let names: Vec<_> = [ImageFile::Vmlinux, ImageFile::Vmlinuz, ImageFile::Initrd]
            .map(ImageFile::file_name)
            .to_vec();
        assert_eq!(names, ["vmlinux", "vmlinuz", "initrd.img"]);
        assert_eq!(Release::new("trixie").unwrap().as_str(), "trixie");
        assert_eq!(PackageName::new("git").unwrap().as_str(), "git");
    }

    #[test]
    fn tap_names_fit_ifnamsiz() {
        let t = NetworkConfig::tap_name(&VmId::new("0123456789ab").unwrap());
        assert_eq!(t, "bg0123456789ab");
        assert!(t.len() < 16);
    }

    #[test]
    fn wire_format_is_one_tagged_object() {
        let r = Request::CreateVmDirs {
            vm_id: VmId::new("0123456789ab").unwrap(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"create_vm_dirs","vm_id":"0123456789ab"}"#
        );
    }

    #[test]
    fn builds_get_half_an_hour_for_a_reply_and_everything_else_a_minute() {
        let build = Request::BuildImage {
            build_id: VmId::new("0123456789ab").unwrap(),
            release: Release::new("bookworm").unwrap(),
            packages: Vec::new(),
        };
        assert_eq!(reply_deadline(&build), Duration::from_secs(1800));
        assert_eq!(reply_deadline(&Request::Ping {}), Duration::from_secs(60));
    }

    #[test]
    fn tools_are_found_by_absolute_path_in_the_documented_order() {
        let dirs = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];
        let sh = tool("sh");
        assert!(sh.is_absolute() && sh.exists(), "{}", sh.display());
        let at = dirs
            .iter()
            .position(|d| sh.parent() == Some(Path::new(d)))
            .expect("in one of the dirs");
        for earlier in &dirs[..at] {
            assert!(
                !Path::new(earlier).join("sh").exists(),
                "{earlier}/sh comes first"
            );
        }
        // Nothing found: the bare name, so the error names what is missing.
        assert_eq!(
            tool("no-such-tool-banger"),
            PathBuf::from("no-such-tool-banger")
        );
    }

    #[test]
    fn the_boot_id_is_this_boot_s_uuid() {
        let id = boot_id();
        assert_eq!(id.len(), 36, "{id:?}");
        for (i, c) in id.chars().enumerate() {
            let dash = [8, 13, 18, 23].contains(&i);
            assert!(
                if dash {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit()
                },
                "{id:?}"
            );
        }
        assert_eq!(boot_id(), id, "stable within a boot");
    }

    /// Run by `a_fault_point_kills_its_process_only_when_named` in a child process.
    #[test]
    #[ignore = "run as a child by a_fault_point_kills_its_process_only_when_named"]
    fn fault_point_child() {
        fault_point("test:fault:here");
        println!("survived the fault point");
    }

    #[test]
    fn a_fault_point_kills_its_process_only_when_named() {
        use std::os::unix::process::ExitStatusExt;
        let run = |fault: &str| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "tests::fault_point_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("BANGER_FAULT", fault)
                .output()
                .unwrap()
        };
        let hit = run("test:fault:here");
        assert_eq!(hit.status.signal(), Some(libc::SIGKILL), "{hit:?}");
        assert!(
            String::from_utf8_lossy(&hit.stderr)
                .contains("BANGER_FAULT: killing myself at test:fault:here")
        );
        let missed = run("test:fault:elsewhere");
        assert!(missed.status.success(), "{missed:?}");
        assert!(String::from_utf8_lossy(&missed.stdout).contains("survived the fault point"));
    }

    /// Needs root (as the helper runs): the identity is taken for real.
    #[test]
    fn as_identity_checks_every_file_as_that_user_and_leaves_the_caller_as_it_was() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root's").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let public = dir.path().join("public");
        std::fs::write(&public, b"anyone's").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        let nobody = Identity {
            uid: 65534,
            gid: 65534,
        };

        let (s, p) =
            as_identity(nobody, || (std::fs::read(&secret), std::fs::read(&public))).unwrap();
        assert_eq!(
            s.unwrap_err().kind(),
            std::io::ErrorKind::PermissionDenied,
            "root's 0600 file"
        );
        assert_eq!(p.unwrap(), b"anyone's");
        // What it creates is its own.
        let made = dir.path().join("made");
        as_identity(nobody, || std::fs::write(&made, b"x"))
            .unwrap()
            .unwrap();
        let m = std::fs::metadata(&made).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        // The caller's own thread is untouched, and root runs `f` in place.
        assert_eq!(std::fs::read(&secret).unwrap(), b"root's");
        let here = std::thread::current().id();
        let (there, read) = as_identity(Identity { uid: 0, gid: 0 }, || {
            (std::thread::current().id(), std::fs::read(&secret))
        })
        .unwrap();
        assert_eq!((there, read.unwrap()), (here, b"root's".to_vec()));
    }
}
