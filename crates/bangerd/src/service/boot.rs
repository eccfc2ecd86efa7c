//! What a VMM boots with (the boot plan) and configuring a launched VMM over its API.

use super::*;

impl Service {
    /// What the VMM is given: kernel, initrd and root disk (from the image or the
    /// spec), the command line with the guest's network, and the NIC.
    pub(super) fn boot_plan(
        &self,
        vm_id: &VmId,
        rec: &VmRecord,
    ) -> std::result::Result<BootPlan, BootError> {
        let spec = &rec.spec;
        let net = self.network();
        let vmm = self.vmm.get().expect("helper_ping ran before serving");
        let files = match &rec.image_digest {
            Some(digest) => {
                let dir = self.dirs.images().join(digest);
                let digest = Digest::new(digest.clone()).map_err(BootError::Digest)?;
                let image = || {
                    spec.image
                        .clone()
                        .unwrap_or_else(|| digest.as_str().to_string())
                };
                let kernel = if vmm.boots_bzimage() {
                    ImageFile::Vmlinuz
                } else if dir.join("vmlinux").exists() {
                    ImageFile::Vmlinux
                } else {
                    return Err(BootError::NoElfKernel {
                        image: image(),
                        vmm: vmm.name.clone(),
                    });
                };
                let initrd = dir.join("initrd.img").exists().then(|| BootFile::Image {
                    digest: digest.clone(),
                    file: ImageFile::Initrd,
                });
                BootFiles {
                    kernel: BootFile::Image {
                        digest,
                        file: kernel,
                    },
                    initrd,
                    rootfs: Some(BootFile::VmDisk {}),
                }
            }
            None => BootFiles {
                kernel: BootFile::Named {
                    path: spec.kernel.clone().ok_or(BootError::NoKernel)?,
                },
                initrd: spec.initrd.clone().map(|path| BootFile::Named { path }),
                rootfs: spec.rootfs.clone().map(|path| BootFile::Named { path }),
            },
        };
        let mut args = spec
            .boot_args
            .clone()
            .unwrap_or_else(|| DEFAULT_BOOT_ARGS.into());
        // An identity kept for MMDS is served on the NIC (none without one).
        let mut mmds = None;
        let nic = match &rec.ip {
            Some(ip) => {
                let addr: std::net::Ipv4Addr =
                    ip.parse().map_err(|_| BootError::Address(ip.clone()))?;
                args.push_str(&format!(
                    " net.ifnames=0 banger.ip={ip}/{} banger.gw={} banger.hostname={}",
                    net.prefix_len, net.gateway, rec.name
                ));
                if let Some(id) = GuestIdentity::load(&self.dirs.vm_state_dir(vm_id))? {
                    // The guest unit runs only when told MMDS is there (it would
                    // otherwise wait for a service that never answers).
                    args.push_str(" banger.mmds=1");
                    mmds = Some(id);
                }
                let o = addr.octets();
                let mac = format!("06:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
                Some((NetworkConfig::tap_name(vm_id), mac))
            }
            None => None,
        };
        Ok(BootPlan {
            // Validated at create (1..=32); were it not, the VMM refuses the 255.
            vcpus: u8::try_from(spec.vcpus).unwrap_or(u8::MAX),
            memory_mib: spec.memory_mib as usize,
            files,
            boot_args: args,
            nic,
            mmds,
        })
    }
}

/// Why a VM could not be planned for its VMM, or its VMM not configured.
#[derive(Debug, thiserror::Error)]
pub(super) enum BootError {
    #[error(
        "image {image} has no ELF vmlinux, and {vmm} loads only an ELF kernel \
         (banger could not extract one from its vmlinuz; re-import it with an ELF --kernel)"
    )]
    NoElfKernel { image: String, vmm: String },
    #[error("the VM's stored image digest is invalid")]
    Digest(#[source] banger_helper::ArgError),
    #[error("the VM has neither an image nor a kernel")]
    NoKernel,
    #[error("bad stored address {0}")]
    Address(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("the VMM exited before its API socket answered")]
    VmmExited,
    #[error("the VMM's API socket did not answer within {0:?}")]
    ApiNotReady(Duration),
    /// The VMM refused a configuration call (its own `fault_message` inside).
    #[error(transparent)]
    Api(#[from] banger_fc::ClientError),
}

/// Everything the VMM is configured with.
#[derive(Debug, Clone)]
pub(super) struct BootPlan {
    vcpus: u8,
    memory_mib: usize,
    /// Kernel, initrd and disk, by id: the helper opens them and says which paths the
    /// VMM's API gets (host paths, or the jail's `/kernel`, `/initrd`, `/rootfs`).
    pub(super) files: BootFiles,
    boot_args: String,
    /// (tap, guest MAC)
    pub(super) nic: Option<(String, String)>,
    /// The VM's identity, served by MMDS on the NIC (its `Debug` hides the key).
    mmds: Option<GuestIdentity>,
}

/// Waits until the VMM is ready, then configures and starts it.
pub(super) async fn configure(
    l: &Launched,
    plan: &BootPlan,
    timeline: &mut super::timeline::Timeline,
    api_ready: tokio::sync::oneshot::Sender<()>,
) -> std::result::Result<(), BootError> {
    // The VM's configuration (its disk, its tap) goes only to the VMM just launched.
    let client = banger_fc::Client::new(&l.api_sock).with_peer(l.pid);
    let deadline = Instant::now() + API_READY_TIMEOUT;
    // The socket's directory (the jail's root when the host path is a link into it).
    let bound = std::fs::read_link(&l.api_sock).unwrap_or_else(|_| l.api_sock.clone());
    let mut watch = bound.parent().and_then(|d| SocketWatch::new(d).ok());
    loop {
        if pid::start_time(l.pid) != Some(l.start_time) {
            return Err(BootError::VmmExited);
        }
        if client.instance_info().await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err(BootError::ApiNotReady(API_READY_TIMEOUT));
        }
        match &mut watch {
            // Bound but not yet listening: a moment, no event comes for that.
            _ if bound.exists() => tokio::time::sleep(Duration::from_micros(500)).await,
            // Woken when the socket appears; a VMM that dies is noticed within 10 ms.
            Some(w) => w.changed(Duration::from_millis(10)).await,
            None => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    // Closing an inotify instance waits for an RCU grace period (milliseconds): not
    // on the start's path.
    if let Some(w) = watch.take() {
        tokio::task::spawn_blocking(move || drop(w));
    }
    timeline.mark("api ready");
    let _ = api_ready.send(());
    client
        .put_machine_config(&MachineConfiguration {
            vcpu_count: plan.vcpus,
            mem_size_mib: plan.memory_mib,
            ..Default::default()
        })
        .await?;
    client
        .put_boot_source(&BootSource {
            kernel_image_path: l.paths.kernel.clone(),
            initrd_path: l.paths.initrd.clone(),
            boot_args: Some(plan.boot_args.clone()),
        })
        .await?;
    if let Some((tap, mac)) = &plan.nic {
        client
            .put_network_interface(&banger_fc::models::NetworkInterface::new(
                "eth0",
                tap,
                Some(mac.clone()),
            ))
            .await?;
        if let Some(identity) = &plan.mmds {
            client
                .put_mmds_config(&banger_fc::models::MmdsConfig {
                    version: banger_fc::models::MmdsVersion::V2,
                    network_interfaces: vec!["eth0".into()],
                    ipv4_address: None,
                    imds_compat: false,
                })
                .await?;
            client.put_mmds(&identity.mmds()).await?;
        }
    }
    if let Some(rootfs) = &l.paths.rootfs {
        client
            .put_drive(&Drive::on_file("rootfs", rootfs, true, false))
            .await?;
    }
    timeline.mark("configured");
    client
        .clone()
        .with_timeout(INSTANCE_START_TIMEOUT)
        .instance_start()
        .await?;
    timeline.mark("instance start");
    Ok(())
}

/// Wakes when something is created in a directory (inotify), so waiting for a VMM's
/// API socket costs no polling.
pub(super) struct SocketWatch(std::sync::Arc<nix::sys::inotify::Inotify>);

impl SocketWatch {
    pub(super) fn new(dir: &std::path::Path) -> std::io::Result<Self> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let i = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        i.add_watch(
            dir,
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ONLYDIR,
        )?;
        Ok(SocketWatch(std::sync::Arc::new(i)))
    }

    /// Returns once an entry appeared since the last call, or after `limit`.
    pub(super) async fn changed(&mut self, limit: Duration) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let i = self.0.clone();
        let timeout = PollTimeout::try_from(limit).unwrap_or(PollTimeout::MAX);
        let _ = tokio::task::spawn_blocking(move || {
            let mut fds = [PollFd::new(i.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, timeout).is_ok_and(|n| n > 0) {
                let _ = i.read_events();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_watch_wakes_when_an_entry_appears_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SocketWatch::new(dir.path()).unwrap();
        // Nothing happens: the limit ends the wait.
        let t = Instant::now();
        w.changed(Duration::from_millis(50)).await;
        assert!(t.elapsed() >= Duration::from_millis(50));
        // A socket bound while waiting ends the wait long before the limit.
        let sock = dir.path().join("api.sock");
        let bind = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            std::os::unix::net::UnixListener::bind(sock).unwrap()
        });
        let t = Instant::now();
        w.changed(Duration::from_secs(30)).await;
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let _l = bind.await.unwrap();
        assert!(SocketWatch::new(&dir.path().join("missing")).is_err());
    }
}
