//! What the three binaries share about the host and their own process: a file system
//! identity taken per thread ([`as_identity`]), this boot's id, the single-instance
//! lock and the crash tests' fault points.

use std::fs::File;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, setfsgid, setfsuid};

use crate::protocol::Identity;

/// Runs `f` with `who`'s file system identity: on a thread of its own (fsuid, fsgid
/// and the group list are per thread for the raw system calls), with no supplementary
/// groups, so the kernel checks every path component and file as it would for `who`
/// (a file reachable only through a supplementary group is refused: fail closed).
/// For root, `f` simply runs here. Needs CAP_SETUID/CAP_SETGID (root) for anyone
/// else; without them the identity check fails and `f` does not run.
pub fn as_identity<T: Send>(who: Identity, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    if who.uid == 0 {
        return Ok(f());
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // setgroups(2) on this thread only, which glibc's wrapper (and so nix's)
            // would apply to every thread of the process.
            // SAFETY: a raw system call with a null list of length 0.
            #[allow(unsafe_code)]
            let r =
                unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // setfs*id(2) are per thread (glibc passes them straight to the kernel).
            setfsgid(Gid::from_raw(who.gid));
            setfsuid(Uid::from_raw(who.uid));
            // setfs*id report the previous id, never an error: read them back.
            let fsuid = setfsuid(Uid::from_raw(u32::MAX)).as_raw();
            let fsgid = setfsgid(Gid::from_raw(u32::MAX)).as_raw();
            if (fsuid, fsgid) != (who.uid, who.gid) {
                return Err(std::io::Error::other(format!(
                    "cannot take the file system identity of uid {} gid {}",
                    who.uid, who.gid
                )));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| std::io::Error::other("a file operation as another user panicked"))?
    })
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Fault injection for the crash tests: a daemon started with `BANGER_FAULT=<point>`
/// SIGKILLs itself when it reaches that point (points are named
/// `<daemon>:<verb>:<step>`, listed in docs/testing.md). Unset, this is one cached
/// environment lookup.
pub fn fault_point(name: &str) {
    static WANT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if WANT
        .get_or_init(|| std::env::var("BANGER_FAULT").ok())
        .as_deref()
        == Some(name)
    {
        eprintln!("BANGER_FAULT: killing myself at {name}");
        let _ = kill(Pid::this(), Signal::SIGKILL);
    }
}

/// Takes an exclusive `flock` on `f`, waiting up to `patience` for a holder that is
/// going away: a daemon SIGKILLed a moment ago holds its lock until the kernel has
/// torn it down, and the daemon started in its place must not give up on that. The
/// lock lasts while the returned [`Flock`] lives (dropping it unlocks and closes
/// `f`). A holder that stays is an `EWOULDBLOCK` error.
pub fn lock_exclusive(f: File, patience: Duration) -> std::io::Result<Flock<File>> {
    let deadline = std::time::Instant::now() + patience;
    let mut f = f;
    loop {
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((back, e)) => {
                if e != Errno::EWOULDBLOCK || std::time::Instant::now() >= deadline {
                    return Err(e.into());
                }
                f = back;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exclusive_lock_waits_for_a_holder_that_goes_and_refuses_one_that_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let first = super::lock_exclusive(open(), std::time::Duration::ZERO).unwrap();
        // A holder that stays: refused once the patience is spent, not before.
        let t = std::time::Instant::now();
        let e = super::lock_exclusive(open(), std::time::Duration::from_millis(100)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EWOULDBLOCK));
        assert!(t.elapsed() >= std::time::Duration::from_millis(100));
        // A holder that goes (its lock dropped, its file closed) while the second waits.
        let going = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(first);
        });
        let _second = super::lock_exclusive(open(), std::time::Duration::from_secs(30)).unwrap();
        going.join().unwrap();
        assert!(super::lock_exclusive(open(), std::time::Duration::ZERO).is_err());
    }

    #[test]
    fn the_boot_id_is_this_boot_s_uuid() {
        let id = boot_id();
        assert_eq!(id.len(), 36, "{id:?}");
        for (i, c) in id.chars().enumerate() {
            let dash = [8, 13, 18, 23].contains(&i);
            assert!(
                if dash {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit()
                },
                "{id:?}"
            );
        }
        assert_eq!(boot_id(), id, "stable within a boot");
    }

    /// Run by `a_fault_point_kills_its_process_only_when_named` in a child process.
    #[test]
    #[ignore = "run as a child by a_fault_point_kills_its_process_only_when_named"]
    fn fault_point_child() {
        fault_point("test:fault:here");
        println!("survived the fault point");
    }

    #[test]
    fn a_fault_point_kills_its_process_only_when_named() {
        use std::os::unix::process::ExitStatusExt;
        let run = |fault: &str| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "host::tests::fault_point_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("BANGER_FAULT", fault)
                .output()
                .unwrap()
        };
        let hit = run("test:fault:here");
        assert_eq!(hit.status.signal(), Some(libc::SIGKILL), "{hit:?}");
        assert!(
            String::from_utf8_lossy(&hit.stderr)
                .contains("BANGER_FAULT: killing myself at test:fault:here")
        );
        let missed = run("test:fault:elsewhere");
        assert!(missed.status.success(), "{missed:?}");
        assert!(String::from_utf8_lossy(&missed.stdout).contains("survived the fault point"));
    }

    /// Needs root (as the helper runs): the identity is taken for real.
    #[test]
    fn as_identity_checks_every_file_as_that_user_and_leaves_the_caller_as_it_was() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root's").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let public = dir.path().join("public");
        std::fs::write(&public, b"anyone's").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        let nobody = Identity {
            uid: 65534,
            gid: 65534,
        };

        let (s, p) =
            as_identity(nobody, || (std::fs::read(&secret), std::fs::read(&public))).unwrap();
        assert_eq!(
            s.unwrap_err().kind(),
            std::io::ErrorKind::PermissionDenied,
            "root's 0600 file"
        );
        assert_eq!(p.unwrap(), b"anyone's");
        // What it creates is its own.
        let made = dir.path().join("made");
        as_identity(nobody, || std::fs::write(&made, b"x"))
            .unwrap()
            .unwrap();
        let m = std::fs::metadata(&made).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        // The caller's own thread is untouched, and root runs `f` in place.
        assert_eq!(std::fs::read(&secret).unwrap(), b"root's");
        let here = std::thread::current().id();
        let (there, read) = as_identity(Identity { uid: 0, gid: 0 }, || {
            (std::thread::current().id(), std::fs::read(&secret))
        })
        .unwrap();
        assert_eq!((there, read.unwrap()), (here, b"root's".to_vec()));
    }
}
