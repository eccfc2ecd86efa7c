//! `vm start`: launch the VMM through the helper, configure it over its API, start the guest.

use super::*;
use boot::{BootError, BootPlan};
use timeline::Timeline;

/// Why a start failed, before the console's tail is added to it.
#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    /// The root helper failed or refused (its reason inside).
    #[error(transparent)]
    Helper(Box<ServiceError>),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("cannot write handles.json")]
    Handles(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the VM has no address for its tap")]
    NoAddress,
    #[error("{tap}")]
    Tap {
        tap: String,
        #[source]
        source: Box<ServiceError>,
    },
}

impl Service {
    pub async fn start(&self, name: &str) -> Result<Vm> {
        let (rec, _g) = self.open(name).await?;
        if !rec.state.can_start() {
            return Err(ServiceError::InvalidState {
                name: name.into(),
                state: rec.state,
                action: "start",
                hint: "",
            });
        }
        let vm_id = rec.id.clone();
        self.store
            .set_state(&rec.id, StateUpdate::to(VmState::Starting))?;
        // Only this boot's console lines explain this boot's failure.
        let console_from = std::fs::metadata(self.dirs.console_log(&vm_id))
            .map(|m| m.len())
            .unwrap_or(0);
        let mut timeline = Timeline::new();
        match self.launch_and_boot(&vm_id, &rec, &mut timeline).await {
            Ok(l) => {
                self.store.set_state(
                    &rec.id,
                    StateUpdate::to(VmState::Running)
                        .vmm(Some(&l.vmm_name))
                        .process(Some((l.pid, l.start_time))),
                )?;
                timeline.mark("saved");
                tracing::info!(vm = %rec.name, pid = l.pid, "running");
                tracing::debug!(vm = %rec.name, "start timeline: {timeline}");
            }
            Err((launched, e)) => {
                let reason = chain(&e);
                if let Some(l) = &launched {
                    let _ = self.kill_and_wait(&vm_id, l.pid, l.start_time).await;
                }
                let _ = self.release_runtime(&rec.id).await;
                let reason = with_console_tail(
                    &reason,
                    Some((&self.dirs.console_log(&vm_id), console_from)),
                    &self.dirs.vmm_log(&vm_id),
                );
                self.store.set_state(
                    &rec.id,
                    StateUpdate::to(VmState::Failed)
                        .vmm(launched.as_ref().map(|l| l.vmm_name.as_str()))
                        .error(Some(&reason)),
                )?;
                tracing::warn!(vm = %rec.name, "start failed: {reason}");
                return Err(ServiceError::StartFailed {
                    name: name.into(),
                    reason,
                });
            }
        }
        Ok(self.to_api(&self.record(name)?))
    }

    /// Launch through the helper, record the handles, configure over the API and start
    /// the instance. On failure returns what was launched (to kill) and why.
    async fn launch_and_boot(
        &self,
        vm_id: &VmId,
        rec: &VmRecord,
        timeline: &mut Timeline,
    ) -> std::result::Result<Launched, (Option<Launched>, StartError)> {
        let fail = |l: Option<&Launched>, e: StartError| (l.cloned(), e);
        let helper = |e: ServiceError| StartError::Helper(Box::new(e));
        self.helper(CreateVmDirs {
            vm_id: vm_id.clone(),
        })
        .await
        .map_err(|e| fail(None, helper(e)))?;
        let _ = std::fs::remove_file(self.dirs.handles(vm_id));
        let plan = self
            .boot_plan(vm_id, rec)
            .map_err(|e| fail(None, e.into()))?;
        timeline.mark("dirs+plan");
        // The tap is made while the VMM starts: neither waits for the other, and the
        // VMM needs the tap only when it is configured.
        let launch = self.helper(LaunchVmm {
            vm_id: vm_id.clone(),
            files: plan.files.clone(),
            owner: rec.owner.map(|(uid, gid)| Identity { uid, gid }),
        });
        let address = rec.ip.as_deref();
        let tap = self.tap_request(vm_id, &plan, address, |vm_id, guest_ip| CreateTap {
            vm_id,
            guest_ip,
            element: false,
        });
        let (reply, tapped) = tokio::join!(launch, tap);
        timeline.mark("launch+tap");
        let l = reply.map_err(|e| fail(None, helper(e)))?;
        banger_helper::fault_point("daemon:start:launched");
        let h = Handles {
            vm_id: vm_id.to_string(),
            pid: l.pid,
            start_time: l.start_time,
            vmm_name: l.vmm_name.clone(),
            api_sock: l.api_sock.clone(),
            chroot: l.chroot.clone(),
            pidfile: l.pidfile.clone(),
        };
        handles::write(&self.dirs.handles(vm_id), &h)
            .map_err(|e| fail(Some(&l), StartError::Handles(e)))?;
        self.store
            .set_state(
                &rec.id,
                StateUpdate::to(VmState::Starting)
                    .vmm(Some(&l.vmm_name))
                    .process(Some((l.pid, l.start_time))),
            )
            .map_err(|e| fail(Some(&l), e.into()))?;
        banger_helper::fault_point("daemon:start:saved");
        tapped.map_err(|e| fail(Some(&l), e))?;
        timeline.mark("handles");
        // The tap's nftables element (an `nft` run) is added while the VMM is
        // configured: the guest sends nothing before InstanceStart, and the start
        // reports success only once both are done.
        let (api_ready, ready) = tokio::sync::oneshot::channel();
        let allow = async {
            // Not while the VMM itself starts up: on few cores `nft` would take the
            // CPU it needs. A VMM that never answers leaves this to configure's error.
            if ready.await.is_err() {
                return Ok(());
            }
            self.tap_request(vm_id, &plan, address, |vm_id, guest_ip| AllowGuest {
                vm_id,
                guest_ip,
            })
            .await
        };
        let (configured, allowed) = tokio::join!(configure(&l, &plan, timeline, api_ready), allow);
        configured.map_err(|e| fail(Some(&l), e.into()))?;
        allowed.map_err(|e| fail(Some(&l), e))?;
        timeline.mark("allowed");
        banger_helper::fault_point("daemon:start:configured");
        Ok(l)
    }

    /// A helper request about the VM's tap (none without a NIC), for its address.
    async fn tap_request<R>(
        &self,
        vm_id: &VmId,
        plan: &BootPlan,
        address: Option<&str>,
        request: fn(VmId, std::net::Ipv4Addr) -> R,
    ) -> std::result::Result<(), StartError>
    where
        R: HelperRequest<Reply = ()> + Send + 'static,
    {
        let Some((tap, _)) = &plan.nic else {
            return Ok(());
        };
        let ip = address
            .unwrap_or_default()
            .parse()
            .map_err(|_| StartError::NoAddress)?;
        self.helper(request(vm_id.clone(), ip))
            .await
            .map_err(|e| StartError::Tap {
                tap: tap.clone(),
                source: Box::new(e),
            })
    }
}
