//! `vm stop`: Ctrl-Alt-Del, wait for the guest, kill it after the timeout.

use super::*;

impl Service {
    pub async fn stop(&self, name: &str, timeout: Duration) -> Result<Vm> {
        let (rec, _g) = self.open(name).await?;
        if !rec.state.has_vmm() {
            // Already stopped: nothing to do, as `docker stop` on a stopped container.
            return Ok(self.to_api(&rec));
        }
        if !rec.state.can_stop() {
            return Err(ServiceError::InvalidState {
                name: name.into(),
                state: rec.state,
                action: "stop",
                hint: "; use `banger vm kill` to end it now",
            });
        }
        let vm_id = rec.id.clone();
        let (p, st) = (rec.pid.unwrap_or(0), rec.pid_start_time.unwrap_or(0));
        self.store.set_state(
            &rec.id,
            StateUpdate::to(VmState::Stopping).process(Some((p, st))),
        )?;
        banger_helper::fault_point("daemon:stop:stopping");
        // Only the VMM itself hears the shutdown: its socket's directory is the VMM
        // user's, so the name alone proves nothing.
        let client = banger_fc::Client::new(self.dirs.api_socket(&vm_id)).with_peer(p);
        let graceful = match client.send_ctrl_alt_del().await {
            Ok(()) => wait_gone(p, st, timeout).await,
            Err(e) => {
                tracing::warn!(vm = %name, "graceful shutdown request failed: {e}");
                false
            }
        };
        if !graceful {
            tracing::info!(vm = %name, "guest did not stop within {timeout:?}; killing the VMM");
            self.kill_and_wait(&vm_id, p, st).await?;
        }
        self.release_runtime(&rec.id).await?;
        self.store
            .set_state(&rec.id, StateUpdate::to(VmState::Stopped))?;
        tracing::info!(vm = %name, graceful, "stopped");
        Ok(self.to_api(&self.record(name)?))
    }
}
