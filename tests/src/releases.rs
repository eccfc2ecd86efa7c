//! Signed releases served to `banger update`.

use std::io::BufRead;

use std::path::{Path, PathBuf};

use std::process::Command;

use crate::*;

/// Signed releases made with `scripts/release` and openssl keys, served by
/// `python3 -m http.server` on the loopback of a test's network namespace (where the
/// `banger update` under test runs): `latest` and `v9.1.0` (9.1.0), `v9.0.0`.
pub struct Releases {
    pub dir: tempfile::TempDir,
    server: std::process::Child,
    pub port: u16,
}

impl Drop for Releases {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl {args:?}");
}

/// The same tree built with BANGER_VERSION=9.1.0 (scripts/test makes it).
pub fn next_bin_dir() -> PathBuf {
    let d = bin_dir().parent().expect("target dir").join("next-bin");
    assert!(
        d.join("bangerd").exists(),
        "{} is missing: scripts/test builds it (BANGER_VERSION=9.1.0)",
        d.display()
    );
    d
}

/// `scripts/release` of the built binaries as `root/name`; version 9.1.0 uses the
/// 9.1.0 build, so the installed binaries really change and report it.
pub fn release(root: &Path, name: &str, version: &str, key: &str, extra: &[&str]) -> PathBuf {
    let out = root.join(name);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/release");
    let st = Command::new(script)
        .args(["--version", version, "--key", key, "--out"])
        .arg(&out)
        .arg("--bin-dir")
        .arg(if version == "9.1.0" {
            next_bin_dir()
        } else {
            bin_dir()
        })
        .args(extra)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    out
}

impl Releases {
    /// Releases served in `netns` (e.g. `&env.netns`), reachable at [`Releases::url`]
    /// from what runs there.
    pub fn new(netns: &Netns) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "key.pem",
            ],
        );
        openssl(d, &["ec", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "other.pem",
            ],
        );
        let key = d.join("key.pem");
        let k = key.to_str().unwrap();
        release(d, "latest", "9.1.0", k, &[]);
        release(d, "v9.1.0", "9.1.0", k, &[]);
        release(d, "v9.0.0", "9.0.0", k, &[]);
        let mut server = netns
            .cmd("python3")
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
            .current_dir(d)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        Releases { dir, server, port }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}/manifest.json", self.port)
    }

    /// A copy of the good release with `tamper` applied, served as `name`.
    pub fn variant(&self, name: &str, tamper: impl FnOnce(&Path)) -> String {
        let dst = self.dir.path().join(name);
        let st = Command::new("cp")
            .arg("-r")
            .arg(self.dir.path().join("latest"))
            .arg(&dst)
            .status()
            .unwrap();
        assert!(st.success());
        tamper(&dst);
        self.url(name)
    }

    /// Release `bad` (9.5.0): this tree's binaries, except a `bangerd` that passes
    /// `--check-migrations` (by running `real_bangerd`) and exits 1 as a daemon.
    pub fn failing_daemon_release(&self, real_bangerd: &str) -> String {
        let bad_bins = self.dir.path().join("bad-bins");
        std::fs::create_dir_all(&bad_bins).unwrap();
        for b in banger_api::BINARIES {
            std::fs::copy(bin(b), bad_bins.join(b)).unwrap();
        }
        std::fs::write(bad_bins.join("bangerd"), format!(
            "#!/bin/sh\nfor a; do [ \"$a\" = --check-migrations ] && exec {real_bangerd} \"$@\"; done\necho 'bangerd: simulated startup failure' >&2\nexit 1\n"
        )).unwrap();
        std::fs::set_permissions(
            bad_bins.join("bangerd"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let key = self.dir.path().join("key.pem");
        let st = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/release"))
            .args([
                "--version",
                "9.5.0",
                "--key",
                key.to_str().unwrap(),
                "--out",
            ])
            .arg(self.dir.path().join("bad"))
            .arg("--bin-dir")
            .arg(&bad_bins)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        self.url("bad")
    }

    pub fn resign(&self, rel: &Path, key: &str) {
        openssl(
            rel,
            &[
                "dgst",
                "-sha256",
                "-sign",
                &self.dir.path().join(key).display().to_string(),
                "-out",
                "s.der",
                "SHA256SUMS",
            ],
        );
        openssl(
            rel,
            &["base64", "-A", "-in", "s.der", "-out", "SHA256SUMS.sig"],
        );
    }
}
