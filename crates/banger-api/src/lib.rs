//! Wire types shared by the `banger` CLI and `bangerd`: names, specs, states and the
//! error body. No I/O lives here, so both ends agree on one definition of every
//! payload and every validation rule.

#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod version;
pub use version::{Version, VersionError, parse_version};

/// banger's version: `BANGER_VERSION` at build time (what `scripts/release` sets),
/// else the crate version.
pub const VERSION: &str = match option_env!("BANGER_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// banger's binaries: what `system install` copies, what a release carries (and
/// nothing else), what the tests build. `scripts/binaries` is the scripts' copy.
pub const BINARIES: [&str; 4] = ["banger", "bangerd", "bangerd-root", "banger-vmm-qemu"];

/// API version prefix; every route lives under it.
pub const API_PREFIX: &str = "/v1";

/// Smallest and largest vCPU count a VM may ask for (Firecracker's own limits).
pub const MIN_VCPUS: u32 = 1;
pub const MAX_VCPUS: u32 = 32;
/// Smallest memory size a VM may ask for, in MiB.
pub const MIN_MEMORY_MIB: u32 = 128;
/// Largest memory size, in MiB (1 TiB); a typo guard, not a capacity check.
pub const MAX_MEMORY_MIB: u32 = 1024 * 1024;

/// An error and its causes on one line, as banger prints errors everywhere (the CLI's
/// stderr, the daemon's error bodies and logs): `error: cause: cause`. A cause whose
/// text the line already holds (an error that quotes its source) is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The last `n` non-blank lines of a log or console (`text`, not necessarily UTF-8),
/// joined by newlines: what an error message quotes to say why something failed.
pub fn last_lines(text: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Why a value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidationError {
    #[error(
        "invalid VM name {0:?}: use 1-64 characters of lowercase letters, digits and '-', not starting or ending with '-'"
    )]
    Name(String),
    #[error("invalid cpu count {0}: must be between {MIN_VCPUS} and {MAX_VCPUS}")]
    Cpus(u32),
    #[error(
        "invalid memory size {0} MiB: must be at least {MIN_MEMORY_MIB} MiB and at most {MAX_MEMORY_MIB} MiB"
    )]
    Memory(u32),
    #[error("{what} path {path:?} must be absolute")]
    RelativePath { what: &'static str, path: PathBuf },
    #[error(
        "boot arguments are {0} bytes long; the limit is {MAX_BOOT_ARGS} (the kernel takes 2048, and banger and the VMM append the rest)"
    )]
    BootArgsTooLong(usize),
    #[error(
        "stop timeout of {0} s is too long: at most {MAX_STOP_TIMEOUT_SECS} s (use `banger vm kill` to end a VM now)"
    )]
    StopTimeout(u64),
    #[error("give either an image or a kernel, not both")]
    ImageAndKernel,
    #[error("give an image (--image) or a kernel (--kernel)")]
    NoImageNoKernel,
    #[error("invalid image name {0:?}: use 1-64 characters of lowercase letters, digits and '-'")]
    ImageName(String),
    #[error("invalid SSH public key {0:?}: one line starting with the key type, at most 16 KiB")]
    SshKey(String),
    #[error("invalid disk size {0} MiB: at least 256 MiB and at most 16 TiB")]
    DiskSize(u64),
    #[error("--disk-size needs an image: a VM with its own rootfs keeps that file as it is")]
    DiskSizeWithoutImage,
}

/// A VM name: 1-64 of `[a-z0-9-]`, not starting or ending with `-`.
///
/// The same rule keeps names safe as path components, tap-name suffixes and
/// Firecracker instance ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct VmName(String);

impl VmName {
    pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
        let name = name.into();
        let ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if ok {
            Ok(Self(name))
        } else {
            Err(ValidationError::Name(name))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for VmName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        VmName::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The image `vm run` and `vm create` use when given neither an image nor a kernel;
/// built on first use.
pub const DEFAULT_IMAGE: &str = "debian-bookworm";

/// Validates an image name (the same alphabet as VM names).
pub fn validate_image_name(name: &str) -> Result<(), ValidationError> {
    VmName::new(name)
        .map(|_| ())
        .map_err(|_| ValidationError::ImageName(name.to_string()))
}

/// What a user asks for when creating a VM: an image (banger clones its disk and
/// wires up network and SSH), or a kernel with an optional initrd and rootfs used as
/// they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: VmName,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default)]
    pub image: Option<String>,
    /// Grow the VM's disk to this size (images only).
    #[serde(default)]
    pub disk_size_mib: Option<u64>,
    /// Public keys allowed to log in as root (images only).
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Kernel image: an ELF vmlinux for Firecracker; banger-vmm-qemu also takes a bzImage.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Root disk image attached as the root device (`/dev/vda`).
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// Kernel command line; banger's default prints to the serial console.
    #[serde(default)]
    pub boot_args: Option<String>,
}

/// Boot arguments used when the spec gives none: serial console on ttyS0, reboot
/// through the keyboard controller so a guest reboot ends the VMM (Firecracker's
/// documented convention), panic reboots.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1";

fn default_vcpus() -> u32 {
    1
}
fn default_memory() -> u32 {
    256
}

impl VmSpec {
    /// Checks every rule a spec must satisfy; the daemon calls this before storing.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(MIN_VCPUS..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(ValidationError::Cpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ValidationError::Memory(self.memory_mib));
        }
        match (&self.image, &self.kernel) {
            (Some(_), Some(_)) => return Err(ValidationError::ImageAndKernel),
            (None, None) => return Err(ValidationError::NoImageNoKernel),
            (Some(i), None) => validate_image_name(i)?,
            (None, Some(_)) => {}
        }
        if let Some(size) = self.disk_size_mib {
            if self.image.is_none() {
                return Err(ValidationError::DiskSizeWithoutImage);
            }
            if !(256..=16 * 1024 * 1024).contains(&size) {
                return Err(ValidationError::DiskSize(size));
            }
        }
        for k in &self.ssh_keys {
            let ok = k.len() <= 16 * 1024
                && !k.contains(['\n', '\r', '\0'])
                && (k.starts_with("ssh-") || k.starts_with("ecdsa-") || k.starts_with("sk-"));
            if !ok {
                return Err(ValidationError::SshKey(k.chars().take(40).collect()));
            }
        }
        let paths = [
            ("kernel", self.kernel.as_ref()),
            ("initrd", self.initrd.as_ref()),
            ("rootfs", self.rootfs.as_ref()),
        ];
        for (what, p) in paths {
            if let Some(p) = p
                && !p.is_absolute()
            {
                return Err(ValidationError::RelativePath {
                    what,
                    path: p.clone(),
                });
            }
        }
        if let Some(args) = &self.boot_args
            && args.len() > MAX_BOOT_ARGS
        {
            return Err(ValidationError::BootArgsTooLong(args.len()));
        }
        Ok(())
    }
}

/// Lifecycle of a VM. Transitions are checked by the `can_*` methods; the daemon
/// persists the state before and after each step so a crash in between is recoverable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Recorded, never started.
    Created,
    /// VMM launched, being configured; InstanceStart not yet acknowledged.
    Starting,
    /// InstanceStart acknowledged and the VMM is alive.
    Running,
    /// A graceful shutdown was requested.
    Stopping,
    /// No VMM process.
    Stopped,
    /// The last start failed; the console log is kept.
    Failed,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => VmState::Created,
            "starting" => VmState::Starting,
            "running" => VmState::Running,
            "stopping" => VmState::Stopping,
            "stopped" => VmState::Stopped,
            "failed" => VmState::Failed,
            _ => return None,
        })
    }
    /// Whether a VMM process may exist in this state.
    pub fn has_vmm(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Stopping
        )
    }
    pub fn can_start(self) -> bool {
        matches!(self, VmState::Created | VmState::Stopped | VmState::Failed)
    }
    pub fn can_stop(self) -> bool {
        matches!(self, VmState::Running | VmState::Stopping)
    }
    pub fn can_kill(self) -> bool {
        self.has_vmm()
    }
    pub fn can_remove(self) -> bool {
        !self.has_vmm()
    }

    /// The lifecycle as a table: every state change the daemon records goes through
    /// here, so a change the table does not name is an error naming both states.
    ///
    /// | from | to | by |
    /// |---|---|---|
    /// | created, stopped, failed | starting | `start` |
    /// | starting | starting | the launched VMM's pid is recorded |
    /// | starting | running | InstanceStart acknowledged |
    /// | starting | failed, stopped | the start failed; `kill`; the VMM ended |
    /// | running | stopping | `stop` |
    /// | running, stopping | running | adopted at reconcile (an interrupted stop) |
    /// | running, stopping | stopped, failed | stopped, killed, or the VMM ended |
    /// | stopping | stopping | a second `stop` |
    pub fn valid_transition(self, to: VmState) -> Result<(), InvalidTransition> {
        use VmState::*;
        let ok = match self {
            Created | Stopped | Failed => matches!(to, Starting),
            Starting => matches!(to, Starting | Running | Failed | Stopped),
            Running => matches!(to, Running | Stopping | Stopped | Failed),
            Stopping => matches!(to, Stopping | Running | Stopped | Failed),
        };
        if ok {
            Ok(())
        } else {
            Err(InvalidTransition { from: self, to })
        }
    }
}

/// A state change the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a VM cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub from: VmState,
    pub to: VmState,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VM as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub id: String,
    pub name: VmName,
    pub state: VmState,
    pub spec: VmSpec,
    /// RFC 3339 timestamps.
    pub created_at: String,
    pub updated_at: String,
    /// VMM process id while one exists.
    pub pid: Option<i32>,
    /// Which VMM binary runs it ("banger-vmm-qemu" or "firecracker").
    pub vmm: String,
    /// The last error, for failed VMs.
    pub last_error: Option<String>,
    /// Where the guest's serial console is written.
    pub console_log: PathBuf,
    /// The guest's address on banger's bridge.
    #[serde(default)]
    pub ip: Option<String>,
    /// The VM's own disk (a clone of its image), and how it was cloned.
    #[serde(default)]
    pub disk: Option<PathBuf>,
    #[serde(default)]
    pub disk_method: Option<String>,
    /// The image's content digest.
    #[serde(default)]
    pub image_digest: Option<String>,
    /// The VM's SSH host public key (`ssh-ed25519 AAAA...`), pinned by `vm ssh`.
    #[serde(default)]
    pub host_key: Option<String>,
}

/// An image: a read-only, content-addressed kernel + initrd + ext4 rootfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// SHA-256 over the image's files.
    pub digest: String,
    /// How it was made: `debootstrap bookworm [+packages]` or `import`.
    pub source: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The ELF kernel Firecracker needs, when one could be extracted.
    pub vmlinux: Option<PathBuf>,
    pub rootfs: PathBuf,
    pub rootfs_bytes: u64,
    pub created_at: String,
    /// VMs whose disk was cloned from it.
    pub used_by: Vec<String>,
}

/// `POST /v1/images/build`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBuildRequest {
    pub name: String,
    #[serde(default = "default_release")]
    pub release: String,
    #[serde(default)]
    pub packages: Vec<String>,
}

fn default_release() -> String {
    "bookworm".into()
}

/// `POST /v1/images/import`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageImportRequest {
    pub name: String,
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    pub rootfs: PathBuf,
}

/// One line of `GET /v1/vms`: what `vm list` shows. `GET /v1/vms/{name}` has the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSummary {
    pub id: String,
    pub name: VmName,
    pub state: VmState,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub pid: Option<i32>,
    pub vmm: String,
    pub created_at: String,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
}

impl From<&Vm> for VmSummary {
    fn from(v: &Vm) -> Self {
        Self {
            id: v.id.clone(),
            name: v.name.clone(),
            state: v.state,
            vcpus: v.spec.vcpus,
            memory_mib: v.spec.memory_mib,
            pid: v.pid,
            vmm: v.vmm.clone(),
            created_at: v.created_at.clone(),
            ip: v.ip.clone(),
            image: v.spec.image.clone(),
        }
    }
}

/// The longest boot arguments a user may give: x86's kernel command line holds 2048
/// bytes, and banger (address, gateway, host name) and Firecracker (`root=`,
/// `virtio_mmio.device=` per device, `pci=off`...) append up to 512 of their own.
pub const MAX_BOOT_ARGS: usize = 1536;

/// The longest graceful stop a request may ask for.
pub const MAX_STOP_TIMEOUT_SECS: u64 = 3600;

/// `POST /v1/vms/{name}/stop` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Seconds to wait for the guest to shut down before killing the VMM.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

impl StopRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self.timeout_secs {
            Some(t) if t > MAX_STOP_TIMEOUT_SECS => Err(ValidationError::StopTimeout(t)),
            _ => Ok(()),
        }
    }
}

/// `GET /v1/daemon` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub version: String,
    pub pid: u32,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub socket: PathBuf,
    pub vmm: String,
    pub schema_version: u32,
    pub vms: usize,
    pub running: usize,
}

/// What went wrong, in a form scripts can branch on. The daemon maps each kind to an
/// HTTP status and the CLI maps each to an exit code (docs/cli.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    /// The caller may not act on this (a VM another member created).
    Forbidden,
    NotFound,
    Conflict,
    Internal,
}

/// Every error response carries this body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_are_the_last_non_blank_ones_in_order() {
        assert_eq!(last_lines(b"a\nb\n\n  \nc\nd\n", 3), "b\nc\nd");
        assert_eq!(last_lines(b"a\r\nb", 5), "a\nb");
        assert_eq!(last_lines(b"x\n", 0), "");
        assert_eq!(last_lines(b"", 3), "");
        assert_eq!(last_lines(b"ok \xff\n", 1), "ok \u{fffd}");
    }

    #[test]
    fn the_scripts_list_of_binaries_is_this_one() {
        let script = include_str!("../../../scripts/binaries");
        let line = script
            .lines()
            .find_map(|l| l.strip_prefix("BINARIES=("))
            .and_then(|l| l.strip_suffix(')'))
            .expect("scripts/binaries sets BINARIES=(...)");
        assert_eq!(line.split(' ').collect::<Vec<_>>(), BINARIES);
    }

    fn spec(name: &str) -> VmSpec {
        VmSpec {
            name: VmName::new(name).unwrap(),
            vcpus: 1,
            memory_mib: 128,
            image: None,
            disk_size_mib: None,
            ssh_keys: Vec::new(),
            kernel: Some("/k".into()),
            initrd: None,
            rootfs: None,
            boot_args: None,
        }
    }

    #[test]
    fn names_accept_the_documented_alphabet_only() {
        for ok in ["a", "dev-1", "0", &"a".repeat(64)] {
            assert!(VmName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Dev",
            "a_b",
            "a.b",
            "../x",
            "a/b",
            "-a",
            "a-",
            "é",
            " a",
            &"a".repeat(65),
        ] {
            assert!(VmName::new(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn deserializing_a_bad_name_fails() {
        let r: Result<VmName, _> = serde_json::from_str("\"../etc\"");
        assert!(r.is_err());
    }

    #[test]
    fn cpu_and_memory_bounds_are_enforced() {
        let mut s = spec("a");
        for (c, ok) in [(0, false), (1, true), (32, true), (33, false)] {
            s.vcpus = c;
            assert_eq!(s.validate().is_ok(), ok, "cpus {c}");
        }
        s.vcpus = 1;
        for (m, ok) in [(127, false), (128, true), (4096, true)] {
            s.memory_mib = m;
            assert_eq!(s.validate().is_ok(), ok, "mem {m}");
        }
    }

    #[test]
    fn relative_paths_and_long_cmdlines_are_refused() {
        let mut s = spec("a");
        s.kernel = Some("vmlinux".into());
        assert!(matches!(
            s.validate(),
            Err(ValidationError::RelativePath { .. })
        ));
        let mut s = spec("a");
        s.boot_args = Some("x".repeat(1536));
        assert_eq!(s.validate(), Ok(()));
        s.boot_args = Some("x".repeat(1537));
        assert_eq!(s.validate(), Err(ValidationError::BootArgsTooLong(1537)));
        let stop = |t| {
            StopRequest {
                timeout_secs: Some(t),
            }
            .validate()
        };
        assert_eq!(stop(3600), Ok(()));
        assert_eq!(stop(3601), Err(ValidationError::StopTimeout(3601)));
        assert_eq!(stop(u64::MAX), Err(ValidationError::StopTimeout(u64::MAX)));
        assert_eq!(StopRequest::default().validate(), Ok(()));
    }

    #[test]
    fn images_kernels_disk_sizes_and_keys_are_checked() {
        let mut s = spec("a");
        s.image = Some("debian-bookworm".into());
        assert_eq!(s.validate(), Err(ValidationError::ImageAndKernel));
        s.kernel = None;
        assert!(s.validate().is_ok());
        s.image = Some("Bad Name".into());
        assert!(matches!(s.validate(), Err(ValidationError::ImageName(_))));
        s.image = None;
        assert_eq!(s.validate(), Err(ValidationError::NoImageNoKernel));
        let mut s = spec("a");
        s.disk_size_mib = Some(1024);
        assert_eq!(s.validate(), Err(ValidationError::DiskSizeWithoutImage));
        s.kernel = None;
        s.image = Some("x1".into());
        s.disk_size_mib = Some(100);
        assert_eq!(s.validate(), Err(ValidationError::DiskSize(100)));
        s.disk_size_mib = Some(4096);
        s.ssh_keys = vec!["ssh-ed25519 AAAA me@host".into()];
        assert!(s.validate().is_ok());
        for bad in ["rm -rf /", "ssh-ed25519 AAAA\nssh-rsa BBBB", ""] {
            s.ssh_keys = vec![bad.into()];
            assert!(
                matches!(s.validate(), Err(ValidationError::SshKey(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_spec_fields_are_refused() {
        let r: Result<VmSpec, _> = serde_json::from_str(r#"{"name":"a","kernel":"/k","cpu":2}"#);
        assert!(r.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn state_transitions_follow_the_lifecycle() {
        use VmState::*;
        assert!(Created.can_start() && Stopped.can_start() && Failed.can_start());
        assert!(!Running.can_start() && !Starting.can_start());
        assert!(Running.can_stop() && !Created.can_stop());
        assert!(Starting.can_kill() && !Stopped.can_kill());
        assert!(Stopped.can_remove() && !Running.can_remove());
        for s in [Created, Starting, Running, Stopping, Stopped, Failed] {
            assert_eq!(VmState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn every_state_allows_exactly_the_verbs_of_the_lifecycle_table() {
        use VmState::*;
        // (state, has_vmm, start, stop, kill, remove): docs/architecture.md's table.
        let table = [
            (Created, false, true, false, false, true),
            (Starting, true, false, false, true, false),
            (Running, true, false, true, true, false),
            (Stopping, true, false, true, true, false),
            (Stopped, false, true, false, false, true),
            (Failed, false, true, false, false, true),
        ];
        for (s, vmm, start, stop, kill, remove) in table {
            assert_eq!(
                (
                    s.has_vmm(),
                    s.can_start(),
                    s.can_stop(),
                    s.can_kill(),
                    s.can_remove()
                ),
                (vmm, start, stop, kill, remove),
                "{s}"
            );
            assert_eq!(s.to_string(), s.as_str());
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.as_str().into())
            );
        }
        assert_eq!(VmState::parse("Running"), None);
        assert_eq!(VmState::parse(""), None);
    }

    #[test]
    fn upper_bounds_of_memory_disks_and_keys_are_enforced_at_the_limit() {
        let mut s = spec("a");
        s.memory_mib = MAX_MEMORY_MIB;
        assert_eq!(s.validate(), Ok(()));
        s.memory_mib = MAX_MEMORY_MIB + 1;
        assert_eq!(
            s.validate(),
            Err(ValidationError::Memory(MAX_MEMORY_MIB + 1))
        );
        let mut s = spec("a");
        s.kernel = None;
        s.image = Some("img".into());
        for (size, ok) in [
            (255, false),
            (256, true),
            (16 * 1024 * 1024, true),
            (16 * 1024 * 1024 + 1, false),
        ] {
            s.disk_size_mib = Some(size);
            assert_eq!(
                s.validate(),
                if ok {
                    Ok(())
                } else {
                    Err(ValidationError::DiskSize(size))
                },
                "{size}"
            );
        }
        s.disk_size_mib = None;
        let long = |n: usize| format!("ssh-ed25519 {}", "A".repeat(n - 12));
        for (key, ok) in [
            (long(16 * 1024), true),
            (long(16 * 1024 + 1), false),
            ("ecdsa-sha2-nistp256 AAAA".to_string(), true),
            ("sk-ssh-ed25519@openssh.com AAAA".to_string(), true),
            ("ssh-ed25519 AAAA\rx".to_string(), false),
            ("ssh-ed25519 AAAA\0x".to_string(), false),
            ("rsa AAAA".to_string(), false),
        ] {
            s.ssh_keys = vec![key.clone()];
            assert_eq!(s.validate().is_ok(), ok, "{:?}", &key[..key.len().min(30)]);
        }
        // The error quotes at most 40 characters of a refused key.
        s.ssh_keys = vec![format!("x{}", "y".repeat(100))];
        match s.validate() {
            Err(ValidationError::SshKey(k)) => assert_eq!(k.chars().count(), 40),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_user_named_path_must_be_absolute() {
        for what in ["kernel", "initrd", "rootfs"] {
            let mut s = spec("a");
            let rel = Some(PathBuf::from("rel/file"));
            match what {
                "kernel" => s.kernel = rel,
                "initrd" => s.initrd = rel,
                _ => s.rootfs = rel,
            }
            assert_eq!(
                s.validate(),
                Err(ValidationError::RelativePath {
                    what,
                    path: "rel/file".into()
                })
            );
        }
        let mut s = spec("a");
        s.initrd = Some("/i".into());
        s.rootfs = Some("/r".into());
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn image_names_follow_the_vm_name_rule() {
        assert_eq!(validate_image_name("debian-bookworm"), Ok(()));
        assert_eq!(
            validate_image_name("../x"),
            Err(ValidationError::ImageName("../x".into()))
        );
        assert_eq!(VmName::new("dev-1").unwrap().to_string(), "dev-1");
        assert_eq!(
            serde_json::to_string(&VmName::new("dev-1").unwrap()).unwrap(),
            "\"dev-1\""
        );
    }

    #[test]
    fn a_summary_carries_the_vm_s_own_fields() {
        let mut sp = spec("web");
        sp.vcpus = 3;
        sp.memory_mib = 512;
        sp.image = Some("img".into());
        let vm = Vm {
            id: "0123456789ab".into(),
            name: VmName::new("web").unwrap(),
            state: VmState::Running,
            spec: sp,
            created_at: "2026-12-01T00:00:00Z".into(),
            updated_at: "x".into(),
            pid: Some(42),
            vmm: "firecracker".into(),
            last_error: None,
            console_log: "/c".into(),
            ip: Some("172.30.0.2".into()),
            disk: None,
            disk_method: None,
            image_digest: None,
            host_key: None,
        };
        let s = VmSummary::from(&vm);
        assert_eq!(
            (
                s.id.as_str(),
                s.name.as_str(),
                s.state,
                s.vcpus,
                s.memory_mib,
                s.pid,
                s.vmm.as_str()
            ),
            (
                "0123456789ab",
                "web",
                VmState::Running,
                3,
                512,
                Some(42),
                "firecracker"
            )
        );
        assert_eq!(
            (s.created_at.as_str(), s.ip.as_deref(), s.image.as_deref()),
            ("2026-12-01T00:00:00Z", Some("172.30.0.2"), Some("img"))
        );
    }

    #[test]
    fn a_spec_with_only_a_name_and_kernel_gets_the_documented_defaults() {
        let s: VmSpec = serde_json::from_str(r#"{"name":"a","kernel":"/k"}"#).unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (1, 256));
        let b: ImageBuildRequest = serde_json::from_str(r#"{"name":"x"}"#).unwrap();
        assert_eq!(b.release, "bookworm");
    }

    #[test]
    fn every_transition_is_allowed_or_refused_as_the_table_says() {
        use VmState::*;
        let all = [Created, Starting, Running, Stopping, Stopped, Failed];
        let allowed = [
            (Created, Starting),
            (Stopped, Starting),
            (Failed, Starting),
            (Starting, Starting),
            (Starting, Running),
            (Starting, Failed),
            (Starting, Stopped),
            (Running, Running),
            (Running, Stopping),
            (Running, Stopped),
            (Running, Failed),
            (Stopping, Stopping),
            (Stopping, Running),
            (Stopping, Stopped),
            (Stopping, Failed),
        ];
        for from in all {
            for to in all {
                let r = from.valid_transition(to);
                if allowed.contains(&(from, to)) {
                    assert_eq!(r, Ok(()), "{from} -> {to}");
                } else {
                    assert_eq!(r, Err(InvalidTransition { from, to }), "{from} -> {to}");
                    assert_eq!(
                        r.unwrap_err().to_string(),
                        format!("a VM cannot go from {from} to {to}")
                    );
                }
            }
        }
        // The verbs' guards agree with the table: a verb allowed in a state has a
        // transition out of it.
        // (Starting -> Starting records the pid; it is not a second `start`.)
        for s in all {
            assert!(
                !s.can_start() || s.valid_transition(Starting).is_ok(),
                "{s}"
            );
            assert_eq!(s.can_stop(), s.valid_transition(Stopping).is_ok(), "{s}");
            assert_eq!(s.can_kill(), s.valid_transition(Stopped).is_ok(), "{s}");
        }
    }

    #[test]
    fn an_error_chain_is_one_line_and_never_says_a_cause_twice() {
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Leaf(&'static str);
        #[derive(Debug, thiserror::Error)]
        #[error("{msg}")]
        struct Wrap {
            msg: String,
            #[source]
            source: Box<dyn std::error::Error + Send + Sync>,
        }
        let leaf = || Box::new(Leaf("Permission denied (os error 13)"));
        let e = Wrap {
            msg: "cannot start VM a".into(),
            source: Box::new(Wrap {
                msg: "cannot open /k".into(),
                source: leaf(),
            }),
        };
        assert_eq!(
            error_chain(&e),
            "cannot start VM a: cannot open /k: Permission denied (os error 13)"
        );
        // A layer that already quotes its cause.
        let quoted = Wrap {
            msg: "the helper refused: VMMs never run as root".into(),
            source: Box::new(Leaf("VMMs never run as root")),
        };
        assert_eq!(
            error_chain(&quoted),
            "the helper refused: VMMs never run as root"
        );
        assert_eq!(error_chain(&Leaf("alone")), "alone");
    }
}
