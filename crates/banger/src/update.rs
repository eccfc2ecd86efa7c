//! `banger update`: verify, stage, swap, restart, confirm; roll back by itself.
//!
//! Order (each step before the next, nothing changed until the swap):
//! root check (except `--check`) → fetch and verify (signature, hashes, sizes) →
//! refuse expired, not-newer (unless `--to`) and replayed releases → stage beside the
//! installed binaries → the staged `bangerd --check-migrations` → keep `.previous`
//! copies → atomic swap (fsync, rename), with a journal → restart helper → restart
//! daemon → wait until it answers. If a restart or the wait fails: restore `.previous`
//! and restart both again, then report. An interrupted update is finished or undone
//! by the next run (the journal says which).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use banger_api::{error_chain as chain, parse_version};
use banger_update::{PublicKeys, fetch_verified};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{Cli, exit};

/// Where releases are published; `--manifest-url` (hidden) points elsewhere for tests.
const DEFAULT_MANIFEST_URL: &str = "https://releases.banger.dev/stable/latest/manifest.json";

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Only say whether a newer release exists (no root needed).
    #[arg(long)]
    check: bool,
    /// Install this version (newer or older) instead of the latest.
    #[arg(long, value_name = "VERSION")]
    to: Option<String>,
    /// Download, verify and stage; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The release channel this installation follows; a release signed for another
    /// channel is refused.
    #[arg(long, default_value = "stable", value_name = "CHANNEL")]
    channel: String,
    #[arg(long, hide = true, env = "BANGER_MANIFEST_URL")]
    manifest_url: Option<String>,
    #[arg(long, hide = true)]
    pubkey_file: Option<PathBuf>,
}

/// What survives between updates: the highest version ever accepted (replay guard).
#[derive(Debug, Default, Serialize, Deserialize)]
struct UpdateState {
    highest_accepted: Option<String>,
}

/// Written before the swap and again before each binary is replaced, removed after
/// a confirmed restart: `swapped` lists exactly the binaries whose `.previous` copy
/// is the one to restore, and nothing else is ever touched by a rollback.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    from: String,
    to: String,
    #[serde(default)]
    swapped: Vec<String>,
}

/// Writes `path` atomically and durably. The temporary file is created anew
/// (`O_EXCL|O_NOFOLLOW` after an unlink), so a symlink or hard link planted at its name
/// is never written through.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent() {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

pub async fn run(cli: &Cli, a: &UpdateArgs) -> Result<u8> {
    if !a.check && !nix::unistd::geteuid().is_root() {
        bail!("banger update needs root (sudo banger update); nothing was changed");
    }
    let keys = match &a.pubkey_file {
        Some(f) => PublicKeys::from_pems([std::fs::read_to_string(f)
            .with_context(|| format!("cannot read {}", f.display()))?
            .as_str()])?,
        None => PublicKeys::embedded(),
    };
    let latest = a
        .manifest_url
        .clone()
        .unwrap_or_else(|| DEFAULT_MANIFEST_URL.to_string());
    let url = match &a.to {
        Some(v) => {
            let v = parse_version(v)?;
            // <base>/<channel-dir>/manifest.json -> <base>/v<version>/manifest.json
            let mut parts: Vec<&str> = latest.rsplitn(3, '/').collect();
            parts.reverse();
            format!("{}/v{v}/manifest.json", parts[0])
        }
        None => latest.clone(),
    };
    let installed =
        parse_version(banger_api::VERSION).context("this binary's version is malformed")?;
    let check_only = a.check;
    let u = url.clone();
    let fetched = tokio::task::spawn_blocking(move || fetch_verified(&u, &keys, check_only))
        .await
        .expect("fetch does not panic")
        .with_context(|| format!("release {url} refused; nothing was changed"))?;
    let m = &fetched.manifest;
    let offered = m.version()?;
    m.check_not_expired(time::OffsetDateTime::now_utc())
        .context("nothing was changed")?;
    // The signed manifest binds version and channel: both must be what was asked for.
    if m.channel != a.channel {
        bail!(
            "release {offered} at {url} is signed for channel {:?}, not {:?}; nothing was changed",
            m.channel,
            a.channel
        );
    }
    if let Some(want) = a.to.as_deref().and_then(|v| parse_version(v).ok())
        && offered != want
    {
        bail!("the release at {url} is {offered}, not the {want} asked for; nothing was changed");
    }

    let dirs = cli.dirs();
    let state_path = dirs.state.join("update-state.json");
    let state: UpdateState = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let highest = state
        .highest_accepted
        .as_deref()
        .and_then(|v| parse_version(v).ok())
        .map_or_else(|| installed.clone(), |h| h.max(installed.clone()));

    if a.check {
        let newer = offered > installed;
        if cli.json {
            println!(
                "{}",
                serde_json::json!({ "installed": installed.to_string(), "available": offered.to_string(), "newer": newer })
            );
        } else if newer {
            println!(
                "banger {offered} is available (installed: {installed}); run: sudo banger update"
            );
        } else {
            println!("banger {installed} is up to date (latest: {offered})");
        }
        return Ok(exit::OK);
    }
    if a.to.is_some() && offered < installed && !a.dry_run {
        eprintln!(
            "warning: {offered} is older than the installed {installed}: downgrading, as --to asked"
        );
    }
    if a.to.is_none() {
        if offered < highest {
            bail!(
                "release {offered} is older than {highest}, already accepted: refusing a replayed release; nothing was changed"
            );
        }
        if offered <= installed {
            println!("banger {installed} is up to date");
            return Ok(exit::OK);
        }
    }

    // Stage beside the installed binaries, so the swap is a rename on one filesystem.
    let install_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("no install directory")?;
    if a.dry_run {
        // A dry run never changes the host: not even to finish an interrupted update.
        if install_dir.join(".banger-update.json").exists() {
            eprintln!(
                "note: an earlier update was interrupted; `sudo banger update` will restore it first"
            );
        }
    } else {
        recover(&install_dir, cli, &dirs).await?;
    }
    let stage = install_dir.join(format!(".banger-stage-{offered}"));
    let _ = std::fs::remove_dir_all(&stage);
    let staged = (|| -> std::io::Result<()> {
        std::fs::create_dir(&stage)?;
        for (name, bytes) in &fetched.artefacts {
            let p = stage.join(name);
            let mut f = std::fs::File::create(&p)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
        std::fs::File::open(&stage)?.sync_all()
    })();
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&stage);
        bail!(
            "cannot stage {offered} in {} ({e}); nothing was changed",
            install_dir.display()
        );
    }
    // The staged daemon must be able to migrate the database.
    let mut check = std::process::Command::new(stage.join("bangerd"));
    check.arg("--check-migrations");
    match &cli.state_dir {
        Some(_) => check.arg("--state-dir").arg(&dirs.state),
        None => check.arg("--system"),
    };
    let out = check.output().context("cannot run the staged bangerd")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&stage);
        bail!(
            "the staged bangerd {offered} cannot migrate this installation: {}; nothing was changed",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if a.dry_run {
        let _ = std::fs::remove_dir_all(&stage);
        println!(
            "banger {offered}: downloaded, verified and staged; nothing was changed (--dry-run)"
        );
        return Ok(exit::OK);
    }

    // Swap, binary by binary: keep a `.previous` hard link, journal the binary, then
    // rename the staged one over it. A failure (or a crash) at any step is undone
    // from the journal: exactly the journalled binaries get their `.previous` back.
    let journal = install_dir.join(".banger-update.json");
    let mut j = Journal {
        from: installed.to_string(),
        to: offered.to_string(),
        swapped: Vec::new(),
    };
    write_synced(&journal, &serde_json::to_vec(&j)?)?;
    let swapped = (|| -> Result<()> {
        for (name, _) in &fetched.artefacts {
            let dst = install_dir.join(name);
            let prev = install_dir.join(format!("{name}.previous"));
            if !dst.exists() {
                bail!(
                    "{} is missing: this is not a complete install",
                    dst.display()
                );
            }
            let _ = std::fs::remove_file(&prev);
            std::fs::hard_link(&dst, &prev)
                .with_context(|| format!("cannot keep {}", prev.display()))?;
            j.swapped.push(name.clone());
            write_synced(&journal, &serde_json::to_vec(&j)?)?;
            banger_helper::fault_point(&format!("update:swap:{name}"));
            std::fs::rename(stage.join(name), &dst)
                .with_context(|| format!("cannot install {}", dst.display()))?;
        }
        std::fs::File::open(&install_dir)?.sync_all()?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&stage);
    if let Err(e) = swapped {
        rollback(&install_dir, &j.swapped)?;
        let again = restart_and_wait(cli, &dirs).await;
        std::fs::remove_file(&journal)?;
        match again {
            Ok(()) => bail!(
                "update to {offered} failed during the swap ({}); rolled back to {installed} and restarted it",
                chain(e.as_ref())
            ),
            Err(e2) => bail!(
                "update to {offered} failed during the swap ({}); rolled back to {installed}, but restarting it failed too: {}",
                chain(e.as_ref()),
                chain(e2.as_ref())
            ),
        }
    }

    match restart_and_wait(cli, &dirs).await {
        Ok(()) => {
            std::fs::remove_file(&journal)?;
            let st = UpdateState {
                highest_accepted: Some((&offered).max(&highest).to_string()),
            };
            let _ = write_synced(&state_path, &serde_json::to_vec(&st)?);
            println!(
                "banger updated {installed} -> {offered}; the daemons restarted and running VMs kept running"
            );
            Ok(exit::OK)
        }
        Err(e) => {
            rollback(&install_dir, &j.swapped)?;
            let again = restart_and_wait(cli, &dirs).await;
            std::fs::remove_file(&journal)?;
            match again {
                Ok(()) => bail!(
                    "update to {offered} failed ({}); rolled back to {installed} and restarted it",
                    chain(e.as_ref())
                ),
                Err(e2) => bail!(
                    "update to {offered} failed ({}); rolled back to {installed}, but restarting it failed too: {}",
                    chain(e.as_ref()),
                    chain(e2.as_ref())
                ),
            }
        }
    }
}

/// Puts the `.previous` of each journalled binary back (and nothing else: a stale
/// `.previous` of an older update is never restored).
fn rollback(install_dir: &Path, swapped: &[String]) -> Result<()> {
    for name in swapped {
        if !banger_update::manifest::ARTEFACTS.contains(&name.as_str()) {
            continue;
        }
        let prev = install_dir.join(format!("{name}.previous"));
        if prev.exists() {
            std::fs::rename(&prev, install_dir.join(name))
                .with_context(|| format!("cannot restore {}", prev.display()))?;
        }
    }
    std::fs::File::open(install_dir)?.sync_all()?;
    Ok(())
}

/// A previous run was interrupted: stale stages are removed; a swap that never got
/// confirmed is undone, so the install is the old one, whole.
async fn recover(install_dir: &Path, cli: &Cli, dirs: &banger_layout::Dirs) -> Result<()> {
    for e in std::fs::read_dir(install_dir)?.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(".banger-stage-")
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let journal = install_dir.join(".banger-update.json");
    if journal.exists() {
        eprintln!("an earlier update was interrupted; restoring the previous binaries first");
        // An unreadable journal (cut by a crash mid-write) lists nothing swapped: it
        // is written before each binary is replaced, never after.
        let j: Journal = std::fs::read(&journal)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        rollback(install_dir, &j.swapped)?;
        restart_and_wait(cli, dirs)
            .await
            .context("restarting the restored binaries failed")?;
        std::fs::remove_file(&journal)?;
    }
    Ok(())
}

/// Restarts the helper, then the daemon, and waits until the daemon answers.
async fn restart_and_wait(cli: &Cli, dirs: &banger_layout::Dirs) -> Result<()> {
    if crate::daemon::systemd_manages_banger(cli) {
        for unit in ["bangerd-root.service", "bangerd.service"] {
            let st = std::process::Command::new("systemctl")
                .args(["restart", unit])
                .status()?;
            if !st.success() {
                bail!("systemctl restart {unit} failed ({st})");
            }
        }
    } else {
        crate::daemon::stop_quietly(dirs).await?;
        crate::daemon::start_quietly(cli, dirs).await?;
    }
    let client = banger_client::Client::new(dirs.daemon_socket());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.daemon_info().await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("bangerd did not answer within 30 s after the restart");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
