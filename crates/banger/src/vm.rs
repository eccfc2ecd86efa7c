//! `banger vm ...`

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use banger_api::{VmName, VmSpec, VmState};
use clap::{Args, Subcommand};

use crate::{Cli, exit, render};

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Record a new VM (add --start to boot it right away).
    Create(CreateArgs),
    /// Boot a created or stopped VM.
    Start { name: String },
    /// Ask the guest to shut down (Ctrl-Alt-Del), then kill it after a timeout.
    Stop {
        name: String,
        /// Seconds to wait for the guest before killing it.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// End a VM's VMM at once.
    Kill { name: String },
    /// Remove a VM and everything banger keeps for it.
    #[command(alias = "remove")]
    Rm {
        name: String,
        /// Kill the VM first if it is running.
        #[arg(long, short)]
        force: bool,
    },
    /// List VMs.
    #[command(alias = "ls")]
    List,
    /// Show one VM.
    #[command(alias = "inspect")]
    Show { name: String },
    /// Print the VM's serial console.
    Logs {
        name: String,
        /// Keep printing as the console grows, until the VM stops.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// 1-64 characters of a-z, 0-9 and '-'.
    pub name: String,
    /// Kernel image (ELF vmlinux; banger-vmm-qemu also boots a bzImage).
    #[arg(long)]
    pub kernel: PathBuf,
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Root disk image (attached as /dev/vda).
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u32,
    /// Kernel command line (default: console=ttyS0 reboot=k panic=1).
    #[arg(long)]
    pub boot_args: Option<String>,
    /// Start the VM after creating it.
    #[arg(long)]
    pub start: bool,
}

fn absolute(p: &std::path::Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir().context("cannot resolve a relative path")?.join(p))
}

pub async fn run(cli: &Cli, cmd: &VmCommand) -> Result<u8> {
    let client = banger_client::Client::new(cli.dirs().daemon_socket());
    match cmd {
        VmCommand::Create(a) => {
            let spec = VmSpec {
                name: VmName::new(a.name.clone())?,
                vcpus: a.cpus,
                memory_mib: a.memory,
                kernel: absolute(&a.kernel)?,
                initrd: a.initrd.as_deref().map(absolute).transpose()?,
                rootfs: a.rootfs.as_deref().map(absolute).transpose()?,
                boot_args: a.boot_args.clone(),
            };
            spec.validate()?;
            let mut vm = client.create(&spec).await?;
            if a.start {
                vm = client.start(&a.name).await?;
            }
            render::vm_done(cli, &vm, if a.start { "created and started" } else { "created" });
        }
        VmCommand::Start { name } => {
            let vm = client.start(name).await?;
            render::vm_done(cli, &vm, "started");
        }
        VmCommand::Stop { name, timeout } => {
            let vm = client.stop(name, Some(*timeout)).await?;
            render::vm_done(cli, &vm, "stopped");
        }
        VmCommand::Kill { name } => {
            let vm = client.kill(name).await?;
            render::vm_done(cli, &vm, "killed");
        }
        VmCommand::Rm { name, force } => {
            client.remove(name, *force).await?;
            if cli.json {
                println!("{}", serde_json::json!({ "removed": name }));
            } else {
                println!("removed {name}");
            }
        }
        VmCommand::List if cli.json => {
            // Scripts get the daemon's JSON as it is: no decode and re-encode.
            let bytes = client.list_raw().await?;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.write_all(b"\n")?;
        }
        VmCommand::List => render::vm_list(cli, &client.list().await?),
        VmCommand::Show { name } => render::vm_show(cli, &client.get(name).await?),
        VmCommand::Logs { name, follow } => {
            let mut offset = 0;
            let mut out = std::io::stdout();
            loop {
                let (bytes, next) = client.logs(name, offset).await?;
                out.write_all(&bytes)?;
                out.flush()?;
                offset = next;
                if !follow {
                    break;
                }
                if bytes.is_empty() {
                    let vm = client.get(name).await?;
                    if !matches!(vm.state, VmState::Running | VmState::Starting | VmState::Stopping) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    Ok(exit::OK)
}
