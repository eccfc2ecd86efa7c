//! A systemd-nspawn container booted with systemd as PID 1 (the root that
//! scripts/nspawn-root builds), for the scenarios that need banger under a real
//! systemd. The container runs in a network namespace of the test's own
//! (`--network-namespace-path`), never the host's, with this tree's binaries at
//! `/opt/banger` and the test guest at `/opt/guest`; dropping it ends its whole PID
//! namespace, VMs included.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::*;

/// A booted container; commands run inside it with [`Container::inside`].
pub struct Container {
    nspawn: Child,
    init: i32,
    log: std::path::PathBuf,
    /// The container's network namespace: its banger's bridge, taps and nftables
    /// table are made here, and go with it.
    pub netns: Netns,
    _dir: tempfile::TempDir,
}

impl Container {
    pub fn boot(net: u32) -> Self {
        Self::boot_with(net, Netns::new(), &[])
    }

    /// Boots in `netns` with extra `--bind-ro=HOST:GUEST` mounts.
    pub fn boot_with(net: u32, netns: Netns, extra_ro: &[(&Path, &str)]) -> Self {
        let root = nspawn_root();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("nspawn.log");
        let out = std::fs::File::create(&log).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .args([
                "--register=no",
                "--keep-unit",
                "--quiet",
                "--boot",
                "--volatile=overlay",
            ])
            .arg(format!(
                "--machine=banger-test-{}-{net}",
                std::process::id()
            ))
            .arg("--directory")
            .arg(&root)
            .arg(format!("--bind-ro={}:/opt/banger", bin_dir().display()))
            .arg(format!(
                "--bind-ro={}:/opt/guest",
                cache_dir().join("guest").display()
            ))
            // Taps and the bridge, in the test's network namespace (never the host's);
            // a bridge, subnet and table of its own anyway.
            .arg(format!(
                "--network-namespace-path={}",
                netns.path().display()
            ))
            .args([
                "--bind=/dev/net/tun",
                "--capability=CAP_NET_ADMIN",
                "--property=DeviceAllow=/dev/net/tun rwm",
            ])
            // /dev/kvm for the real Firecracker (its jailer makes its own nodes).
            .args(["--bind=/dev/kvm", "--property=DeviceAllow=/dev/kvm rwm"])
            .args(
                extra_ro
                    .iter()
                    .map(|(h, g)| format!("--bind-ro={}:{g}", h.display())),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("systemd-nspawn");
        let mut c = Container {
            init: 0,
            nspawn,
            log,
            netns,
            _dir: dir,
        };
        // The container's PID 1 is the child of systemd-nspawn once it has exec'd
        // systemd: a child seen earlier may be nspawn's own short-lived helper, and
        // nsenter into it fails once it is gone.
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.init == 0 {
            assert!(
                Instant::now() < deadline,
                "no container init; log:\n{}",
                c.log_text()
            );
            assert!(
                c.nspawn.try_wait().unwrap().is_none(),
                "nspawn exited:\n{}",
                c.log_text()
            );
            c.init = children(c.nspawn.id() as i32)
                .into_iter()
                .find(|&p| {
                    banger_fc::pid::comm(Path::new("/proc"), p).as_deref() == Some("systemd")
                })
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(50));
        }
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let out = c.inside(&["systemctl", "is-system-running"]);
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            if s.starts_with("running") || s.starts_with("degraded") {
                break;
            }
            if Instant::now() > deadline {
                let jobs = c.inside(&["systemctl", "list-jobs", "--no-pager"]);
                panic!(
                    "systemd in the container did not finish booting in 180 s ({}):\n{}\n--- nspawn ---\n{}",
                    s.trim(),
                    String::from_utf8_lossy(&jobs.stdout),
                    c.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn inside(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-a", "--"])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", "/root")
            .output()
            .expect("nsenter")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.inside(args);
        assert!(
            out.status.success(),
            "{args:?} failed in the container ({}):\n{}\n{}\n--- journal ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(
                &self
                    .inside(&["journalctl", "-n", "60", "--no-pager"])
                    .stdout
            )
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["banger", "--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    pub fn boot_ids(&self, vm: &str) -> Vec<String> {
        self.ok(&["banger", "vm", "logs", vm])
            .lines()
            .filter_map(|l| l.trim().strip_prefix("BANGER_BOOT_ID=").map(String::from))
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGKILL to the container's PID 1 ends its whole PID namespace (VMs
        // included); killing only systemd-nspawn would orphan the container.
        if self.init > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.init),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        // The bridge, taps and nftables table go with `self.netns`.
    }
}

/// (bridge, gateway, nftables table) for a container's banger; `n` tells the tests
/// of one run apart.
pub fn container_net_names(n: u32) -> (String, String, String) {
    let p = std::process::id() % 1000;
    (
        format!("bsd{p}x{n}"),
        format!("10.{}.{}.1/24", 97 + n, p % 250),
        format!("banger_sd{p}_{n}"),
    )
}
