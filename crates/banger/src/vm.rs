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
    /// Create, start and wait until SSH answers; then run CMD (or a shell) in it.
    Run(RunArgs),
    /// Open a shell in the VM, or run CMD there (its exit code is banger's).
    Ssh {
        name: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Print the VM's address.
    Ip { name: String },
    /// Print the VM's serial console.
    Logs {
        name: String,
        /// Keep printing as the console grows, until the VM stops.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The VM's name (default: run-<random>).
    #[arg(long)]
    pub name: Option<String>,
    /// Image to boot (default: debian-bookworm, built on first use).
    #[arg(long)]
    pub image: Option<String>,
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// Grow the VM's disk to this many MiB.
    #[arg(long)]
    pub disk_size: Option<u64>,
    /// Remove the VM when the command or shell ends.
    #[arg(long)]
    pub rm: bool,
    /// Seconds to wait for SSH.
    #[arg(long, default_value_t = 180)]
    pub ssh_timeout: u64,
    /// No progress display.
    #[arg(long, short)]
    pub quiet: bool,
    /// The command to run (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// 1-64 characters of a-z, 0-9 and '-'.
    pub name: String,
    /// Image to clone the VM's disk from (default when no --kernel: debian-bookworm).
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "rootfs"])]
    pub image: Option<String>,
    /// Grow the VM's disk to this many MiB (images only).
    #[arg(long)]
    pub disk_size: Option<u64>,
    /// Kernel image (ELF vmlinux; banger-vmm-qemu also boots a bzImage), used as is.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
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
    Ok(std::env::current_dir()
        .context("cannot resolve a relative path")?
        .join(p))
}

pub async fn run(cli: &Cli, cmd: &VmCommand) -> Result<u8> {
    let client = banger_client::Client::new(cli.dirs().daemon_socket());
    match cmd {
        VmCommand::Create(a) => {
            let image = match (&a.image, &a.kernel) {
                (Some(i), _) => Some(i.clone()),
                (None, None) => Some(banger_api::DEFAULT_IMAGE.to_string()),
                (None, Some(_)) => None,
            };
            let ssh_keys = match &image {
                Some(_) => vec![crate::ssh::user_key()?.0],
                None => Vec::new(),
            };
            let spec = VmSpec {
                name: VmName::new(a.name.clone())?,
                vcpus: a.cpus,
                memory_mib: a.memory,
                image: image.clone(),
                disk_size_mib: a.disk_size,
                ssh_keys,
                kernel: a.kernel.as_deref().map(absolute).transpose()?,
                initrd: a.initrd.as_deref().map(absolute).transpose()?,
                rootfs: a.rootfs.as_deref().map(absolute).transpose()?,
                boot_args: a.boot_args.clone(),
            };
            spec.validate()?;
            if let Some(i) = &image {
                crate::image::ensure(&client, i, cli.json).await?;
            }
            let mut vm = client.create(&spec).await?;
            if a.start {
                vm = client.start(&a.name).await?;
            }
            render::vm_done(
                cli,
                &vm,
                if a.start {
                    "created and started"
                } else {
                    "created"
                },
            );
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
        VmCommand::Run(a) => return run_vm(cli, &client, a).await,
        VmCommand::Ssh { name, command } => {
            let vm = client.get(name).await?;
            let mut c = crate::ssh::command(&vm)?;
            c.args(command);
            // Become ssh: its exit code, signals and terminal are the user's.
            let err = std::os::unix::process::CommandExt::exec(&mut c);
            return Err(anyhow::Error::new(err).context("cannot run ssh (install openssh-client)"));
        }
        VmCommand::Ip { name } => {
            let vm = client.get(name).await?;
            let ip = vm
                .ip
                .clone()
                .with_context(|| format!("VM {name} has no address"))?;
            if cli.json {
                println!("{}", serde_json::json!({ "name": name, "ip": ip }));
            } else {
                println!("{ip}");
            }
        }
        VmCommand::List if cli.json => {
            // Scripts get the daemon's JSON as it is: no decode and re-encode.
            let bytes = client.list_raw().await?;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.write_all(b"\n")?;
        }
        VmCommand::List => render::vm_list(&client.list_raw().await?)?,
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
                    if !matches!(
                        vm.state,
                        VmState::Running | VmState::Starting | VmState::Stopping
                    ) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    Ok(exit::OK)
}

/// `vm run`: create + start + wait for SSH + command or shell, `--rm` to clean up.
async fn run_vm(cli: &Cli, client: &banger_client::Client, a: &RunArgs) -> Result<u8> {
    use rand::Rng;
    let name = match &a.name {
        Some(n) => n.clone(),
        None => format!("run-{:06x}", rand::rng().random::<u32>() & 0xff_ffff),
    };
    let image = a
        .image
        .clone()
        .unwrap_or_else(|| banger_api::DEFAULT_IMAGE.to_string());
    let quiet = a.quiet || cli.json;
    let spec = VmSpec {
        name: VmName::new(name.clone())?,
        vcpus: a.cpus,
        memory_mib: a.memory,
        image: Some(image.clone()),
        disk_size_mib: a.disk_size,
        ssh_keys: vec![crate::ssh::user_key()?.0],
        kernel: None,
        initrd: None,
        rootfs: None,
        boot_args: None,
    };
    spec.validate()?;
    crate::image::ensure(client, &image, quiet).await?;
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .expect("template"),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    };
    bar.set_message(format!("creating {name}"));
    client.create(&spec).await?;
    let result = async {
        bar.set_message(format!("starting {name}"));
        let vm = client.start(&name).await?;
        bar.set_message(format!(
            "waiting for SSH on {name} ({})",
            vm.ip.as_deref().unwrap_or("-")
        ));
        let waited = crate::ssh::wait(&vm, Duration::from_secs(a.ssh_timeout), async || {
            client
                .get(&name)
                .await
                .is_ok_and(|v| v.state == VmState::Running)
        })
        .await;
        if let Err(e) = waited {
            let console = client
                .logs(&name, 0)
                .await
                .map(|(b, _)| b)
                .unwrap_or_default();
            anyhow::bail!(
                "VM {name} did not answer SSH ({e}) within {} s; last lines of its console:\n{}",
                a.ssh_timeout,
                banger_api::last_lines(&console, 15)
            );
        }
        bar.finish_and_clear();
        if !quiet {
            eprintln!(
                "{name} is ready at {} (banger vm ssh {name})",
                vm.ip.as_deref().unwrap_or("-")
            );
        }
        let mut c = crate::ssh::command(&vm)?;
        c.args(&a.command);
        let status = c.status().context("cannot run ssh")?;
        Ok::<u8, anyhow::Error>(status.code().map(|c| c as u8).unwrap_or(exit::FAILURE))
    }
    .await;
    bar.finish_and_clear();
    if a.rm {
        client
            .remove(&name, true)
            .await
            .with_context(|| format!("cannot remove {name}"))?;
    }
    result
}
