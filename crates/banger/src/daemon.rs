//! `banger daemon ...`: where the socket is, whether the daemons answer, and starting
//! or stopping them. Stopping the daemons never stops a VM.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use banger_layout::Dirs;
use clap::Subcommand;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Cli, exit};

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Print the path of bangerd's API socket.
    Socket,
    /// Show whether bangerd answers, and what it manages.
    Status,
    /// Start bangerd-root and bangerd (through systemd when it manages them,
    /// otherwise as detached processes). Does nothing if they already run.
    Start,
    /// Stop bangerd and bangerd-root. Running VMs keep running.
    Stop,
}

pub async fn run(cli: &Cli, cmd: &DaemonCommand) -> Result<u8> {
    let dirs = cli.dirs();
    match cmd {
        DaemonCommand::Socket => {
            let s = dirs.daemon_socket();
            if cli.json {
                println!("{}", serde_json::json!({ "socket": s }));
            } else {
                println!("{}", s.display());
            }
            Ok(exit::OK)
        }
        DaemonCommand::Status => {
            let info = banger_client::Client::new(dirs.daemon_socket())
                .daemon_info()
                .await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("bangerd {} running (pid {})", info.version, info.pid);
                println!("socket     {}", info.socket.display());
                println!("state dir  {}", info.state_dir.display());
                println!("vmm        {}", info.vmm);
                println!("vms        {} ({} running)", info.vms, info.running);
            }
            Ok(exit::OK)
        }
        DaemonCommand::Start => start(cli, &dirs).await,
        DaemonCommand::Stop => stop(cli, &dirs).await,
    }
}

pub(crate) fn systemd_manages_banger(cli: &Cli) -> bool {
    cli.state_dir.is_none()
        && Path::new("/run/systemd/system").exists()
        && Path::new("/etc/systemd/system/bangerd.service").exists()
}

async fn daemon_answers(dirs: &Dirs) -> bool {
    banger_client::Client::new(dirs.daemon_socket())
        .daemon_info()
        .await
        .is_ok()
}

fn helper_answers(dirs: &Dirs) -> bool {
    banger_helper::HelperClient::new(dirs.helper_socket())
        .call(banger_helper::Ping {})
        .is_ok()
}

async fn start(cli: &Cli, dirs: &Dirs) -> Result<u8> {
    start_quietly(cli, dirs).await?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({ "socket": dirs.daemon_socket(), "running": true })
        );
    } else {
        println!(
            "bangerd is running; socket {}",
            dirs.daemon_socket().display()
        );
    }
    Ok(exit::OK)
}

/// Starts whatever of the two daemons does not answer, and waits until both do.
pub(crate) async fn start_quietly(cli: &Cli, dirs: &Dirs) -> Result<()> {
    if systemd_manages_banger(cli) {
        let st = Command::new("systemctl")
            .args(["start", "bangerd-root.service", "bangerd.service"])
            .status()?;
        if !st.success() {
            bail!("systemctl start failed ({st}); see `journalctl -u bangerd -u bangerd-root`");
        }
    } else {
        let bin_dir = std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        std::fs::create_dir_all(&dirs.state)
            .with_context(|| format!("cannot create {}", dirs.state.display()))?;
        let state_args: Vec<String> = match &cli.state_dir {
            Some(_) => vec!["--state-dir".into(), dirs.state.display().to_string()],
            None => vec!["--system".into()],
        };
        if !helper_answers(dirs) {
            let log = dirs.state.join("bangerd-root.log");
            let notify = ReadyNotice::new(dirs);
            if nix::unistd::geteuid().is_root() {
                spawn_detached(
                    &bin_dir.join("bangerd-root"),
                    &state_args,
                    &log,
                    notify.as_ref(),
                )?;
            }
            // Only root can start the root helper; anyone else waits for it (it may be
            // starting right now) and is told how to start it.
            let ready = wait_until(
                Duration::from_secs(10),
                notify.as_ref(),
                &log,
                "bangerd-root",
                || async { helper_answers(dirs) },
            )
            .await;
            if !nix::unistd::geteuid().is_root() {
                ready.context("the root helper is not running, and only root can start it: `sudo banger daemon start`")?;
            } else {
                ready?;
            }
        }
        if !daemon_answers(dirs).await {
            let log = dirs.state.join("bangerd.log");
            let notify = ReadyNotice::new(dirs);
            spawn_detached(&bin_dir.join("bangerd"), &state_args, &log, notify.as_ref())?;
            wait_until(
                Duration::from_secs(20),
                notify.as_ref(),
                &log,
                "bangerd",
                || daemon_answers(dirs),
            )
            .await?;
        }
    }
    Ok(())
}

/// Starts `bin` in its own process group with output appended to `log`: it must not die
/// with this terminal or write to a pipe we hold.
fn spawn_detached(
    bin: &Path,
    args: &[String],
    log: &Path,
    notify: Option<&ReadyNotice>,
) -> Result<()> {
    // The daemons' logs name VMs, paths and users: theirs and root's only.
    let out = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().create(true).append(true),
        0o600,
    )
    .open(log)
    .with_context(|| format!("cannot open {}", log.display()))?;
    out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let mut cmd = Command::new(bin);
    if let Some(n) = notify {
        cmd.env("NOTIFY_SOCKET", &n.path);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // Its own process group: the terminal's signals (Ctrl-C, and SIGHUP when it
    // closes) go to the foreground group and to the shell's jobs, never to it.
    cmd.process_group(0);
    cmd.spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(())
}

/// Waits until `ready`, woken by the daemon's readiness notice (`READY=1` on
/// `NOTIFY_SOCKET`, as systemd's units get it), or every 10 ms without one.
async fn wait_until<F, Fut>(
    limit: Duration,
    notify: Option<&ReadyNotice>,
    log: &Path,
    what: &str,
    mut ready: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 512];
    while !ready().await {
        if Instant::now() > deadline {
            let tail = banger_api::last_lines(&std::fs::read(log).unwrap_or_default(), 5);
            bail!(
                "{what} did not become ready within {limit:?}; last lines of {}:\n{tail}",
                log.display(),
            );
        }
        match notify {
            Some(n) => {
                let _ =
                    tokio::time::timeout(Duration::from_millis(10), n.socket.recv(&mut buf)).await;
            }
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    Ok(())
}

/// A datagram socket in the run directory for one daemon's `READY=1` (the sd_notify
/// protocol both daemons speak): `daemon start` returns the moment the daemon is
/// ready, not at the next tick of a clock. Removed when dropped.
struct ReadyNotice {
    path: PathBuf,
    socket: tokio::net::UnixDatagram,
}

impl ReadyNotice {
    /// `None` where it cannot be made (no run directory yet): then the wait polls.
    fn new(dirs: &Dirs) -> Option<Self> {
        let path = dirs.run.join(format!(".ready-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = tokio::net::UnixDatagram::bind(&path).ok()?;
        Some(ReadyNotice { path, socket })
    }
}

impl Drop for ReadyNotice {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Stops detached daemons (not systemd's) through their pidfiles.
pub(crate) async fn stop_quietly(dirs: &Dirs) -> Result<()> {
    for (name, pidfile) in [
        ("bangerd", dirs.run.join("bangerd.lock")),
        ("bangerd-root", dirs.run.join("bangerd-root.pid")),
    ] {
        stop_pidfile(name, &pidfile).await?;
    }
    Ok(())
}

async fn stop(cli: &Cli, dirs: &Dirs) -> Result<u8> {
    if systemd_manages_banger(cli) {
        let st = Command::new("systemctl")
            .args(["stop", "bangerd.service", "bangerd-root.service"])
            .status()?;
        if !st.success() {
            bail!("systemctl stop failed ({st})");
        }
    } else {
        stop_quietly(dirs).await?;
    }
    if cli.json {
        println!("{}", serde_json::json!({ "running": false }));
    } else {
        println!("banger daemons stopped; VMs keep running");
    }
    Ok(exit::OK)
}

/// Alive and not a zombie (a daemon this process started and has not reaped yet is
/// a zombie once it exits).
fn running(pid: i32) -> bool {
    procfs::process::Process::new(pid).is_ok_and(|p| p.is_alive())
}

/// SIGTERM the process named in `pidfile` if it is `name`, and wait for it to go.
async fn stop_pidfile(name: &str, pidfile: &PathBuf) -> Result<()> {
    let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return Ok(());
    };
    let comm = procfs::process::Process::new(pid).and_then(|p| p.stat());
    if !comm.is_ok_and(|s| s.comm == name) {
        return Ok(()); // Not running (or the pid was reused): nothing to stop.
    }
    kill(Pid::from_raw(pid), Signal::SIGTERM)
        .with_context(|| format!("cannot signal {name} (pid {pid}); try sudo"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) {
        if Instant::now() > deadline {
            bail!("{name} (pid {pid}) did not exit within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
