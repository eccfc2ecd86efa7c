//! Copying file data: a reflink where the filesystem can share extents, else a copy
//! of the data extents only (holes stay holes). Shared by the daemon (VM disks,
//! imports) and the helper (handing a finished image build to the daemon's user).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// FICLONE = _IOW(0x94, 9, int): `to` shares `from`'s extents (btrfs, xfs).
pub fn reflink(from: &File, to: &File) -> io::Result<()> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: both fds are open; FICLONE takes the source fd as its argument.
    if unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) } == 0 {
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
    let (fd_in, fd_out) = (from.as_raw_fd(), to.as_raw_fd());
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: plain lseek on an open fd.
        let data = unsafe { libc::lseek(fd_in, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd_in, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut off_in = data;
        let mut off_out = data;
        let mut left = (hole - data) as usize;
        while left > 0 {
            // SAFETY: offsets are valid pointers to i64s; fds are open.
            let n = unsafe { libc::copy_file_range(fd_in, &mut off_in, fd_out, &mut off_out, left, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                // Across filesystems (EXDEV) or where unsupported: plain reads and writes.
                if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)) {
                    copy_range(from, to, off_in as u64, left)?;
                    break;
                }
                return Err(e);
            }
            if n == 0 {
                break;
            }
            left -= n as usize;
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
