//! `banger update` against real signed releases: keys made and releases signed with
//! `openssl` by `scripts/release`, served by `python3 -m http.server` on the loopback
//! of the environment's network namespace,
//! binaries installed into a private directory the update swaps. Plain processes
//! (no systemd): the restarts go through `banger daemon stop/start`.
//!
//! Bad input tried: tampered artefact, SHA256SUMS and manifest; another key; a
//! truncated and a non-base64 signature; an expired manifest; a replayed older
//! release; an artefact larger than announced; a server that stops mid-download; no
//! space to stage; no root; an unknown version. Each: refused, binaries unchanged.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use banger_tests::*;
use sha2_free::digest_file;

use banger_api::BINARIES as BINS;

mod sha2_free {
    /// sha256sum of a file (the system tool, as a user would check).
    pub fn digest_file(p: &std::path::Path) -> String {
        let out = std::process::Command::new("sha256sum")
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// An installation in its own directory, so the update has something to swap.
fn installed_env() -> (Env, tempfile::TempDir) {
    let bins = tempfile::tempdir().unwrap();
    for b in BINS {
        std::fs::copy(bin(b), bins.path().join(b)).unwrap();
    }
    let mut env = Env::new();
    env.bin_dir = Some(bins.path().to_path_buf());
    env.start();
    (env, bins)
}

fn hashes(dir: &Path) -> Vec<String> {
    BINS.iter().map(|b| digest_file(&dir.join(b))).collect()
}

fn update(env: &Env, r: &Releases, url: &str, extra: &[&str]) -> std::process::Output {
    let pubkey = r.dir.path().join("pub.pem");
    let mut args = vec![
        "update",
        "--manifest-url",
        url,
        "--pubkey-file",
        pubkey.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    env.banger(&args)
}

fn assert_unchanged(env: &Env, bins: &Path, before: &[String], what: &str) {
    assert_eq!(hashes(bins), before, "{what}: binaries changed");
    let leftovers: Vec<_> = std::fs::read_dir(bins)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{what}: left {leftovers:?}");
    env.ok(&["daemon", "status"]);
}

#[test]
fn check_dry_run_no_root_and_unknown_versions_change_nothing() {
    let (env, bins) = installed_env();
    let r = Releases::new(&env.netns);
    let before = hashes(bins.path());
    let latest = r.url("latest");

    let out = update(&env, &r, &latest, &["--check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("banger 9.1.0 is available"),
        "{:?}",
        out
    );

    let out = update(&env, &r, &latest, &["--to", "9.9.9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("v9.9.9/manifest.json")
            && stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_unchanged(&env, bins.path(), &before, "unknown version");

    let pubkey = r.dir.path().join("pub.pem");
    let out = env
        .cmd_as(
            Some(65534),
            &[
                "update",
                "--manifest-url",
                &latest,
                "--pubkey-file",
                pubkey.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));
    assert_unchanged(&env, bins.path(), &before, "no root");

    let out = update(&env, &r, &latest, &["--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing was changed"));
    assert_unchanged(&env, bins.path(), &before, "dry run");
    assert_eq!(env.json(&["version"])["version"], banger_api::VERSION);
}

#[test]
fn tampered_foreign_expired_oversized_and_truncated_releases_are_refused() {
    let (env, bins) = installed_env();
    let r = Releases::new(&env.netns);
    let before = hashes(bins.path());
    let cases: Vec<(&str, String, &str)> = vec![
        // One byte flipped in place: the same size, so only the hash check can catch it.
        (
            "tampered artefact",
            r.variant("t-art", |d| {
                let mut b = std::fs::read(d.join("bangerd")).unwrap();
                let mid = b.len() / 2;
                b[mid] ^= 0xff;
                std::fs::write(d.join("bangerd"), b).unwrap();
            }),
            "bangerd does not match its SHA-256",
        ),
        (
            "tampered SHA256SUMS",
            r.variant("t-sums", |d| {
                let s = std::fs::read_to_string(d.join("SHA256SUMS"))
                    .unwrap()
                    .replacen('a', "b", 1);
                std::fs::write(d.join("SHA256SUMS"), s).unwrap();
            }),
            "signature",
        ),
        (
            "tampered manifest",
            r.variant("t-man", |d| {
                let s = std::fs::read_to_string(d.join("manifest.json"))
                    .unwrap()
                    .replace("9.1.0", "9.2.0");
                std::fs::write(d.join("manifest.json"), s).unwrap();
            }),
            "manifest.json does not match",
        ),
        (
            "another key",
            r.variant("t-key", |d| r.resign(d, "other.pem")),
            "not valid for any trusted key",
        ),
        (
            "truncated signature",
            r.variant("t-trunc", |d| {
                let s = std::fs::read(d.join("SHA256SUMS.sig")).unwrap();
                std::fs::write(d.join("SHA256SUMS.sig"), &s[..s.len() / 2]).unwrap();
            }),
            "signature",
        ),
        (
            "non-base64 signature",
            r.variant("t-b64", |d| {
                std::fs::write(d.join("SHA256SUMS.sig"), "!!not base64!!").unwrap()
            }),
            "not base64",
        ),
        (
            "larger than announced",
            r.variant("t-big", |d| {
                // Announce a smaller size than the file has (re-signed, so only the size lies).
                let m = std::fs::read_to_string(d.join("manifest.json")).unwrap();
                let size = std::fs::metadata(d.join("bangerd-root")).unwrap().len();
                let m = m.replace(
                    &format!("\"url\":\"bangerd-root\",\"size\":{size}"),
                    &format!("\"url\":\"bangerd-root\",\"size\":{}", size - 10),
                );
                std::fs::write(d.join("manifest.json"), m).unwrap();
                let st = Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "sha256sum manifest.json {} > SHA256SUMS",
                        BINS.join(" ")
                    ))
                    .current_dir(d)
                    .status()
                    .unwrap();
                assert!(st.success());
                r.resign(d, "key.pem");
            }),
            "larger than",
        ),
    ];
    for (what, url, want) in cases {
        let out = update(&env, &r, &url, &[]);
        assert!(!out.status.success(), "{what} was accepted");
        let err = stderr(&out);
        assert!(
            err.contains(want) && err.contains("nothing was changed"),
            "{what}: {err}"
        );
        assert_unchanged(&env, bins.path(), &before, what);
    }
    // An expired manifest, properly signed.
    let key = r.dir.path().join("key.pem");
    release(
        r.dir.path(),
        "expired",
        "9.1.0",
        key.to_str().unwrap(),
        &["--expires", "2020-01-01T00:00:00Z"],
    );
    let out = update(&env, &r, &r.url("expired"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the manifest expired at 2020-01-01"),
        "{}",
        stderr(&out)
    );
    assert_unchanged(&env, bins.path(), &before, "expired");

    // The signed manifest binds version and channel to what was asked for.
    let v5 = r.dir.path().join("v5.0.0");
    let st = Command::new("cp")
        .arg("-r")
        .arg(r.dir.path().join("v9.0.0"))
        .arg(&v5)
        .status()
        .unwrap();
    assert!(st.success());
    let out = update(&env, &r, &r.url("latest"), &["--to", "5.0.0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is 9.0.0, not the 5.0.0 asked for; nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_unchanged(&env, bins.path(), &before, "another version than asked");
    release(
        r.dir.path(),
        "beta",
        "9.1.0",
        key.to_str().unwrap(),
        &["--channel", "beta"],
    );
    let out = update(&env, &r, &r.url("beta"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(r#"is signed for channel "beta", not "stable""#),
        "{}",
        stderr(&out)
    );
    assert_unchanged(&env, bins.path(), &before, "another channel");
}

#[test]
fn a_server_that_stops_mid_download_and_no_space_to_stage_are_refused() {
    let (env, bins) = installed_env();
    let r = Releases::new(&env.netns);
    let before = hashes(bins.path());
    // A server that serves the signed metadata, then cuts an artefact short (on the
    // loopback of the environment's namespace, where `banger update` runs).
    let rel = r.dir.path().join("latest");
    let listener = env
        .netns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let rel2 = rel.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let mut s = s;
            let mut req = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut req)
                .unwrap();
            let path = req
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .rsplit('/')
                .next()
                .unwrap()
                .to_string();
            let body = std::fs::read(rel2.join(&path)).unwrap_or_default();
            let cut = if BINS.contains(&path.as_str()) {
                body.len() / 3
            } else {
                body.len()
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body[..cut]);
        }
    });
    let out = update(
        &env,
        &r,
        &format!("http://127.0.0.1:{port}/latest/manifest.json"),
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_unchanged(&env, bins.path(), &before, "cut download");

    // No space to stage: the install directory on a tmpfs just big enough for itself.
    let small = tempfile::tempdir().unwrap();
    let total: u64 = BINS
        .iter()
        .map(|b| std::fs::metadata(bins.path().join(b)).unwrap().len())
        .sum();
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={}", total + (4 << 20)),
            "tmpfs",
        ])
        .arg(small.path())
        .status()
        .unwrap();
    assert!(st.success());
    for b in BINS {
        std::fs::copy(bins.path().join(b), small.path().join(b)).unwrap();
    }
    let small_before = hashes(small.path());
    let pubkey = r.dir.path().join("pub.pem");
    let out = env
        .netns
        .cmd(small.path().join("banger"))
        .args([
            "update",
            "--manifest-url",
            &r.url("latest"),
            "--pubkey-file",
            pubkey.to_str().unwrap(),
        ])
        .env("BANGER_STATE_DIR", env.state())
        .output()
        .unwrap();
    let err = stderr(&out);
    let unchanged = hashes(small.path()) == small_before;
    let _ = Command::new("umount").arg(small.path()).status();
    assert!(!out.status.success());
    assert!(
        err.contains("cannot stage") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(unchanged, "binaries changed after a failed stage");
}

#[test]
fn an_update_swaps_and_restarts_with_the_vm_alive_and_a_failing_daemon_rolls_back() {
    let (env, bins) = installed_env();
    let r = Releases::new(&env.netns);
    let g = guest();
    let disk = env.state().join("u.ext4");
    std::fs::copy(&g.rootfs, &disk).unwrap();
    let vm = env.json(&[
        "vm",
        "create",
        "up",
        "--kernel",
        g.kernel.to_str().unwrap(),
        "--initrd",
        g.initrd.to_str().unwrap(),
        "--rootfs",
        disk.to_str().unwrap(),
        "--memory",
        "256",
        "--start",
    ]);
    let pid = vm["pid"].as_i64().unwrap();
    env.wait_console("up", "BANGER_READY");
    let before = hashes(bins.path());

    // A release whose bangerd passes --check-migrations but exits 1 as a daemon.
    let real = r.dir.path().join("real-bangerd");
    std::fs::copy(bin("bangerd"), &real).unwrap();
    let bad = r.failing_daemon_release(real.to_str().unwrap());
    let out = update(&env, &r, &bad, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("rolled back") && err.contains("restarted it"),
        "{err}"
    );
    assert_eq!(
        hashes(bins.path()),
        before,
        "the previous binaries are back"
    );
    assert_eq!(env.json(&["version"])["version"], banger_api::VERSION);
    env.ok(&["daemon", "status"]);
    let v = env.json(&["vm", "show", "up"]);
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_i64()),
        (Some("running"), Some(pid))
    );

    // The good release: swapped, restarted, same VM.
    let out = update(&env, &r, &r.url("latest"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let release_hashes: Vec<String> = BINS
        .iter()
        .map(|b| digest_file(&r.dir.path().join("latest").join(b)))
        .collect();
    assert_eq!(
        hashes(bins.path()),
        release_hashes,
        "the release's binaries are installed"
    );
    assert_ne!(hashes(bins.path()), before);
    assert_eq!(env.json(&["version"])["version"], "9.1.0");
    assert_eq!(
        env.json(&["daemon", "status"])["version"],
        "9.1.0",
        "the restarted daemon is the new one"
    );
    assert!(bins.path().join("bangerd.previous").exists());
    let v = env.json(&["vm", "show", "up"]);
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_i64()),
        (Some("running"), Some(pid))
    );
    assert_eq!(env.boot_ids("up").len(), 1, "the guest did not reboot");

    // Killed mid-swap: a journal and a half-written stage are left. The next update
    // undoes the unconfirmed swap, cleans up, and continues.
    std::fs::write(
        bins.path().join(".banger-update.json"),
        r#"{"from":"0.1.0","to":"9.1.0"}"#,
    )
    .unwrap();
    std::fs::create_dir(bins.path().join(".banger-stage-9.1.0")).unwrap();
    std::fs::write(bins.path().join(".banger-stage-9.1.0/bangerd"), b"half").unwrap();
    let out = update(&env, &r, &r.url("latest"), &["--to", "9.1.0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert_eq!(hashes(bins.path()), release_hashes);
    assert!(
        !bins.path().join(".banger-update.json").exists()
            && !bins.path().join(".banger-stage-9.1.0").exists()
    );
    let v = env.json(&["vm", "show", "up"]);
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_i64()),
        (Some("running"), Some(pid))
    );

    // Killed for real in the middle of the swap (after `banger` and while on
    // `bangerd`): a dry run changes nothing, and the next update restores exactly
    // the journalled binaries before it goes on (here to a release that rolls back).
    let now = hashes(bins.path());
    let pubkey = r.dir.path().join("pub.pem");
    let out = env
        .cmd(&[
            "update",
            "--manifest-url",
            &bad,
            "--pubkey-file",
            pubkey.to_str().unwrap(),
        ])
        .env("BANGER_FAULT", "update:swap:bangerd")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the update died at the fault: {}",
        stderr(&out)
    );
    let journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bins.path().join(".banger-update.json")).unwrap())
            .unwrap();
    assert_eq!(
        journal["swapped"],
        serde_json::json!(["banger", "bangerd"]),
        "{journal}"
    );
    let crashed = hashes(bins.path());
    assert_ne!(crashed[0], now[0], "banger was swapped before the crash");
    assert_eq!(crashed[1..], now[1..], "nothing after banger was swapped");
    let out = update(&env, &r, &r.url("latest"), &["--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        hashes(bins.path()),
        crashed,
        "a dry run changed the install"
    );
    assert!(
        bins.path().join(".banger-update.json").exists(),
        "a dry run recovered"
    );
    let out = update(&env, &r, &bad, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("interrupted") && stderr(&out).contains("rolled back"),
        "{}",
        stderr(&out)
    );
    // Had the recovery missed `banger`, or restored the stale `.previous` of the
    // binaries it never swapped, the second rollback would bring those back here.
    assert_eq!(
        hashes(bins.path()),
        now,
        "exactly the journalled binaries were restored"
    );
    let v = env.json(&["vm", "show", "up"]);
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_i64()),
        (Some("running"), Some(pid))
    );

    // An older signed release is now a replay.
    let out = update(&env, &r, &r.url("v9.0.0"), &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("replayed"), "{}", stderr(&out));
    env.ok(&["vm", "kill", "up"]);
}
