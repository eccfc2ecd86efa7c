//! `vm create`: record the VM, give it an address and, for an image, its own disk.

use super::*;

impl Service {
    /// Records the VM, gives it an address and, for an image, its own disk and its
    /// identity (hostname, SSH keys; see [`super::ssh_keys`]). A failure at any step removes everything the create made.
    /// Creates a VM for `owner` (the caller's SO_PEERCRED identity): the files the
    /// spec names are the owner's to choose, and are opened with the owner's rights
    /// wherever the daemons can take them (see [`check_named_files`]).
    pub async fn create(&self, spec: VmSpec, owner: Identity) -> Result<Vm> {
        spec.validate()?;
        check_named_files(&spec, owner).await?;
        if let Some(name) = &spec.image
            && self.store.image(name)?.is_none()
        {
            return Err(ServiceError::ImageNotFound(name.clone()));
        }
        let id = format!("{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff);
        let rec = self.store.insert(&id, &spec, (owner.uid, owner.gid))?;
        banger_helper::fault_point("daemon:create:inserted");
        let lock = self.lock_for(&rec.id);
        let _g = lock.lock().await;
        if let Err(e) = self.provision(&rec).await {
            let vm_id = rec.id.clone();
            let _ = self
                .helper(RemoveVmState {
                    vm_id: vm_id.clone(),
                })
                .await;
            let _ = self.helper(RemoveVmRuntime { vm_id }).await;
            self.store.delete(&rec.id)?;
            return Err(e);
        }
        let rec = self.store.get_by_id(&id)?.expect("row exists");
        tracing::info!(vm = %rec.name, id = %rec.id, ip = ?rec.ip, disk = ?rec.disk_method, "created");
        Ok(self.to_api(&rec))
    }

    async fn provision(&self, rec: &VmRecord) -> Result<()> {
        let net = self.network().clone();
        self.store
            .allocate_address(&rec.id, net.gateway, net.prefix_len)?;
        let Some(image_name) = &rec.spec.image else {
            return Ok(());
        };
        let image = self
            .store
            .image(image_name)?
            .ok_or_else(|| ServiceError::ImageNotFound(image_name.clone()))?;
        let vm_id = rec.id.clone();
        self.helper(CreateVmDirs {
            vm_id: vm_id.clone(),
        })
        .await?;
        let image_dir = self.dirs.images().join(&image.digest);
        let src = image_dir.join("rootfs.ext4");
        let by_mmds = image_dir.join(MMDS_MARKER).exists();
        let dst = self.dirs.vm_disk(&vm_id);
        let state_dir = self.dirs.vm_state_dir(&vm_id);
        let spec = rec.spec.clone();
        let name = rec.name.to_string();
        let method = tokio::task::spawn_blocking(move || -> Result<crate::disk::CloneMethod> {
            let disk_err = |e: crate::disk::DiskError| ServiceError::Disk {
                name: name.clone(),
                reason: chain(&e),
            };
            let method = crate::disk::clone(&src, &dst).map_err(disk_err)?;
            if let Some(mib) = spec.disk_size_mib {
                crate::disk::grow(&dst, mib << 20).map_err(disk_err)?;
            }
            let identity_err = |e: IdentityError| ServiceError::Disk {
                name: name.clone(),
                reason: chain(&e),
            };
            let identity =
                GuestIdentity::generate(&state_dir, &name, &spec.ssh_keys).map_err(identity_err)?;
            if by_mmds && identity.fits_mmds() {
                // Served by MMDS at each start; the disk stays the image's.
                identity.save(&state_dir).map_err(identity_err)?;
            } else {
                crate::disk::inject(&dst, &identity.files(), &state_dir).map_err(disk_err)?;
            }
            Ok(method)
        })
        .await
        .expect("disk work does not panic")?;
        self.store
            .set_disk(&rec.id, &image.digest, method.as_str())?;
        Ok(())
    }
}
