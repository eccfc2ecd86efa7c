//! `vm kill`: end the VMM now, also while a graceful stop waits on it.

use super::*;

impl Service {
    pub async fn kill(&self, name: &str) -> Result<Vm> {
        let rec = self.record(name)?;
        let lock = self.lock_for(&rec.id);
        // A graceful stop may hold the VM for its whole timeout; `vm kill` is what its
        // hint offers, so it does not queue behind it: it ends the VMM the stop waits
        // on (identified by pid and start time), and the stop then finishes at once.
        let _g = match lock.try_lock() {
            Ok(g) => g,
            Err(_) => {
                if let Some(r) = self.store.get_by_id(&rec.id)?
                    && r.state == VmState::Stopping
                    && let (Some(p), Some(st)) = (r.pid, r.pid_start_time)
                {
                    let vm_id = r.id.clone();
                    self.helper(SignalVmm {
                        vm_id,
                        pid: p,
                        start_time: st,
                        signal: VmmSignal::Kill,
                    })
                    .await?;
                }
                lock.lock().await
            }
        };
        let now = self.record(name)?;
        if now.id != rec.id {
            // Removed and made anew under the same name while we waited: not this VM.
            return Err(ServiceError::NotFound(name.to_string()));
        }
        let rec = self.refresh(now).await?;
        if !rec.state.can_kill() {
            return Ok(self.to_api(&rec));
        }
        self.kill_locked(&rec).await?;
        Ok(self.to_api(&self.record(name)?))
    }

    pub(super) async fn kill_locked(&self, rec: &VmRecord) -> Result<()> {
        let vm_id = rec.id.clone();
        if let (Some(p), Some(st)) = (rec.pid, rec.pid_start_time) {
            self.kill_and_wait(&vm_id, p, st).await?;
        }
        banger_helper::fault_point("daemon:kill:signalled");
        self.release_runtime(&rec.id).await?;
        self.store
            .set_state(&rec.id, StateUpdate::to(VmState::Stopped))?;
        tracing::info!(vm = %rec.name, "killed");
        Ok(())
    }

    pub(super) async fn kill_and_wait(&self, vm_id: &VmId, p: i32, st: u64) -> Result<()> {
        self.helper(SignalVmm {
            vm_id: vm_id.clone(),
            pid: p,
            start_time: st,
            signal: VmmSignal::Kill,
        })
        .await?;
        wait_gone(p, st, Duration::from_secs(10)).await;
        Ok(())
    }
}
