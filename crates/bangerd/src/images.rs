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

use crate::service::{GUEST_AGENT, GUEST_UNIT, MMDS_MARKER, Service, ServiceError, chain, open_as};
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
    let rootfs = dir.join("rootfs.ext4");
    let has = |path| crate::disk::has_file(&rootfs, path);
    match has(GUEST_AGENT).and_then(|script| Ok(script && has(GUEST_UNIT)?)) {
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
            return Err(ServiceError::ImageNameTaken(req.name));
        }
        let id = new_id();
        let dir = self.dirs.image_build(&id);
        {
            let mut b = self.builds.lock().unwrap_or_else(|e| e.into_inner());
            if b.contains_key(&req.name) {
                return Err(ServiceError::ImageBuilding(req.name));
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
            return Err(ServiceError::ImageNameTaken(req.name));
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

#[cfg(test)]
mod tests {
    //! Images without root: the digest, the checks before anything runs, what the
    //! helper is asked for a build, publishing, imports from files, and removal, over
    //! a real store and the recording fake helper.

    use super::*;
    use crate::service::fake::{self, T};
    use banger_api::ErrorKind;
    use banger_helper::{ClientError, Failure, FailureKind, HelperRequest as _, Request};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, OnceLock};

    fn write_files(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }
    }

    fn digest_of(files: &[(&str, &str)]) -> String {
        let d = tempfile::tempdir().unwrap();
        write_files(d.path(), files);
        digest_dir(d.path()).unwrap()
    }

    /// The digest names the image's directory, so its form is fixed: each present
    /// file's name, its length (little-endian u64) and its bytes, in `FILES` order.
    /// The expected value is SHA-256 computed outside this code.
    #[test]
    fn the_digest_is_names_lengths_and_contents_in_a_fixed_order() {
        let all = [
            ("rootfs.ext4", "root"),
            ("vmlinux", "elf"),
            ("vmlinuz", "k"),
            ("initrd.img", "ir"),
        ];
        assert_eq!(
            digest_of(&all),
            "007099745607f6f1f3a0803e85e7bca223dafd9fc5295e5b20e11147654eddb2"
        );
        // Other files (a build's progress and log) are not content.
        let mut more = all.to_vec();
        more.push(("progress", "x"));
        more.push(("build.log", "y"));
        assert_eq!(digest_of(&more), digest_of(&all));
        // An absent file is absent, not empty.
        assert_ne!(
            digest_of(&[("vmlinuz", "k"), ("rootfs.ext4", "r")]),
            digest_of(&[("vmlinuz", "k"), ("rootfs.ext4", "r"), ("initrd.img", "")])
        );
        // The lengths keep one file's tail from passing for the next file.
        assert_ne!(
            digest_of(&[("vmlinuz", "xinitrd.img"), ("rootfs.ext4", "r")]),
            digest_of(&[("vmlinuz", "x"), ("initrd.img", ""), ("rootfs.ext4", "r")])
        );
        // Content counts beyond the first read (1 MiB).
        let big = "a".repeat((1 << 20) + 1);
        let mut other = big.clone();
        other.replace_range(big.len() - 1.., "b");
        assert_ne!(
            digest_of(&[("rootfs.ext4", &big)]),
            digest_of(&[("rootfs.ext4", &other)])
        );
        let e = digest_dir(Path::new("/nonexistent"));
        assert_eq!(
            e.unwrap(),
            digest_of(&[]),
            "nothing to read is the empty digest"
        );
    }

    /// A service whose helper builds as bangerd-root does: the files appear in the
    /// build directory the daemon named, which the answer gives back.
    fn building(files: &'static [(&'static str, &'static str)]) -> T {
        let images: Arc<OnceLock<PathBuf>> = Arc::default();
        let at = images.clone();
        let t = fake::service(move |r| match r {
            Request::BuildImage(b) => {
                let dir = at.get().unwrap().join(format!(".build-{}", b.build_id));
                write_files(&dir, files);
                std::fs::write(dir.join("progress"), "done\n").unwrap();
                Ok(b.answer(ImageBuilt { dir }))
            }
            r => fake::done(r),
        });
        images.set(t.svc.dirs.images()).unwrap();
        std::fs::create_dir_all(t.svc.dirs.images()).unwrap();
        t
    }

    fn build_req(name: &str, release: &str, packages: &[&str]) -> ImageBuildRequest {
        ImageBuildRequest {
            name: name.into(),
            release: release.into(),
            packages: packages.iter().map(|p| p.to_string()).collect(),
        }
    }

    const BUILT: &[(&str, &str)] = &[("vmlinuz", "k"), ("rootfs.ext4", "root")];

    #[tokio::test]
    async fn a_build_asks_the_helper_for_exactly_the_request_and_publishes_its_result() {
        let t = building(BUILT);
        let img = t
            .svc
            .build_image(build_req("deb", "trixie", &["curl", "git"]))
            .await
            .unwrap();
        let seen = t.seen.lock().unwrap().clone();
        let [Request::BuildImage(b)] = &seen[..] else {
            panic!("{seen:?}")
        };
        assert_eq!(b.release.as_str(), "trixie");
        let pkgs: Vec<_> = b.packages.iter().map(|p| p.as_str()).collect();
        assert_eq!(pkgs, ["curl", "git"]);
        assert_eq!(b.build_id.as_str().len(), 12);

        assert_eq!(img.name, "deb");
        assert_eq!(img.source, "debootstrap trixie +curl,git");
        assert_eq!(img.digest, digest_of(BUILT));
        let dir = t.svc.dirs.images().join(&img.digest);
        assert_eq!(img.kernel, dir.join("vmlinuz"));
        assert_eq!((img.initrd, img.vmlinux), (None, None));
        assert_eq!((img.rootfs, img.rootfs_bytes), (dir.join("rootfs.ext4"), 4));
        assert!(img.used_by.is_empty());
        for f in ["vmlinuz", "rootfs.ext4"] {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o444, "{f} is read-only");
        }
        assert!(
            !dir.join("progress").exists(),
            "the build's progress is not kept"
        );
        let build_dir = t.svc.dirs.image_build(&b.build_id);
        assert!(!build_dir.exists(), "the build directory became the image");
        assert_eq!(t.svc.build_progress("deb"), None, "the build is over");
        assert_eq!(t.svc.image("deb").unwrap().digest, img.digest);

        // Without packages the source says only the release.
        let t = building(BUILT);
        let img = t
            .svc
            .build_image(build_req("plain", "bookworm", &[]))
            .await
            .unwrap();
        assert_eq!(img.source, "debootstrap bookworm");
    }

    #[tokio::test]
    async fn a_build_is_refused_before_the_helper_runs_for_bad_or_taken_names() {
        let t = building(BUILT);
        t.svc
            .store
            .insert_image("taken", &"ab".repeat(32), "import")
            .unwrap();
        t.svc
            .builds
            .lock()
            .unwrap()
            .insert("running".into(), PathBuf::from("/nonexistent"));
        for (req, want) in [
            (
                build_req("Bad", "bookworm", &[]),
                "invalid image name \"Bad\"",
            ),
            (build_req("../x", "bookworm", &[]), "invalid image name"),
            (build_req("ok", "sid", &[]), "unknown release \"sid\""),
            (
                build_req("ok", "bookworm", &["a b"]),
                "invalid package name \"a b\"",
            ),
            (
                build_req("ok", "bookworm", &["-o"]),
                "invalid package name \"-o\"",
            ),
            (
                build_req("taken", "bookworm", &[]),
                "an image named taken already exists",
            ),
            (
                build_req("running", "bookworm", &[]),
                "an image named running is being built",
            ),
        ] {
            let e = t.svc.build_image(req.clone()).await.unwrap_err();
            assert!(e.to_string().contains(want), "{req:?}: {e}");
            let kind = match req.name.as_str() {
                "taken" | "running" => ErrorKind::Conflict,
                _ => ErrorKind::BadRequest,
            };
            assert_eq!(e.kind(), kind, "{e}");
        }
        assert_eq!(t.ops(), Vec::<String>::new(), "the helper was never asked");
        // The refused build did not end the one running.
        assert!(t.svc.builds.lock().unwrap().contains_key("running"));
    }

    #[tokio::test]
    async fn a_failed_build_says_why_and_leaves_no_image_and_no_build() {
        for (answer, want) in [
            (
                ClientError::Refused(Failure {
                    kind: FailureKind::Failed,
                    message: "debootstrap exited with 1".into(),
                }),
                // The helper's own words, not wrapped in "the root helper refused".
                "image build failed: debootstrap exited with 1",
            ),
            (
                ClientError::Io(std::io::Error::other("reset")),
                "image build failed: the root helper failed: lost the connection to the root helper: reset",
            ),
        ] {
            let answer = Arc::new(std::sync::Mutex::new(Some(answer)));
            let t = fake::service(move |r| match r {
                Request::BuildImage(_) => Err(answer.lock().unwrap().take().unwrap()),
                r => fake::done(r),
            });
            let e = t
                .svc
                .build_image(build_req("deb", "bookworm", &[]))
                .await
                .unwrap_err();
            assert!(matches!(e, ServiceError::BuildFailed(_)), "{e:?}");
            assert_eq!(e.to_string(), want);
            assert!(t.svc.images().unwrap().is_empty());
            assert_eq!(t.svc.build_progress("deb"), None);
            assert!(t.svc.builds.lock().unwrap().is_empty());
        }
    }

    #[test]
    fn build_progress_is_the_last_line_of_a_running_build() {
        let t = fake::service(fake::done);
        assert_eq!(t.svc.build_progress("deb"), None);
        let dir = t._dir.path().join("build");
        t.svc
            .builds
            .lock()
            .unwrap()
            .insert("deb".into(), dir.clone());
        assert_eq!(t.svc.build_progress("deb").as_deref(), Some("starting"));
        write_files(&dir, &[("progress", "")]);
        assert_eq!(t.svc.build_progress("deb").as_deref(), Some("starting"));
        write_files(&dir, &[("progress", "debootstrap\nkernel\n")]);
        assert_eq!(t.svc.build_progress("deb").as_deref(), Some("kernel"));
        assert_eq!(t.svc.build_progress("other"), None);
    }

    /// An ext4 superblock's magic is all `is_ext4_file` reads.
    fn ext4_like(path: &Path) {
        let mut b = vec![0u8; 2048];
        b[1080..1082].copy_from_slice(&[0x53, 0xef]);
        std::fs::write(path, b).unwrap();
    }

    fn import_req(
        name: &str,
        kernel: &Path,
        initrd: Option<&Path>,
        rootfs: &Path,
    ) -> ImageImportRequest {
        ImageImportRequest {
            name: name.into(),
            kernel: kernel.into(),
            initrd: initrd.map(Into::into),
            rootfs: rootfs.into(),
        }
    }

    fn me() -> Identity {
        Identity {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    #[tokio::test]
    async fn an_import_copies_the_files_keeps_an_elf_kernel_and_shares_equal_content() {
        let t = fake::service(fake::done);
        std::fs::create_dir_all(t.svc.dirs.images()).unwrap();
        let src = tempfile::tempdir().unwrap();
        let (k, i, r) = (
            src.path().join("k"),
            src.path().join("i"),
            src.path().join("r"),
        );
        std::fs::write(&k, b"\x7fELF kernel").unwrap();
        std::fs::write(&i, b"initrd").unwrap();
        ext4_like(&r);
        let img = t
            .svc
            .import_image(import_req("one", &k, Some(&i), &r), me())
            .await
            .unwrap();
        assert_eq!(img.source, "import");
        let dir = t.svc.dirs.images().join(&img.digest);
        assert_eq!(
            std::fs::read(dir.join("vmlinuz")).unwrap(),
            b"\x7fELF kernel"
        );
        assert_eq!(
            img.vmlinux,
            Some(dir.join("vmlinux")),
            "an ELF kernel is its own vmlinux"
        );
        assert_eq!(
            std::fs::read(dir.join("vmlinux")).unwrap(),
            b"\x7fELF kernel"
        );
        assert_eq!(img.initrd, Some(dir.join("initrd.img")));
        assert_eq!(std::fs::read(dir.join("initrd.img")).unwrap(), b"initrd");
        assert_eq!(img.rootfs_bytes, 2048);
        assert_eq!(img.digest, digest_dir(&dir).unwrap());
        assert_eq!(t.ops(), Vec::<String>::new(), "an import needs no root");

        // The same files under another name: one directory, two names.
        let two = t
            .svc
            .import_image(import_req("two", &k, Some(&i), &r), me())
            .await
            .unwrap();
        assert_eq!(two.digest, img.digest);
        let dirs: Vec<_> = std::fs::read_dir(t.svc.dirs.images()).unwrap().collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        t.svc.remove_image("one").await.unwrap();
        assert!(dir.exists(), "the other name still uses it");
        t.svc.remove_image("two").await.unwrap();
        assert!(!dir.exists());
        assert!(t.svc.images().unwrap().is_empty());

        // A kernel that is neither ELF nor a bzImage: imported, without a vmlinux.
        std::fs::write(&k, b"not a kernel").unwrap();
        let img = t
            .svc
            .import_image(import_req("raw", &k, None, &r), me())
            .await
            .unwrap();
        assert_eq!((img.vmlinux, img.initrd), (None, None));
    }

    #[tokio::test]
    async fn an_import_is_refused_for_bad_names_relative_paths_missing_files_and_non_ext4() {
        let t = fake::service(fake::done);
        std::fs::create_dir_all(t.svc.dirs.images()).unwrap();
        t.svc
            .store
            .insert_image("taken", &"ab".repeat(32), "import")
            .unwrap();
        let src = tempfile::tempdir().unwrap();
        let (k, r, plain) = (
            src.path().join("k"),
            src.path().join("r"),
            src.path().join("p"),
        );
        std::fs::write(&k, b"kernel").unwrap();
        ext4_like(&r);
        std::fs::write(&plain, vec![0u8; 4096]).unwrap();
        let missing = src.path().join("missing");
        let rel = Path::new("rootfs.ext4");
        let show = |p: &Path| p.display().to_string();
        for (req, want) in [
            (
                import_req("Bad", &k, None, &r),
                "invalid image name \"Bad\"".to_string(),
            ),
            (
                import_req("taken", &k, None, &r),
                "an image named taken already exists".into(),
            ),
            (
                import_req("x", rel, None, &r),
                "cannot import rootfs.ext4: the path must be absolute".into(),
            ),
            (
                import_req("x", &k, Some(rel), &r),
                "cannot import rootfs.ext4: the path must be absolute".into(),
            ),
            (
                import_req("x", &k, None, rel),
                "cannot import rootfs.ext4: the path must be absolute".into(),
            ),
            (
                import_req("x", &missing, None, &r),
                format!("cannot import {}: No such file", show(&missing)),
            ),
            (
                import_req("x", &k, Some(&missing), &r),
                format!("cannot import {}: No such file", show(&missing)),
            ),
            (
                import_req("x", &k, None, &plain),
                format!(
                    "cannot import {}: it is not an ext4 filesystem",
                    show(&plain)
                ),
            ),
            (
                import_req("x", &k, None, src.path()),
                format!("cannot import {}: not a regular file", show(src.path())),
            ),
        ] {
            let e = t.svc.import_image(req.clone(), me()).await.unwrap_err();
            assert!(e.to_string().contains(&want), "{req:?}: {e}");
            let conflict = req.name == "taken";
            assert_eq!(
                e.kind(),
                if conflict {
                    ErrorKind::Conflict
                } else {
                    ErrorKind::BadRequest
                },
                "{e}"
            );
        }
        // Nothing is left behind: no half-made import directory, no new name.
        let left: Vec<_> = std::fs::read_dir(t.svc.dirs.images()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(t.svc.images().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_image_a_vm_uses_is_not_removed_and_an_unknown_one_is_not_found() {
        let t = fake::service(fake::done);
        let digest = "cd".repeat(32);
        let dir = t.svc.dirs.images().join(&digest);
        write_files(&dir, &[("vmlinuz", "k"), ("rootfs.ext4", "r")]);
        t.svc.store.insert_image("deb", &digest, "import").unwrap();
        for (id, name) in [("00000000000a", "web"), ("00000000000b", "db")] {
            let spec =
                serde_json::from_value(serde_json::json!({"name": name, "image": "deb"})).unwrap();
            t.svc.store.insert(id, &spec, (0, 0)).unwrap();
        }
        t.svc
            .store
            .insert("00000000000c", &fake::spec("own-kernel"), (0, 0))
            .unwrap();
        let mut users = t.svc.image("deb").unwrap().used_by;
        users.sort();
        assert_eq!(users, ["db", "web"]);
        match t.svc.remove_image("deb").await {
            Err(ServiceError::ImageInUse { name, users }) => {
                assert_eq!(name, "deb");
                let mut u: Vec<_> = users.split(", ").collect();
                u.sort();
                assert_eq!(u, ["db", "web"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(dir.join("rootfs.ext4").exists());
        assert!(t.svc.image("deb").is_ok());
        for name in ["ghost", "deb2"] {
            assert!(matches!(t.svc.image(name), Err(ServiceError::ImageNotFound(n)) if n == name));
            assert!(matches!(
                t.svc.remove_image(name).await,
                Err(ServiceError::ImageNotFound(_))
            ));
        }
        // Once its VMs are gone it goes, files and all.
        for vm in ["web", "db"] {
            t.svc.remove(vm, false).await.unwrap();
        }
        t.svc.remove_image("deb").await.unwrap();
        assert!(!dir.exists());
        assert_eq!(t.svc.images().unwrap().len(), 0);
    }
}
