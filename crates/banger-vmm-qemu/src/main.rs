//! `banger-vmm-qemu`: serves Firecracker's HTTP API (v1.16.1) over a Unix socket and,
//! on InstanceStart, boots the configured kernel, initrd, drives and taps with
//! `qemu-system-x86_64`. It lets banger run guests where Firecracker cannot (no usable
//! KVM, as on CI machines). Where it differs from Firecracker is listed in
//! docs/vmm-qemu.md.

mod api;
mod config;
mod log;
mod qemu;
mod start;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

/// Firecracker's ArgParsing exit code.
const EXIT_ARG_PARSING: i32 = 153;
const EXIT_GENERIC: i32 = 1;

/// The same flags as `firecracker` v1.16.1, each as `--flag value`.
#[derive(Debug, Parser)]
#[command(
    name = "banger-vmm-qemu",
    disable_version_flag = true,
    about = "banger-vmm-qemu: the Firecracker API, served in front of qemu-system-x86_64"
)]
struct Args {
    #[arg(long, default_value = "/run/firecracker.socket")]
    api_sock: PathBuf,
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    #[arg(long)]
    config_file: Option<PathBuf>,
    #[arg(long)]
    no_api: bool,
    #[arg(long)]
    log_path: Option<PathBuf>,
    #[arg(long)]
    level: Option<String>,
    #[arg(long)]
    module: Option<String>,
    #[arg(long)]
    show_level: bool,
    #[arg(long)]
    show_log_origin: bool,
    #[arg(long)]
    metrics_path: Option<PathBuf>,
    #[arg(long)]
    boot_timer: bool,
    #[arg(long)]
    metadata: Option<PathBuf>,
    #[arg(long, conflicts_with = "no_seccomp")]
    seccomp_filter: Option<PathBuf>,
    #[arg(long)]
    no_seccomp: bool,
    #[arg(long)]
    start_time_us: Option<u64>,
    #[arg(long)]
    start_time_cpu_us: Option<u64>,
    #[arg(long)]
    parent_cpu_time_us: Option<u64>,
    #[arg(long, default_value_t = 51200)]
    http_api_max_payload_size: usize,
    #[arg(long)]
    mmds_size_limit: Option<usize>,
    #[arg(long)]
    enable_pci: bool,
    /// Print `Firecracker v1.16.1` and an empty line, as firecracker does.
    #[arg(long)]
    version: bool,
    #[arg(long)]
    snapshot_version: bool,
    #[arg(long)]
    describe_snapshot: Option<PathBuf>,
    /// Everything after `--` (the jailer passes extra args; firecracker ignores them).
    #[arg(last = true)]
    extra: Vec<String>,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    // `--version` anywhere short-circuits, as in Firecracker's parser.
    if argv
        .iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--version")
    {
        print!("Firecracker v{}\n\n", api::VMM_VERSION);
        return;
    }
    // Firecracker takes a value only as the next argument: `--api-sock=/x` is an error.
    if let Some(bad) = argv
        .iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .find(|a| a.starts_with("--") && a.contains('='))
    {
        eprintln!(
            "Arguments parsing error: Found argument '{}' which wasn't expected, or isn't valid in this context.",
            bad.trim_start_matches("--")
        );
        std::process::exit(EXIT_ARG_PARSING);
    }
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            print!("Firecracker v{}\n\n{}", api::VMM_VERSION, e);
            return;
        }
        Err(e) => {
            eprintln!("Arguments parsing error: {e}");
            std::process::exit(EXIT_ARG_PARSING);
        }
    };
    let valid_id = (1..=64).contains(&args.id.len())
        && args
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid_id {
        // Firecracker's `expect("Invalid instance ID")` panics, and panic=abort.
        eprintln!("Invalid instance ID: {:?}", args.id);
        std::process::abort();
    }
    if args.snapshot_version || args.describe_snapshot.is_some() || args.config_file.is_some() {
        eprintln!(
            "Arguments parsing error: snapshots and --config-file are not supported by banger-vmm-qemu"
        );
        std::process::exit(EXIT_ARG_PARSING);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    std::process::exit(rt.block_on(run(args)));
}

async fn run(args: Args) -> i32 {
    let log = log::Logger::new(&args.id);
    if let Some(p) = &args.log_path
        && let Err(e) = log.redirect(p)
    {
        eprintln!("Error: cannot open the log file {}: {e}", p.display());
        return EXIT_GENERIC;
    }
    log.info(&format!(
        "Running Firecracker v{} (banger-vmm-qemu)",
        api::VMM_VERSION
    ));
    // Firecracker never unlinks the socket: an existing path is an error.
    let listener = match UnixListener::bind(&args.api_sock) {
        Ok(l) => l,
        Err(_) => {
            let msg = format!(
                "Failed to open the API socket at: {}. Check that it is not already used.",
                args.api_sock.display()
            );
            log.info(&msg);
            eprintln!("Error: {msg}");
            return EXIT_GENERIC;
        }
    };
    log.info(&format!("Listening on API socket ({:?}).", args.api_sock));
    let vmm = Arc::new(tokio::sync::Mutex::new(api::Vmm::new(
        args.id.clone(),
        args.api_sock.clone(),
        args.http_api_max_payload_size,
        log.clone(),
    )));
    log.info("API server started.");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log.warn(&format!("accept failed: {e}"));
                continue;
            }
        };
        let vmm = vmm.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| api::serve(vmm.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .title_case_headers(true)
                .auto_date_header(false)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
