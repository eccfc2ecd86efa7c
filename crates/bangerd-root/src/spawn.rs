//! Starting a VMM so that it never runs without an owner.
//!
//! `std::process::Command::spawn` returns only after the child has exec'd, so a
//! helper killed between that exec and writing down the child's pid leaves a VMM that
//! nothing durable names: an orphan. Here the child is forked and *held*: it sets up
//! its session, files, signals and user, then blocks reading a pipe. The helper
//! writes the launch record (pid, start time) and only then releases it ([`Held::release`]).
//! If the helper dies before that, the pipe closes, the child reads end-of-file and
//! exits without ever running the VMM.
//!
//! Between fork and exec the child only makes async-signal-safe system calls; every
//! string it needs is prepared before the fork.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::safe::RunAs;

/// What to run and with which files.
pub struct Spawn {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub stdout: File,
    pub stderr: File,
    /// Files the child inherits, each at the descriptor number given (3 and up).
    pub inherit: Vec<(std::os::fd::RawFd, i32)>,
    /// The child's working directory, as an open directory (entered with fchdir, so
    /// the child needs no right to reach it by path).
    pub cwd: Option<File>,
    /// Drop to this user, with exactly its listed supplementary groups, before exec.
    pub drop_to: Option<RunAs>,
}

/// A forked child waiting for [`Held::release`]; dropping this ends it instead.
pub struct Held {
    pub pid: i32,
    go: OwnedFd,
}

impl Held {
    /// Lets the child exec.
    pub fn release(self) -> io::Result<()> {
        nix::unistd::write(&self.go, &[1])
            .map(|_| ())
            .map_err(io::Error::from)
    }
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::other("an argument holds a NUL byte"))
}

/// Forks the child of `s` and leaves it waiting, in its own session with default
/// signal dispositions, stdin from /dev/null and stdout/stderr on the given files.
pub fn spawn_held(s: &Spawn) -> io::Result<Held> {
    let prog = cstring(s.program.as_os_str().as_bytes())?;
    let mut argv_c = vec![prog.clone()];
    for a in &s.args {
        argv_c.push(cstring(a.as_bytes())?);
    }
    let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let env_c: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            cstring(&b)
        })
        .collect::<io::Result<_>>()?;
    let mut envp: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    let devnull = File::open("/dev/null")?;
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    if s.inherit
        .iter()
        .any(|&(_, to)| !(3..MOVED_FDS).contains(&to))
    {
        return Err(io::Error::other(format!(
            "inherited descriptors must be numbered 3 to {}",
            MOVED_FDS - 1
        )));
    }
    let groups: Vec<libc::gid_t> = s
        .drop_to
        .as_ref()
        .map(|u| u.groups.clone())
        .unwrap_or_default();
    let fds = ChildFds {
        stdin: devnull.as_raw_fd(),
        stdout: s.stdout.as_raw_fd(),
        stderr: s.stderr.as_raw_fd(),
        go_r: go_r.as_raw_fd(),
        go_w: go_w.as_raw_fd(),
        inherit: s.inherit.clone(),
        drop_to: s.drop_to.as_ref().map(|u| (u.uid, u.gid)),
        groups,
        cwd: s.cwd.as_ref().map(|d| d.as_raw_fd()),
    };
    // SAFETY: the child only calls async-signal-safe functions (see `child`) and
    // never returns; all memory it reads was prepared above.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => unsafe { child(&fds, prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) },
        pid => {
            drop(go_r);
            Ok(Held { pid, go: go_w })
        }
    }
}

/// Inherited descriptors are first moved at or above this number, so that placing
/// one at its target never overwrites another still to be placed.
const MOVED_FDS: i32 = 64;

struct ChildFds {
    stdin: i32,
    stdout: i32,
    stderr: i32,
    go_r: i32,
    go_w: i32,
    inherit: Vec<(i32, i32)>,
    drop_to: Option<(u32, u32)>,
    groups: Vec<libc::gid_t>,
    cwd: Option<i32>,
}

/// # Safety
/// Runs in the forked child of a multithreaded process: async-signal-safe calls only.
unsafe fn child(
    fds: &ChildFds,
    prog: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> ! {
    unsafe fn fail(what: &[u8]) -> ! {
        let msg = b"bangerd-root: cannot start the VMM: ";
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::write(2, what.as_ptr().cast(), what.len());
            libc::write(2, b"\n".as_ptr().cast(), 1);
            libc::_exit(127)
        }
    }
    unsafe {
        // Only the helper may hold the write end: its death must close the pipe.
        libc::close(fds.go_w);
        if libc::setsid() < 0 {
            fail(b"setsid failed");
        }
        if libc::dup2(fds.stdin, 0) < 0
            || libc::dup2(fds.stdout, 1) < 0
            || libc::dup2(fds.stderr, 2) < 0
        {
            fail(b"dup2 failed");
        }
        // Every signal back to its default action and nothing blocked, whatever the
        // helper (or its service manager) had set.
        let dfl: libc::sigaction = std::mem::zeroed();
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        if let Some(d) = fds.cwd
            && libc::fchdir(d) != 0
        {
            fail(b"cannot enter the VMM's directory");
        }
        // Inherited files: moved out of the way (close-on-exec copies), then placed
        // at their numbers (dup2 clears close-on-exec there). The pipe moves too.
        let mut go_r = fds.go_r;
        if !fds.inherit.is_empty() {
            go_r = libc::fcntl(fds.go_r, libc::F_DUPFD_CLOEXEC, MOVED_FDS);
            if go_r < 0 {
                fail(b"cannot move the release pipe");
            }
            let mut moved = [0i32; 8];
            if fds.inherit.len() > moved.len() {
                fail(b"too many inherited files");
            }
            for (i, &(from, _)) in fds.inherit.iter().enumerate() {
                moved[i] = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, MOVED_FDS);
                if moved[i] < 0 {
                    fail(b"cannot move an inherited file");
                }
            }
            for (i, &(_, to)) in fds.inherit.iter().enumerate() {
                if libc::dup2(moved[i], to) < 0 {
                    fail(b"cannot place an inherited file");
                }
            }
        }
        if let Some((uid, gid)) = fds.drop_to
            && (libc::setgroups(fds.groups.len(), fds.groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0)
        {
            fail(b"cannot drop to the VMM's user");
        }
        // Wait until the helper has recorded this launch.
        let mut b = 0u8;
        loop {
            let r = libc::read(go_r, (&mut b as *mut u8).cast(), 1);
            if r == 1 {
                break;
            }
            if r < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            // End of file: the helper died before recording the launch.
            libc::_exit(126);
        }
        libc::execve(prog, argv, envp);
        fail(b"exec failed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out() -> (tempfile::TempDir, File, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out");
        (d, File::create(&p).unwrap(), p)
    }

    /// `/bin/sh -c SCRIPT`, held, with stdout and stderr in a fresh file.
    fn held_sh(script: &str, drop_to: Option<RunAs>) -> (tempfile::TempDir, PathBuf, Held) {
        held_sh_with(script, drop_to, Vec::new())
    }

    fn held_sh_with(
        script: &str,
        drop_to: Option<RunAs>,
        inherit: Vec<(std::os::fd::RawFd, i32)>,
    ) -> (tempfile::TempDir, PathBuf, Held) {
        let (d, f, path) = out();
        let held = spawn_held(&Spawn {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            stdout: f.try_clone().unwrap(),
            stderr: f,
            inherit,
            cwd: None,
            drop_to,
        })
        .unwrap();
        (d, path, held)
    }

    fn wait_status(pid: i32) -> i32 {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    #[test]
    fn a_held_child_runs_only_once_released() {
        let (_d, path, held) = held_sh("echo ran", None);
        let pid = held.pid;
        // Held: alive, and nothing ran.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(banger_fc::pid::start_time(pid).is_some());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        held.release().unwrap();
        let status = wait_status(pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ran\n");
    }

    #[test]
    fn a_child_whose_launcher_lets_go_never_execs() {
        let (_d, path, held) = held_sh("echo ran", None);
        let pid = held.pid;
        // As when the helper dies: the pipe's write end closes.
        drop(held);
        let status = wait_status(pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 126,
            "{status:#x}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn the_child_drops_to_the_daemon_s_user_in_its_own_session() {
        let nobody = RunAs {
            uid: 65534,
            gid: 65534,
            groups: Vec::new(),
        };
        let (_d, path, held) = held_sh(
            "id -u; id -G; cat /proc/self/stat | cut -d' ' -f6; echo $$",
            Some(nobody),
        );
        let pid = held.pid;
        held.release().unwrap();
        wait_status(pid);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "65534", "{text}");
        assert_eq!(lines[1], "65534", "no supplementary groups: {text}");
        assert_eq!(lines[2], lines[3], "its own session: {text}");
    }

    #[test]
    fn the_child_gets_exactly_the_groups_it_is_given() {
        let who = RunAs {
            uid: 65534,
            gid: 65534,
            groups: vec![65534, 4242],
        };
        let (_d, path, held) = held_sh("id -G", Some(who));
        let pid = held.pid;
        held.release().unwrap();
        wait_status(pid);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), "65534 4242");
    }

    #[test]
    fn inherited_files_land_at_their_numbers_even_when_numbers_cross() {
        // Two files whose descriptors are swapped on the way in: a naive dup2 of the
        // first would close the second before it is placed.
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "first").unwrap();
        std::fs::write(&b, "second").unwrap();
        let fa = File::open(&a).unwrap();
        let fb = File::open(&b).unwrap();
        let (ra, rb) = (fa.as_raw_fd(), fb.as_raw_fd());
        let (_d, path, held) = held_sh_with(
            "cat /proc/self/fd/5; echo; cat /proc/self/fd/6; echo",
            None,
            vec![(ra, 6), (rb, 5)],
        );
        let pid = held.pid;
        held.release().unwrap();
        wait_status(pid);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, ["second", "first"], "{text}");
        assert!(
            spawn_held(&Spawn {
                program: "/bin/true".into(),
                args: vec![],
                stdout: File::open("/dev/null").unwrap(),
                stderr: File::open("/dev/null").unwrap(),
                inherit: vec![(ra, 2)],
                cwd: None,
                drop_to: None,
            })
            .is_err(),
            "a file cannot replace stderr"
        );
    }
}
