//! banger's ids and directory layout: the validated names ([`VmId`], [`Digest`],
//! [`Release`], [`PackageName`]) that may become path components or arguments, and
//! [`Dirs`], which derives every path of banger's own files from them. Shared by the
//! CLI, the daemon and the root helper; no I/O beyond [`tool`]'s lookup.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
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
}
