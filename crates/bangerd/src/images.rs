//! Images: read-only, content-addressed directories `<state>/images/<digest>/` with
//! `vmlinuz`, `initrd.img`, `rootfs.ext4` and, when extractable, `vmlinux`. Names map to
//! digests in the database. A build or import happens in a hidden directory and is
//! renamed into place only when complete, so a failed or interrupted one leaves
//! nothing behind.

use std::io::Read;
use std::path::{Path, PathBuf};

use banger_api::{Image, ImageBuildRequest, ImageImportRequest, validate_image_name};
use banger_helper::{BuildImage, Identity, ImageBuilt, PackageName, Release, VmId};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::service::{GUEST_AGENT, MMDS_MARKER, Service, ServiceError, chain, open_as};
use crate::store::ImageRecord;

type Result<T, E = ServiceError> = std::result::Result<T, E>;

const FILES: [&str; 4] = ["vmlinuz", "initrd.img", "rootfs.ext4", "vmlinux"];

fn new_id() -> VmId {
    VmId::new(format!(
        "{:012x}",
        rand::rng().random::<u64>() & 0xffff_ffff_ffff
    ))
    .expect("12 hex digits")
}

/// SHA-256 over each present file's name, length and content, in a fixed order.
fn digest_dir(dir: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for name in FILES {
        let p = dir.join(name);
        let Ok(mut f) = std::fs::File::open(&p) else {
            continue;
        };
        h.update(name.as_bytes());
        h.update(f.metadata()?.len().to_le_bytes());
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Marks an image whose rootfs has banger's identity unit: its VMs get their identity
/// from MMDS (see `service::ssh_keys`). An image that cannot be read for it is left
/// unmarked: its VMs get the identity written into their disks, as before the unit.
fn mark_identity(dir: &Path) {
    match crate::disk::has_file(&dir.join("rootfs.ext4"), GUEST_AGENT) {
        Ok(false) => {}
        Ok(true) => {
            let marker = dir.join(MMDS_MARKER);
            if let Err(e) = std::fs::write(&marker, "banger-identity over MMDS\n") {
                tracing::warn!("cannot write {}: {e}", marker.display());
            }
        }
        Err(e) => tracing::warn!("cannot look for {GUEST_AGENT} in the image: {}", chain(&e)),
    }
}

impl Service {
    fn image_api(&self, r: &ImageRecord) -> Image {
        let dir = self.dirs.images().join(&r.digest);
        let opt = |n: &str| Some(dir.join(n)).filter(|p| p.exists());
        let used_by = self
            .store
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.spec.image.as_deref() == Some(&r.name))
            .map(|v| v.name.to_string())
            .collect();
        Image {
            name: r.name.clone(),
            digest: r.digest.clone(),
            source: r.source.clone(),
            kernel: dir.join("vmlinuz"),
            initrd: opt("initrd.img"),
            vmlinux: opt("vmlinux"),
            rootfs: dir.join("rootfs.ext4"),
            rootfs_bytes: std::fs::metadata(dir.join("rootfs.ext4"))
                .map(|m| m.len())
                .unwrap_or(0),
            created_at: r.created_at.clone(),
            used_by,
        }
    }

    pub fn images(&self) -> Result<Vec<Image>> {
        Ok(self
            .store
            .images()?
            .iter()
            .map(|r| self.image_api(r))
            .collect())
    }

    pub fn image(&self, name: &str) -> Result<Image> {
        let r = self
            .store
            .image(name)?
            .ok_or_else(|| ServiceError::ImageNotFound(name.into()))?;
        Ok(self.image_api(&r))
    }

    /// The last progress line of a build in flight (None when none runs).
    pub fn build_progress(&self, name: &str) -> Option<String> {
        let dir = self
            .builds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()?;
        let text = std::fs::read_to_string(dir.join("progress")).unwrap_or_default();
        Some(text.lines().last().unwrap_or("starting").to_string())
    }

    /// Moves a finished build or import directory to `<images>/<digest>`, makes it
    /// read-only and names it.
    async fn publish(&self, name: &str, dir: PathBuf, source: String) -> Result<Image> {
        let images = self.dirs.images();
        let name_owned = name.to_string();
        let digest = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let _ = std::fs::remove_file(dir.join("progress"));
            let _ = std::fs::remove_file(dir.join("build.log"));
            let digest = digest_dir(&dir)?;
            let target = images.join(&digest);
            if target.exists() {
                // Same content already stored under another name.
                std::fs::remove_dir_all(&dir)?;
            } else {
                mark_identity(&dir);
                for f in FILES {
                    let p = dir.join(f);
                    if p.exists() {
                        std::fs::set_permissions(
                            &p,
                            std::os::unix::fs::PermissionsExt::from_mode(0o444),
                        )?;
                    }
                }
                std::fs::rename(&dir, &target)?;
            }
            Ok(digest)
        })
        .await
        .expect("publish does not panic")
        .map_err(|e| ServiceError::BuildFailed(format!("cannot store image {name_owned}: {e}")))?;
        let rec = self.store.insert_image(name, &digest, &source)?;
        tracing::info!(image = name, digest = %digest, "image ready");
        Ok(self.image_api(&rec))
    }

    pub async fn build_image(&self, req: ImageBuildRequest) -> Result<Image> {
        validate_image_name(&req.name)?;
        let release = Release::new(req.release.clone())?;
        let packages = req
            .packages
            .iter()
            .map(|p| PackageName::new(p.clone()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if self.store.image(&req.name)?.is_some() {
            return Err(ServiceError::NameTaken(format!("image {}", req.name)));
        }
        let id = new_id();
        let dir = self.dirs.image_build(&id);
        {
            let mut b = self.builds.lock().unwrap_or_else(|e| e.into_inner());
            if b.contains_key(&req.name) {
                return Err(ServiceError::NameTaken(format!(
                    "image {} (a build is running)",
                    req.name
                )));
            }
            b.insert(req.name.clone(), dir.clone());
        }
        let result = self
            .helper(BuildImage {
                build_id: id,
                release,
                packages,
            })
            .await;
        self.builds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req.name);
        let dir = match result {
            Ok(ImageBuilt { dir }) => dir,
            Err(ServiceError::Helper(banger_helper::ClientError::Refused(f))) => {
                return Err(ServiceError::BuildFailed(f.message));
            }
            Err(e) => return Err(ServiceError::BuildFailed(chain(&e))),
        };
        banger_helper::fault_point("daemon:build:built");
        let mut source = format!("debootstrap {}", req.release);
        if !req.packages.is_empty() {
            source.push_str(&format!(" +{}", req.packages.join(",")));
        }
        self.publish(&req.name, dir, source).await
    }

    /// Imports the files `owner` named. They are opened once, with the owner's rights
    /// when the daemon runs as root (never root's own), and everything after (the ext4
    /// check, the copies, the kernel's ELF form) reads those descriptors: a path swapped
    /// after the check changes nothing.
    pub async fn import_image(&self, req: ImageImportRequest, owner: Identity) -> Result<Image> {
        validate_image_name(&req.name)?;
        for p in [Some(&req.kernel), req.initrd.as_ref(), Some(&req.rootfs)]
            .into_iter()
            .flatten()
        {
            if !p.is_absolute() {
                return Err(ServiceError::ImportRefused {
                    path: p.display().to_string(),
                    reason: "the path must be absolute".into(),
                });
            }
        }
        if self.store.image(&req.name)?.is_some() {
            return Err(ServiceError::NameTaken(format!("image {}", req.name)));
        }
        let dir = self.dirs.images().join(format!(".import-{}", new_id()));
        let r = req.clone();
        let d = dir.clone();
        let copied = tokio::task::spawn_blocking(move || -> std::result::Result<(), (PathBuf, String)> {
            let open = |p: &Path| open_as(owner, p, false).map_err(|e| (p.to_path_buf(), e.to_string()));
            let kernel = open(&r.kernel)?;
            let initrd = r.initrd.as_deref().map(open).transpose()?;
            let rootfs = open(&r.rootfs)?;
            match crate::disk::is_ext4_file(&rootfs) {
                Ok(true) => {}
                Ok(false) => return Err((r.rootfs.clone(), "it is not an ext4 filesystem".into())),
                Err(e) => return Err((r.rootfs.clone(), e.to_string())),
            }
            std::fs::create_dir_all(&d).map_err(|e| (d.clone(), e.to_string()))?;
            let copy = |from: &std::fs::File, src: &Path, name: &str| -> std::result::Result<(), (PathBuf, String)> {
                crate::disk::clone_file(from, src, &d.join(name)).map(|_| ()).map_err(|e| (src.to_path_buf(), chain(&e)))
            };
            copy(&kernel, &r.kernel, "vmlinuz")?;
            if let (Some(f), Some(p)) = (&initrd, &r.initrd) {
                copy(f, p, "initrd.img")?;
            }
            copy(&rootfs, &r.rootfs, "rootfs.ext4")?;
            // Firecracker loads only an ELF kernel: keep one beside the kernel as
            // given (itself when it already is ELF, else extracted from the bzImage).
            let mut magic = [0u8; 4];
            let is_elf = std::os::unix::fs::FileExt::read_exact_at(&kernel, &mut magic, 0).is_ok() && magic == *b"\x7fELF";
            if is_elf {
                copy(&kernel, &r.kernel, "vmlinux")?;
            } else if let Ok(bz) = std::fs::read(d.join("vmlinuz")) {
                match banger_fc::kernel::extract_vmlinux(&bz) {
                    Ok(elf) => std::fs::write(d.join("vmlinux"), elf).map_err(|e| (d.join("vmlinux"), e.to_string()))?,
                    Err(e) => tracing::warn!(
                        "{}: no ELF vmlinux could be extracted ({e}); Firecracker will not boot this image",
                        r.kernel.display()
                    ),
                }
            }
            Ok(())
        })
        .await
        .expect("import does not panic");
        if let Err((path, reason)) = copied {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ServiceError::ImportRefused {
                path: path.display().to_string(),
                reason,
            });
        }
        banger_helper::fault_point("daemon:import:copied");
        match self.publish(&req.name, dir.clone(), "import".into()).await {
            Ok(i) => Ok(i),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    pub async fn remove_image(&self, name: &str) -> Result<()> {
        let img = self.image(name)?;
        if !img.used_by.is_empty() {
            return Err(ServiceError::ImageInUse {
                name: name.into(),
                users: img.used_by.join(", "),
            });
        }
        self.store.delete_image(name)?;
        // Another name may share the content.
        let shared = self.store.images()?.iter().any(|i| i.digest == img.digest);
        if !shared {
            let dir = self.dirs.images().join(&img.digest);
            let _ = tokio::task::spawn_blocking(move || {
                for f in FILES {
                    let _ = std::fs::set_permissions(
                        dir.join(f),
                        std::os::unix::fs::PermissionsExt::from_mode(0o644),
                    );
                }
                std::fs::remove_dir_all(&dir)
            })
            .await;
        }
        tracing::info!(image = name, "image removed");
        Ok(())
    }
}
