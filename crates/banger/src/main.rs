//! `banger`: the command line. One module per verb group; errors are printed once,
//! here, as a chain, with an exit code that means something (docs/cli.md).

// One unsafe call, marked where it is (SIGPIPE's disposition: nix has no safe form).
#![deny(unsafe_code)]

mod daemon;
mod image;
mod render;
mod ssh;
mod system;
mod update;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

use banger_api::ErrorKind;
use banger_layout::Dirs;
use clap::{CommandFactory, Parser, Subcommand};

/// Exit codes; documented in docs/cli.md.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const DAEMON_UNREACHABLE: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const CONFLICT: u8 = 5;
    pub const PERMISSION: u8 = 6;
    pub const INVALID: u8 = 7;
}

#[derive(Debug, Parser)]
#[command(
    name = "banger",
    version,
    about = "Run Firecracker microVMs as easily as containers"
)]
pub struct Cli {
    /// Keep all state under this directory instead of the system directories
    /// (/var/lib/banger, /run/banger).
    #[arg(long, global = true, env = "BANGER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables and sentences.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, start, stop and inspect VMs.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Build, import and manage images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Manage the banger daemons.
    #[command(subcommand)]
    Daemon(daemon::DaemonCommand),
    /// Install or remove banger as systemd services (needs root).
    #[command(subcommand)]
    System(system::SystemCommand),
    /// Update banger from a signed release (sudo; `--check` needs no root).
    Update(update::UpdateArgs),
    /// Print banger's version.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
}

impl Cli {
    /// banger's directories: `--state-dir` (made absolute) or the system layout.
    pub fn dirs(&self) -> Dirs {
        match &self.state_dir {
            Some(d) if d.is_absolute() => Dirs::under(d),
            Some(d) => Dirs::under(
                std::env::current_dir()
                    .map(|c| c.join(d))
                    .unwrap_or_else(|_| d.clone()),
            ),
            None => Dirs::system(),
        }
    }
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`banger vm list | head`).
    // SAFETY: restoring the default disposition before any thread exists.
    #[allow(unsafe_code)]
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(&cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", chain(&*e));
            ExitCode::from(exit_code(&*e))
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Vm(c) => vm::run(cli, c).await,
        Command::Daemon(c) => daemon::run(cli, c).await,
        Command::Image(c) => image::run(cli, c).await,
        Command::System(c) => system::run(cli, c).await,
        Command::Update(a) => update::run(cli, a).await,
        Command::Version => {
            if cli.json {
                println!("{}", serde_json::json!({ "version": banger_api::VERSION }));
            } else {
                println!("banger {}", banger_api::VERSION);
            }
            Ok(exit::OK)
        }
        Command::Completion { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "banger",
                &mut std::io::stdout(),
            );
            Ok(exit::OK)
        }
    }
}

use banger_api::error_chain as chain;

fn exit_code(e: &(dyn std::error::Error + 'static)) -> u8 {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<banger_client::Error>() {
            return match c {
                banger_client::Error::PermissionDenied { .. } => exit::PERMISSION,
                banger_client::Error::NotRunning { .. } => exit::DAEMON_UNREACHABLE,
                banger_client::Error::Api { body, .. } => match body.kind {
                    ErrorKind::NotFound => exit::NOT_FOUND,
                    ErrorKind::Conflict => exit::CONFLICT,
                    ErrorKind::BadRequest => exit::INVALID,
                    ErrorKind::Forbidden => exit::PERMISSION,
                    ErrorKind::Internal => exit::FAILURE,
                },
                _ => exit::FAILURE,
            };
        }
        if let Some(v) = err.downcast_ref::<banger_api::ValidationError>() {
            let _ = v;
            return exit::INVALID;
        }
        cur = err.source();
    }
    exit::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
