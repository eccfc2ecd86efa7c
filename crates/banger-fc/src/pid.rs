//! Finding the pid of the VMM that serves an API socket.
//!
//! First the newest process one of whose arguments *is* the socket path (an exact
//! argument, never a substring: QEMU's `-qmp unix:<api-sock>.qmp` is not a match, nor
//! is any user's process that merely mentions the path). A jailed VMM's command line only holds the
//! chroot-relative `--api-sock /firecracker.socket`, so when that finds nothing we read
//! the jailer's pidfile, `<chroot>/<exec-name>.pid`, the sibling of the API socket
//! symlink's target, and accept the pid only if `/proc/<pid>/comm` is the VMM's name.
//! Nothing here ever signals a process: an unidentified pid is reported, not touched.
//! `/proc` is read through the `procfs` crate (start times, states, `comm`, command
//! lines, effective uids), never parsed by hand.

use std::fs;
use std::path::{Path, PathBuf};

use procfs::process::{Process, Stat};

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
    WrongComm {
        pid: i32,
        path: PathBuf,
        expected: String,
        actual: String,
    },
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
        Err(_) => {
            return Err(PidError::NotFound {
                api_sock: api_sock.to_path_buf(),
            });
        }
    };
    let target = if target.is_absolute() {
        target
    } else {
        api_sock.parent().unwrap_or(Path::new("/")).join(target)
    };
    let pidfile = target
        .parent()
        .unwrap_or(Path::new("/"))
        .join(format!("{exec_name}.pid"));
    let content = match read_pidfile(&pidfile) {
        Some(c) => c,
        None => return Err(PidError::PidfileMissing(pidfile)),
    };
    let pid = match content.trim().parse::<i32>() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(PidError::PidfileGarbage {
                path: pidfile,
                content,
            });
        }
    };
    let Some(actual) = comm(proc_root, pid) else {
        return Err(PidError::StalePid { pid, path: pidfile });
    };
    let expected = expected_comm(exec_name);
    if actual != expected {
        return Err(PidError::WrongComm {
            pid,
            path: pidfile,
            expected,
            actual,
        });
    }
    Ok(pid)
}

/// A pidfile's first bytes, if it is a regular file reached without following a
/// link at its own name. Whoever can change the socket's link chooses this path, so
/// a FIFO (which would block), a device (`/dev/zero`, which never ends) or a link to
/// one is refused, and at most 32 bytes are read.
fn read_pidfile(path: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = String::new();
    f.take(32).read_to_string(&mut buf).ok()?;
    Some(buf)
}

/// The kernel keeps the first 15 bytes of the executable's name in `comm`.
pub fn expected_comm(exec_name: &str) -> String {
    exec_name.bytes().take(15).map(char::from).collect()
}

/// The process `pid` under `proc_root` (`/proc`, or another procfs root in tests).
fn process(proc_root: &Path, pid: i32) -> Option<Process> {
    Process::new_with_root(proc_root.join(pid.to_string())).ok()
}

/// The process's `comm` (what `/proc/<pid>/comm` holds, from `stat`), or `None` if
/// the process is gone.
pub fn comm(proc_root: &Path, pid: i32) -> Option<String> {
    Some(process(proc_root, pid)?.stat().ok()?.comm)
}

/// Start time of a running process in clock ticks since boot (`/proc/<pid>/stat`
/// field 22): with the pid, it identifies one process for its whole life, across pid
/// reuse. A zombie has ended: `None`, as for a pid that is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = stat(pid)?;
    (!ended(&stat)).then_some(stat.starttime)
}

/// The start time of `pid` whether it still runs or is a zombie not yet reaped.
pub fn start_time_even_if_ended(pid: i32) -> Option<u64> {
    stat(pid).map(|s| s.starttime)
}

/// Zombie (`Z`) or dead (`X`): the process has ended, though its entry is still there.
fn ended(stat: &Stat) -> bool {
    matches!(stat.state, 'Z' | 'X')
}

fn stat(pid: i32) -> Option<Stat> {
    Process::new(pid).ok()?.stat().ok()
}

/// A process's effective uid (`/proc/<pid>/status`). The owner of `/proc/<pid>` is
/// root for a process that changed its uid, as the jailed Firecracker does: only the
/// status says whose rights it has.
pub fn euid(pid: i32) -> Option<u32> {
    Some(Process::new(pid).ok()?.status().ok()?.euid)
}

/// Arguments of this form name a path relative to the process's working directory.
pub const CWD_PREFIX: &str = "/proc/self/cwd/";

fn newest_with_cmdline(proc_root: &Path, needle: &Path) -> Option<i32> {
    let me = std::process::id() as i32;
    let mut best: Option<(u64, i32)> = None;
    for p in procfs::process::all_processes_with_root(proc_root)
        .ok()?
        .flatten()
    {
        if p.pid == me {
            continue;
        }
        // A command line that is not UTF-8 names no path banger made.
        let Ok(cmdline) = p.cmdline() else {
            continue;
        };
        // The path itself, or `/proc/self/cwd/NAME` in a process whose working
        // directory holds NAME at that path (how a VMM that cannot reach its
        // directory by path is told where to bind its socket).
        let names_it = |arg: &String| {
            Path::new(arg) == needle
                || arg
                    .strip_prefix(CWD_PREFIX)
                    .is_some_and(|rest| p.cwd().is_ok_and(|cwd| cwd.join(rest) == needle))
        };
        if !cmdline.iter().any(names_it) {
            continue;
        }
        let started = p
            .stat()
            .ok()
            .filter(|s| !ended(s))
            .map_or(0, |s| s.starttime);
        if best.is_none_or(|(t, _)| started >= t) {
            best = Some((started, p.pid));
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
        // A shell that waits on its stdin (it never forks), with ARGS as separate
        // arguments on its command line like a VMM's flags.
        let mut c = Command::new("/bin/sh");
        c.args(["-c", "read x", "vmm"])
            .args(extra)
            .stdin(std::process::Stdio::piped());
        Reaped(c.spawn().unwrap())
    }

    /// Waits (with a deadline) until `pid`'s command line holds `arg`: the shell may
    /// not have exec'd yet.
    fn wait_for_arg(pid: i32, arg: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes()) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} never showed {arg:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    fn wait_for_comm(pid: i32, want: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while comm(Path::new("/proc"), pid).as_deref() != Some(want) {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} never had comm {want:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
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
        let pid = child.0.id() as i32;
        wait_for_arg(pid, sock.to_str().unwrap());
        assert_eq!(find_pid(&sock, "firecracker"), Ok(pid));
    }

    #[test]
    fn a_longer_argument_that_contains_the_socket_path_is_not_a_match() {
        // QEMU's QMP socket is `<api-sock>.qmp`; a user may name the path in any text.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vm2.sock");
        let qmp = format!("unix:{}.qmp,server", sock.display());
        let mention = format!("--note={}", sock.display());
        let child = sleeper(&["-qmp", &qmp, &mention]);
        wait_for_arg(child.0.id() as i32, &mention);
        assert_eq!(
            find_pid(&sock, "firecracker"),
            Err(PidError::NotFound { api_sock: sock })
        );
    }

    #[test]
    fn of_several_processes_with_the_socket_the_newest_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vm3.sock");
        let s = sock.to_str().unwrap();
        let old = sleeper(&["--api-sock", s]);
        wait_for_arg(old.0.id() as i32, s);
        // Start times are in clock ticks: make sure the second one is later.
        let t0 = start_time(old.0.id() as i32).unwrap();
        let new = loop {
            let c = sleeper(&["--api-sock", s]);
            wait_for_arg(c.0.id() as i32, s);
            if start_time(c.0.id() as i32).unwrap() > t0 {
                break c;
            }
        };
        assert_eq!(find_pid(&sock, "firecracker"), Ok(new.0.id() as i32));
    }

    #[test]
    fn falls_back_to_the_jailer_pidfile_with_a_comm_check() {
        let dir = tempfile::tempdir().unwrap();
        let child = sleeper(&[]);
        let pid = child.0.id() as i32;
        wait_for_comm(pid, "sh");
        let link = jail(dir.path(), "sh", Some(&pid.to_string()));
        assert_eq!(find_pid(&link, "sh"), Ok(pid));
    }

    #[test]
    fn whitespace_around_the_pid_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let child = sleeper(&[]);
        let pid = child.0.id() as i32;
        wait_for_comm(pid, "sh");
        let link = jail(dir.path(), "sh", Some(&format!("  {pid}\n")));
        assert_eq!(find_pid(&link, "sh"), Ok(pid));
    }

    #[test]
    fn missing_pidfile_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let link = jail(dir.path(), "firecracker", None);
        assert!(matches!(
            find_pid(&link, "firecracker"),
            Err(PidError::PidfileMissing(_))
        ));
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
                matches!(
                    find_pid(&link, "firecracker"),
                    Err(PidError::PidfileGarbage { .. })
                ),
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
        assert!(matches!(
            find_pid(&link, "firecracker"),
            Err(PidError::StalePid { .. })
        ));
    }

    #[test]
    fn a_pid_with_another_comm_is_not_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let child = sleeper(&[]);
        let pid = child.0.id() as i32;
        wait_for_comm(pid, "sh");
        let link = jail(dir.path(), "firecracker", Some(&pid.to_string()));
        match find_pid(&link, "firecracker") {
            Err(PidError::WrongComm {
                actual, expected, ..
            }) => {
                assert_eq!(actual, "sh");
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
        assert!(matches!(
            find_pid(&sock, "firecracker"),
            Err(PidError::NotFound { .. })
        ));
    }

    #[test]
    fn comm_is_cut_to_fifteen_bytes() {
        assert_eq!(expected_comm("banger-vmm-qemu-long"), "banger-vmm-qemu");
        assert_eq!(expected_comm("firecracker"), "firecracker");
    }

    #[test]
    fn a_zombie_has_no_start_time_but_its_ended_start_time_is_kept() {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        // Not reaped yet: a zombie once it exits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while start_time(pid).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let t = start_time_even_if_ended(pid).expect("the zombie is still in /proc");
        assert!(t > 0);
        // Our own start time is not before the child's.
        assert!(start_time(std::process::id() as i32).unwrap() <= t);
        c.wait().unwrap();
        assert_eq!(start_time_even_if_ended(pid), None);
    }

    #[test]
    fn the_effective_uid_is_read_from_the_status_and_a_dead_pid_has_none() {
        assert_eq!(
            euid(std::process::id() as i32),
            Some(nix::unistd::geteuid().as_raw())
        );
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        c.wait().unwrap();
        assert_eq!(euid(pid), None);
    }

    #[test]
    fn comm_is_read_under_another_proc_root() {
        // A procfs root other than /proc: here /proc itself reached through a link,
        // the way tests point `find_pid_in` elsewhere.
        let d = tempfile::tempdir().unwrap();
        symlink("/proc", d.path().join("proc")).unwrap();
        let me = std::process::id() as i32;
        assert_eq!(
            comm(&d.path().join("proc"), me),
            comm(Path::new("/proc"), me)
        );
        assert!(comm(&d.path().join("proc"), me).is_some());
        assert_eq!(comm(d.path(), me), None);
    }

    #[test]
    fn start_time_of_self_is_known_and_of_a_dead_pid_is_not() {
        assert!(start_time(std::process::id() as i32).is_some());
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        c.wait().unwrap();
        assert_eq!(start_time(pid), None);
    }

    #[test]
    fn a_vmm_told_its_socket_relative_to_its_working_directory_is_found_there_only() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let mut c = Command::new("/bin/sh");
        c.args([
            "-c",
            "read x",
            "vmm",
            "--api-sock",
            "/proc/self/cwd/api.sock",
        ])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped());
        let vmm = Reaped(c.spawn().unwrap());
        let pid = vmm.0.id() as i32;
        wait_for_arg(pid, "/proc/self/cwd/api.sock");
        assert_eq!(find_pid(&sock, "sh"), Ok(pid));
        // The same argument in another directory names another socket.
        assert!(find_pid(&other.path().join("api.sock"), "sh").is_err());
        assert!(find_pid(&dir.path().join("api.sock.qmp"), "sh").is_err());
    }

    #[test]
    fn a_pidfile_that_is_a_link_a_fifo_or_a_device_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        let jail = d.path().join("jail");
        std::fs::create_dir(&jail).unwrap();
        symlink(jail.join("firecracker.socket"), d.path().join("api.sock")).unwrap();
        let pidfile = jail.join("firecracker.pid");
        // A link to an endless device.
        symlink("/dev/zero", &pidfile).unwrap();
        assert!(matches!(
            find_pid(&d.path().join("api.sock"), "firecracker"),
            Err(PidError::PidfileMissing(_))
        ));
        std::fs::remove_file(&pidfile).unwrap();
        // A FIFO: refused at once, not waited on.
        nix::unistd::mkfifo(&pidfile, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(
            find_pid(&d.path().join("api.sock"), "firecracker"),
            Err(PidError::PidfileMissing(_))
        ));
        std::fs::remove_file(&pidfile).unwrap();
        // A regular file far longer than a pid: only its start is read.
        std::fs::write(
            &pidfile,
            format!("{}{}", std::process::id(), " ".repeat(1 << 20)),
        )
        .unwrap();
        match find_pid(&d.path().join("api.sock"), "firecracker") {
            Err(PidError::WrongComm { pid, .. }) => assert_eq!(pid, std::process::id() as i32),
            other => panic!("{other:?}"),
        }
    }
}
