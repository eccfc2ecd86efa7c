//! The workspace's binaries and the guests the tests boot, all from one asset cache
//! ([`cache_dir`]): the test guest, the real Firecracker with its tiny guest, the
//! nspawn root of the systemd tests, and the shared Debian image.

use std::path::{Path, PathBuf};

use std::process::Command;

use crate::*;

/// Where the workspace's binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BANGER_BIN_DIR") {
        return d.into();
    }
    // target/<profile>/deps/<test-binary>, or target/<profile>/<bench-binary>
    let exe = std::env::current_exe().expect("current exe");
    let parent = exe.parent().expect("exe dir");
    let dir = if parent.join("banger").exists() {
        parent.to_path_buf()
    } else {
        parent.parent().expect("target dir").to_path_buf()
    };
    for b in banger_api::BINARIES {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the workspace first (scripts/test does: cargo build --workspace --bins)",
            dir.join(b).display()
        );
    }
    dir
}

/// The asset cache the scripts fill (`BANGER_CACHE`, else `<repo>/.cache`): the test
/// guest, Firecracker, the nspawn root, the shared Debian image.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("BANGER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache"))
}

/// The Debian root with systemd that [`Container`]s boot (`scripts/nspawn-root`).
pub fn nspawn_root() -> PathBuf {
    let root = cache_dir().join("nspawn/root");
    assert!(
        root.join(".banger-stamp").exists(),
        "{} missing: run scripts/nspawn-root (scripts/test does)",
        root.display()
    );
    root
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The test guest: kernel, initrd and a small ext4 disk.
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
}

pub fn guest() -> Guest {
    let root = cache_dir().join("guest");
    let g = Guest {
        kernel: root.join("vmlinuz"),
        initrd: root.join("initrd.img"),
        rootfs: root.join("rootfs.ext4"),
    };
    for p in [&g.kernel, &g.initrd, &g.rootfs] {
        assert!(
            p.exists(),
            "{} is missing: run scripts/guest-assets (scripts/test does)",
            p.display()
        );
    }
    g
}

/// The real Firecracker and jailer and the tiny guest (`scripts/firecracker-assets`).
pub struct Firecracker {
    pub firecracker: PathBuf,
    pub jailer: PathBuf,
    /// An ELF guest that prints `BANGER_TICK <n>` about five times a second.
    pub tiny_guest: PathBuf,
    /// The same guest, deaf to Ctrl-Alt-Del (it never stops gracefully).
    pub stubborn_guest: PathBuf,
}

pub fn firecracker() -> Firecracker {
    let root = cache_dir().join("firecracker");
    let f = Firecracker {
        firecracker: root.join("bin/firecracker"),
        jailer: root.join("bin/jailer"),
        tiny_guest: root.join("tiny-guest"),
        stubborn_guest: root.join("tiny-guest-stubborn"),
    };
    for p in [&f.firecracker, &f.jailer, &f.tiny_guest, &f.stubborn_guest] {
        assert!(
            p.exists(),
            "{} is missing: run scripts/firecracker-assets (scripts/test does)",
            p.display()
        );
    }
    f
}

/// The system user VMMs of root daemons run as (scripts/install-deps creates it).
pub fn vmm_user() -> (u32, u32) {
    let u = nix::unistd::User::from_name("banger-vmm")
        .ok()
        .flatten()
        .expect(
            "the system user banger-vmm is missing: run scripts/install-deps (scripts/test does)",
        );
    (u.uid.as_raw(), u.gid.as_raw())
}

/// The Debian image the guest tests share, built once per machine with
/// `banger image build` (through a throwaway environment) and cached in
/// `.cache/test-image/` keyed by the image builder's source, so an image built by an
/// older builder is never reused. Returns (vmlinuz, initrd.img, rootfs.ext4).
pub fn debian_image() -> (PathBuf, PathBuf, PathBuf) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = cache_dir().join("test-image");
    let stamp = format!("{:x}", {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        include_str!("../../crates/bangerd-root/src/image.rs").hash(&mut h);
        h.finish()
    });
    let files = (
        root.join("vmlinuz"),
        root.join("initrd.img"),
        root.join("rootfs.ext4"),
    );
    if std::fs::read_to_string(root.join("stamp")).is_ok_and(|s| s == stamp) {
        return files;
    }
    let _ = std::fs::remove_dir_all(&root);
    let mut env = Env::with_mirror();
    env.start();
    let img = env.json(&["image", "build", "debian", "--quiet"]);
    assert_eq!(img["name"], "debian-bookworm");
    let tmp = root.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    for (key, name) in [
        ("kernel", "vmlinuz"),
        ("initrd", "initrd.img"),
        ("rootfs", "rootfs.ext4"),
    ] {
        let src = PathBuf::from(img[key].as_str().unwrap());
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(&src)
            .arg(tmp.join(name))
            .status()
            .unwrap();
        assert!(st.success());
    }
    std::fs::write(tmp.join("stamp"), &stamp).unwrap();
    std::fs::rename(&tmp, &root).unwrap();
    files
}
