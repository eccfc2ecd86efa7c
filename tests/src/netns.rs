//! A network namespace per environment, and the relay to the Debian mirror.

use std::path::{Path, PathBuf};

use std::process::Command;

use crate::*;

static NEXT_NETNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A network namespace of the test's own (`ip netns add bgt<pid>x<n>`, loopback up),
/// so that bridges, taps, nftables tables and guests never reach the host's
/// namespace. Dropping it kills what still runs in it and deletes it, and with it
/// every device and table made there. While debugging: `ip netns exec NAME ...`.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let n = NEXT_NETNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("bgt{}x{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            stderr(&out)
        );
        let ns = Netns { name };
        let out = ns
            .cmd("ip")
            .args(["link", "set", "lo", "up"])
            .output()
            .expect("run ip link set lo up");
        assert!(
            out.status.success(),
            "lo up in {}: {}",
            ns.name,
            stderr(&out)
        );
        ns
    }

    /// `/run/netns/NAME`, what `ip netns` and `nsenter --net=` take.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn file(&self) -> std::fs::File {
        std::fs::File::open(self.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()))
    }

    /// Makes `c` run in this namespace (setns between fork and exec: the pid is the
    /// program's own).
    pub fn enter<'c>(&self, c: &'c mut Command) -> &'c mut Command {
        self.enter_as(c, None)
    }

    /// Makes `c` run in this namespace as `uid` (gid `uid`, no supplementary groups)
    /// if set: the namespace is entered first, as root, then privileges are dropped.
    pub fn enter_as<'c>(&self, c: &'c mut Command, uid: Option<u32>) -> &'c mut Command {
        use std::os::unix::process::CommandExt;
        let ns = self.file();
        // SAFETY: setns, setgroups, setgid and setuid are plain system calls, safe
        // between fork and exec; nothing is allocated.
        unsafe {
            c.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                if let Some(uid) = uid {
                    nix::unistd::setgroups(&[])?;
                    nix::unistd::setgid(nix::unistd::Gid::from_raw(uid))?;
                    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
                }
                Ok(())
            })
        }
    }

    /// `prog` in this namespace, not yet run.
    pub fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(prog);
        self.enter(&mut c);
        c
    }

    /// `prog` in this namespace as `uid`, not yet run.
    pub fn cmd_as(&self, prog: impl AsRef<std::ffi::OsStr>, uid: u32) -> Command {
        let mut c = Command::new(prog);
        self.enter_as(&mut c, Some(uid));
        c
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it makes (a
    /// listener on the bridge address, a server on loopback) live there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = self.file();
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Whether the link `name` exists in this namespace.
    pub fn link_exists(&self, name: &str) -> bool {
        self.cmd("ip")
            .args(["link", "show", "dev", name])
            .output()
            .expect("run ip")
            .status
            .success()
    }

    /// Whether the nftables table `inet TABLE` exists in this namespace.
    pub fn nft_table_exists(&self, table: &str) -> bool {
        self.cmd("nft")
            .args(["list", "table", "inet", table])
            .output()
            .expect("run nft")
            .status
            .success()
    }

    /// The processes whose network namespace this is.
    pub fn pids(&self) -> Vec<i32> {
        use std::os::unix::fs::MetadataExt;
        let Ok(want) = std::fs::metadata(self.path()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if std::fs::metadata(e.path().join("ns/net"))
                .is_ok_and(|m| (m.dev(), m.ino()) == (want.dev(), want.ino()))
            {
                out.push(pid);
            }
        }
        out
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs here would keep the namespace (and its devices) alive
        // after `ip netns del`.
        let me = std::process::id() as i32;
        for pid in self.pids().into_iter().filter(|p| *p != me) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A TCP relay from a namespace's loopback to the Debian mirror (`BANGER_MIRROR`'s
/// host, else deb.debian.org:80), for `image build`: the namespace has no route out,
/// and this process, still in the host's namespace, makes the outgoing connections.
/// Only this one destination is reachable through it. debootstrap's wget takes it
/// as `http_proxy` and sends absolute-form requests, which the mirror accepts.
pub struct MirrorRelay {
    pub port: u16,
    listener: std::net::TcpListener,
}

impl MirrorRelay {
    pub fn new(ns: &Netns) -> Self {
        let listener = ns
            .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .expect("relay listener");
        let port = listener.local_addr().unwrap().port();
        let mirror = std::env::var("BANGER_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
        let host = mirror
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let target = if host.contains(':') {
            host
        } else {
            format!("{host}:80")
        };
        let l = listener.try_clone().expect("clone listener");
        std::thread::spawn(move || {
            // Ends when the relay drops (shutdown makes accept fail).
            for inner in l.incoming() {
                let Ok(inner) = inner else { break };
                let target = target.clone();
                std::thread::spawn(move || {
                    let Ok(outer) = std::net::TcpStream::connect(&target) else {
                        return;
                    };
                    let (mut i2, mut o2) = (inner.try_clone().unwrap(), outer.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut i2, &mut o2);
                        let _ = o2.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut inner, mut outer) = (inner, outer);
                    let _ = std::io::copy(&mut outer, &mut inner);
                    let _ = inner.shutdown(std::net::Shutdown::Both);
                    let _ = up.join();
                });
            }
        });
        MirrorRelay { port, listener }
    }
}

impl Drop for MirrorRelay {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}
