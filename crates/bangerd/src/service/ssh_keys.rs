//! An image VM's identity: its hostname, a fresh SSH host key and the authorized keys.
//!
//! It reaches the guest one of two ways, chosen by the image:
//! - **MMDS** (images whose rootfs has [`GUEST_AGENT`], as `image build` makes them):
//!   the identity is kept in the VM's state dir (`identity.json`, 0600) and put into
//!   the VMM's metadata service at every start; the guest's `banger-identity` unit
//!   reads it and then closes its route to the service. The disk is never written.
//! - **Written into the disk** before the first boot (any other image, including
//!   images built before banger had the unit): `debugfs` writes the files.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use serde::{Deserialize, Serialize};

use super::*;

/// The guest side of MMDS identity; an image whose rootfs has it gets its identity
/// from MMDS.
pub(crate) const GUEST_AGENT: &str = "/usr/local/sbin/banger-identity";
/// Its unit, which must be there too.
pub(crate) const GUEST_UNIT: &str = "/etc/systemd/system/banger-identity.service";
/// The largest identity served by MMDS: Firecracker's default data store and API
/// payload limit is 51200 bytes. A larger one (many long keys) is written into the
/// disk instead, so the VM can always start.
pub(crate) const MMDS_MAX: usize = 48 * 1024;
/// In an image's directory: present when its rootfs has [`GUEST_AGENT`] (checked
/// once, when the image is published).
pub(crate) const MMDS_MARKER: &str = "identity-mmds";
/// In a VM's state dir: the identity MMDS serves (the host key's private half too).
const IDENTITY_FILE: &str = "identity.json";

/// Why an identity could not be made, kept or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error("cannot run ssh-keygen")]
    Keygen(#[source] std::io::Error),
    #[error("ssh-keygen failed: {0}")]
    KeygenFailed(String),
    #[error("cannot {what} {path}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a VM identity")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What MMDS serves under `/banger/` (the names are the guest unit's). Its `Debug`
/// leaves the private key out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GuestIdentity {
    pub hostname: String,
    /// One key per line.
    pub authorized_keys: String,
    /// OpenSSH private key.
    pub ssh_host_ed25519_key: String,
    pub ssh_host_ed25519_key_pub: String,
}

impl std::fmt::Debug for GuestIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestIdentity")
            .field("hostname", &self.hostname)
            .field("authorized_keys", &self.authorized_keys)
            .field("ssh_host_ed25519_key", &"<private>")
            .field("ssh_host_ed25519_key_pub", &self.ssh_host_ed25519_key_pub)
            .finish()
    }
}

impl GuestIdentity {
    /// A fresh identity for VM `name`: a new ed25519 host key (its public half is
    /// kept in the state dir, so `vm ssh` can pin it) and the authorized keys.
    pub(crate) fn generate(
        state_dir: &Path,
        name: &str,
        keys: &[String],
    ) -> std::result::Result<Self, IdentityError> {
        let key = state_dir.join("ssh_host_ed25519_key");
        let public = state_dir.join("ssh_host_ed25519_key.pub");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(&public);
        let out = std::process::Command::new(crate::disk::tool("ssh-keygen"))
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("root@{name}"))
            .arg("-f")
            .arg(&key)
            .output()
            .map_err(IdentityError::Keygen)?;
        if !out.status.success() {
            return Err(IdentityError::KeygenFailed(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| IdentityError::File {
                what: "read",
                path: path.into(),
                source,
            })
        };
        let private = read(&key);
        // The private half lives only where the identity goes (the disk, or
        // identity.json), never as a loose file.
        let _ = std::fs::remove_file(&key);
        let mut authorized_keys = keys.join("\n");
        authorized_keys.push('\n');
        Ok(GuestIdentity {
            hostname: name.to_string(),
            authorized_keys,
            ssh_host_ed25519_key: private?,
            ssh_host_ed25519_key_pub: read(&public)?,
        })
    }

    /// The files written into a disk for an image without the guest unit.
    pub(crate) fn files(&self) -> Vec<crate::disk::Inject> {
        let file = |guest_path, content: &str, mode| crate::disk::Inject {
            guest_path,
            content: content.as_bytes().to_vec(),
            mode,
        };
        vec![
            file(
                "/etc/ssh/ssh_host_ed25519_key",
                &self.ssh_host_ed25519_key,
                0o100600,
            ),
            file(
                "/etc/ssh/ssh_host_ed25519_key.pub",
                &self.ssh_host_ed25519_key_pub,
                0o100644,
            ),
            file(
                "/root/.ssh/authorized_keys",
                &self.authorized_keys,
                0o100600,
            ),
            file("/etc/hostname", &format!("{}\n", self.hostname), 0o100644),
        ]
    }

    /// The MMDS data store: everything under `banger`.
    pub(crate) fn mmds(&self) -> serde_json::Value {
        serde_json::json!({ "banger": self })
    }

    /// Whether MMDS can hold it (see [`MMDS_MAX`]).
    pub(crate) fn fits_mmds(&self) -> bool {
        self.mmds().to_string().len() <= MMDS_MAX
    }

    /// Keeps the identity for MMDS in the state dir, readable by the daemon's user
    /// only; an identity already there is replaced whole (written aside, renamed).
    pub(crate) fn save(&self, state_dir: &Path) -> std::result::Result<(), IdentityError> {
        let path = state_dir.join(IDENTITY_FILE);
        let tmp = state_dir.join(format!(".{IDENTITY_FILE}.new"));
        let err = |what| {
            let path = path.clone();
            move |source| IdentityError::File { what, path, source }
        };
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err("write"))?;
        f.write_all(&serde_json::to_vec(self).expect("an identity serializes"))
            .and_then(|()| f.sync_all())
            .map_err(err("write"))?;
        std::fs::rename(&tmp, &path).map_err(err("write"))
    }

    /// The identity MMDS serves this VM, if it gets one that way.
    pub(crate) fn load(state_dir: &Path) -> std::result::Result<Option<Self>, IdentityError> {
        let path = state_dir.join(IDENTITY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| IdentityError::Decode { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IdentityError::File {
                what: "read",
                path,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_identity_is_generated_kept_private_and_read_back_whole() {
        let d = tempfile::tempdir().unwrap();
        let id = GuestIdentity::generate(d.path(), "vm1", &["ssh-ed25519 AAAA a".into()]).unwrap();
        assert_eq!(id.hostname, "vm1");
        assert_eq!(id.authorized_keys, "ssh-ed25519 AAAA a\n");
        assert!(id.ssh_host_ed25519_key.contains("OPENSSH PRIVATE KEY"));
        assert!(id.ssh_host_ed25519_key_pub.starts_with("ssh-ed25519 "));
        assert!(id.ssh_host_ed25519_key_pub.trim_end().ends_with("root@vm1"));
        // Only the public half is left as a file.
        assert!(!d.path().join("ssh_host_ed25519_key").exists());
        assert_eq!(
            std::fs::read_to_string(d.path().join("ssh_host_ed25519_key.pub")).unwrap(),
            id.ssh_host_ed25519_key_pub
        );
        // Nothing saved: not an MMDS VM.
        assert_eq!(GuestIdentity::load(d.path()).unwrap(), None);
        id.save(d.path()).unwrap();
        let file = d.path().join(IDENTITY_FILE);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(GuestIdentity::load(d.path()).unwrap(), Some(id.clone()));
        // Saved again (a second create of the same state dir): replaced, not refused.
        let other = GuestIdentity {
            hostname: "vm2".into(),
            ..id.clone()
        };
        other.save(d.path()).unwrap();
        assert_eq!(GuestIdentity::load(d.path()).unwrap(), Some(other));
        // Two keys make two lines; no key still ends the file.
        let two = GuestIdentity::generate(d.path(), "vm1", &["k1".into(), "k2".into()]).unwrap();
        assert_eq!(two.authorized_keys, "k1\nk2\n");
        assert_ne!(
            two.ssh_host_ed25519_key, id.ssh_host_ed25519_key,
            "a fresh key"
        );
    }

    #[test]
    fn the_private_key_is_never_in_debug_output_and_oversized_identities_do_not_fit() {
        let d = tempfile::tempdir().unwrap();
        let id = GuestIdentity::generate(d.path(), "vm1", &["k1".into()]).unwrap();
        let shown = format!("{id:?}");
        assert!(
            shown.contains("vm1") && shown.contains("ssh-ed25519"),
            "{shown}"
        );
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(id.fits_mmds());
        let big = GuestIdentity {
            authorized_keys: "k".repeat(MMDS_MAX),
            ..id
        };
        assert!(!big.fits_mmds());
    }

    #[test]
    fn a_damaged_identity_file_is_an_error_not_a_vm_without_one() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(IDENTITY_FILE), b"{\"hostname\":").unwrap();
        assert!(matches!(
            GuestIdentity::load(d.path()),
            Err(IdentityError::Decode { .. })
        ));
    }

    #[test]
    fn mmds_serves_the_identity_under_banger_and_the_disk_gets_the_same_files() {
        let id = GuestIdentity {
            hostname: "vm1".into(),
            authorized_keys: "k1\n".into(),
            ssh_host_ed25519_key: "PRIV\n".into(),
            ssh_host_ed25519_key_pub: "PUB\n".into(),
        };
        assert_eq!(
            id.mmds(),
            serde_json::json!({"banger": {
                "hostname": "vm1",
                "authorized_keys": "k1\n",
                "ssh_host_ed25519_key": "PRIV\n",
                "ssh_host_ed25519_key_pub": "PUB\n",
            }})
        );
        let files: Vec<(&str, String, u32)> = id
            .files()
            .into_iter()
            .map(|f| (f.guest_path, String::from_utf8(f.content).unwrap(), f.mode))
            .collect();
        assert_eq!(
            files,
            [
                ("/etc/ssh/ssh_host_ed25519_key", "PRIV\n".into(), 0o100600),
                (
                    "/etc/ssh/ssh_host_ed25519_key.pub",
                    "PUB\n".into(),
                    0o100644
                ),
                ("/root/.ssh/authorized_keys", "k1\n".into(), 0o100600),
                ("/etc/hostname", "vm1\n".into(), 0o100644),
            ]
        );
    }
}
