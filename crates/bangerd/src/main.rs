//! `bangerd`: owns banger's state and drives VM lifecycles. Thin wiring: arguments,
//! the single-instance lock, the store, reconcile, then the API until SIGTERM.
//! Shutting down never touches running VMs.

#![forbid(unsafe_code)]

mod api;
mod disk;
mod handles;
mod images;
mod serve;
mod service;
mod store;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use banger_helper::{Dirs, HelperClient};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "bangerd", version, about = "banger's daemon")]
struct Args {
    /// Use the system directories (/var/lib/banger, /run/banger).
    #[arg(long, conflicts_with = "state_dir")]
    system: bool,
    /// Keep all state under this directory (development and tests).
    #[arg(long, env = "BANGER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Report whether this binary can migrate the existing database, change
    /// nothing, and exit 0 (yes) or 1 (no, with the reason).
    #[arg(long)]
    check_migrations: bool,
    /// Group given access to the API socket (mode 0660).
    #[arg(long, default_value = "banger")]
    socket_group: String,
}

fn main() {
    let args = Args::parse();
    let dirs = match (&args.state_dir, args.system) {
        (Some(d), false) => Dirs::under(d),
        _ => Dirs::system(),
    };
    if args.check_migrations {
        match store::check_migrations(&dirs.database()) {
            Ok(c) => {
                println!("ok: {c:?} ({})", dirs.database().display());
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("bangerd: cannot migrate: {}", service::chain(&e));
                std::process::exit(1);
            }
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BANGER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args, dirs)) {
        eprintln!("bangerd: error: {}", banger_api::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

async fn run(args: Args, dirs: Dirs) -> Result<()> {
    let started = std::time::Instant::now();
    tracing::info!(version = banger_api::VERSION, state = %dirs.state.display(), "bangerd starting");
    for d in [&dirs.state, &dirs.run] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    // One daemon per state directory: the second refuses, naming the first.
    let lock_path = dirs.run.join("bangerd.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    // A bangerd killed a moment ago still holds the lock while the kernel ends it.
    let Ok(mut lock) = banger_helper::lock_exclusive(lock_file, std::time::Duration::from_secs(3))
    else {
        let other = std::fs::read_to_string(&lock_path).unwrap_or_default();
        bail!(
            "another bangerd (pid {}) is already running for {}",
            other.trim(),
            dirs.state.display()
        );
    };
    {
        use std::io::{Seek, Write};
        lock.set_len(0)?;
        lock.rewind()?;
        write!(lock, "{}", std::process::id())?;
    }

    let store = store::Store::open(&dirs.database())?;
    let helper = HelperClient::new(dirs.helper_socket());
    let service = service::Service::new(dirs.clone(), store, helper);
    let vmm = service
        .helper_ping()
        .await
        .map_err(|e| anyhow::anyhow!(service::chain(&e)))
        .context("the root helper must be running before bangerd")?;
    // The bridge and NAT exist while banger runs, so the host side of the VM network
    // is there before the first VM (and after a host reboot). Made while the daemon
    // starts, not before it is ready (an `nft` run and netlink: ~10 ms): a VM started
    // first finds the helper setting the network up itself if it is missing.
    let setup_helper = service.helper_client();
    let network_setup = tokio::task::spawn_blocking(move || {
        if let Err(e) = setup_helper.call(banger_helper::SetupNetwork {}) {
            tracing::warn!(
                "cannot set up the VM network: {}",
                banger_api::error_chain(&e)
            );
        }
    });
    // An import or a finished build that the daemon's death left unpublished is never
    // published: imports (`.import-*`) are the daemon's own copies, and a build
    // (`.build-*`) is handed to the daemon's user when the helper finishes it. A build
    // still owned by root is still running in the helper (which removes it if it fails
    // or restarts); with a root daemon that build is abandoned here, as its requester
    // already got an error when the daemon died.
    if let Ok(rd) = std::fs::read_dir(dirs.images()) {
        let me = nix::unistd::geteuid().as_raw();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let finished_build = name.starts_with(".build-")
                && std::os::unix::fs::MetadataExt::uid(&e.metadata()?) == me;
            if name.starts_with(".import-") || finished_build {
                tracing::info!("removing interrupted image work {}", e.path().display());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let reconcile_start = std::time::Instant::now();
    let report = service
        .reconcile()
        .await
        .map_err(|e| anyhow::anyhow!(service::chain(&e)))?;
    tracing::info!(
        vms = report.len(),
        ms = reconcile_start.elapsed().as_millis() as u64,
        "reconcile done"
    );

    let socket = dirs.daemon_socket();
    if socket.exists() {
        std::fs::remove_file(&socket)
            .with_context(|| format!("cannot remove stale {}", socket.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("cannot bind {}", socket.display()))?;
    secure_socket(&socket, &args.socket_group)?;

    let state = Arc::new(api::AppState {
        service,
        vmm: vmm.to_string(),
        socket: socket.clone(),
    });
    drop(network_setup); // it finishes on its own
    let watcher = state.clone();
    tokio::spawn(async move { watcher.service.watch_helper().await });
    let app = api::router(state);
    tracing::info!(socket = %socket.display(), ms = started.elapsed().as_millis() as u64, "bangerd ready");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    serve::serve(
        listener,
        app,
        shutdown_signal(),
        std::time::Duration::from_secs(30),
    )
    .await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&socket);
    tracing::info!("bangerd stopped; running VMs were left alone");
    drop(lock);
    Ok(())
}

/// Mode 0660 and, when the group exists, group `banger`: members may use banger
/// without root, nobody else may.
fn secure_socket(socket: &std::path::Path, group: &str) -> Result<()> {
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => {
            if let Err(e) = nix::unistd::chown(socket, None, Some(g.gid)) {
                tracing::warn!("cannot give group {group} the socket: {e}");
            }
        }
        _ => tracing::info!("group {group} does not exist; the socket is for this user only"),
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
