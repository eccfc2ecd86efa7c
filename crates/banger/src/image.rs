//! `banger image ...`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use banger_api::{DEFAULT_IMAGE, ImageBuildRequest, ImageImportRequest};
use banger_client::Client;
use clap::Subcommand;

use crate::{Cli, exit, render};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image with debootstrap (systemd, udev, openssh-server, the cloud kernel).
    Build {
        /// The distribution (only `debian` for now).
        distro: String,
        #[arg(long, default_value = "bookworm")]
        release: String,
        /// An extra package to install (repeatable).
        #[arg(long = "package", short = 'p')]
        packages: Vec<String>,
        /// The image's name (default: debian-<release>).
        #[arg(long)]
        name: Option<String>,
        /// No progress display.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Import a kernel, optional initrd and ext4 root filesystem as an image.
    Import {
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: Option<PathBuf>,
        #[arg(long)]
        rootfs: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// List images.
    #[command(alias = "list")]
    Ls,
    /// Show one image.
    #[command(alias = "show")]
    Inspect { name: String },
    /// Remove an image no VM uses.
    Rm { name: String },
}

fn absolute(p: &std::path::Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

pub async fn run(cli: &Cli, cmd: &ImageCommand) -> Result<u8> {
    let client = Client::new(cli.dirs().daemon_socket());
    match cmd {
        ImageCommand::Build {
            distro,
            release,
            packages,
            name,
            quiet,
        } => {
            if distro != "debian" {
                bail!("unknown distribution {distro:?}: banger builds `debian` images");
            }
            let req = ImageBuildRequest {
                name: name.clone().unwrap_or_else(|| format!("debian-{release}")),
                release: release.clone(),
                packages: packages.clone(),
            };
            let img = build_with_progress(&client, &req, *quiet || cli.json).await?;
            render::image_done(cli, &img, "built");
        }
        ImageCommand::Import {
            kernel,
            initrd,
            rootfs,
            name,
        } => {
            let req = ImageImportRequest {
                name: name.clone(),
                kernel: absolute(kernel)?,
                initrd: initrd.as_deref().map(absolute).transpose()?,
                rootfs: absolute(rootfs)?,
            };
            let img = client.import_image(&req).await?;
            render::image_done(cli, &img, "imported");
        }
        ImageCommand::Ls => render::image_list(cli, &client.images().await?),
        ImageCommand::Inspect { name } => render::image_show(cli, &client.image(name).await?),
        ImageCommand::Rm { name } => {
            client.remove_image(name).await?;
            if cli.json {
                println!("{}", serde_json::json!({ "removed": name }));
            } else {
                println!("removed image {name}");
            }
        }
    }
    Ok(exit::OK)
}

/// Runs a build, showing its current step and elapsed time unless `quiet`.
pub async fn build_with_progress(
    client: &Client,
    req: &ImageBuildRequest,
    quiet: bool,
) -> Result<banger_api::Image> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] building image {prefix}: {msg}",
            )
            .expect("valid template"),
        );
        b.set_prefix(req.name.clone());
        b.enable_steady_tick(Duration::from_millis(120));
        b
    };
    let build = client.build_image(req);
    tokio::pin!(build);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            r = &mut build => break r,
            _ = tick.tick() => {
                if let Ok(Some(step)) = client.build_progress(&req.name).await {
                    bar.set_message(step);
                }
            }
        }
    };
    bar.finish_and_clear();
    Ok(result?)
}

/// Makes sure `name` exists; the default image is built on first use.
pub async fn ensure(client: &Client, name: &str, quiet: bool) -> Result<()> {
    match client.image(name).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == Some(banger_api::ErrorKind::NotFound) && name == DEFAULT_IMAGE => {
            if !quiet {
                eprintln!("image {name} is not built yet; building it now (once)");
            }
            let req = ImageBuildRequest {
                name: name.into(),
                release: "bookworm".into(),
                packages: Vec::new(),
            };
            build_with_progress(client, &req, quiet).await.map(|_| ())
        }
        Err(e) => Err(e.into()),
    }
}
