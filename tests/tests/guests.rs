//! banger's main job with real Debian guests: `vm run` to a shell over SSH, stop and
//! start (new boot, same disk), two VMs reaching each other and the host, and `rm`
//! releasing disk, tap, address and nftables element. The Debian image is built once
//! by `banger image build` (see `debian_image`).

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use banger_tests::*;

fn nft_elements(env: &Env) -> String {
    let out = env
        .netns
        .cmd("nft")
        .args(["list", "set", "inet", &env.nft_table, "guests"])
        .output()
        .unwrap();
    // An absent element must mean absent, not that nft failed to list the set.
    assert!(out.status.success(), "nft list set: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The VM got its identity from MMDS (an image built by `image build` has the unit):
/// kept for MMDS in the state dir, owner-only; the guest's unit ran and succeeded,
/// set the hostname, installed the host key banger pins (SSH already proved the key
/// and the authorized keys), and closed the route: no process in the guest, root or
/// not, reaches the service afterwards.
fn assert_identity_from_mmds(env: &Env, name: &str, id: &str) {
    use std::os::unix::fs::PermissionsExt;
    let kept = env.state().join("vms").join(id).join("identity.json");
    let mode = std::fs::metadata(&kept).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", kept.display());
    assert!(env.ssh(name, "cat /proc/cmdline").contains("banger.mmds=1"));
    assert_eq!(
        env.ssh(name, "systemctl is-active banger-identity"),
        "active"
    );
    assert_eq!(
        env.ssh(name, "systemctl show -p Result --value banger-identity"),
        "success"
    );
    assert_eq!(env.ssh(name, "hostname"), name);
    assert_eq!(env.ssh(name, "cat /etc/hostname"), name);
    assert_eq!(
        env.ssh(
            name,
            "stat -c %a /etc/ssh/ssh_host_ed25519_key /root/.ssh/authorized_keys"
        ),
        "600\n600"
    );
    for who in ["root", "nobody"] {
        let out = env.banger(&[
            "vm",
            "ssh",
            name,
            "--",
            &format!(
                "su -s /bin/bash {who} -c 'exec 3<>/dev/tcp/169.254.169.254/80' && echo reached"
            ),
        ]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            !said.contains("reached"),
            "{who} reached MMDS: {}",
            stderr(&out)
        );
    }
    assert!(
        env.ssh(name, "ip route show 169.254.169.254")
            .starts_with("prohibit")
    );
    // Before that, only root could reach it (banger-net's rule, from the first packet).
    assert!(
        env.ssh(name, "ip rule show pref 100")
            .contains("to 169.254.169.254 uidrange 1-4294967294 prohibit")
    );
}

#[test]
fn run_ssh_stop_start_then_rm_releases_disk_tap_address_and_rule() {
    let mut env = Env::new();
    env.start();
    env.import_debian();

    // vm run prints the command's output; the exit code is the command's.
    let out = env.banger(&[
        "vm",
        "run",
        "--name",
        "dev",
        "--quiet",
        "--",
        "cat",
        "/proc/sys/kernel/random/boot_id",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let boot1 = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(boot1.len(), 36, "{boot1:?}");
    let code = env
        .banger(&["vm", "ssh", "dev", "--", "exit 3"])
        .status
        .code();
    assert_eq!(code, Some(3));
    assert!(
        env.ssh("dev", "cat /etc/os-release")
            .contains("Debian GNU/Linux 12")
    );
    env.ssh("dev", "echo persisted > /root/marker && sync");

    // Daemons restart (SIGTERM, then SIGKILL, each daemon in turn): the same guest,
    // same boot, still answers SSH.
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGKILL,
    ] {
        for pid in [env.daemon_pid(), env.helper_pid()] {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
            wait_for(Duration::from_secs(10), "the daemon to exit", || {
                !alive(pid)
            });
            env.ok(&["daemon", "start"]);
            assert_eq!(
                env.ssh("dev", "cat /proc/sys/kernel/random/boot_id"),
                boot1,
                "after {sig} to pid {pid}"
            );
            assert_eq!(env.json(&["vm", "show", "dev"])["state"], "running");
        }
    }

    let vm = env.json(&["vm", "show", "dev"]);
    let (id, ip) = (
        vm["id"].as_str().unwrap().to_string(),
        vm["ip"].as_str().unwrap().to_string(),
    );
    assert_eq!(env.ok(&["vm", "ip", "dev"]).trim(), ip);
    assert!(
        ip.starts_with(env.gateway.rsplit_once('.').unwrap().0),
        "{ip} in {}",
        env.gateway
    );
    let tap = format!("bg{id}");
    assert!(env.netns.link_exists(&tap));
    assert!(
        nft_elements(&env).contains(&format!("\"{tap}\" . {ip}")),
        "{}",
        nft_elements(&env)
    );
    assert_eq!(vm["disk_method"], "copy", "ext4 here: no reflink");
    let disk = std::path::PathBuf::from(vm["disk"].as_str().unwrap());
    assert_identity_from_mmds(&env, "dev", &id);

    // The image is in use and cannot be removed.
    let out = env.banger(&["image", "rm", "debian-bookworm"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("used by dev"), "{}", stderr(&out));

    // The identity is applied once: what the guest changes after stays changed.
    env.ssh(
        "dev",
        "echo '# kept by the guest' >> /root/.ssh/authorized_keys && sync",
    );

    // Stop, start: a new boot on the same disk, same address.
    env.ok(&["vm", "stop", "dev", "--timeout", "60"]);
    assert!(
        !env.netns.link_exists(&tap),
        "the tap is released while stopped"
    );
    env.ok(&["vm", "start", "dev"]);
    env.wait_ssh("dev");
    let boot2 = env.ssh("dev", "cat /proc/sys/kernel/random/boot_id");
    assert_ne!(boot1, boot2);
    assert_eq!(env.ssh("dev", "cat /root/marker"), "persisted");
    assert!(
        env.ssh("dev", "cat /root/.ssh/authorized_keys")
            .ends_with("# kept by the guest")
    );
    assert_eq!(env.json(&["vm", "show", "dev"])["ip"].as_str().unwrap(), ip);
    assert_identity_from_mmds(&env, "dev", &id);

    env.ok(&["vm", "rm", "--force", "dev"]);
    assert!(!disk.exists(), "disk left behind");
    assert!(!env.netns.link_exists(&tap), "tap left behind");
    assert!(
        !nft_elements(&env).contains(&tap),
        "nftables element left behind"
    );
    // The address is free again: the next VM gets it.
    let k = guest().kernel;
    let next = env.json(&["vm", "create", "next", "--kernel", k.to_str().unwrap()]);
    assert_eq!(next["ip"].as_str().unwrap(), ip);
    // Nothing in use any more: the image can go.
    env.ok(&["image", "rm", "debian-bookworm"]);
}

#[test]
fn two_vms_reach_each_other_and_the_host_and_one_name_wins_a_race() {
    let mut env = Env::new();
    env.start();
    env.import_debian();
    // The daemon set the bridge up when it started: the host side is there already,
    // in the environment's namespace.
    let gw = env.gateway.split('/').next().unwrap().to_string();
    let listener = env
        .netns
        .run(|| std::net::TcpListener::bind((gw.as_str(), 0)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();

    // Two `vm run --name a` at once: exactly one wins; plus b alongside.
    let spawn = |name: &str| {
        env.cmd(&["vm", "run", "--name", name, "--quiet", "--", "true"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a1, a2, b) = (spawn("a"), spawn("a"), spawn("b"));
    let outs: Vec<_> = [a1, a2, b]
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let a_ok = outs[..2].iter().filter(|o| o.status.success()).count();
    assert_eq!(
        a_ok,
        1,
        "exactly one `vm run --name a` wins: {:?}",
        outs.iter().map(stderr).collect::<Vec<_>>()
    );
    let loser = outs[..2].iter().find(|o| !o.status.success()).unwrap();
    assert_eq!(loser.status.code(), Some(5), "{}", stderr(loser));
    assert!(
        stderr(loser).contains("a VM named a already exists"),
        "{}",
        stderr(loser)
    );
    assert!(outs[2].status.success(), "{}", stderr(&outs[2]));

    let b_ip = env.ok(&["vm", "ip", "b"]).trim().to_string();
    // a → b (b's sshd) and a → the host (our listener on the bridge address).
    env.ssh("a", &format!("timeout 10 bash -c '</dev/tcp/{b_ip}/22'"));
    let h = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        (got, peer.ip().to_string())
    });
    env.ssh(
        "a",
        &format!("timeout 10 bash -c 'echo hello-host > /dev/tcp/{gw}/{port}'"),
    );
    let (got, peer) = h.join().unwrap();
    assert_eq!(got.trim(), "hello-host");
    assert_eq!(peer, env.ok(&["vm", "ip", "a"]).trim());
    let a_ip = peer;
    env.ssh("b", &format!("timeout 10 bash -c '</dev/tcp/{a_ip}/22'"));
    env.ok(&["vm", "rm", "-f", "a"]);
    env.ok(&["vm", "rm", "-f", "b"]);
}

#[test]
fn disks_are_reflinked_on_btrfs_and_can_grow() {
    // A loop-mounted btrfs file holds this environment's state.
    let backing = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    backing.as_file().set_len(6 << 30).unwrap();
    let st = Command::new("mkfs.btrfs")
        .arg("-q")
        .arg("-f")
        .arg(backing.path())
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.btrfs failed");
    let mnt = tempfile::Builder::new()
        .prefix("bgbtrfs")
        .tempdir_in("/tmp")
        .unwrap();
    let st = Command::new("mount")
        .args(["-o", "loop"])
        .arg(backing.path())
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(st.success(), "mount failed");
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _umount = Umount(mnt.path().to_path_buf());
    let state = tempfile::Builder::new()
        .prefix("bg")
        .tempdir_in(mnt.path())
        .unwrap();
    {
        let mut env = Env::in_dir(state);
        env.start();
        env.import_debian();
        let vm = env.json(&["vm", "create", "cow"]);
        assert_eq!(vm["disk_method"], "reflink", "{vm}");
        let big = env.json(&["vm", "create", "big", "--disk-size", "2048"]);
        let disk = big["disk"].as_str().unwrap();
        assert_eq!(std::fs::metadata(disk).unwrap().len(), 2048 << 20);
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(disk)
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        let blocks: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("Block count:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(blocks * 4096, 2048 << 20, "the filesystem was grown too");
        env.ok(&["vm", "rm", "cow"]);
        env.ok(&["vm", "rm", "big"]);
        drop(env);
    }
    let _ = Duration::from_secs(0);
}

#[test]
fn an_image_without_the_identity_unit_gets_its_identity_written_into_its_disk() {
    // An image as banger built them before the `banger-identity` unit (or any rootfs
    // a user imports): its VMs get hostname and SSH keys written into their disks
    // before boot, and MMDS is not configured for them.
    let mut env = Env::new();
    env.start();
    let (kernel, initrd, rootfs) = debian_image();
    let old = env.state().join("old-rootfs.ext4");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(&rootfs)
        .arg(&old)
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new("debugfs")
        .args(["-w", "-R", "rm /usr/local/sbin/banger-identity"])
        .arg(&old)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    env.ok(&[
        "image",
        "import",
        "--name",
        "old",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--rootfs",
        old.to_str().unwrap(),
    ]);
    let vm = env.json(&["vm", "create", "legacy", "--image", "old"]);
    let id = vm["id"].as_str().unwrap();
    assert!(
        !env.state()
            .join("vms")
            .join(id)
            .join("identity.json")
            .exists(),
        "no identity is kept for MMDS"
    );
    // Written into the disk, before any boot.
    let out = Command::new("debugfs")
        .args(["-R", "cat /etc/hostname"])
        .arg(vm["disk"].as_str().unwrap())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "legacy\n");
    env.ok(&["vm", "start", "legacy"]);
    env.wait_ssh("legacy");
    assert_eq!(env.ssh("legacy", "hostname"), "legacy");
    assert!(
        !env.ssh("legacy", "cat /proc/cmdline")
            .contains("banger.mmds")
    );
    env.ok(&["vm", "rm", "-f", "legacy"]);
}
