//! `banger-vmm-qemu`: serves Firecracker's HTTP API (v1.16.1) over a Unix socket and,
//! on InstanceStart, boots the configured kernel, initrd, drives and taps with
//! `qemu-system-x86_64`. It lets banger run guests where Firecracker cannot (no usable
//! KVM, as on CI machines). Where it differs from Firecracker is listed in
//! docs/vmm-qemu.md.

use banger_vmm_qemu::{action, http, log, vmm};

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
        print!("Firecracker v{}\n\n", vmm::VMM_VERSION);
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
            print!("Firecracker v{}\n\n{}", vmm::VMM_VERSION, e);
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
    let level = match args
        .level
        .as_deref()
        .map(|l| serde_json::from_value(serde_json::json!(l)))
    {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            eprintln!("Arguments parsing error: --level: {e}");
            return EXIT_ARG_PARSING;
        }
    };
    log.configure(&banger_fc::models::Logger {
        level,
        show_level: Some(args.show_level),
        show_log_origin: Some(args.show_log_origin),
        ..Default::default()
    });
    log.main_info(&format!(
        "Running Firecracker v{} (banger-vmm-qemu)",
        vmm::VMM_VERSION
    ));
    let mut state = vmm::Vmm::new(
        args.id.clone(),
        args.api_sock.clone(),
        args.mmds_size_limit
            .unwrap_or(args.http_api_max_payload_size),
        log.clone(),
    );
    if let Some(p) = &args.metrics_path {
        let m = banger_fc::models::Metrics {
            metrics_path: p.to_string_lossy().into_owned(),
        };
        if let Err(e) = state.apply(action::VmmAction::PutMetrics(m)) {
            log.main_info(&format!("Failed to initialize metrics: {e}"));
            eprintln!("Error: {e}");
            return EXIT_GENERIC;
        }
    }
    if let Some(p) = &args.metadata {
        let data = std::fs::read(p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .and_then(|v| state.store().put(v).map_err(|e| e.to_string()));
        if let Err(e) = data {
            log.main_info(&format!("Populating MMDS from file failed: {e}"));
            eprintln!("Error: Populating MMDS from file failed: {e}");
            return EXIT_GENERIC;
        }
    }
    // Firecracker never unlinks the socket: an existing path is an error.
    let listener = match UnixListener::bind(&args.api_sock) {
        Ok(l) => l,
        Err(_) => {
            let msg = format!(
                "Failed to open the API socket at: {}. Check that it is not already used.",
                args.api_sock.display()
            );
            log.main_info(&msg);
            eprintln!("Error: {msg}");
            return EXIT_GENERIC;
        }
    };
    log.main_info(&format!("Listening on API socket ({:?}).", args.api_sock));
    let api = Arc::new(http::Api {
        vmm: std::sync::Mutex::new(state),
        control: tokio::sync::Mutex::new(()),
        max_payload: args.http_api_max_payload_size,
        log: log.clone(),
    });
    log.api(banger_fc::models::LogLevel::Info, "API server started.");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log.main_warn(&format!("accept failed: {e}"));
                continue;
            }
        };
        let api = api.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| http::serve(api.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .title_case_headers(true)
                .auto_date_header(false)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
