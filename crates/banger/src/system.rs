//! `sudo banger system install|uninstall|status`: banger as systemd services.
//!
//! install is idempotent: binaries are replaced atomically, units rewritten, the
//! `banger` user created once, and both units (re)started, which never stops a VM.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::{Cli, exit};

const UNIT_DIR: &str = "/etc/systemd/system";
const HELPER_UNIT: &str = include_str!("../../../packaging/systemd/bangerd-root.service");
const DAEMON_UNIT: &str = include_str!("../../../packaging/systemd/bangerd.service");

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Install binaries, the banger user and group, directories and systemd units,
    /// then (re)start the daemons. Run again to refresh units after an update.
    Install {
        /// Where to put the binaries.
        #[arg(long, default_value = "/usr/local/bin")]
        bin_dir: PathBuf,
    },
    /// Stop and remove the units (state in /var/lib/banger is kept). Refuses while
    /// VMs run unless --force.
    Uninstall {
        #[arg(long)]
        force: bool,
    },
    /// Show the units' state and the daemon's.
    Status,
}

pub async fn run(cli: &Cli, cmd: &SystemCommand) -> Result<u8> {
    match cmd {
        SystemCommand::Install { bin_dir } => {
            require_root()?;
            install(bin_dir)?;
            let client = banger_client::Client::new(crate::Dirs::system().daemon_socket());
            let info = client
                .daemon_info()
                .await
                .context("bangerd did not answer after install")?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!(
                    "banger {} installed; bangerd answers on {}",
                    info.version,
                    info.socket.display()
                );
            }
            Ok(exit::OK)
        }
        SystemCommand::Uninstall { force } => {
            require_root()?;
            let client = banger_client::Client::new(crate::Dirs::system().daemon_socket());
            if let Ok(info) = client.daemon_info().await
                && info.running > 0
                && !force
            {
                bail!(
                    "{} VM(s) are running; stop them first or use --force (they keep running, unmanaged)",
                    info.running
                );
            }
            let _ = systemctl(&[
                "disable",
                "--now",
                "bangerd.service",
                "bangerd-root.service",
            ]);
            for unit in ["bangerd.service", "bangerd-root.service"] {
                let p = Path::new(UNIT_DIR).join(unit);
                if p.exists() {
                    std::fs::remove_file(&p)
                        .with_context(|| format!("cannot remove {}", p.display()))?;
                }
            }
            systemctl(&["daemon-reload"])?;
            println!("banger units removed; state kept in /var/lib/banger");
            Ok(exit::OK)
        }
        SystemCommand::Status => {
            for unit in ["bangerd-root.service", "bangerd.service"] {
                let out = Command::new("systemctl")
                    .args(["is-active", unit])
                    .output()?;
                println!("{unit:<22} {}", String::from_utf8_lossy(&out.stdout).trim());
            }
            Ok(exit::OK)
        }
    }
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("this needs root: run it with sudo");
    }
    if !Path::new("/run/systemd/system").is_dir() {
        bail!("systemd is not running as PID 1 here; use `banger daemon start` instead");
    }
    Ok(())
}

fn install(bin_dir: &Path) -> Result<()> {
    // 1. Binaries, each replaced atomically (copy beside, fsync, rename).
    let from = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    std::fs::create_dir_all(bin_dir)?;
    for b in banger_api::BINARIES {
        let src = from.join(b);
        let dst = bin_dir.join(b);
        if src == dst {
            continue;
        }
        let tmp = bin_dir.join(format!(".{b}.new"));
        std::fs::copy(&src, &tmp).with_context(|| format!("cannot copy {}", src.display()))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &dst).with_context(|| format!("cannot install {}", dst.display()))?;
    }
    // 2. The service user and group.
    if nix::unistd::User::from_name("banger")?.is_none() {
        run_checked(Command::new("useradd").args([
            "--system",
            "--user-group",
            "--home-dir",
            "/var/lib/banger",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "banger",
        ]))?;
    }
    let user =
        nix::unistd::User::from_name("banger")?.context("user banger missing after useradd")?;
    // 3. Directories.
    for d in ["/var/lib/banger", "/var/lib/banger/vms"] {
        std::fs::create_dir_all(d)?;
        nix::unistd::chown(d, Some(user.uid), Some(user.gid))?;
    }
    // 4. Units.
    let fill = |t: &str| {
        t.replace("@BINDIR@", &bin_dir.display().to_string())
            .replace("@DAEMON_UID@", &user.uid.as_raw().to_string())
    };
    std::fs::write(
        Path::new(UNIT_DIR).join("bangerd-root.service"),
        fill(HELPER_UNIT),
    )?;
    std::fs::write(
        Path::new(UNIT_DIR).join("bangerd.service"),
        fill(DAEMON_UNIT),
    )?;
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", "bangerd-root.service", "bangerd.service"])?;
    // Restart rather than start so a second install picks up new binaries and units;
    // VMs are outside both units' cgroups and survive it.
    systemctl(&["restart", "bangerd-root.service"])?;
    systemctl(&["restart", "bangerd.service"])?;
    Ok(())
}

fn systemctl(args: &[&str]) -> Result<()> {
    run_checked(Command::new("systemctl").args(args))
}

fn run_checked(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
