//! Copying file data: a reflink where the filesystem can share extents, else a copy
//! of the data extents only (holes stay holes). Shared by the daemon (VM disks,
//! imports) and the helper (handing a finished image build to the daemon's user).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::fcntl::copy_file_range;
use nix::unistd::{Whence, lseek};

/// FICLONE = _IOW(0x94, 9, int): `to` shares `from`'s extents (btrfs, xfs).
pub fn reflink(from: &File, to: &File) -> io::Result<()> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // nix has no safe wrapper for FICLONE (its ioctl macros make unsafe fns too).
    // SAFETY: both fds are open; FICLONE takes the source fd as its argument.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A reflink if possible, else [`sparse_copy`]; says whether it was a reflink.
pub fn clone_data(from: &File, to: &File) -> io::Result<bool> {
    if reflink(from, to).is_ok() {
        return Ok(true);
    }
    sparse_copy(from, to)?;
    Ok(false)
}

/// Copies only the data extents, leaving holes as holes.
pub fn sparse_copy(from: &File, to: &File) -> io::Result<()> {
    let len = from.metadata()?.len();
    to.set_len(len)?;
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        let data = match lseek(from, pos, Whence::SeekData) {
            Ok(data) => data,
            Err(Errno::ENXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(from, data, Whence::SeekHole)?;
        let mut off_in = data;
        let mut off_out = data;
        let mut left = (hole - data) as usize;
        while left > 0 {
            let n = match copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), left) {
                Ok(n) => n,
                // Across filesystems (EXDEV) or where unsupported: plain reads and writes.
                Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                    copy_range(from, to, off_in as u64, left)?;
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                break;
            }
            left -= n;
        }
        pos = hole;
    }
    to.sync_all()
}

fn copy_range(from: &File, to: &File, mut off: u64, mut left: usize) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = left.min(buf.len());
        let n = from.read_at(&mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        to.write_all_at(&buf[..n], off)?;
        off += n as u64;
        left -= n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! On real filesystems: ext4 (this host's /tmp, no reflink) and tmpfs (/dev/shm),
    //! so both the in-kernel copy and the plain read/write path across filesystems
    //! run. The reflink path itself runs on btrfs in tests/guests.rs.
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    const MIB: u64 = 1 << 20;

    /// A 5 MiB file: 4 KiB of data, a hole, 2.5 MiB of data from 1 MiB, a hole to
    /// the end. Returns its path and its bytes.
    fn sparse_file(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
        let p = dir.join("src");
        let f = File::create(&p).unwrap();
        f.set_len(5 * MIB).unwrap();
        let head: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let middle: Vec<u8> = (0..(5 * MIB / 2) as u32)
            .map(|i| (i % 241) as u8 + 1)
            .collect();
        f.write_all_at(&head, 0).unwrap();
        f.write_all_at(&middle, MIB).unwrap();
        f.sync_all().unwrap();
        (p.clone(), std::fs::read(&p).unwrap())
    }

    /// The next data at or after `off` in `f`, or `None` if only a hole remains.
    fn next_data(f: &File, off: i64) -> Option<i64> {
        lseek(f, off, Whence::SeekData).ok()
    }

    fn check_copy(from_dir: &std::path::Path, to_dir: &std::path::Path) {
        let (src, bytes) = sparse_file(from_dir);
        let dst = to_dir.join("dst");
        let (from, to) = (File::open(&src).unwrap(), File::create(&dst).unwrap());
        assert!(
            !clone_data(&from, &to).unwrap(),
            "no reflink on ext4 or tmpfs"
        );
        assert_eq!(
            std::fs::read(&dst).unwrap(),
            bytes,
            "same bytes, same length"
        );
        let to = File::open(&dst).unwrap();
        // The holes stay holes: after the head, the next data is the middle part,
        // and nothing follows it.
        assert_eq!(
            next_data(&to, 4096).map(|o| o as u64 / MIB),
            Some(1),
            "the first hole was filled"
        );
        assert_eq!(
            next_data(&to, (MIB + 5 * MIB / 2 + 4096) as i64),
            None,
            "the trailing hole was filled"
        );
        let used = std::fs::metadata(&dst).unwrap().blocks() * 512;
        assert!(used < 3 * MIB, "{used} bytes allocated for 2.5 MiB of data");
    }

    #[test]
    fn a_sparse_file_is_copied_byte_for_byte_with_its_holes_on_one_filesystem() {
        let d = tempfile::tempdir().unwrap();
        check_copy(d.path(), d.path());
    }

    #[test]
    fn a_sparse_file_is_copied_with_its_holes_across_filesystems() {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let d = tempfile::tempdir().unwrap();
        check_copy(shm.path(), d.path());
        check_copy(d.path(), shm.path());
    }

    #[test]
    fn empty_and_all_hole_files_copy_to_their_length() {
        let d = tempfile::tempdir().unwrap();
        for len in [0, 3 * MIB + 7] {
            let src = d.path().join(format!("src{len}"));
            let f = File::create(&src).unwrap();
            f.set_len(len).unwrap();
            let dst = d.path().join(format!("dst{len}"));
            let to = File::create(&dst).unwrap();
            sparse_copy(&File::open(&src).unwrap(), &to).unwrap();
            let m = std::fs::metadata(&dst).unwrap();
            assert_eq!((m.len(), m.blocks()), (len, 0), "{len}");
        }
    }

    #[test]
    fn a_range_is_copied_at_its_offset_in_pieces_of_the_buffer() {
        let d = tempfile::tempdir().unwrap();
        let (src, bytes) = sparse_file(d.path());
        let dst = d.path().join("dst");
        let to = File::create(&dst).unwrap();
        to.set_len(5 * MIB).unwrap();
        // 2.5 MiB from offset 1 MiB: three reads of the 1 MiB buffer.
        copy_range(&File::open(&src).unwrap(), &to, MIB, (5 * MIB / 2) as usize).unwrap();
        let got = std::fs::read(&dst).unwrap();
        let r = MIB as usize..(MIB + 5 * MIB / 2) as usize;
        assert_eq!(&got[r.clone()], &bytes[r.clone()]);
        assert!(
            got[..r.start].iter().all(|b| *b == 0),
            "nothing before the range"
        );
        assert!(
            got[r.end..].iter().all(|b| *b == 0),
            "nothing after the range"
        );
        // A range past the end of the source stops at the end.
        copy_range(&File::open(&src).unwrap(), &to, 5 * MIB - 10, 100).unwrap();
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), 5 * MIB);
    }

    #[test]
    fn reflink_reports_a_filesystem_that_cannot_share_extents() {
        let d = tempfile::tempdir().unwrap();
        let (src, _) = sparse_file(d.path());
        let to = File::create(d.path().join("dst")).unwrap();
        let e = reflink(&File::open(&src).unwrap(), &to).unwrap_err();
        assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EINVAL | libc::EXDEV)
            ),
            "{e}"
        );
        assert_eq!(to.metadata().unwrap().len(), 0, "nothing was copied");
    }
}
