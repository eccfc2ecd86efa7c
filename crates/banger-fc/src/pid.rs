//! Finding the pid of the VMM that serves an API socket.
//!
//! First the way `pgrep -n -f <api-sock>` does it: the newest process whose command
//! line contains the socket path. A jailed VMM's command line only holds the
//! chroot-relative `--api-sock /firecracker.socket`, so when that finds nothing we read
//! the jailer's pidfile, `<chroot>/<exec-name>.pid`, the sibling of the API socket
//! symlink's target, and accept the pid only if `/proc/<pid>/comm` is the VMM's name.
//! Nothing here ever signals a process: an unidentified pid is reported, not touched.

use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PidError {
    #[error(
        "no process has {api_sock} on its command line and the socket is not a symlink into a jail"
    )]
    NotFound { api_sock: PathBuf },
    #[error("jailer pidfile {0} is missing")]
    PidfileMissing(PathBuf),
    #[error("jailer pidfile {path} does not hold a pid: {content:?}")]
    PidfileGarbage { path: PathBuf, content: String },
    #[error("pid {pid} from {path} is not running")]
    StalePid { pid: i32, path: PathBuf },
    #[error("pid {pid} from {path} is {actual:?}, not {expected:?}")]
    WrongComm { pid: i32, path: PathBuf, expected: String, actual: String },
}

/// Finds the VMM serving `api_sock`. `exec_name` is the VMM binary's file name
/// (`firecracker`, or `banger-vmm-qemu`): it names the jailer pidfile and is the
/// expected `comm` (cut to 15 bytes, as the kernel does).
pub fn find_pid(api_sock: &Path, exec_name: &str) -> Result<i32, PidError> {
    find_pid_in(Path::new("/proc"), api_sock, exec_name)
}

/// [`find_pid`] against another procfs root (tests).
pub fn find_pid_in(proc_root: &Path, api_sock: &Path, exec_name: &str) -> Result<i32, PidError> {
    if let Some(pid) = newest_with_cmdline(proc_root, api_sock) {
        return Ok(pid);
    }
    let target = match fs::read_link(api_sock) {
        Ok(t) => t,
        Err(_) => return Err(PidError::NotFound { api_sock: api_sock.to_path_buf() }),
    };
    let target = if target.is_absolute() {
        target
    } else {
        api_sock.parent().unwrap_or(Path::new("/")).join(target)
    };
    let pidfile = target.parent().unwrap_or(Path::new("/")).join(format!("{exec_name}.pid"));
    let content = match fs::read_to_string(&pidfile) {
        Ok(c) => c,
        Err(_) => return Err(PidError::PidfileMissing(pidfile)),
    };
    let pid = match content.trim().parse::<i32>() {
        Ok(p) if p > 0 => p,
        _ => return Err(PidError::PidfileGarbage { path: pidfile, content }),
    };
    let Some(actual) = comm(proc_root, pid) else {
        return Err(PidError::StalePid { pid, path: pidfile });
    };
    let expected = expected_comm(exec_name);
    if actual != expected {
        return Err(PidError::WrongComm { pid, path: pidfile, expected, actual });
    }
    Ok(pid)
}

/// The kernel keeps the first 15 bytes of the executable's name in `comm`.
pub fn expected_comm(exec_name: &str) -> String {
    exec_name.bytes().take(15).map(char::from).collect()
}

/// `/proc/<pid>/comm` without its newline, or `None` if the process is gone.
pub fn comm(proc_root: &Path, pid: i32) -> Option<String> {
    fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

/// Start time of a process in clock ticks since boot (`/proc/<pid>/stat` field 22):
/// with the pid, it identifies one process for its whole life, across pid reuse.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: the fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn newest_with_cmdline(proc_root: &Path, needle: &Path) -> Option<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    let mut best: Option<(u64, i32)> = None;
    for entry in fs::read_dir(proc_root).ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        // pgrep -f matches against the arguments joined by spaces.
        let joined: Vec<u8> =
            cmdline.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
        if !joined.windows(needle.len()).any(|w| w == needle) {
            continue;
        }
        let started = start_time(pid).unwrap_or(0);
        if best.is_none_or(|(t, _)| started >= t) {
            best = Some((started, pid));
        }
    }
    best.map(|(_, pid)| pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::process::{Child, Command};

    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeper(extra: &[&str]) -> Reaped {
        // A single `sleep` (it never forks), with ARGS in its argv[0] so they show on
        // its command line like a VMM's flags; comm stays "sleep".
        use std::os::unix::process::CommandExt;
        let mut c = Command::new("sleep");
        if !extra.is_empty() {
            c.arg0(format!("vmm {}", extra.join(" ")));
        }
        Reaped(c.arg("60").spawn().unwrap())
    }

    /// A jail: `<dir>/api.sock -> <dir>/jail/root/firecracker.socket` with the pidfile beside it.
    fn jail(dir: &Path, exec_name: &str, pidfile: Option<&str>) -> PathBuf {
        let root = dir.join("jail/root");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("firecracker.socket"), b"").unwrap();
        if let Some(content) = pidfile {
            fs::write(root.join(format!("{exec_name}.pid")), content).unwrap();
        }
        let link = dir.join("api.sock");
        symlink(root.join("firecracker.socket"), &link).unwrap();
        link
    }

    #[test]
    fn finds_the_process_whose_command_line_holds_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vm1.sock");
        let child = sleeper(&["--api-sock", sock.to_str().unwrap()]);
        // The child may not have exec'd yet; wait until its cmdline shows the path.
        let pid = child.0.id() as i32;
        let found = (0..500)
            .find_map(|_| {
                let r = find_pid(&sock, "firecracker").ok();
                if r.is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                r
            })
            .expect("found");
        assert_eq!(found, pid);
    }

    #[test]
    fn falls_back_to_the_jailer_pidfile_with_a_comm_check() {
        let dir = tempfile::tempdir().unwrap();
        let child = sleeper(&[]);
        let pid = child.0.id() as i32;
        // Wait for exec so comm is "sleep".
        while comm(Path::new("/proc"), pid).as_deref() != Some("sleep") {
            std::thread::yield_now();
        }
        let link = jail(dir.path(), "sleep", Some(&pid.to_string()));
        assert_eq!(find_pid(&link, "sleep"), Ok(pid));
    }

    #[test]
    fn whitespace_around_the_pid_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let child = sleeper(&[]);
        let pid = child.0.id() as i32;
        while comm(Path::new("/proc"), pid).as_deref() != Some("sleep") {
            std::thread::yield_now();
        }
        let link = jail(dir.path(), "sleep", Some(&format!("  {pid}\n")));
        assert_eq!(find_pid(&link, "sleep"), Ok(pid));
    }

    #[test]
    fn missing_pidfile_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let link = jail(dir.path(), "firecracker", None);
        assert!(matches!(find_pid(&link, "firecracker"), Err(PidError::PidfileMissing(_))));
    }

    #[test]
    fn garbage_pidfile_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        for garbage in ["", "abc", "-5", "0", "12 34", "99999999999"] {
            let d = dir.path().join(format!("g{}", garbage.len()));
            fs::create_dir_all(&d).unwrap();
            let _ = fs::remove_dir_all(d.join("jail"));
            let _ = fs::remove_file(d.join("api.sock"));
            let link = jail(&d, "firecracker", Some(garbage));
            assert!(
                matches!(find_pid(&link, "firecracker"), Err(PidError::PidfileGarbage { .. })),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn stale_pid_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        c.wait().unwrap();
        let link = jail(dir.path(), "firecracker", Some(&pid.to_string()));
        assert!(matches!(find_pid(&link, "firecracker"), Err(PidError::StalePid { .. })));
    }

    #[test]
    fn a_pid_with_another_comm_is_not_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let child = sleeper(&[]);
        let pid = child.0.id() as i32;
        while comm(Path::new("/proc"), pid).as_deref() != Some("sleep") {
            std::thread::yield_now();
        }
        let link = jail(dir.path(), "firecracker", Some(&pid.to_string()));
        match find_pid(&link, "firecracker") {
            Err(PidError::WrongComm { actual, expected, .. }) => {
                assert_eq!(actual, "sleep");
                assert_eq!(expected, "firecracker");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_socket_that_is_not_a_symlink_and_not_on_any_command_line_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("plain.sock");
        fs::write(&sock, b"").unwrap();
        assert!(matches!(find_pid(&sock, "firecracker"), Err(PidError::NotFound { .. })));
    }

    #[test]
    fn comm_is_cut_to_fifteen_bytes() {
        assert_eq!(expected_comm("banger-vmm-qemu-long"), "banger-vmm-qemu");
        assert_eq!(expected_comm("firecracker"), "firecracker");
    }

    #[test]
    fn start_time_of_self_is_known_and_of_a_dead_pid_is_not() {
        assert!(start_time(std::process::id() as i32).is_some());
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        c.wait().unwrap();
        assert_eq!(start_time(pid), None);
    }
}
