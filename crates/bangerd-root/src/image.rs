//! Building a Debian image with debootstrap, as one linear sequence:
//!
//! 1. debootstrap (minbase + systemd, udev, openssh-server, iproute2, the cloud kernel
//!    and initramfs-tools, whose hook writes an initrd with the virtio drivers);
//! 2. customise: the `banger-net` unit (guest address from the kernel command line,
//!    since this kernel family has no `ip=`), the `banger-identity` unit (hostname and
//!    SSH keys from MMDS), no SSH host keys (each VM gets its own), an empty /root/.ssh;
//! 3. take out the kernel (bzImage for QEMU, ELF vmlinux for Firecracker) and initrd;
//! 4. `mkfs.ext4 -d` the tree into a sparse image sized to its content.
//!
//! Everything runs as root in root's own workspace beneath the checked jail base
//! (`<jail base>/builds/<installation>/<id>/`), never in a directory the daemon's user
//! could redirect; progress lines go to a file the daemon's user owns. The helper then
//! copies the results, as the daemon's user, into `<state>/images/.build-<id>/`, and
//! the daemon hashes and renames that, so no half-made image is ever seen.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use banger_helper::{PackageName, Release};

pub const BASE_PACKAGES: &str = "systemd,systemd-sysv,dbus,udev,openssh-server,iproute2,linux-image-cloud-amd64,initramfs-tools";

const NET_SCRIPT: &str = r#"#!/bin/sh
# Installed by banger: configures eth0 from banger.ip=, banger.gw= and banger.hostname=
# on the kernel command line (Debian's cloud kernel has no ip= support).
ip=""; gw=""; hn=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    banger.ip=*) ip="${arg#banger.ip=}" ;;
    banger.gw=*) gw="${arg#banger.gw=}" ;;
    banger.hostname=*) hn="${arg#banger.hostname=}" ;;
  esac
done
[ -n "$hn" ] && hostname "$hn"
ip link set lo up
[ -z "$ip" ] && exit 0
# MMDS holds the VM's host key: before the guest has any address, only root may
# reach it (banger-identity closes it for root too once it has read the identity).
if grep -qw banger.mmds=1 /proc/cmdline; then
  ip rule add pref 100 to 169.254.169.254 uidrange 1-4294967294 prohibit
fi
ip addr add "$ip" dev eth0
ip link set eth0 up
[ -n "$gw" ] && ip route add default via "$gw"
exit 0
"#;

const NET_UNIT: &str = "[Unit]
Description=banger guest network from the kernel command line
DefaultDependencies=no
Wants=network.target
BindsTo=sys-subsystem-net-devices-eth0.device
After=sys-subsystem-net-devices-eth0.device
Before=network.target ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/banger-net

[Install]
WantedBy=multi-user.target
";

/// The guest half of MMDS identity (the daemon's `service::ssh_keys` is the other):
/// bash's `/dev/tcp` speaks HTTP to MMDS V2, so the image needs no HTTP client.
const IDENTITY_SCRIPT: &str = r#"#!/bin/bash
# Installed by banger: this VM's identity (hostname, SSH host key, authorized keys)
# from the metadata service (MMDS V2) banger's VMM serves at 169.254.169.254. Runs at
# every boot the kernel command line says banger.mmds=1 and applies the identity the
# first time it sees it (a new host key), so later edits in the guest stay. Only root
# reaches the service (banger-net's rule); on the way out, whatever happened, the
# route is closed for root too.
set -u
export LC_ALL=C
M=169.254.169.254
trap 'ip route replace prohibit "$M"' EXIT
trap 'exit 1' TERM INT
ip route replace "$M" dev eth0 || exit 1

# One HTTP/1.1 exchange: prints the body of a 200 answer, fails on anything else.
http() {
  local line status="" len=0 body=""
  exec 3<>"/dev/tcp/$M/80" || return 1
  printf '%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\nContent-Length: 0\r\n\r\n' "$1" "$2" "$M" "$3" >&3
  IFS= read -r -t 10 line <&3 || { exec 3<&-; return 1; }
  line=${line%$'\r'}
  status=${line#HTTP/1.1 }
  status=${status%% *}
  while IFS= read -r -t 10 line <&3; do
    line=${line%$'\r'}
    [ -z "$line" ] && break
    case ${line,,} in content-length:*) len=${line#*:}; len=${len//[!0-9]/} ;; esac
  done
  if [ "${len:-0}" -gt 0 ]; then
    IFS= read -r -t 10 -N "$len" body <&3 || { exec 3<&-; return 1; }
  fi
  exec 3<&-
  [ "$status" = 200 ] && [ "${#body}" -eq "${len:-0}" ] || return 1
  printf '%s' "$body"
}

if ! token=$(http PUT /latest/api/token "X-metadata-token-ttl-seconds: 60"); then
  echo "banger-identity: the metadata service did not answer" >&2
  exit 1
fi
get() { http GET "/banger/$1" "X-metadata-token: $token"; }
if ! pub=$(get ssh_host_ed25519_key_pub) || [ "${pub#ssh-ed25519 }" = "$pub" ]; then
  echo "banger-identity: no host key in the metadata service" >&2
  exit 1
fi
# Applied already (this VM's key is installed): nothing more to read.
[ "$(cat /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null)" = "$pub" ] && exit 0
if ! key=$(get ssh_host_ed25519_key) || [ "${key#-----BEGIN OPENSSH PRIVATE KEY-----}" = "$key" ]; then
  echo "banger-identity: the host key could not be read whole" >&2
  exit 1
fi
umask 077
# A file replaced whole: written aside, then renamed over.
put() {
  printf '%s\n' "$3" > "$1.banger-new" && chmod "$2" "$1.banger-new" && mv -f "$1.banger-new" "$1"
}
if hn=$(get hostname) && [ -n "$hn" ]; then
  hostname "$hn"
  put /etc/hostname 644 "$hn"
fi
if keys=$(get authorized_keys); then
  mkdir -p -m 700 /root/.ssh
  put /root/.ssh/authorized_keys 600 "$keys"
fi
# The public half last: it marks the identity as applied.
put /etc/ssh/ssh_host_ed25519_key 600 "$key" &&
  put /etc/ssh/ssh_host_ed25519_key.pub 644 "$pub"
"#;

const IDENTITY_UNIT: &str = "[Unit]
Description=banger identity from the metadata service (hostname, SSH keys)
DefaultDependencies=no
ConditionKernelCommandLine=banger.mmds=1
Requires=banger-net.service
After=banger-net.service local-fs.target
Before=network.target ssh.service systemd-user-sessions.service getty.target

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=60
ExecStart=/usr/local/sbin/banger-identity

[Install]
WantedBy=multi-user.target
";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{step} failed: {detail}")]
    Step { step: &'static str, detail: String },
}

fn step_err(step: &'static str) -> impl Fn(std::io::Error) -> BuildError {
    move |e| BuildError::Step {
        step,
        detail: e.to_string(),
    }
}

/// The files a finished build leaves in its directory (`vmlinux` when the kernel
/// yields one).
pub const OUTPUTS: [&str; 4] = ["rootfs.ext4", "vmlinuz", "initrd.img", "vmlinux"];

pub struct Build<'a> {
    /// Root's workspace.
    pub dir: &'a Path,
    /// Where progress lines go (the daemon's file, opened as the daemon's user).
    pub progress: &'a std::fs::File,
    pub release: &'a Release,
    pub packages: &'a [PackageName],
    pub mirror: &'a str,
}

impl Build<'_> {
    fn progress(&self, msg: &str) {
        use std::io::Write;
        let _ = writeln!(&mut &*self.progress, "{msg}");
        tracing::info!(dir = %self.dir.display(), "image build: {msg}");
    }

    fn run(&self, step: &'static str, cmd: &mut Command) -> Result<(), BuildError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("build.log"))
            .map_err(step_err(step))?;
        let status = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(step_err(step))?)
            .stderr(log)
            .status()
            .map_err(step_err(step))?;
        if status.success() {
            return Ok(());
        }
        let text = std::fs::read(self.dir.join("build.log")).unwrap_or_default();
        Err(BuildError::Step {
            step,
            detail: format!(
                "{status}; last lines of build.log:\n{}",
                banger_api::last_lines(&text, 8)
            ),
        })
    }

    pub fn run_all(&self) -> Result<(), BuildError> {
        let root = self.dir.join("root");
        // 1. debootstrap
        self.progress(&format!(
            "debootstrap {} from {}",
            self.release.as_str(),
            self.mirror
        ));
        let mut include = BASE_PACKAGES.to_string();
        for p in self.packages {
            include.push(',');
            include.push_str(p.as_str());
        }
        self.run(
            "debootstrap",
            Command::new(tool("debootstrap"))
                .arg("--variant=minbase")
                .arg(format!("--include={include}"))
                .arg(self.release.as_str())
                .arg(&root)
                .arg(self.mirror),
        )?;

        // 2. customise
        self.progress("configuring the guest");
        let w = |rel: &str, content: &str, mode: u32| -> Result<(), BuildError> {
            let p = root.join(rel);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(step_err("customise"))?;
            }
            std::fs::write(&p, content).map_err(step_err("customise"))?;
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(step_err("customise"))
        };
        w("usr/local/sbin/banger-net", NET_SCRIPT, 0o755)?;
        w("etc/systemd/system/banger-net.service", NET_UNIT, 0o644)?;
        w("usr/local/sbin/banger-identity", IDENTITY_SCRIPT, 0o755)?;
        w(
            "etc/systemd/system/banger-identity.service",
            IDENTITY_UNIT,
            0o644,
        )?;
        let wants = root.join("etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants).map_err(step_err("customise"))?;
        for unit in ["banger-net.service", "banger-identity.service"] {
            let _ = std::fs::remove_file(wants.join(unit));
            std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), wants.join(unit))
                .map_err(step_err("customise"))?;
        }
        w("etc/hostname", "banger\n", 0o644)?;
        w("etc/fstab", "/dev/vda / ext4 rw,relatime 0 1\n", 0o644)?;
        std::fs::create_dir_all(root.join("root/.ssh")).map_err(step_err("customise"))?;
        std::fs::set_permissions(
            root.join("root/.ssh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(step_err("customise"))?;
        for e in std::fs::read_dir(root.join("etc/ssh"))
            .map_err(step_err("customise"))?
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                std::fs::remove_file(e.path()).map_err(step_err("customise"))?;
            }
        }
        // An image is a template: no machine id (systemd makes one per boot), no
        // cached package lists.
        w("etc/machine-id", "", 0o444)?;
        let _ = std::fs::remove_dir_all(root.join("var/lib/apt/lists"));
        let _ = std::fs::remove_dir_all(root.join("var/cache/apt/archives"));

        // 3. kernel and initrd
        self.progress("extracting the kernel and initrd");
        let boot = root.join("boot");
        let find = |prefix: &str| -> Result<PathBuf, BuildError> {
            std::fs::read_dir(&boot)
                .map_err(step_err("kernel"))?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                })
                .ok_or(BuildError::Step {
                    step: "kernel",
                    detail: format!("no {prefix}* in /boot"),
                })
        };
        let vmlinuz = find("vmlinuz-")?;
        let initrd = find("initrd.img-")?;
        std::fs::copy(&vmlinuz, self.dir.join("vmlinuz")).map_err(step_err("kernel"))?;
        std::fs::copy(&initrd, self.dir.join("initrd.img")).map_err(step_err("kernel"))?;
        let bz = std::fs::read(&vmlinuz).map_err(step_err("kernel"))?;
        match banger_fc::kernel::extract_vmlinux(&bz) {
            Ok(elf) => std::fs::write(self.dir.join("vmlinux"), elf).map_err(step_err("kernel"))?,
            Err(e) => self.progress(&format!("no ELF vmlinux (Firecracker needs one): {e}")),
        }

        // 4. the ext4 image: content plus half again, at least 1 GiB, sparse.
        self.progress("making the ext4 root filesystem");
        let used = du(&root);
        let size = (used + used / 2).max(1 << 30).div_ceil(1 << 20) << 20;
        let img = self.dir.join("rootfs.ext4");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(size))
            .map_err(step_err("mkfs"))?;
        self.run(
            "mkfs.ext4",
            Command::new(tool("mkfs.ext4"))
                .args(["-q", "-F", "-L", "banger-root", "-d"])
                .arg(&root)
                .arg(&img),
        )?;
        self.progress("cleaning up");
        std::fs::remove_dir_all(&root).map_err(step_err("cleanup"))?;
        Ok(())
    }
}

/// Bytes used by a tree (regular files and directories, hard links counted once).
fn du(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            }
            if seen.insert((m.dev(), m.ino())) {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

pub use banger_helper::tool;
