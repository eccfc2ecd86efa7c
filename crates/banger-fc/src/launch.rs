//! How a VMM is launched: directly (`<vmm> --api-sock <path> --id <id>`) or through the
//! jailer (`jailer --id <id> --exec-file <vmm> --uid U --gid G --chroot-base-dir B --
//! --api-sock /firecracker.socket`), plus the jail layout that goes with it.
//!
//! This module only computes; the root helper spawns what [`LaunchPlan`] describes.

use std::ffi::OsString;
use std::path::PathBuf;

/// The API socket path inside a jail (chroot-relative), as the jailer docs use.
pub const JAIL_API_SOCK: &str = "/firecracker.socket";
/// The VMM's log inside a jail (chroot-relative).
pub const JAIL_LOG: &str = "/vmm.log";

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
    /// VMM log file (`--log-path`); serial output stays on stdout. A jailed VMM is
    /// given [`JAIL_LOG`], where the launcher must make this file visible.
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
                let mut args: Vec<OsString> = vec![
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
                if self.log_path.is_some() {
                    args.extend(["--log-path".into(), JAIL_LOG.into()]);
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
                "/firecracker.socket",
                "--log-path",
                "/vmm.log"
            ]
        );
        assert_eq!(
            p.chroot.as_deref(),
            Some(Path::new("/srv/jailer/firecracker/vm-abc/root"))
        );
        assert_eq!(
            p.bound_socket,
            Path::new("/srv/jailer/firecracker/vm-abc/root/firecracker.socket")
        );
        assert_eq!(
            p.pidfile.as_deref(),
            Some(Path::new(
                "/srv/jailer/firecracker/vm-abc/root/firecracker.pid"
            ))
        );
    }
}
