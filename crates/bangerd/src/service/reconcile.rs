//! Reconcile at daemon start, and the sweep for VMMs orphaned by a crash mid-start.

use super::*;

impl Service {
    /// Run once when the daemon starts, before it serves: every VM the database says
    /// has a VMM is re-adopted if its process is positively identified (same pid and
    /// start time, the VMM's comm, API answering), otherwise marked stopped. Nothing
    /// that cannot be identified is ever killed.
    pub async fn reconcile(&self) -> Result<Vec<(String, Reconciled)>> {
        // VMs are independent: look at all of them at once, so start-up time does not
        // grow with the number of running VMs (each check is mostly waiting on /proc
        // and on a VMM's API).
        let recs: Vec<VmRecord> = self
            .store
            .list()?
            .into_iter()
            .filter(|r| r.state.has_vmm())
            .collect();
        let results =
            futures_util::future::join_all(recs.iter().map(|r| self.reconcile_one(r))).await;
        let mut out = Vec::new();
        for (rec, result) in recs.into_iter().zip(results) {
            let result = result?;
            match &result {
                Reconciled::Adopted { pid } => {
                    tracing::info!(vm = %rec.name, pid, "reconcile: adopted")
                }
                Reconciled::Cleaned { reason } => {
                    tracing::info!(vm = %rec.name, "reconcile: cleaned: {reason}")
                }
                Reconciled::LeftAlone { reason } => {
                    tracing::warn!(vm = %rec.name, "reconcile: left alone: {reason}")
                }
            }
            out.push((rec.name.to_string(), result));
        }
        out.extend(self.end_orphans().await?);
        Ok(out)
    }

    /// Every VMM the helper launched and that still runs is either a VM's VMM or an
    /// orphan of a crash mid-start (the helper or this daemon died between the
    /// launch and saving its pid): the orphans are ended, under each VM's lock.
    pub async fn end_orphans(&self) -> Result<Vec<(String, Reconciled)>> {
        let mut out = Vec::new();
        let Ok(LaunchList { launches }) = self.helper(Launches {}).await else {
            return Ok(out);
        };
        for l in launches {
            let lock = self.lock_for(l.vm_id.as_str());
            let _g = lock.lock().await;
            let rec = self.store.get_by_id(l.vm_id.as_str())?;
            if rec
                .as_ref()
                .is_some_and(|r| r.state.has_vmm() && r.pid == Some(l.pid))
            {
                continue;
            }
            self.helper(RemoveVmRuntime {
                vm_id: l.vm_id.clone(),
            })
            .await?;
            let name = rec
                .map(|r| r.name.to_string())
                .unwrap_or_else(|| l.vm_id.to_string());
            let reason = format!(
                "ended its orphaned VMM (pid {}) that no start had recorded",
                l.pid
            );
            tracing::warn!(vm = %name, "reconcile: {reason}");
            out.push((name, Reconciled::Cleaned { reason }));
        }
        Ok(out)
    }

    /// Runs for the daemon's life: when the helper comes back as a new process (it
    /// crashed or was restarted, maybe in the middle of a launch), look for orphans.
    pub async fn watch_helper(&self) {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Ok(Pong { instance, .. }) = self.helper(Ping {}).await else {
                continue;
            };
            let changed = {
                let mut last = self
                    .helper_instance
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let changed = *last != instance;
                *last = instance;
                changed
            };
            if changed {
                tracing::info!("the root helper restarted; looking for orphaned VMMs");
                if let Err(e) = self.end_orphans().await {
                    tracing::warn!("orphan sweep failed: {}", chain(&e));
                }
            }
        }
    }

    async fn reconcile_one(&self, rec: &VmRecord) -> Result<Reconciled> {
        let vm_id = rec.id.clone();
        let api_sock = self.dirs.api_socket(&vm_id);
        let vmm_name = if rec.vmm.is_empty() {
            "banger-vmm-qemu".to_string()
        } else {
            rec.vmm.clone()
        };
        let mark = |state: VmState, err: Option<&str>| {
            self.store
                .set_state(&rec.id, StateUpdate::to(state).error(err))
        };

        if !self.dirs.vm_run_dir(&vm_id).exists() {
            mark(VmState::Stopped, None)?;
            return Ok(Reconciled::Cleaned {
                reason: "its run directory is gone (host rebooted?); nothing was killed".into(),
            });
        }
        // Where to look: handles.json, else the database, else the socket's owner.
        let known = handles::read(&self.dirs.handles(&vm_id))
            .ok()
            .filter(|h| h.vm_id == rec.id.as_str());
        let candidate = match &known {
            Some(h) => Some((h.pid, h.start_time)),
            None => match (rec.pid, rec.pid_start_time) {
                (Some(p), Some(st)) => Some((p, st)),
                _ => pid::find_pid(&api_sock, &vmm_name)
                    .ok()
                    .and_then(|p| pid::start_time(p).map(|st| (p, st))),
            },
        };
        let Some((p, st)) = candidate.filter(|(p, st)| pid::start_time(*p) == Some(*st)) else {
            let (state, why) = self.how_it_ended(rec).await;
            self.release_runtime(&rec.id).await?;
            let why = why.unwrap_or_else(|| "the VMM exited while the daemon was down".into());
            mark(state, Some(&why))?;
            return Ok(Reconciled::Cleaned {
                reason: "its VMM exited while the daemon was down".into(),
            });
        };
        let comm = pid::comm(Path::new("/proc"), p).unwrap_or_default();
        if comm != pid::expected_comm(&vmm_name) && pid::find_pid(&api_sock, &vmm_name) != Ok(p) {
            mark(
                VmState::Stopped,
                Some("its recorded pid now belongs to another process"),
            )?;
            return Ok(Reconciled::LeftAlone {
                reason: format!("pid {p} is now {comm:?}, not the VMM; neither adopted nor killed"),
            });
        }
        // A VM saved as running with this very process (pid and start time) got past
        // InstanceStart: nothing to ask its VMM, so adopting N such VMs costs N
        // reads of /proc and no API round trip. Any other record (a start or a
        // stop the daemon's death cut short) asks the VMM how far it got.
        let saved_running =
            rec.state == VmState::Running && (rec.pid, rec.pid_start_time) == (Some(p), Some(st));
        let info = if saved_running {
            None
        } else {
            let client = banger_fc::Client::new(&api_sock)
                .with_timeout(Duration::from_secs(2))
                .with_peer(p);
            Some(client.instance_info().await)
        };
        match info {
            Some(Ok(i)) if i.state == "Not started" => {
                // Ours, identified, but the start never completed: finish it as failed.
                self.kill_and_wait(&vm_id, p, st).await?;
                self.release_runtime(&rec.id).await?;
                mark(
                    VmState::Failed,
                    Some("the daemon stopped while the VM was starting"),
                )?;
                Ok(Reconciled::Cleaned {
                    reason: "its start was interrupted; the VMM was stopped".into(),
                })
            }
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!(vm = %rec.name, "VMM pid {p} is alive but its API did not answer: {e}");
                }
                let h = Handles {
                    vm_id: rec.id.to_string(),
                    pid: p,
                    start_time: st,
                    vmm_name: vmm_name.clone(),
                    api_sock: api_sock.clone(),
                    // A jailed VMM keeps its jail: what handles.json said, else where
                    // the socket's symlink leads.
                    chroot: known
                        .as_ref()
                        .and_then(|h| h.chroot.clone())
                        .or_else(|| jail_of(&api_sock)),
                    pidfile: known
                        .as_ref()
                        .and_then(|h| h.pidfile.clone())
                        .or_else(|| jail_of(&api_sock).map(|c| c.join(format!("{vmm_name}.pid")))),
                };
                // A VM found as it was left costs no write: reconcile stays flat in
                // the number of running VMs.
                if known.as_ref() != Some(&h) {
                    let _ = handles::write(&self.dirs.handles(&vm_id), &h);
                }
                // A stop that the daemon's death interrupted did not finish: the VM
                // runs, and `vm stop` (or `vm kill`) is legal on it again.
                let note = (rec.state == VmState::Stopping)
                    .then_some("a stop was interrupted when the daemon stopped; the VM still runs");
                let unchanged = rec.state == VmState::Running
                    && rec.vmm == vmm_name
                    && (rec.pid, rec.pid_start_time) == (Some(p), Some(st))
                    && rec.last_error.is_none();
                if unchanged {
                    return Ok(Reconciled::Adopted { pid: p });
                }
                self.store.set_state(
                    &rec.id,
                    StateUpdate::to(VmState::Running)
                        .vmm(Some(&vmm_name))
                        .process(Some((p, st)))
                        .error(note),
                )?;
                Ok(Reconciled::Adopted { pid: p })
            }
        }
    }
}

/// The jail root a jailed VMM's socket symlink points into.
pub(super) fn jail_of(api_sock: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(api_sock).ok()?;
    target
        .is_absolute()
        .then(|| target.parent().map(Path::to_path_buf))
        .flatten()
}
