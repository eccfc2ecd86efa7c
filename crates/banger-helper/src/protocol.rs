//! The wire protocol between `bangerd` and `bangerd-root`.
//!
//! One JSON object per line in each direction over a Unix socket: a [`Request`]
//! (tagged by `"op"`), then a [`Response`] (a [`Reply`] tagged by `"reply"`, or a
//! [`Failure`]). The operation set is closed (there is no "run this command"), and
//! every argument is a validated type. Each operation is a struct of its own that
//! names its reply type ([`HelperRequest`]); the mapping to and from the wire enums
//! is written once, in `requests!`. Requests carry ids, never paths of banger's own
//! files: the helper derives every path from [`Dirs`](banger_layout::Dirs) and a
//! [`VmId`] or [`Digest`] itself. The one exception is a file a VM's creator named
//! ([`BootFile::Named`]), which the helper opens with the caller's rights, never
//! with root's.
//!
//! The wire form is what old and new binaries share (an update runs a new daemon
//! against an old helper and the reverse): `tests::the_wire_form_is_pinned` fails on
//! any change to it.

use std::path::PathBuf;

use banger_layout::{Digest, ImageFile, PackageName, Release, VmId};
use serde::{Deserialize, Serialize};

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

/// A user's file system identity: uid and primary gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
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

/// Liveness and version check. Always legal. Answered with [`Pong`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ping {}

/// Create `<run>/vms/<id>` and `<state>/vms/<id>` (0700) with the caller's rights,
/// so they belong to the caller. Idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVmDirs {
    pub vm_id: VmId,
}

/// Launch the VMM for `vm_id` in its own session, detached from the helper:
/// stdin from /dev/null, stdout (the serial console) appended to
/// `<state>/vms/<id>/console.log`, stderr and `--log-path` to `vmm.log` beside it,
/// the API socket at `<run>/vms/<id>/api.sock`. With a jailer, every file in
/// `files` is bind-mounted into the jail (never copied, never chowned). Legal when
/// no VMM serves the VM's socket. Answered with [`Launched`].
///
/// `owner` is the user whose request made the VM: files it named
/// ([`BootFile::Named`]) are opened with that user's rights. The helper honours it
/// only from a root daemon (which could take any identity anyway); from any other
/// caller, named files are opened with the caller's own rights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchVmm {
    pub vm_id: VmId,
    pub files: BootFiles,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Identity>,
}

/// The VMMs this helper's launch records name that are still running: the daemon
/// ends those it does not own (orphans of a crash mid-start). Always legal.
/// Answered with [`LaunchList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Launches {}

/// How the VMM `(pid, start_time)` of `vm_id` ended, if this helper launched it
/// and saw it end. Always legal. Answered with [`Exited`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmExited {
    pub vm_id: VmId,
    pub pid: i32,
    pub start_time: u64,
}

/// Signal the VMM of `vm_id`, but only if `pid` still has `start_time` and is the
/// VMM serving that VM's API socket. Reports whether it was alive ([`Signalled`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalVmm {
    pub vm_id: VmId,
    pub pid: i32,
    pub start_time: u64,
    pub signal: VmmSignal,
}

/// End the VMM the VM's launch record names if it still runs (legal only when the
/// daemon holds no running VMM for the VM), then remove `<run>/vms/<id>` (sockets,
/// handles) and the VM's jail, unmounting what was bind-mounted into it.
/// Idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveVmRuntime {
    pub vm_id: VmId,
}

/// Remove `<state>/vms/<id>` (logs). Idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveVmState {
    pub vm_id: VmId,
}

/// Build a Debian image with debootstrap into `<state>/images/.build-<id>/`
/// (rootfs.ext4, vmlinuz, vmlinux when extractable, initrd.img, build.log), owned
/// by the caller. Progress lines go to `progress` in that directory. On failure
/// the directory is removed. Answered with [`ImageBuilt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildImage {
    pub build_id: VmId,
    pub release: Release,
    pub packages: Vec<PackageName>,
}

/// Create the bridge with the gateway address, enable forwarding and install
/// banger's nftables table (NAT for the subnet). Idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupNetwork {}

/// Create the VM's tap (owned by the caller, attached to the bridge, up) and,
/// unless `element` is false, the nftables element that lets only `guest_ip` out
/// of it ([`AllowGuest`]). Idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTap {
    pub vm_id: VmId,
    pub guest_ip: std::net::Ipv4Addr,
    /// False: the tap alone, so the element can be added while the VMM is
    /// configured. A daemon that does not send it gets both, as before.
    #[serde(default = "yes")]
    pub element: bool,
}

/// Add the nftables element that lets only `guest_ip` out of the VM's tap: until
/// it exists, nothing the guest sends leaves the tap. Idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowGuest {
    pub vm_id: VmId,
    pub guest_ip: std::net::Ipv4Addr,
}

/// Delete the VM's tap and its nftables rules. Idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteTap {
    pub vm_id: VmId,
}

/// Delete the bridge and banger's nftables table. Idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeardownNetwork {}

/// Every operation `bangerd-root` performs, as it travels: one object tagged by
/// `"op"` (`{"op":"create_vm_dirs","vm_id":"…"}`). Nothing else is possible. Each
/// variant holds the request of the same name, which documents when it is legal and
/// declares its reply ([`HelperRequest`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Ping(Ping),
    CreateVmDirs(CreateVmDirs),
    LaunchVmm(LaunchVmm),
    Launches(Launches),
    VmmExited(VmmExited),
    SignalVmm(SignalVmm),
    RemoveVmRuntime(RemoveVmRuntime),
    RemoveVmState(RemoveVmState),
    BuildImage(BuildImage),
    SetupNetwork(SetupNetwork),
    CreateTap(CreateTap),
    AllowGuest(AllowGuest),
    DeleteTap(DeleteTap),
    TeardownNetwork(TeardownNetwork),
}

/// The helper's answer to [`Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub version: String,
    pub vmm: String,
    /// The VMM's version (`firecracker --version`), when it reports one.
    #[serde(default)]
    pub vmm_version: Option<String>,
    /// Whether VMMs are launched through the jailer.
    #[serde(default)]
    pub jailed: bool,
    /// This helper process (`<pid>-<start time>`): a new value means the helper
    /// restarted, and the daemon looks for VMMs orphaned by the old one.
    #[serde(default)]
    pub instance: String,
    pub network: NetworkConfig,
}

/// The answer to [`BuildImage`]: the finished build's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBuilt {
    pub dir: PathBuf,
}

/// The answer to [`SignalVmm`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signalled {
    pub was_alive: bool,
}

/// The answer to [`VmmExited`]: `None` when this helper did not see that VMM end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    pub exit: Option<VmmExit>,
}

/// The answer to [`Launches`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchList {
    pub launches: Vec<LaunchInfo>,
}

/// Every answer as it travels: one object tagged by `"reply"`. Which one a request
/// gets is fixed by its [`HelperRequest::Reply`]; `Done` is the answer of requests
/// whose reply is `()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Pong(Pong),
    ImageBuilt(ImageBuilt),
    Done,
    Launched(Launched),
    Signalled(Signalled),
    Exited(Exited),
    Launches(LaunchList),
}

/// A request with the one reply type the helper answers it with. The client sends
/// `Self` as a [`Request`] and hands back `Self::Reply`; the helper turns its
/// `Self::Reply` into the wire [`Reply`]. Both directions are written once, by
/// `requests!` below, so no caller ever matches on [`Reply`].
pub trait HelperRequest: Into<Request> {
    type Reply;
    /// The typed reply a wire reply holds, or the wire reply back when it is not
    /// this request's (a helper that does not keep the protocol).
    fn from_wire(reply: Reply) -> Result<Self::Reply, Box<Reply>>;
    /// The wire form of this request's reply (the helper's side).
    fn to_wire(reply: Self::Reply) -> Reply;
    /// [`Self::to_wire`], typed by the request being answered.
    fn answer(&self, reply: Self::Reply) -> Reply {
        Self::to_wire(reply)
    }
}

/// The raw escape hatch: a wire [`Request`] is answered with any wire [`Reply`].
impl HelperRequest for Request {
    type Reply = Reply;
    fn from_wire(reply: Reply) -> Result<Reply, Box<Reply>> {
        Ok(reply)
    }
    fn to_wire(reply: Reply) -> Reply {
        reply
    }
}

/// Each request's variant of [`Request`] and the variant of [`Reply`] that answers
/// it: `Name => Variant(ReplyType)`, or `Name => Done` for a reply of `()`.
macro_rules! requests {
    (@impl $req:ident, $reply:ty, $pat:pat => $val:expr, $wire:expr) => {
        impl From<$req> for Request {
            fn from(r: $req) -> Request {
                Request::$req(r)
            }
        }
        impl HelperRequest for $req {
            type Reply = $reply;
            fn from_wire(reply: Reply) -> Result<$reply, Box<Reply>> {
                match reply {
                    $pat => Ok($val),
                    other => Err(Box::new(other)),
                }
            }
            fn to_wire(reply: $reply) -> Reply {
                $wire(reply)
            }
        }
    };
    (@one $req:ident => Done) => {
        requests!(@impl $req, (), Reply::Done => (), |()| Reply::Done);
    };
    (@one $req:ident => $variant:ident($reply:ty)) => {
        requests!(@impl $req, $reply, Reply::$variant(r) => r, Reply::$variant);
    };
    ($($req:ident => $variant:ident $(($reply:ty))?,)*) => {
        $(requests!(@one $req => $variant $(($reply))?);)*
    };
}

requests! {
    Ping => Pong(Pong),
    CreateVmDirs => Done,
    LaunchVmm => Launched(Launched),
    Launches => Launches(LaunchList),
    VmmExited => Exited(Exited),
    SignalVmm => Signalled(Signalled),
    RemoveVmRuntime => Done,
    RemoveVmState => Done,
    BuildImage => ImageBuilt(ImageBuilt),
    SetupNetwork => Done,
    CreateTap => Done,
    AllowGuest => Done,
    DeleteTap => Done,
    TeardownNetwork => Done,
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn tap_names_fit_ifnamsiz() {
        let t = NetworkConfig::tap_name(&VmId::new("0123456789ab").unwrap());
        assert_eq!(t, "bg0123456789ab");
        assert!(t.len() < 16);
    }

    #[test]
    fn wire_format_is_one_tagged_object() {
        let r: Request = CreateVmDirs {
            vm_id: VmId::new("0123456789ab").unwrap(),
        }
        .into();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"create_vm_dirs","vm_id":"0123456789ab"}"#
        );
    }

    fn id() -> VmId {
        VmId::new("0123456789ab").unwrap()
    }

    fn net() -> NetworkConfig {
        NetworkConfig {
            bridge: "banger0".into(),
            gateway: "172.30.0.1".parse().unwrap(),
            prefix_len: 24,
            nft_table: "banger".into(),
        }
    }

    /// Every request and reply as the binaries before the typed protocol wrote them
    /// (produced by that code, not by this): old and new daemons and helpers meet
    /// across an update, so any change here breaks one of them.
    #[test]
    fn the_wire_form_is_pinned() {
        let guest: std::net::Ipv4Addr = "172.30.0.2".parse().unwrap();
        let requests: [(Request, &str); 15] = [
            (Ping {}.into(), r#"{"op":"ping"}"#),
            (
                CreateVmDirs { vm_id: id() }.into(),
                r#"{"op":"create_vm_dirs","vm_id":"0123456789ab"}"#,
            ),
            (
                LaunchVmm {
                    vm_id: id(),
                    files: BootFiles {
                        kernel: BootFile::Image {
                            digest: Digest::new("ab".repeat(32)).unwrap(),
                            file: ImageFile::Vmlinux,
                        },
                        initrd: Some(BootFile::Named {
                            path: "/home/u/initrd".into(),
                        }),
                        rootfs: Some(BootFile::VmDisk {}),
                    },
                    owner: Some(Identity {
                        uid: 1000,
                        gid: 100,
                    }),
                }
                .into(),
                r#"{"op":"launch_vmm","vm_id":"0123456789ab","files":{"kernel":{"kind":"image","digest":"abababababababababababababababababababababababababababababababab","file":"vmlinux"},"initrd":{"kind":"named","path":"/home/u/initrd"},"rootfs":{"kind":"vm_disk"}},"owner":{"uid":1000,"gid":100}}"#,
            ),
            (
                LaunchVmm {
                    vm_id: id(),
                    files: BootFiles {
                        kernel: BootFile::Named { path: "/k".into() },
                        initrd: None,
                        rootfs: None,
                    },
                    owner: None,
                }
                .into(),
                r#"{"op":"launch_vmm","vm_id":"0123456789ab","files":{"kernel":{"kind":"named","path":"/k"},"initrd":null,"rootfs":null}}"#,
            ),
            (Launches {}.into(), r#"{"op":"launches"}"#),
            (
                VmmExited {
                    vm_id: id(),
                    pid: 42,
                    start_time: 7,
                }
                .into(),
                r#"{"op":"vmm_exited","vm_id":"0123456789ab","pid":42,"start_time":7}"#,
            ),
            (
                SignalVmm {
                    vm_id: id(),
                    pid: 42,
                    start_time: 7,
                    signal: VmmSignal::Term,
                }
                .into(),
                r#"{"op":"signal_vmm","vm_id":"0123456789ab","pid":42,"start_time":7,"signal":"term"}"#,
            ),
            (
                RemoveVmRuntime { vm_id: id() }.into(),
                r#"{"op":"remove_vm_runtime","vm_id":"0123456789ab"}"#,
            ),
            (
                RemoveVmState { vm_id: id() }.into(),
                r#"{"op":"remove_vm_state","vm_id":"0123456789ab"}"#,
            ),
            (
                BuildImage {
                    build_id: id(),
                    release: Release::new("trixie").unwrap(),
                    packages: vec![PackageName::new("git").unwrap()],
                }
                .into(),
                r#"{"op":"build_image","build_id":"0123456789ab","release":"trixie","packages":["git"]}"#,
            ),
            (SetupNetwork {}.into(), r#"{"op":"setup_network"}"#),
            (
                CreateTap {
                    vm_id: id(),
                    guest_ip: guest,
                    element: false,
                }
                .into(),
                r#"{"op":"create_tap","vm_id":"0123456789ab","guest_ip":"172.30.0.2","element":false}"#,
            ),
            (
                AllowGuest {
                    vm_id: id(),
                    guest_ip: guest,
                }
                .into(),
                r#"{"op":"allow_guest","vm_id":"0123456789ab","guest_ip":"172.30.0.2"}"#,
            ),
            (
                DeleteTap { vm_id: id() }.into(),
                r#"{"op":"delete_tap","vm_id":"0123456789ab"}"#,
            ),
            (TeardownNetwork {}.into(), r#"{"op":"teardown_network"}"#),
        ];
        for (req, wire) in requests {
            assert_eq!(serde_json::to_string(&req).unwrap(), wire);
            assert_eq!(
                serde_json::from_str::<Request>(wire).unwrap(),
                req,
                "{wire}"
            );
        }
        let responses: [(Response, &str); 9] = [
            (
                Ok(Reply::Pong(Pong {
                    version: "0.1.0".into(),
                    vmm: "firecracker".into(),
                    vmm_version: Some("1.12.0".into()),
                    jailed: true,
                    instance: "12-34".into(),
                    network: net(),
                })),
                r#"{"Ok":{"reply":"pong","version":"0.1.0","vmm":"firecracker","vmm_version":"1.12.0","jailed":true,"instance":"12-34","network":{"bridge":"banger0","gateway":"172.30.0.1","prefix_len":24,"nft_table":"banger"}}}"#,
            ),
            (
                Ok(Reply::ImageBuilt(ImageBuilt {
                    dir: "/s/images/.build-0123456789ab".into(),
                })),
                r#"{"Ok":{"reply":"image_built","dir":"/s/images/.build-0123456789ab"}}"#,
            ),
            (Ok(Reply::Done), r#"{"Ok":{"reply":"done"}}"#),
            (
                Ok(Reply::Launched(Launched {
                    pid: 42,
                    start_time: 7,
                    vmm_name: "firecracker".into(),
                    api_sock: "/r/api.sock".into(),
                    chroot: Some("/j/root".into()),
                    pidfile: None,
                    paths: VmmPaths {
                        kernel: "/kernel".into(),
                        initrd: None,
                        rootfs: Some("/rootfs".into()),
                    },
                })),
                r#"{"Ok":{"reply":"launched","pid":42,"start_time":7,"vmm_name":"firecracker","api_sock":"/r/api.sock","chroot":"/j/root","pidfile":null,"paths":{"kernel":"/kernel","initrd":null,"rootfs":"/rootfs"}}}"#,
            ),
            (
                Ok(Reply::Signalled(Signalled { was_alive: true })),
                r#"{"Ok":{"reply":"signalled","was_alive":true}}"#,
            ),
            (
                Ok(Reply::Exited(Exited {
                    exit: Some(VmmExit {
                        code: None,
                        signal: Some(9),
                    }),
                })),
                r#"{"Ok":{"reply":"exited","exit":{"code":null,"signal":9}}}"#,
            ),
            (
                Ok(Reply::Exited(Exited { exit: None })),
                r#"{"Ok":{"reply":"exited","exit":null}}"#,
            ),
            (
                Ok(Reply::Launches(LaunchList {
                    launches: vec![LaunchInfo {
                        vm_id: id(),
                        pid: 42,
                        start_time: 7,
                        boot_id: "b".into(),
                    }],
                })),
                r#"{"Ok":{"reply":"launches","launches":[{"vm_id":"0123456789ab","pid":42,"start_time":7,"boot_id":"b"}]}}"#,
            ),
            (
                Err(Failure {
                    kind: FailureKind::BadArgument,
                    message: "no".into(),
                }),
                r#"{"Err":{"kind":"bad_argument","message":"no"}}"#,
            ),
        ];
        for (resp, wire) in responses {
            assert_eq!(serde_json::to_string(&resp).unwrap(), wire);
            assert_eq!(
                serde_json::from_str::<Response>(wire).unwrap(),
                resp,
                "{wire}"
            );
        }
    }

    /// What older binaries leave out still reads with its documented default.
    #[test]
    fn fields_older_binaries_leave_out_take_their_defaults() {
        let tap: Request = serde_json::from_str(
            r#"{"op":"create_tap","vm_id":"0123456789ab","guest_ip":"172.30.0.2"}"#,
        )
        .unwrap();
        assert_eq!(
            tap,
            Request::CreateTap(CreateTap {
                vm_id: id(),
                guest_ip: "172.30.0.2".parse().unwrap(),
                element: true,
            })
        );
        let pong: Response = serde_json::from_str(
            r#"{"Ok":{"reply":"pong","version":"0.0.9","vmm":"banger-vmm-qemu","network":{"bridge":"banger0","gateway":"172.30.0.1","prefix_len":24,"nft_table":"banger"}}}"#,
        )
        .unwrap();
        assert_eq!(
            pong,
            Ok(Reply::Pong(Pong {
                version: "0.0.9".into(),
                vmm: "banger-vmm-qemu".into(),
                vmm_version: None,
                jailed: false,
                instance: String::new(),
                network: net(),
            }))
        );
        let launches: Response = serde_json::from_str(
            r#"{"Ok":{"reply":"launches","launches":[{"vm_id":"0123456789ab","pid":1,"start_time":2}]}}"#,
        )
        .unwrap();
        assert_eq!(
            launches,
            Ok(Reply::Launches(LaunchList {
                launches: vec![LaunchInfo {
                    vm_id: id(),
                    pid: 1,
                    start_time: 2,
                    boot_id: String::new(),
                }],
            }))
        );
    }
}
