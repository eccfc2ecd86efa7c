//! How a VMM is launched: directly (`<vmm> --api-sock <path> --id <id>`) or through the
//! jailer (`jailer --id <id> --exec-file <vmm> --uid U --gid G --chroot-base-dir B --
//! --api-sock /firecracker.socket`), plus the jail layout that goes with it.
//!
//! This module only computes; the root helper spawns what [`LaunchPlan`] describes.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The API socket path inside a jail (chroot-relative), as the jailer docs use.
pub const JAIL_API_SOCK: &str = "/firecracker.socket";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerConfig {
    pub jailer: PathBuf,
    pub chroot_base: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    /// The VMM executable (firecracker or banger-vmm-qemu).
    pub vmm: PathBuf,
    /// Instance id: Firecracker's validator allows 1-64 of `[A-Za-z0-9-]`.
    pub id: String,
    /// Host-side API socket path. With the jailer this becomes a symlink to the
    /// socket inside the chroot.
    pub api_sock: PathBuf,
    /// VMM log file (`--log-path`); serial output stays on stdout.
    pub log_path: Option<PathBuf>,
    pub jailer: Option<JailerConfig>,
}

/// What to spawn and where things will appear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The socket the VMM binds, as a host path.
    pub bound_socket: PathBuf,
    /// The jail's root directory, when jailed.
    pub chroot: Option<PathBuf>,
    /// The jailer's pidfile, when jailed.
    pub pidfile: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("VMM executable {0} has no file name")]
    NoFileName(PathBuf),
    #[error("cannot place {src} into the jail at {dst}")]
    Jail {
        src: PathBuf,
        dst: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl LaunchConfig {
    pub fn plan(&self) -> Result<LaunchPlan, LaunchError> {
        match &self.jailer {
            None => {
                let mut args: Vec<OsString> = vec![
                    "--api-sock".into(),
                    self.api_sock.clone().into(),
                    "--id".into(),
                    self.id.clone().into(),
                ];
                if let Some(log) = &self.log_path {
                    args.extend(["--log-path".into(), log.clone().into()]);
                }
                Ok(LaunchPlan {
                    program: self.vmm.clone(),
                    args,
                    bound_socket: self.api_sock.clone(),
                    chroot: None,
                    pidfile: None,
                })
            }
            Some(j) => {
                let exec_name = self
                    .vmm
                    .file_name()
                    .ok_or_else(|| LaunchError::NoFileName(self.vmm.clone()))?
                    .to_owned();
                let chroot = j.chroot_base.join(&exec_name).join(&self.id).join("root");
                let mut pidfile_name = exec_name.clone();
                pidfile_name.push(".pid");
                let args: Vec<OsString> = vec![
                    "--id".into(),
                    self.id.clone().into(),
                    "--exec-file".into(),
                    self.vmm.clone().into(),
                    "--uid".into(),
                    j.uid.to_string().into(),
                    "--gid".into(),
                    j.gid.to_string().into(),
                    "--chroot-base-dir".into(),
                    j.chroot_base.clone().into(),
                    "--".into(),
                    "--api-sock".into(),
                    JAIL_API_SOCK.into(),
                ];
                Ok(LaunchPlan {
                    program: j.jailer.clone(),
                    args,
                    bound_socket: chroot.join(JAIL_API_SOCK.trim_start_matches('/')),
                    pidfile: Some(chroot.join(pidfile_name)),
                    chroot: Some(chroot),
                })
            }
        }
    }
}

/// Makes `src` visible inside the jail as `/<name>`: a hard link when on the same
/// filesystem, else a copy; then owned by `uid:gid` (Firecracker opens drives
/// read-write as that user). Returns the in-jail path to give the API. Idempotent:
/// an existing destination with the same inode is reused.
pub fn place_in_jail(
    chroot: &Path,
    src: &Path,
    name: &str,
    uid: u32,
    gid: u32,
) -> Result<String, LaunchError> {
    let dst = chroot.join(name);
    let err = |source| LaunchError::Jail { src: src.to_path_buf(), dst: dst.clone(), source };
    let src_meta = fs::metadata(src).map_err(err)?;
    match fs::symlink_metadata(&dst) {
        Ok(m) if m.ino() == src_meta.ino() && m.dev() == src_meta.dev() => {}
        Ok(_) => {
            fs::remove_file(&dst).map_err(err)?;
            link_or_copy(src, &dst, &src_meta).map_err(err)?;
        }
        Err(_) => link_or_copy(src, &dst, &src_meta).map_err(err)?,
    }
    std::os::unix::fs::chown(&dst, Some(uid), Some(gid)).map_err(err)?;
    Ok(format!("/{name}"))
}

fn link_or_copy(src: &Path, dst: &Path, src_meta: &fs::Metadata) -> io::Result<()> {
    let same_dev = dst
        .parent()
        .and_then(|p| fs::metadata(p).ok())
        .is_some_and(|m| m.dev() == src_meta.dev());
    if same_dev && fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    fs::copy(src, dst).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(jailer: Option<JailerConfig>) -> LaunchConfig {
        LaunchConfig {
            vmm: "/usr/bin/firecracker".into(),
            id: "vm-abc".into(),
            api_sock: "/run/banger/vms/abc/api.sock".into(),
            log_path: Some("/var/lib/banger/vms/abc/vmm.log".into()),
            jailer,
        }
    }

    #[test]
    fn direct_launch_passes_socket_id_and_log() {
        let p = cfg(None).plan().unwrap();
        assert_eq!(p.program, Path::new("/usr/bin/firecracker"));
        let args: Vec<_> = p.args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--api-sock",
                "/run/banger/vms/abc/api.sock",
                "--id",
                "vm-abc",
                "--log-path",
                "/var/lib/banger/vms/abc/vmm.log"
            ]
        );
        assert_eq!(p.bound_socket, Path::new("/run/banger/vms/abc/api.sock"));
        assert!(p.chroot.is_none() && p.pidfile.is_none());
    }

    #[test]
    fn jailed_launch_follows_the_jailer_layout() {
        let p = cfg(Some(JailerConfig {
            jailer: "/usr/bin/jailer".into(),
            chroot_base: "/srv/jailer".into(),
            uid: 123,
            gid: 456,
        }))
        .plan()
        .unwrap();
        let args: Vec<_> = p.args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--id",
                "vm-abc",
                "--exec-file",
                "/usr/bin/firecracker",
                "--uid",
                "123",
                "--gid",
                "456",
                "--chroot-base-dir",
                "/srv/jailer",
                "--",
                "--api-sock",
                "/firecracker.socket"
            ]
        );
        assert_eq!(p.chroot.as_deref(), Some(Path::new("/srv/jailer/firecracker/vm-abc/root")));
        assert_eq!(
            p.bound_socket,
            Path::new("/srv/jailer/firecracker/vm-abc/root/firecracker.socket")
        );
        assert_eq!(
            p.pidfile.as_deref(),
            Some(Path::new("/srv/jailer/firecracker/vm-abc/root/firecracker.pid"))
        );
    }

    #[test]
    fn placing_a_file_hard_links_on_the_same_filesystem_and_chowns() {
        let dir = tempfile::tempdir().unwrap();
        let chroot = dir.path().join("root");
        fs::create_dir(&chroot).unwrap();
        let src = dir.path().join("vmlinux");
        fs::write(&src, b"kernel").unwrap();
        let p = place_in_jail(&chroot, &src, "vmlinux", 4242, 4343).unwrap();
        assert_eq!(p, "/vmlinux");
        let m = fs::metadata(chroot.join("vmlinux")).unwrap();
        assert_eq!(m.ino(), fs::metadata(&src).unwrap().ino(), "hard link expected");
        assert_eq!((m.uid(), m.gid()), (4242, 4343));
        // Idempotent.
        assert_eq!(place_in_jail(&chroot, &src, "vmlinux", 4242, 4343).unwrap(), "/vmlinux");
    }

    #[test]
    fn placing_a_file_across_filesystems_copies_it() {
        // /dev/shm is a tmpfs distinct from the temp dir's filesystem on these hosts;
        // if it is not distinct the test still proves the content arrives.
        let dir = tempfile::tempdir().unwrap();
        let src_dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let src = src_dir.path().join("rootfs.ext4");
        fs::write(&src, b"disk").unwrap();
        let p = place_in_jail(dir.path(), &src, "rootfs.ext4", 0, 0).unwrap();
        assert_eq!(p, "/rootfs.ext4");
        assert_eq!(fs::read(dir.path().join("rootfs.ext4")).unwrap(), b"disk");
    }

    #[test]
    fn placing_a_missing_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = place_in_jail(dir.path(), Path::new("/nonexistent/k"), "k", 0, 0).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/k"));
    }
}
