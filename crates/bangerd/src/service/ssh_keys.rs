//! The SSH files written into an image VM's disk: its host key and authorized keys.

use super::*;

/// The guest's SSH files: a fresh ed25519 host key (kept in the VM's state dir, so
/// `vm ssh` can pin its public half) and the authorized keys.
pub(super) fn ssh_files(
    state_dir: &Path,
    name: &str,
    keys: &[String],
) -> std::result::Result<Vec<crate::disk::Inject>, String> {
    let key = state_dir.join("ssh_host_ed25519_key");
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    let out = std::process::Command::new(crate::disk::tool("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("root@{name}"))
        .arg("-f")
        .arg(&key)
        .output()
        .map_err(|e| format!("cannot run ssh-keygen: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let private = std::fs::read(&key).map_err(|e| e.to_string())?;
    let public =
        std::fs::read(state_dir.join("ssh_host_ed25519_key.pub")).map_err(|e| e.to_string())?;
    // The daemon keeps only the public half.
    let _ = std::fs::remove_file(&key);
    let mut authorized = keys.join("\n");
    authorized.push('\n');
    Ok(vec![
        crate::disk::Inject {
            guest_path: "/etc/ssh/ssh_host_ed25519_key",
            content: private,
            mode: 0o100600,
        },
        crate::disk::Inject {
            guest_path: "/etc/ssh/ssh_host_ed25519_key.pub",
            content: public,
            mode: 0o100644,
        },
        crate::disk::Inject {
            guest_path: "/root/.ssh/authorized_keys",
            content: authorized.into_bytes(),
            mode: 0o100600,
        },
        crate::disk::Inject {
            guest_path: "/etc/hostname",
            content: format!("{name}\n").into_bytes(),
            mode: 0o100644,
        },
    ])
}
