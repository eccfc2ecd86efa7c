//! InstanceStart: spawn QEMU, wait until it answers on QMP with a running guest, then
//! watch it. When QEMU exits the VMM exits with the same status, as Firecracker's
//! process ends with its guest (a `reboot=k` reboot gives 0).

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::api::{Fault, InstanceState, Shared, Vmm};
use crate::qemu;

pub async fn instance_start(shared: Shared, v: &mut Vmm) -> Result<(), Fault> {
    let Some(boot) = v.boot.clone() else {
        return Err(Fault(
            "Start microvm error: Cannot start microvm without kernel configuration.".into(),
        ));
    };
    let qmp_socket = {
        let mut s = v.api_sock.clone().into_os_string();
        s.push(".qmp");
        PathBuf::from(s)
    };
    let _ = std::fs::remove_file(&qmp_socket);
    let accel = std::env::var("BANGER_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
    let serial_out = v
        .serial
        .as_ref()
        .and_then(|s| s.serial_out_path.clone())
        .map(PathBuf::from);
    let machine = qemu::Machine {
        id: &v.id,
        machine: &v.machine,
        boot: &boot,
        drives: &v.drives,
        nets: &v.nets,
        qmp_socket: &qmp_socket,
        serial_out: serial_out.as_deref(),
        entropy: v.entropy.is_some(),
        accel: &accel,
    };
    let bin = qemu::binary();
    let args = qemu::args(&machine);
    v.log.info(&format!(
        "Starting guest: {} {}",
        bin.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let mut cmd = std::process::Command::new(&bin);
    // The serial console is QEMU's stdout, which is ours (a file, never a pipe).
    cmd.args(&args).stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe. QEMU dies with its VMM, so killing the VMM
    // (what `banger vm kill` does) never leaves a guest behind.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd).spawn().map_err(|e| {
        Fault(format!(
            "Start microvm error: cannot run {}: {e}",
            bin.display()
        ))
    })?;

    // Wait until QMP reports a running guest, or QEMU dies trying.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Fault(format!("Start microvm error: {e}")))?
        {
            return Err(Fault(format!(
                "Start microvm error: qemu exited during start ({status}); see the VMM log"
            )));
        }
        if qmp_socket.exists()
            && let Ok(s) = qemu::qmp(&qmp_socket, "query-status", None).await
            && s.get("status").and_then(|x| x.as_str()) == Some("running")
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.start_kill();
            return Err(Fault(
                "Start microvm error: qemu did not start the guest within 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    v.state = InstanceState::Running;
    v.log.info("Successfully started microvm.");

    tokio::spawn(async move {
        let status = child.wait().await;
        let code = match status {
            Ok(s) => s.code().unwrap_or(1),
            Err(_) => 1,
        };
        let v = shared.lock().await;
        v.log.info("Vmm is stopping.");
        if code == 0 {
            v.log.info("Firecracker exiting successfully. exit_code=0");
        } else {
            v.log
                .info(&format!("Firecracker exiting with error. exit_code={code}"));
        }
        // Like Firecracker, leave the API socket file behind.
        std::process::exit(code);
    });
    Ok(())
}
