//! `bangerd-root`: the only process of banger that runs as root.
//!
//! It serves the closed protocol of `banger-helper` on `<run>/root.sock`: one request
//! per connection, handled synchronously on its own thread. Callers are authenticated
//! with SO_PEERCRED (root or the daemon's uid only); the socket's mode is 0666 because
//! the credential check, not the file mode, is the gate.
//!
//! Signals: the helper keeps the default dispositions, so SIGTERM ends it at once. VMMs
//! it launched are in their own sessions with their own files and outlive it.

mod image;
mod net;
mod ops;
mod safe;
mod spawn;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use anyhow::{Context, Result};
use banger_helper::{Dirs, Failure, FailureKind, Request, Response};
use clap::Parser;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

#[derive(Debug, Parser)]
#[command(name = "bangerd-root", version, about = "banger's root helper")]
struct Args {
    /// Use the system directories (/var/lib/banger, /run/banger).
    #[arg(long, conflicts_with = "state_dir")]
    system: bool,
    /// Keep all state under this directory (development and tests).
    #[arg(long, env = "BANGER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// A uid besides root that may call the helper (the daemon's). Defaults to the
    /// owner of the state directory.
    #[arg(long)]
    allow_uid: Option<u32>,
    /// The VMM executable. Defaults to banger-vmm-qemu next to this binary.
    #[arg(long, env = "BANGER_VMM")]
    vmm: Option<PathBuf>,
    /// Launch VMMs through this jailer binary.
    #[arg(long, env = "BANGER_JAILER")]
    jailer: Option<PathBuf>,
    /// The user VMMs run as when the daemons run as root: a VMM never runs as root.
    /// (With a non-root daemon, VMMs run as the daemon's user.)
    #[arg(long, env = "BANGER_VMM_USER", default_value = "banger-vmm")]
    vmm_user: String,
    /// Root's directory for jails (`--chroot-base-dir`) and launch records. It and
    /// every directory above it must belong to root and be writable by no one else,
    /// on a filesystem that allows devices and executables (the jailer makes /dev
    /// nodes and copies firecracker there): not /run or /tmp on most hosts.
    #[arg(long, env = "BANGER_JAIL_BASE", default_value = "/var/lib/banger-jail")]
    jail_base: PathBuf,
    /// The VM bridge.
    #[arg(long, env = "BANGER_BRIDGE", default_value = "banger0")]
    bridge: String,
    /// The bridge's (gateway) address and the VM subnet's prefix length.
    #[arg(long, env = "BANGER_GATEWAY", default_value = "172.30.0.1/24")]
    gateway: String,
    /// The nftables table banger owns (family inet).
    #[arg(long, env = "BANGER_NFT_TABLE", default_value = "banger")]
    nft_table: String,
    /// Debian mirror for image builds.
    #[arg(
        long,
        env = "BANGER_MIRROR",
        default_value = "http://deb.debian.org/debian"
    )]
    mirror: String,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BANGER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!(
            "bangerd-root: error: {}",
            banger_api::error_chain(e.as_ref())
        );
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let dirs = match (&args.state_dir, args.system) {
        (Some(d), false) => Dirs::under(d),
        _ => Dirs::system(),
    };
    std::fs::create_dir_all(&dirs.state)
        .with_context(|| format!("cannot create {}", dirs.state.display()))?;
    std::fs::create_dir_all(&dirs.run)
        .with_context(|| format!("cannot create {}", dirs.run.display()))?;
    let dirs = Dirs {
        state: std::fs::canonicalize(&dirs.state)?,
        run: std::fs::canonicalize(&dirs.run)?,
    };
    let allow_uid = match args.allow_uid {
        Some(u) => u,
        None => std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&dirs.state)?),
    };
    let daemon = {
        let gid = nix::unistd::User::from_uid(allow_uid.into())
            .ok()
            .flatten()
            .map(|u| u.gid.as_raw())
            .unwrap_or(allow_uid);
        safe::Caller {
            uid: allow_uid,
            gid,
        }
    };
    // In system mode the daemon runs as its own user: it must own the state and run
    // directories (never a systemd RuntimeDirectory=, which is removed with the unit
    // and would take the VMs' sockets with it). Both are made by root in root-owned
    // parents; `vms` beneath them is made and given away without following a link
    // that the daemon's user could have planted.
    if allow_uid != 0 && nix::unistd::geteuid().is_root() {
        for d in [&dirs.state, &dirs.run] {
            let m = std::fs::symlink_metadata(d)?;
            anyhow::ensure!(m.is_dir(), "{} is not a directory", d.display());
            std::os::unix::fs::lchown(d, Some(allow_uid), Some(daemon.gid))
                .with_context(|| format!("cannot give {} to uid {allow_uid}", d.display()))?;
        }
    }
    for parent in [&dirs.state, &dirs.run] {
        safe::ensure_owned_subdir(parent, "vms", daemon, 0o700)
            .with_context(|| format!("cannot make {}/vms for uid {allow_uid}", parent.display()))?;
    }
    safe::ensure_root_dir(&args.jail_base, 0o711).with_context(|| {
        format!(
            "the jail base {} must be a directory of root's that no one else can change",
            args.jail_base.display()
        )
    })?;
    if args.jailer.is_some() {
        let st = nix::sys::statvfs::statvfs(&args.jail_base)?;
        for (flag, what) in [
            (nix::sys::statvfs::FsFlags::ST_NODEV, "nodev"),
            (nix::sys::statvfs::FsFlags::ST_NOEXEC, "noexec"),
        ] {
            anyhow::ensure!(
                !st.flags().contains(flag),
                "the jail base {} is on a filesystem mounted {what}: the jailer's device nodes and its copy of \
                 the VMM need devices and executables there; choose another --jail-base (BANGER_JAIL_BASE)",
                args.jail_base.display()
            );
        }
    }
    // A VMM (never root: the daemon's user, or the VMM user under a root daemon) opens
    // its tap through /dev/net/tun. Debian's udev rules make that node 0666 (taps stay
    // private: a persistent tap can only be attached by its owner). The host's device
    // node is the administrator's: where it is tighter, say what will fail rather than
    // change it. (A jailed VMM gets its own node from the jailer.)
    if args.jailer.is_none() {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata("/dev/net/tun")
            && m.permissions().mode() & 0o006 != 0o006
        {
            tracing::warn!(
                "/dev/net/tun is mode {:o}: VMMs (which never run as root) cannot open their taps, so VMs with a \
                 network will fail to start; Debian's default is 0666 (taps stay private to their owners)",
                m.permissions().mode() & 0o7777
            );
        }
    }
    let vmm_user = vmm_user(&args.vmm_user)?;
    if allow_uid == 0 && vmm_user.is_none() {
        tracing::warn!(
            "the daemon runs as root and the VMM user {} does not exist: VMs will not start until it does \
             (VMMs never run as root)",
            args.vmm_user
        );
    }
    let vmm = match args.vmm {
        Some(v) => v,
        None => std::env::current_exe()?.with_file_name("banger-vmm-qemu"),
    };
    let (gw, prefix) = args
        .gateway
        .split_once('/')
        .and_then(|(a, p)| Some((a.parse::<std::net::Ipv4Addr>().ok()?, p.parse::<u8>().ok()?)))
        .filter(|(_, p)| (8..=30).contains(p))
        .with_context(|| {
            format!(
                "--gateway {} is not ADDRESS/PREFIX with a prefix of 8-30",
                args.gateway
            )
        })?;
    let valid_name = |s: &str| {
        !s.is_empty()
            && s.len() < 16
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    anyhow::ensure!(
        valid_name(&args.bridge),
        "invalid --bridge {:?}",
        args.bridge
    );
    // Taps are named bg<id>; a bridge with that prefix would match the tap rules.
    anyhow::ensure!(
        !args.bridge.starts_with("bg"),
        "--bridge must not start with \"bg\" (the tap prefix)"
    );
    anyhow::ensure!(
        valid_name(&args.nft_table),
        "invalid --nft-table {:?}",
        args.nft_table
    );
    let network = banger_helper::NetworkConfig {
        bridge: args.bridge.clone(),
        gateway: gw,
        prefix_len: prefix,
        nft_table: args.nft_table.clone(),
    };
    let helper = ops::Helper::new(
        dirs.clone(),
        vmm,
        args.jailer,
        vmm_user,
        args.jail_base.clone(),
        network,
        args.mirror.clone(),
    )?;
    // One helper per installation: a second one (a `daemon start` that found the
    // first slow to answer, say) would take over the socket and clean up what the
    // first is doing. Held for the helper's life; the kernel drops it when we die.
    let _instance = helper.lock_instance()?;
    // Builds that a crash interrupted are never finished: remove root's workspaces
    // (root's own tree). The daemon removes its `.build-*` directories itself.
    if let Ok(rd) = std::fs::read_dir(helper.builds_dir()) {
        for e in rd.flatten() {
            tracing::info!("removing interrupted image build {}", e.path().display());
            let _ = safe::remove_tree(&e.path());
        }
    }

    let sock = dirs.helper_socket();
    let listener = bind(&sock)?;
    // `banger daemon stop` finds the helper through this file (it checks comm too).
    write_pid_file(&dirs.run.join("bangerd-root.pid"))?;
    tracing::info!(socket = %sock.display(), allow_uid, vmm = %helper.vmm().display(), "root helper ready");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    // Any local user may connect (the socket is 0666; SO_PEERCRED is the gate), so no
    // stranger may hold a thread or a slot: a caller that is not root or the daemon
    // is refused at accept, without reading from it. Allowed callers get a bounded
    // number of threads and a deadline for their request line. Running out of file
    // descriptors backs off instead of spinning (and logs once a second at most).
    let active = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut last_warning = std::time::Instant::now() - std::time::Duration::from_secs(2);
    let mut warn = |msg: String| {
        if last_warning.elapsed() >= std::time::Duration::from_secs(1) {
            tracing::warn!("{msg}");
            last_warning = std::time::Instant::now();
        }
    };
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                warn(format!("accept failed: {e}"));
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                continue;
            }
        };
        let uid = match getsockopt(&conn, PeerCredentials) {
            Ok(c) => c.uid(),
            Err(_) => continue,
        };
        if uid != 0 && uid != allow_uid {
            warn(format!(
                "refused uid {uid}: only root and uid {allow_uid} (the daemon) may use the helper"
            ));
            let _ = conn.set_nonblocking(true);
            let _ = (&conn).write_all(&denial(uid, allow_uid));
            continue;
        }
        if active.load(std::sync::atomic::Ordering::SeqCst) >= MAX_CONNECTIONS {
            warn(format!(
                "{MAX_CONNECTIONS} requests are in progress; refusing another"
            ));
            continue;
        }
        let _ = conn.set_read_timeout(Some(REQUEST_READ_TIMEOUT));
        let helper = helper.clone();
        let active = active.clone();
        active.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::spawn(move || {
            if let Err(e) = serve(&helper, conn, allow_uid) {
                tracing::warn!("connection failed: {}", banger_api::error_chain(e.as_ref()));
            }
            active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
    Ok(())
}

/// Requests in progress at once (image builds and launches included).
const MAX_CONNECTIONS: usize = 256;
/// How long an allowed caller has to send its one request line.
const REQUEST_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The reply to a caller that is neither root nor the daemon.
fn denial(uid: u32, allow_uid: u32) -> Vec<u8> {
    let r: Response = Err(Failure {
        kind: FailureKind::Denied,
        message: format!(
            "uid {uid} may not use the root helper; only root and uid {allow_uid} (the daemon) may"
        ),
    });
    let mut out = serde_json::to_vec(&r).expect("responses serialize");
    out.push(b'\n');
    out
}

/// Writes the helper's pid as a new file: whatever the daemon's user left at that name
/// (a symlink or a hard link to a file of root's) is unlinked, never written through.
fn write_pid_file(path: &std::path::Path) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(std::process::id().to_string().as_bytes())?;
    Ok(())
}

/// The VMM's version, from `<vmm> --version`. Firecracker's is parsed and gated:
/// banger drives Firecracker 1.12 to 1.16 (the API it uses is the same in all of
/// them); an older one is refused, a newer one is used with a warning.
pub(crate) fn vmm_version(vmm: &std::path::Path, name: &str) -> Result<Option<String>> {
    let out = match std::process::Command::new(vmm).arg("--version").output() {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("cannot run {} --version: {e}", vmm.display());
            return Ok(None);
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if name == "firecracker" {
        let v = banger_fc::version::parse_version_output(&text)
            .with_context(|| format!("{} --version", vmm.display()))?;
        let oldest = banger_fc::version::Version::new(1, 12, 0);
        anyhow::ensure!(
            v >= oldest,
            "Firecracker v{v} is too old: banger needs v1.12 or newer"
        );
        if v.major != 1 || v.minor > 16 {
            tracing::warn!("Firecracker v{v} is newer than the v1.16 banger was tested with");
        }
        return Ok(Some(v.to_string()));
    }
    // Other VMMs (banger-vmm-qemu) print clap's "<name> <version>".
    let first = text.lines().next().unwrap_or_default();
    Ok(first
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix(' '))
        .filter(|v| !v.contains(' '))
        .map(str::to_string))
}

/// Binds the socket, replacing a stale file but refusing if another helper answers.
fn bind(sock: &std::path::Path) -> Result<UnixListener> {
    if sock.exists() {
        if UnixStream::connect(sock).is_ok() {
            anyhow::bail!(
                "another bangerd-root is already serving {}; stop it first",
                sock.display()
            );
        }
        std::fs::remove_file(sock)
            .with_context(|| format!("cannot remove stale socket {}", sock.display()))?;
    }
    // The socket is made 0666 by bind itself (umask 0111 for that one call), never
    // chmodded by path afterwards: the run directory is the daemon's user's, who could
    // swap the name for a link to a file of root's between bind and a chmod (root
    // would then make that file 0666), and no caller ever sees the socket with
    // another mode (a race the tests met: a non-root CLI refused, then starting a
    // second helper).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o111));
    let bound = UnixListener::bind(sock);
    nix::sys::stat::umask(old);
    bound.with_context(|| format!("cannot bind {}", sock.display()))
}

fn serve(helper: &ops::Helper, conn: UnixStream, allow_uid: u32) -> Result<()> {
    let cred = getsockopt(&conn, PeerCredentials).context("SO_PEERCRED failed")?;
    let mut writer = conn.try_clone()?;
    let mut line = String::new();
    BufReader::new(conn.take_limited()).read_line(&mut line)?;
    let response: Response = if cred.uid() != 0 && cred.uid() != allow_uid {
        tracing::warn!(
            uid = cred.uid(),
            pid = cred.pid(),
            "refused a caller that is not the daemon"
        );
        Err(Failure {
            kind: FailureKind::Denied,
            message: format!(
                "uid {} may not use the root helper; only root and uid {allow_uid} (the daemon) may",
                cred.uid()
            ),
        })
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let t = std::time::Instant::now();
                let r = helper.handle(
                    ops::Caller {
                        uid: cred.uid(),
                        gid: cred.gid(),
                    },
                    &req,
                );
                let took_us = t.elapsed().as_micros() as u64;
                match &r {
                    Ok(_) => tracing::debug!(?req, took_us, "done"),
                    Err(f) => tracing::warn!(?req, "failed: {}", f.message),
                }
                r
            }
            Err(e) => Err(Failure {
                kind: FailureKind::BadArgument,
                message: format!("malformed request: {e}"),
            }),
        }
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    writer.write_all(&out)?;
    Ok(())
}

/// Requests are small; refuse to buffer an endless line.
trait TakeLimited {
    fn take_limited(self) -> std::io::Take<UnixStream>;
}
impl TakeLimited for UnixStream {
    fn take_limited(self) -> std::io::Take<UnixStream> {
        std::io::Read::take(self, 64 * 1024)
    }
}

/// The VMM user by name, with its groups; `None` when there is no such user. Root is
/// refused: the point of this user is not to be root.
fn vmm_user(name: &str) -> Result<Option<(String, safe::RunAs)>> {
    let Some(u) = nix::unistd::User::from_name(name)? else {
        return Ok(None);
    };
    anyhow::ensure!(
        !u.uid.is_root(),
        "--vmm-user {name} is root: VMMs never run as root"
    );
    let cname = std::ffi::CString::new(name)?;
    let groups = nix::unistd::getgrouplist(&cname, u.gid)?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    Ok(Some((
        name.to_string(),
        safe::RunAs {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            groups,
        },
    )))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    /// Runs the test below alone in a child process: bind sets the process-wide
    /// umask for a moment, which the other tests of this binary must not see.
    #[test]
    fn the_socket_is_born_0666_and_a_planted_link_is_replaced_not_followed() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::bind_alone",
                "--ignored",
                "--test-threads=1",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// The helper's socket is born 0666 (nothing is chmodded by a path the daemon's
    /// user could swap), a link planted at its name is replaced, not followed, and the
    /// process's umask is what it was.
    #[test]
    #[ignore = "run alone by the_socket_is_born_0666_and_a_planted_link_is_replaced_not_followed"]
    fn bind_alone() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"root's").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let sock = d.path().join("root.sock");
        std::os::unix::fs::symlink(&victim, &sock).unwrap();
        let before = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o027));
        let _listener = super::bind(&sock).unwrap();
        let after = nix::sys::stat::umask(before);
        assert_eq!(after.bits(), 0o027, "the umask is restored");
        let m = std::fs::symlink_metadata(&sock).unwrap();
        assert!(m.file_type().is_socket(), "{:?}", m.file_type());
        assert_eq!(m.permissions().mode() & 0o777, 0o666);
        let v = std::fs::metadata(&victim).unwrap();
        assert_eq!(
            (
                v.permissions().mode() & 0o777,
                std::fs::read(&victim).unwrap()
            ),
            (0o600, b"root's".to_vec())
        );
    }
}
