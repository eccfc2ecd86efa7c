//! Turning a Firecracker configuration into a `qemu-system-x86_64` command line, and
//! talking to that QEMU over QMP for pause, resume and Ctrl-Alt-Del.
//!
//! The machine is `-M pc` with virtio-*-pci devices: this is what Debian's kernels boot
//! under TCG (microvm + virtio-mmio does not, see docs/vmm-qemu.md). So `pci=off`,
//! which Firecracker appends, must not reach the guest, and no `virtio_mmio.device=`
//! is added.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use banger_fc::models::{BootSource, CacheType, Drive};

use crate::vmm::StartPlan;

/// Firecracker's default command line, used when `boot_args` is absent.
pub const DEFAULT_KERNEL_CMDLINE: &str = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";

/// This process's address-space limit (`RLIMIT_AS`), when it has one: QEMU inherits it.
pub fn address_space_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit};
    let (soft, _) = getrlimit(Resource::RLIMIT_AS).ok()?;
    (soft != nix::sys::resource::RLIM_INFINITY).then_some(soft)
}

/// TCG's translation buffer, in MiB, for a VMM under an address-space limit: QEMU
/// reserves 1 GiB by default, which alone breaks a limit such as Firecracker's tests
/// set (1e9 bytes). Half of what the guest's memory and about 512 MiB of QEMU itself
/// leave, between 32 MiB and QEMU's default. No limit: QEMU's default.
pub fn tb_size_mib(limit: Option<u64>, mem_mib: usize) -> Option<u64> {
    let limit_mib = limit? / (1024 * 1024);
    let spare = limit_mib.saturating_sub(mem_mib as u64 + 512) / 2;
    Some(spare.clamp(32, 1024))
}

/// The kernel command line the guest gets: the configured (or default) arguments
/// without `pci=off`, then `root=/dev/vda rw|ro` for a root drive, as Firecracker adds.
pub fn kernel_cmdline(boot: &BootSource, drives: &[Drive]) -> String {
    let base = boot.boot_args.as_deref().unwrap_or(DEFAULT_KERNEL_CMDLINE);
    let mut parts: Vec<String> = base
        .split_whitespace()
        .filter(|t| *t != "pci=off" && !t.starts_with("virtio_mmio.device="))
        .map(String::from)
        .collect();
    if let Some(root) = drives.iter().find(|d| d.is_root_device) {
        match &root.partuuid {
            Some(u) => parts.push(format!("root=PARTUUID={u}")),
            None => parts.push("root=/dev/vda".into()),
        }
        parts.push(
            if root.is_read_only.unwrap_or(false) {
                "ro"
            } else {
                "rw"
            }
            .into(),
        );
    }
    parts.join(" ")
}

/// What QEMU's netdev for an interface is: the tap itself, or (for MMDS) one end of
/// a socket pair whose other end switches frames ([`crate::mmds::net`]); by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Tap(i32),
    Socket(i32),
}

pub fn args(m: &StartPlan, nets: &[Backend], accel: &str, as_limit: Option<u64>) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    push("-name");
    push(&format!("guest={},process=banger-vmm-qemu", m.id));
    push("-M");
    push("pc");
    push("-accel");
    match tb_size_mib(as_limit, m.machine.mem_size_mib) {
        Some(tb) if accel == "tcg" => push(&format!("tcg,tb-size={tb}")),
        _ => push(accel),
    }
    push("-cpu");
    push("max");
    push("-smp");
    push(&m.machine.vcpu_count.to_string());
    push("-m");
    push(&format!("{}M", m.machine.mem_size_mib));
    push("-nodefaults");
    push("-no-user-config");
    push("-display");
    push("none");
    // A guest reboot (reboot=k, Ctrl-Alt-Del) ends QEMU and so the VMM, with status 0,
    // as Firecracker does.
    push("-no-reboot");
    push("-kernel");
    push(&m.boot.kernel_image_path);
    if let Some(initrd) = &m.boot.initrd_path {
        push("-initrd");
        push(initrd);
    }
    push("-append");
    push(&kernel_cmdline(&m.boot, &m.drives));
    push("-serial");
    match &m.serial_out {
        Some(p) => push(&format!("file:{}", p.display())),
        None => push("stdio"),
    }
    push("-qmp");
    // The socket's path comes from the API socket's, which the caller chose: its
    // commas must not start options of their own.
    push(&format!(
        "unix:{},server=on,wait=off",
        escape_opt(&m.qmp_socket.to_string_lossy())
    ));
    for d in &m.drives {
        let Some(path) = &d.path_on_host else {
            continue;
        };
        let cache = match d.cache_type {
            CacheType::Unsafe => "unsafe",
            CacheType::Writeback => "writeback",
        };
        let ro = if d.is_read_only.unwrap_or(false) {
            "on"
        } else {
            "off"
        };
        // A disk given as a descriptor goes to QEMU as that descriptor (an fd set),
        // so QEMU never reopens it: the VMM may not be allowed to.
        let file = match inherited_fd(path) {
            Some(n) => {
                push("-add-fd");
                push(&format!("fd={n},set={n}"));
                // QEMU also opens a disk read-only (and, for a set, needs a
                // descriptor of that mode): the read-only twin the helper passes
                // at the next number joins the set when it is the same file.
                if same_file(n, n + 1) {
                    push("-add-fd");
                    push(&format!("fd={},set={n}", n + 1));
                }
                format!("/dev/fdset/{n}")
            }
            None => escape_opt(path),
        };
        push("-drive");
        push(&format!(
            "file={file},if=none,id=drive-{},format=raw,cache={cache},readonly={ro}",
            d.drive_id
        ));
        push("-device");
        push(&format!("virtio-blk-pci,drive=drive-{}", d.drive_id));
    }
    for (net, backend) in m.nets.iter().zip(nets) {
        let n = &net.config;
        // Inherited under its number: the tap opened at PUT time, or the socket.
        push("-netdev");
        push(&match backend {
            Backend::Tap(fd) => format!("tap,id=net-{},fd={fd}", n.iface_id),
            Backend::Socket(fd) => format!("socket,id=net-{},fd={fd}", n.iface_id),
        });
        let mut dev = format!("virtio-net-pci,netdev=net-{}", n.iface_id);
        if let Some(mac) = &n.guest_mac {
            dev.push_str(&format!(",mac={mac}"));
        }
        // Offered to the guest's driver (VIRTIO_NET_F_MTU), as Firecracker does.
        if let Some(mtu) = n.mtu {
            dev.push_str(&format!(",host_mtu={mtu}"));
        }
        push("-device");
        push(&dev);
    }
    if m.entropy {
        push("-device");
        push("virtio-rng-pci");
    }
    a
}

/// The number of a file handed to this VMM as a descriptor: the root helper names
/// files `/proc/self/fd/N` (N >= 3) when the VMM runs apart from a root daemon.
pub fn inherited_fd(path: &str) -> Option<i32> {
    path.strip_prefix("/proc/self/fd/")?
        .parse()
        .ok()
        .filter(|n| *n >= 3)
}

/// Whether descriptors `a` and `b` are both open on the same file.
fn same_file(a: i32, b: i32) -> bool {
    let stat = |fd: i32| {
        // SAFETY: fstat writes into a zeroed stat buffer; a number that is not open
        // is EBADF.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
    };
    matches!((stat(a), stat(b)), (Some(x), Some(y)) if x == y)
}

/// QEMU option values escape ',' by doubling it.
fn escape_opt(s: &str) -> String {
    s.replace(',', ",,")
}

/// The QEMU binary: `BANGER_QEMU` or `qemu-system-x86_64` from the usual places.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BANGER_QEMU") {
        return p.into();
    }
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/libexec"] {
        let p = Path::new(dir).join("qemu-system-x86_64");
        if p.exists() {
            return p;
        }
    }
    "qemu-system-x86_64".into()
}

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP: {0}")]
    Protocol(String),
    #[error("QMP did not answer within {0:?}")]
    Timeout(Duration),
}

/// Runs one QMP command on a fresh connection and returns its `return` value.
pub async fn qmp(
    socket: &Path,
    command: &str,
    arguments: Option<Value>,
) -> Result<Value, QmpError> {
    let limit = Duration::from_secs(10);
    tokio::time::timeout(limit, qmp_inner(socket, command, arguments))
        .await
        .map_err(|_| QmpError::Timeout(limit))?
}

async fn qmp_inner(
    socket: &Path,
    command: &str,
    arguments: Option<Value>,
) -> Result<Value, QmpError> {
    let io = |source| QmpError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(socket).await.map_err(io)?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    // Greeting.
    lines.next_line().await.map_err(io)?;
    let mut exchange = async |cmd: Value| -> Result<Value, QmpError> {
        let mut buf = serde_json::to_vec(&cmd).expect("json");
        buf.push(b'\n');
        w.write_all(&buf).await.map_err(io)?;
        loop {
            let line = lines
                .next_line()
                .await
                .map_err(io)?
                .ok_or_else(|| QmpError::Protocol("connection closed".into()))?;
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| QmpError::Protocol(format!("bad JSON {line:?}: {e}")))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Protocol(e.to_string()));
            }
            // An asynchronous event; keep reading.
        }
    };
    exchange(json!({"execute": "qmp_capabilities"})).await?;
    let mut cmd = json!({"execute": command});
    if let Some(a) = arguments {
        cmd["arguments"] = a;
    }
    exchange(cmd).await
}

#[cfg(test)]
mod tests {
    use super::*;

    use banger_fc::models::{MachineConfiguration, NetworkInterface};

    fn drive(id: &str, root: bool, ro: bool) -> Drive {
        Drive::on_file(id, &format!("/img/{id},x.ext4"), root, ro)
    }

    fn plan(
        machine: MachineConfiguration,
        boot: BootSource,
        drives: Vec<Drive>,
        nets: Vec<NetworkInterface>,
        entropy: bool,
    ) -> StartPlan {
        let nets = nets
            .into_iter()
            .map(|config| crate::vmm::PlanNet {
                config,
                tap: std::fs::File::open("/dev/null").unwrap().into(),
                mmds: None,
            })
            .collect();
        StartPlan {
            id: "vm1".into(),
            machine,
            boot,
            drives,
            nets,
            qmp_socket: "/run/x/api.sock.qmp".into(),
            serial_out: None,
            entropy,
            log: crate::log::Logger::new("vm1"),
        }
    }

    #[test]
    fn tcg_s_code_buffer_fits_an_address_space_limit() {
        assert_eq!(tb_size_mib(None, 128), None, "no limit: QEMU's default");
        // Firecracker's tests run VMMs under 1e9 bytes (953 MiB).
        assert_eq!(tb_size_mib(Some(1_000_000_000), 128), Some(156));
        assert_eq!(tb_size_mib(Some(600 << 20), 512), Some(32));
        assert_eq!(tb_size_mib(Some(64 << 30), 1024), Some(1024));
        let m = plan(
            MachineConfiguration::default(),
            BootSource::default(),
            vec![],
            vec![],
            false,
        );
        let a = args(&m, &[], "tcg", Some(1_000_000_000));
        let i = a.iter().position(|s| s == "-accel").unwrap();
        assert_eq!(a[i + 1], "tcg,tb-size=156");
        let a = args(&m, &[], "kvm", Some(1_000_000_000));
        assert_eq!(a[i + 1], "kvm");
    }

    #[test]
    fn cmdline_drops_pci_off_and_adds_the_root_device() {
        let boot = BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: Some("console=ttyS0 pci=off reboot=k".into()),
        };
        assert_eq!(
            kernel_cmdline(&boot, &[drive("rootfs", true, false)]),
            "console=ttyS0 reboot=k root=/dev/vda rw"
        );
        assert_eq!(
            kernel_cmdline(&boot, &[drive("rootfs", true, true)]),
            "console=ttyS0 reboot=k root=/dev/vda ro"
        );
        assert_eq!(kernel_cmdline(&boot, &[]), "console=ttyS0 reboot=k");
    }

    #[test]
    fn default_cmdline_is_firecracker_s() {
        let boot = BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: None,
        };
        assert_eq!(kernel_cmdline(&boot, &[]), DEFAULT_KERNEL_CMDLINE);
    }

    #[test]
    fn args_describe_a_pc_machine_with_virtio_pci_devices() {
        let mc = MachineConfiguration {
            vcpu_count: 2,
            mem_size_mib: 512,
            ..Default::default()
        };
        let boot = BootSource {
            kernel_image_path: "/k/vmlinuz".into(),
            initrd_path: Some("/k/initrd".into()),
            boot_args: Some("console=ttyS0".into()),
        };
        let drives = [drive("rootfs", true, false), drive("data", false, true)];
        let nets = vec![
            NetworkInterface::new("eth0", "tap0", Some("06:00:ac:10:00:02".into())),
            NetworkInterface {
                mtu: Some(1400),
                ..NetworkInterface::new("eth1", "tap1", None)
            },
        ];
        let mut m = plan(mc, boot, drives.to_vec(), nets, true);
        m.qmp_socket = "/run/x,server=off/api.sock.qmp".into();
        let a: Vec<String> = args(&m, &[Backend::Tap(7), Backend::Socket(9)], "tcg", None)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = a.join(" ");
        for want in [
            "-M pc",
            "-accel tcg",
            "-smp 2",
            "-m 512M",
            "-no-reboot",
            "-kernel /k/vmlinuz",
            "-initrd /k/initrd",
            "-serial stdio",
            "-qmp unix:/run/x,,server=off/api.sock.qmp,server=on,wait=off",
            "file=/img/rootfs,,x.ext4,if=none,id=drive-rootfs,format=raw,cache=unsafe,readonly=off",
            "virtio-blk-pci,drive=drive-rootfs",
            "readonly=on",
            "tap,id=net-eth0,fd=7",
            "socket,id=net-eth1,fd=9",
            "virtio-net-pci,netdev=net-eth1,host_mtu=1400 ",
            "virtio-net-pci,netdev=net-eth0,mac=06:00:ac:10:00:02 ",
            "virtio-rng-pci",
        ] {
            assert!(joined.contains(want), "missing {want:?} in {joined}");
        }
        let append = a.iter().position(|s| s == "-append").unwrap();
        assert_eq!(a[append + 1], "console=ttyS0 root=/dev/vda rw");
        assert!(!joined.contains("pci=off"));
    }

    #[test]
    fn a_disk_given_as_a_descriptor_goes_to_qemu_as_an_fd_set_never_a_path() {
        let mc = MachineConfiguration::default();
        let boot = BootSource {
            kernel_image_path: "/proc/self/fd/3".into(),
            initrd_path: None,
            boot_args: None,
        };
        let mut d = drive("rootfs", true, false);
        d.path_on_host = Some("/proc/self/fd/5".into());
        let m = plan(mc, boot, vec![d], vec![], false);
        let joined = args(&m, &[], "tcg", None)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            joined.contains("-add-fd fd=5,set=5 -drive file=/dev/fdset/5,if=none,id=drive-rootfs"),
            "{joined}"
        );
        assert!(joined.contains("-kernel /proc/self/fd/3"), "{joined}");
        for (p, want) in [
            ("/proc/self/fd/5", Some(5)),
            ("/proc/self/fd/2", None),
            ("/proc/self/fd/x", None),
            ("/img/5", None),
        ] {
            assert_eq!(inherited_fd(p), want, "{p}");
        }
    }
}
