//! Opening a tap the way Firecracker does at `PUT /network-interfaces` time
//! (`devices/virtio/net/tap.rs`): `/dev/net/tun`, `TUNSETIFF` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`. A tap that is missing (to an unprivileged
//! VMM), busy or multi-queue is refused then, not when the guest starts; QEMU is handed
//! the open descriptor (`-netdev tap,fd=N`) and never opens the tap itself.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `IFNAMSIZ`: names must fit 15 bytes and a NUL.
const IFNAMSIZ: usize = 16;

nix::ioctl_write_ptr_bad!(tunsetiff, 0x4004_54ca, libc::ifreq);

/// Firecracker's `TapError` texts.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("Couldn't open /dev/net/tun: {0}")]
    OpenTun(#[source] std::io::Error),
    #[error("Invalid interface name")]
    InvalidIfname,
    #[error(
        "Error while creating ifreq structure: {0}. Invalid TUN/TAP Backend provided by {1}. Check our documentation on setting up the network devices."
    )]
    IfreqExecuteError(#[source] std::io::Error, String),
}

pub fn open(name: &str) -> Result<OwnedFd, TapError> {
    let bytes = name.as_bytes();
    if bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
        return Err(TapError::InvalidIfname);
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq this function owns, on a descriptor it owns.
    unsafe { tunsetiff(tun.as_raw_fd(), &req) }
        .map_err(|e| TapError::IfreqExecuteError(e.into(), name.to_string()))?;
    Ok(tun.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_interfaces_are_refused_before_any_syscall() {
        for bad in ["a-tap-name-far-too-long", "sixteen-bytes-xx", "nul\0"] {
            assert!(matches!(open(bad), Err(TapError::InvalidIfname)), "{bad:?}");
        }
        let e = TapError::IfreqExecuteError(std::io::Error::from_raw_os_error(16), "tap0".into());
        assert_eq!(
            e.to_string(),
            "Error while creating ifreq structure: Device or resource busy (os error 16). Invalid TUN/TAP Backend provided by tap0. Check our documentation on setting up the network devices."
        );
    }
}
