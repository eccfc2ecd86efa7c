//! SSH access: the user's key (their own `~/.ssh/id_ed25519.pub`, else one banger makes
//! in `~/.config/banger`), a pinned known_hosts file per VM holding the host key banger
//! wrote into its disk, and the system `ssh` run with those options. No prompts, no
//! trust on first use.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use banger_api::Vm;

pub fn config_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".config"),
    };
    let dir = base.join("banger");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// The public key to authorise in new VMs, and the identity file `ssh` must be
/// given (None when it is the user's default key, which ssh finds by itself).
pub fn user_key() -> Result<(String, Option<PathBuf>)> {
    if let Some(home) = std::env::var_os("HOME") {
        let own = Path::new(&home).join(".ssh/id_ed25519.pub");
        if let Ok(k) = std::fs::read_to_string(&own) {
            return Ok((k.trim().to_string(), None));
        }
    }
    let dir = config_dir()?;
    let key = dir.join("id_ed25519");
    if !key.exists() {
        // Generated under a private name and published with link(2), which never
        // overwrites: two first-time `vm run`s at once end up with the same key.
        let tmp = dir.join(format!(".id_ed25519.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(tmp.with_extension(format!("{}.pub", std::process::id())));
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "banger", "-f"])
            .arg(&tmp)
            .output()
            .context("cannot run ssh-keygen (install openssh-client)")?;
        if !out.status.success() {
            bail!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let tmp_pub = PathBuf::from(format!("{}.pub", tmp.display()));
        // Public half first: whoever sees the private key may rely on the public one.
        let _ = std::fs::hard_link(&tmp_pub, key.with_extension("pub"));
        if std::fs::hard_link(&tmp, &key).is_err() && !key.exists() {
            bail!("cannot store banger's SSH key in {}", dir.display());
        }
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&tmp_pub);
    }
    let public = std::fs::read_to_string(key.with_extension("pub"))
        .context("cannot read banger's SSH key")?;
    Ok((public.trim().to_string(), Some(key)))
}

/// The `ssh` command for `vm`, ready for a command or an interactive session.
pub fn command(vm: &Vm) -> Result<Command> {
    let ip = vm
        .ip
        .as_deref()
        .with_context(|| format!("VM {} has no address", vm.name))?;
    let host_key = vm.host_key.as_deref().with_context(|| {
        format!(
            "VM {} has no SSH host key (it was not created from an image)",
            vm.name
        )
    })?;
    let kh_dir = config_dir()?.join("known_hosts.d");
    std::fs::create_dir_all(&kh_dir)?;
    let known_hosts = kh_dir.join(&vm.id);
    // Only the key type and the key: the comment is not part of the pin.
    let key: Vec<&str> = host_key.split_whitespace().take(2).collect();
    std::fs::write(&known_hosts, format!("{ip} {}\n", key.join(" ")))?;
    let (_, identity) = user_key()?;
    let mut c = Command::new("ssh");
    c.arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()));
    c.args([
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "LogLevel=ERROR",
    ]);
    if let Some(id) = identity {
        c.arg("-i").arg(id).args(["-o", "IdentitiesOnly=yes"]);
    }
    c.arg(format!("root@{ip}"));
    Ok(c)
}

/// Polls until `ssh true` succeeds or `timeout` passes; `alive` says whether it is
/// still worth waiting (the VM is running).
pub async fn wait(
    vm: &Vm,
    timeout: Duration,
    mut alive: impl AsyncFnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let mut c = command(vm)?;
        c.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=2", "true"]);
        c.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let st = tokio::process::Command::from(c)
            .status()
            .await
            .context("cannot run ssh (install openssh-client)")?;
        if st.success() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("timed out");
        }
        if !alive().await {
            bail!("the VM stopped");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
