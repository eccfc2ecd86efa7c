//! `<run>/vms/<id>/handles.json`: the runtime handles of a VM whose VMM exists. It is a
//! cache of what reconcile can re-derive (the database keeps pid and start time too),
//! written atomically so a crash never leaves half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handles {
    pub vm_id: String,
    pub pid: i32,
    /// Clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    pub vmm_name: String,
    pub api_sock: PathBuf,
    pub chroot: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandlesError {
    #[error("{0} is missing")]
    Missing(PathBuf),
    #[error("{path} is unreadable")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub fn read(path: &Path) -> Result<Handles, HandlesError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HandlesError::Missing(path.into()));
        }
        Err(source) => {
            return Err(HandlesError::Io {
                path: path.into(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes).map_err(|source| HandlesError::Corrupt {
        path: path.into(),
        source,
    })
}

/// Write to a temporary file and rename it over the old one: readers see the old or
/// the new file, never half of one. No fsync: the file lives on /run (tmpfs) and is a
/// cache of the database, and after a power loss reconcile treats a damaged file as
/// missing.
pub fn write(path: &Path, h: &Handles) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(h).expect("handles serialize"))?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> Handles {
        Handles {
            vm_id: "0123456789ab".into(),
            pid: 10,
            start_time: 20,
            vmm_name: "banger-vmm-qemu".into(),
            api_sock: "/run/banger/vms/0123456789ab/api.sock".into(),
            chroot: None,
            pidfile: None,
        }
    }

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("handles.json");
        write(&p, &h()).unwrap();
        assert_eq!(read(&p).unwrap(), h());
        assert!(!p.with_extension("json.tmp").exists());
    }

    #[test]
    fn missing_and_corrupt_files_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("handles.json");
        assert!(matches!(read(&p), Err(HandlesError::Missing(_))));
        for bad in [&b""[..], b"{", b"{\"pid\":1}", b"\x00\xff"] {
            std::fs::write(&p, bad).unwrap();
            assert!(
                matches!(read(&p), Err(HandlesError::Corrupt { .. })),
                "{bad:?}"
            );
        }
    }
}
