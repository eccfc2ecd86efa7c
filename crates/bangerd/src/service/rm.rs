//! `vm rm`: remove a VM that has no VMM (`--force` kills it first) and all it holds.

use super::*;

impl Service {
    pub async fn remove(&self, name: &str, force: bool) -> Result<()> {
        let (rec, _g) = self.open(name).await?;
        if !rec.state.can_remove() {
            if !force {
                return Err(ServiceError::InvalidState {
                    name: name.into(),
                    state: rec.state,
                    action: "remove",
                    hint: "; stop it first or use --force",
                });
            }
            self.kill_locked(&rec).await?;
        }
        banger_helper::fault_point("daemon:rm:killed");
        let vm_id = rec.id.clone();
        self.release_runtime(&rec.id).await?;
        self.helper(RemoveVmState { vm_id }).await?;
        self.store.delete(&rec.id)?;
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(rec.id.as_str());
        tracing::info!(vm = %name, "removed");
        Ok(())
    }
}
