//! VM disks: a copy-on-write clone of the image's rootfs whose cost does not grow with
//! the image, then the VM's own files written into it (SSH keys) and an optional grow.
//!
//! Methods, best first:
//! 1. **reflink** (`FICLONE`) on btrfs and xfs: O(1), shares blocks until written.
//! 2. **copy**, sparse (SEEK_DATA/SEEK_HOLE + copy_file_range), with a warning: time
//!    grows with the data in the image.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloneMethod {
    /// A device-mapper snapshot. Nothing makes one yet (these hosts have no
    /// device-mapper; the helper would use the `devicemapper` crate); the name is
    /// kept so a stored `dm_snapshot` still reads.
    DmSnapshot,
    Reflink,
    Copy,
}

impl CloneMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CloneMethod::DmSnapshot => "dm-snapshot",
            CloneMethod::Reflink => "reflink",
            CloneMethod::Copy => "copy",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot clone {src} to {dst}")]
    Clone {
        src: PathBuf,
        dst: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{tool} failed on {disk}: {detail}")]
    Tool {
        tool: &'static str,
        disk: PathBuf,
        detail: String,
    },
    #[error("the disk can only grow: the image is {image} bytes, asked for {asked}")]
    Shrink { image: u64, asked: u64 },
}

/// Clones `src` to a new file `dst` by the best method available; `dst` must not exist.
pub fn clone(src: &Path, dst: &Path) -> Result<CloneMethod, DiskError> {
    let from = File::open(src).map_err(|source| DiskError::Clone {
        src: src.into(),
        dst: dst.into(),
        source,
    })?;
    clone_file(&from, src, dst)
}

/// [`clone`] from a file already open (`src` names it in messages): how a file a
/// caller named, opened with the caller's rights, is copied.
pub fn clone_file(from: &File, src: &Path, dst: &Path) -> Result<CloneMethod, DiskError> {
    let err = |source| DiskError::Clone {
        src: src.into(),
        dst: dst.into(),
        source,
    };
    // Private to the daemon's user: a VM disk holds the guest's SSH host key.
    let to = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().write(true).create_new(true),
        0o600,
    )
    .open(dst)
    .map_err(err)?;
    match banger_helper::copy::reflink(from, &to) {
        Ok(()) => return Ok(CloneMethod::Reflink),
        Err(e) => tracing::warn!(
            "reflink clone of {} is not possible here ({e}); making a sparse copy, whose time grows with the image",
            src.display()
        ),
    }
    banger_helper::copy::sparse_copy(from, &to).map_err(err)?;
    Ok(CloneMethod::Copy)
}

/// Grows an ext4 image to `size` bytes (a no-op if it is that size).
pub fn grow(disk: &Path, size: u64) -> Result<(), DiskError> {
    let current = std::fs::metadata(disk).map(|m| m.len()).unwrap_or(0);
    if size < current {
        return Err(DiskError::Shrink {
            image: current,
            asked: size,
        });
    }
    if size == current {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .and_then(|f| f.set_len(size))
        .map_err(|e| DiskError::Tool {
            tool: "truncate",
            disk: disk.into(),
            detail: e.to_string(),
        })?;
    // resize2fs insists on a fresh check of an offline filesystem.
    run(
        "e2fsck",
        Command::new(tool("e2fsck")).args(["-f", "-y"]).arg(disk),
        disk,
        &[0, 1],
    )?;
    run(
        "resize2fs",
        Command::new(tool("resize2fs")).arg(disk),
        disk,
        &[0],
    )
}

/// A file banger writes into a VM disk before boot.
#[derive(Debug, Clone)]
pub struct Inject {
    /// Absolute path in the guest.
    pub guest_path: &'static str,
    pub content: Vec<u8>,
    /// Full ext4 mode (type bits included).
    pub mode: u32,
}

/// Writes files into an unmounted ext4 image with `debugfs` (no mount, no root):
/// missing parent directories are made (root-owned, 0755), each file is replaced and
/// given root ownership and its mode.
pub fn inject(disk: &Path, files: &[Inject], scratch: &Path) -> Result<(), DiskError> {
    let mut script = String::new();
    for (i, f) in files.iter().enumerate() {
        let local = scratch.join(format!("inject-{i}"));
        std::fs::write(&local, &f.content).map_err(|e| DiskError::Tool {
            tool: "debugfs",
            disk: disk.into(),
            detail: e.to_string(),
        })?;
        let g = f.guest_path;
        let mut parent = String::new();
        for part in g
            .trim_start_matches('/')
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            parent.push('/');
            parent.push_str(part);
            script.push_str(&format!("mkdir {parent}\n"));
        }
        script.push_str(&format!(
            "rm {g}\nwrite {} {g}\nset_inode_field {g} mode 0{:o}\nset_inode_field {g} uid 0\nset_inode_field {g} gid 0\n",
            local.display(),
            f.mode
        ));
    }
    let cmds = scratch.join("inject.debugfs");
    std::fs::write(&cmds, script).map_err(|e| DiskError::Tool {
        tool: "debugfs",
        disk: disk.into(),
        detail: e.to_string(),
    })?;
    let out = Command::new(tool("debugfs"))
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(disk)
        .output()
        .map_err(|e| DiskError::Tool {
            tool: "debugfs",
            disk: disk.into(),
            detail: e.to_string(),
        })?;
    for i in 0..files.len() {
        let _ = std::fs::remove_file(scratch.join(format!("inject-{i}")));
    }
    let _ = std::fs::remove_file(&cmds);
    // debugfs exits 0 even when a command fails; a failed write says so on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bad: Vec<&str> = stderr
        .lines()
        // The `rm` of a file not there yet, and the `mkdir` of a directory already
        // there, are expected to fail.
        .filter(|l| {
            !l.starts_with("debugfs ")
                && !l.starts_with("rm: ")
                && !l.contains("directory already exists")
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    if !out.status.success() || !bad.is_empty() {
        return Err(DiskError::Tool {
            tool: "debugfs",
            disk: disk.into(),
            detail: bad.join("; "),
        });
    }
    Ok(())
}

/// Whether an unmounted ext4 image holds a regular file at `guest_path` (debugfs, no
/// mount, no root; nothing is written).
pub fn has_file(disk: &Path, guest_path: &str) -> Result<bool, DiskError> {
    let out = Command::new(tool("debugfs"))
        .env("DEBUGFS_PAGER", "__none__")
        .arg("-R")
        .arg(format!("stat {guest_path}"))
        .arg(disk)
        .output()
        .map_err(|e| DiskError::Tool {
            tool: "debugfs",
            disk: disk.into(),
            detail: e.to_string(),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // debugfs exits 0 either way: an inode it found says its type on its first line
    // (the rest, a link's target or extended attributes, is the image's own text); a
    // missing file is its "not found"; anything else (not ext4, unreadable) is an error.
    let first = stdout.lines().next().unwrap_or_default();
    if first.starts_with("Inode: ") {
        return Ok(first
            .split_whitespace()
            .skip_while(|w| *w != "Type:")
            .nth(1)
            == Some("regular"));
    }
    if stderr.contains("File not found") {
        return Ok(false);
    }
    Err(DiskError::Tool {
        tool: "debugfs",
        disk: disk.into(),
        detail: banger_api::last_lines(&out.stderr, 3),
    })
}

/// Whether the file starts with an ext4 (ext2/3/4) superblock: magic 0xEF53 at byte
/// 1080 (read at an offset: the file position is unchanged).
pub fn is_ext4_file(f: &File) -> io::Result<bool> {
    let mut magic = [0u8; 2];
    match std::os::unix::fs::FileExt::read_exact_at(f, &mut magic, 1080) {
        Ok(()) => Ok(magic == [0x53, 0xef]),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn run(
    tool_name: &'static str,
    cmd: &mut Command,
    disk: &Path,
    ok_codes: &[i32],
) -> Result<(), DiskError> {
    let out = cmd.output().map_err(|e| DiskError::Tool {
        tool: tool_name,
        disk: disk.into(),
        detail: e.to_string(),
    })?;
    if out.status.code().is_some_and(|c| ok_codes.contains(&c)) {
        Ok(())
    } else {
        Err(DiskError::Tool {
            tool: tool_name,
            disk: disk.into(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

pub use banger_helper::tool;

#[cfg(test)]
mod tests {
    use super::*;

    fn ext4(dir: &Path, size_mib: u64) -> PathBuf {
        let content = dir.join("content");
        std::fs::create_dir_all(content.join("etc")).unwrap();
        std::fs::write(content.join("etc/hostname"), "img\n").unwrap();
        let img = dir.join("img.ext4");
        File::create(&img).unwrap().set_len(size_mib << 20).unwrap();
        let st = Command::new(tool("mkfs.ext4"))
            .args(["-q", "-F", "-d"])
            .arg(&content)
            .arg(&img)
            .status()
            .unwrap();
        assert!(st.success());
        img
    }

    fn debugfs_cat(disk: &Path, path: &str) -> String {
        let out = Command::new(tool("debugfs"))
            .arg("-R")
            .arg(format!("cat {path}"))
            .arg(disk)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_copy_keeps_content_and_holes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        drop(f);
        let dst = d.path().join("dst");
        // ext4 here: no reflink, so this is the sparse copy.
        let m = clone(&src, &dst).unwrap();
        let a = std::fs::read(&src).unwrap();
        let b = std::fs::read(&dst).unwrap();
        assert!(a == b, "content differs");
        use std::os::unix::fs::MetadataExt;
        if m == CloneMethod::Copy {
            assert!(
                std::fs::metadata(&dst).unwrap().blocks() * 512 < 1 << 20,
                "holes were filled"
            );
        }
        assert!(
            clone(&src, &dst).is_err(),
            "an existing destination is never overwritten"
        );
    }

    #[test]
    fn has_file_sees_regular_files_only_and_refuses_what_is_not_ext4() {
        let d = tempfile::tempdir().unwrap();
        let img = ext4(d.path(), 32);
        assert!(has_file(&img, "/etc/hostname").unwrap());
        assert!(!has_file(&img, "/etc/missing").unwrap());
        assert!(!has_file(&img, "/etc").unwrap(), "a directory is no file");
        // A link whose target reads like debugfs's own words is still a link.
        let d2 = tempfile::tempdir().unwrap();
        let content = d2.path().join("content");
        std::fs::create_dir_all(content.join("etc")).unwrap();
        std::os::unix::fs::symlink("Type: regular", content.join("etc/fake")).unwrap();
        let linked = d2.path().join("img.ext4");
        File::create(&linked).unwrap().set_len(16 << 20).unwrap();
        let st = Command::new(tool("mkfs.ext4"))
            .args(["-q", "-F", "-d"])
            .arg(&content)
            .arg(&linked)
            .status()
            .unwrap();
        assert!(st.success());
        assert!(
            !has_file(&linked, "/etc/fake").unwrap(),
            "a link is no file"
        );
        let junk = d.path().join("junk");
        std::fs::write(&junk, vec![0u8; 1 << 16]).unwrap();
        assert!(has_file(&junk, "/etc/hostname").is_err());
        assert!(has_file(&d.path().join("absent"), "/etc/hostname").is_err());
    }

    #[test]
    fn injected_files_land_with_root_ownership_and_mode() {
        let d = tempfile::tempdir().unwrap();
        let img = ext4(d.path(), 32);
        let files = [
            Inject {
                guest_path: "/etc/hostname",
                content: b"vm1\n".to_vec(),
                mode: 0o100644,
            },
            Inject {
                guest_path: "/etc/secret",
                content: b"key\n".to_vec(),
                mode: 0o100600,
            },
        ];
        inject(&img, &files, d.path()).unwrap();
        assert_eq!(debugfs_cat(&img, "/etc/hostname"), "vm1\n");
        assert_eq!(debugfs_cat(&img, "/etc/secret"), "key\n");
        let stat = Command::new(tool("debugfs"))
            .args(["-R", "stat /etc/secret"])
            .arg(&img)
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&stat.stdout);
        assert!(
            s.contains("Mode:  0600") && s.contains("User:     0"),
            "{s}"
        );
        // Into directories that do not exist yet: they are made.
        let deep = [Inject {
            guest_path: "/new/dir/file",
            content: b"x\n".to_vec(),
            mode: 0o100644,
        }];
        inject(&img, &deep, d.path()).unwrap();
        assert_eq!(debugfs_cat(&img, "/new/dir/file"), "x\n");
        // A disk that is not ext4 is refused with debugfs's reason.
        let junk = d.path().join("junk");
        std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
        assert!(inject(&junk, &deep, d.path()).is_err());
    }

    #[test]
    fn grow_resizes_the_filesystem_and_refuses_to_shrink() {
        let d = tempfile::tempdir().unwrap();
        let img = ext4(d.path(), 32);
        grow(&img, 64 << 20).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);
        let out = Command::new(tool("dumpe2fs"))
            .arg("-h")
            .arg(&img)
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        let blocks: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("Block count:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let bsize: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("Block size:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(blocks * bsize, 64 << 20);
        assert!(matches!(
            grow(&img, 16 << 20),
            Err(DiskError::Shrink { .. })
        ));
    }

    #[test]
    fn ext4_is_recognised_by_its_superblock() {
        let d = tempfile::tempdir().unwrap();
        assert!(is_ext4_file(&File::open(ext4(d.path(), 16)).unwrap()).unwrap());
        let junk = d.path().join("junk");
        std::fs::write(&junk, vec![0u8; 4096]).unwrap();
        assert!(!is_ext4_file(&File::open(&junk).unwrap()).unwrap());
        let short = d.path().join("short");
        std::fs::write(&short, b"tiny").unwrap();
        assert!(!is_ext4_file(&File::open(&short).unwrap()).unwrap());
    }
}
