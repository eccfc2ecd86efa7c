//! File system work done safely as root.
//!
//! Two rules, so that nobody can turn the helper's rights against root:
//! - **The caller's files are touched with the caller's rights.** [`as_caller`] runs a
//!   closure on a thread whose fsuid/fsgid are the caller's and which has no
//!   supplementary groups, so the kernel checks every path component and file as it
//!   would for the caller: a symlink the caller planted in its own directory leads
//!   nowhere the caller could not already go. Files a user names are opened there too.
//! - **Root's own tree (the jail base) is checked, then built by root alone.**
//!   [`check_root_owned`] refuses a base with a component that a non-root user owns or
//!   can write, or that is a symlink; everything beneath it is created by the helper.
//!   Files enter a jail as bind mounts of descriptors opened as the caller
//!   ([`bind_file`]), never as copies and never by changing a file's owner.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// Who is asking, from SO_PEERCRED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Whom a VMM runs as: a user, its group and exactly these supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Whether `who` may read (and, with `write`, write) the open file by its mode bits:
/// what a process of that user reopening it would be allowed, ACLs aside (a file
/// that only an ACL opens is refused: fail closed).
pub fn usable_by(f: &File, who: &RunAs, write: bool) -> bool {
    let Ok(m) = f.metadata() else { return false };
    let need = if write { 0o6 } else { 0o4 };
    let mode = m.mode();
    let bits = if m.uid() == who.uid {
        mode >> 6
    } else if m.gid() == who.gid || who.groups.contains(&m.gid()) {
        mode >> 3
    } else {
        mode
    } & 0o7;
    bits & need == need
}

/// Runs `f` with the caller's file system identity (see [`banger_helper::as_identity`]).
pub fn as_caller<T: Send>(caller: Caller, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    banger_helper::as_identity(
        banger_helper::Identity {
            uid: caller.uid,
            gid: caller.gid,
        },
        f,
    )
}

/// Refuses `path` unless it and every directory above it is a real directory (no
/// symlink), owned by root and writable by nobody else (a sticky, root-owned `/tmp`
/// is accepted above it, as OpenSSH's StrictModes does).
pub fn check_root_owned(path: &Path) -> io::Result<()> {
    if !path.is_absolute() {
        return Err(io::Error::other(format!(
            "{} is not an absolute path",
            path.display()
        )));
    }
    let mut cur = PathBuf::new();
    for c in path.components() {
        cur.push(c);
        let m = fs::symlink_metadata(&cur)?;
        let mode = m.mode();
        let sticky = mode & 0o1000 != 0;
        if m.file_type().is_symlink() || !m.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                cur.display()
            )));
        }
        if m.uid() != 0 {
            return Err(io::Error::other(format!(
                "{} belongs to uid {}, not root",
                cur.display(),
                m.uid()
            )));
        }
        let writable_by_others = mode & 0o022 != 0;
        if writable_by_others && !(sticky && cur != path) {
            return Err(io::Error::other(format!(
                "{} can be written by users other than root (mode {:o})",
                cur.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

/// Creates `dir` (root's, mode `mode`) if missing, then checks it as
/// [`check_root_owned`] does.
pub fn ensure_root_dir(dir: &Path, mode: u32) -> io::Result<()> {
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_root_owned(dir)
}

/// Makes the file behind `src` appear at `target` (which must not exist) by a bind
/// mount of the descriptor: the same inode, no copy, no change of owner or mode.
pub fn bind_file(src: &File, target: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)?;
    let source = format!("/proc/self/fd/{}", src.as_raw_fd());
    nix::mount::mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(io::Error::from)
}

/// Undoes [`bind_file`]: detaches a mount at `target` without following a symlink
/// there. Nothing mounted is fine.
pub fn unbind(target: &Path) -> io::Result<()> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Removes a directory tree; a missing one is fine. `std::fs::remove_dir_all` never
/// follows a symlink inside the tree.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `dir` beneath `parent` for `owner` without following a symlink at either:
/// the helper's start-up uses it for `<run>/vms` and `<state>/vms`.
pub fn ensure_owned_subdir(parent: &Path, name: &str, owner: Caller, mode: u32) -> io::Result<()> {
    let p = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(parent)?;
    match nix::sys::stat::mkdirat(&p, name, nix::sys::stat::Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let d = nix::fcntl::openat(
        &p,
        name,
        nix::fcntl::OFlag::O_DIRECTORY
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::fchown(&d, Some(owner.uid.into()), Some(owner.gid.into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_checked_from_root_refuses_a_user_owned_or_writable_component() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        ensure_root_dir(&base, 0o711).unwrap();
        assert!(check_root_owned(&base).is_ok());
        // A symlink as the base itself.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&base, &link).unwrap();
        let e = check_root_owned(&link).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
        // A component another user owns.
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        fs::create_dir(theirs.join("jail")).unwrap();
        let e = check_root_owned(&theirs.join("jail")).unwrap_err();
        assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
        // A group-writable component, one and two levels above.
        let open = dir.path().join("open");
        fs::create_dir_all(open.join("a/b")).unwrap();
        fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o775)).unwrap();
        for p in [open.join("a"), open.join("a/b")] {
            let e = check_root_owned(&p).unwrap_err();
            assert!(
                e.to_string()
                    .contains("can be written by users other than root"),
                "{p:?}: {e}"
            );
        }
    }

    #[test]
    fn as_caller_opens_with_the_caller_s_rights_only() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, b"root only").unwrap();
        fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        let nobody = Caller {
            uid: 65534,
            gid: 65534,
        };
        let r = as_caller(nobody, || fs::read(&secret)).unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        // Root-group files stay closed too: the supplementary groups are dropped.
        let r = as_caller(
            Caller {
                uid: 65534,
                gid: 65534,
            },
            || File::open("/etc/shadow"),
        )
        .unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        // What the caller creates is the caller's.
        as_caller(nobody, || fs::write(dir.path().join("mine"), b"x"))
            .unwrap()
            .unwrap();
        let m = fs::metadata(dir.path().join("mine")).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        // And this thread kept root's identity.
        assert_eq!(fs::read(&secret).unwrap(), b"root only");
    }

    #[test]
    fn a_bound_file_is_the_same_inode_and_keeps_owner_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        // Another filesystem than the target's, as a jail on tmpfs and disks on ext4.
        let src_dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let src = src_dir.path().join("disk");
        fs::write(&src, b"guest data").unwrap();
        std::os::unix::fs::chown(&src, Some(4242), Some(4343)).unwrap();
        fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let target = dir.path().join("rootfs");
        bind_file(&File::open(&src).unwrap(), &target).unwrap();
        let (a, b) = (fs::metadata(&src).unwrap(), fs::metadata(&target).unwrap());
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
        assert_eq!((b.uid(), b.gid(), b.mode() & 0o7777), (4242, 4343, 0o600));
        // Writes through the jail's name land in the disk itself.
        fs::write(&target, b"written in the jail").unwrap();
        assert_eq!(fs::read(&src).unwrap(), b"written in the jail");
        unbind(&target).unwrap();
        assert_eq!(
            fs::metadata(&target).unwrap().len(),
            0,
            "the placeholder is left"
        );
        // An existing target is refused rather than replaced.
        let e = bind_file(&File::open(&src).unwrap(), &target).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        // A symlink target is never followed by unbind.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/proc", &link).unwrap();
        unbind(&link).unwrap();
        assert!(fs::metadata("/proc/self").is_ok());
    }

    #[test]
    fn owned_subdirectories_are_made_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let owner = Caller {
            uid: 4242,
            gid: 4343,
        };
        ensure_owned_subdir(dir.path(), "vms", owner, 0o700).unwrap();
        let m = fs::metadata(dir.path().join("vms")).unwrap();
        assert_eq!((m.uid(), m.gid()), (4242, 4343));
        // A planted symlink is refused, and what it points to keeps its owner.
        let victim = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(victim.path(), dir.path().join("evil")).unwrap();
        assert!(ensure_owned_subdir(dir.path(), "evil", owner, 0o700).is_err());
        assert_eq!(fs::metadata(victim.path()).unwrap().uid(), 0);
    }

    #[test]
    fn a_planted_link_as_the_parent_is_refused_too() {
        let dir = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        let link = dir.path().join("run");
        std::os::unix::fs::symlink(victim.path(), &link).unwrap();
        let e = ensure_owned_subdir(
            &link,
            "vms",
            Caller {
                uid: 4242,
                gid: 4242,
            },
            0o700,
        )
        .unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
            "{e}"
        );
        assert!(
            !victim.path().join("vms").exists(),
            "nothing was made through the link"
        );
    }

    #[test]
    fn usable_by_reads_the_owner_group_or_other_bits_that_apply() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"x").unwrap();
        std::os::unix::fs::chown(&p, Some(1000), Some(2000)).unwrap();
        let owner = RunAs {
            uid: 1000,
            gid: 9,
            groups: vec![],
        };
        let by_gid = RunAs {
            uid: 1001,
            gid: 2000,
            groups: vec![],
        };
        let by_group = RunAs {
            uid: 1001,
            gid: 9,
            groups: vec![7, 2000],
        };
        let other = RunAs {
            uid: 1001,
            gid: 9,
            groups: vec![7],
        };
        // (mode, who, read, write)
        let cases: [(u32, &RunAs, bool, bool); 12] = [
            (0o600, &owner, true, true),
            (0o400, &owner, true, false),
            (0o200, &owner, false, false),
            (0o066, &owner, false, false),
            (0o060, &by_gid, true, true),
            (0o040, &by_gid, true, false),
            (0o606, &by_gid, false, false),
            (0o060, &by_group, true, true),
            (0o020, &by_group, false, false),
            (0o006, &other, true, true),
            (0o004, &other, true, false),
            (0o660, &other, false, false),
        ];
        for (mode, who, read, write) in cases {
            fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
            let f = File::open(&p).unwrap();
            assert_eq!(
                (usable_by(&f, who, false), usable_by(&f, who, true)),
                (read, write),
                "{mode:o} {who:?}"
            );
        }
    }

    #[test]
    fn a_root_tree_must_be_made_of_directories_and_errors_keep_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        let e = check_root_owned(&file).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
        // Made once, accepted again.
        let base = dir.path().join("base");
        ensure_root_dir(&base, 0o711).unwrap();
        ensure_root_dir(&base, 0o711).unwrap();
        // Beneath a file: the creation's own error, not a later check's.
        let e = ensure_root_dir(&file.join("x"), 0o711).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotADirectory, "{e}");
        // remove_tree: a missing tree is fine, any other failure is reported.
        remove_tree(&dir.path().join("missing")).unwrap();
        let e = remove_tree(&file.join("x")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotADirectory, "{e}");
    }
}
