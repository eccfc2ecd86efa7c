//! InstanceStart: spawn QEMU from a [`StartPlan`], wait until it answers on QMP with a
//! running guest, then watch it. When QEMU exits the VMM exits with the same status, as
//! Firecracker's process ends with its guest (a `reboot=k` reboot gives 0). Nothing
//! here touches the VMM's state: the API keeps answering while a start runs.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::qemu;
use crate::vmm::{StartMicrovmError as Error, StartPlan};

const START_LIMIT: Duration = Duration::from_secs(30);

/// Starts QEMU for `plan` and returns once its guest runs; the error says which step
/// failed (and is what the client reads after "Start microvm error: ").
pub async fn instance_start(plan: &StartPlan) -> Result<(), Error> {
    let _ = std::fs::remove_file(&plan.qmp_socket);
    let accel = std::env::var("BANGER_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
    let bin = qemu::binary();
    // An interface MMDS serves gets a socket pair: QEMU's end goes to QEMU, ours to the
    // thread that switches frames (started once QEMU runs); the others get their tap.
    let mut backends = Vec::new();
    let mut links = Vec::new();
    let mut qemu_ends = Vec::new();
    for n in &plan.nets {
        match &n.mmds {
            None => backends.push(qemu::Backend::Tap(n.tap.as_raw_fd())),
            Some(m) => {
                use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
                let (ours, theirs) = socketpair(
                    AddressFamily::Unix,
                    SockType::Stream,
                    None,
                    SockFlag::SOCK_CLOEXEC,
                )
                .map_err(Error::MmdsSocketPair)?;
                backends.push(qemu::Backend::Socket(theirs.as_raw_fd()));
                let tap = n.tap.try_clone().map_err(Error::DuplicateTap)?;
                links.push(crate::mmds::net::Link {
                    tap,
                    qemu: ours,
                    ip: m.ip,
                    guest: crate::mmds::guest::Guest::new(
                        m.store.clone(),
                        m.version,
                        m.imds_compat,
                    ),
                    log: plan.log.clone(),
                });
                qemu_ends.push(theirs);
            }
        }
    }
    let args = qemu::args(plan, &backends, &accel, qemu::address_space_limit());
    plan.log.main_info(&format!(
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
    let inherited: Vec<i32> = backends
        .iter()
        .map(|b| match b {
            qemu::Backend::Tap(fd) | qemu::Backend::Socket(fd) => *fd,
        })
        .collect();
    // SAFETY: between fork and exec only async-signal-safe calls: prctl, so that QEMU
    // dies with its VMM (what `banger vm kill` relies on: no guest left behind), and
    // fcntl, so that QEMU inherits its netdevs' descriptors under their numbers.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in &inherited {
                if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .map_err(|source| Error::Spawn {
            bin: bin.clone(),
            source,
        })?;
    // QEMU has its ends now; ours start switching.
    drop(qemu_ends);
    for link in links {
        crate::mmds::net::spawn(link).map_err(Error::MmdsStart)?;
    }

    // Wait until QMP reports a running guest, or QEMU dies trying.
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Some(status) = child.try_wait().map_err(Error::Wait)? {
            return Err(Error::Exited(status));
        }
        if plan.qmp_socket.exists()
            && let Ok(s) = qemu::qmp(&plan.qmp_socket, "query-status", None).await
            && s.get("status").and_then(|x| x.as_str()) == Some("running")
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.start_kill();
            return Err(Error::Timeout(START_LIMIT));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    plan.log.main_info("Successfully started microvm.");

    let log = plan.log.clone();
    tokio::spawn(async move {
        let code = match child.wait().await {
            Ok(s) => s.code().unwrap_or(1),
            Err(_) => 1,
        };
        log.main_info("Vmm is stopping.");
        if code == 0 {
            log.main_info("Firecracker exiting successfully. exit_code=0");
        } else {
            log.main_info(&format!("Firecracker exiting with error. exit_code={code}"));
        }
        // Like Firecracker, leave the API socket file behind.
        std::process::exit(code);
    });
    Ok(())
}
