//! A `banger` group member against daemons that run as root (the quick start's
//! setup). The member may use the API socket, and everything it sends is hostile:
//! - files it names (kernel, initrd, disk, import sources) are opened with its own
//!   rights, at create and again at every start, never with root's: a root-only file is
//!   refused, a path swapped for a symlink after create is refused at start, a FIFO
//!   does not hang the daemon or the helper, and an import publishes nothing it could
//!   not read;
//! - it cannot hold the daemon: half-sent headers and bodies are timed out, and more
//!   connections than its share are closed at once, while root's requests are served.
//!
//! And the daemon's own user (system mode) against the helper: links it plants where
//! the helper starts reach nothing of root's.
//!
//! "Member" here is uid/gid 65534 with the socket's group set to 65534, which is what
//! `secure_socket` does for group `banger`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_tests::*;

const MEMBER: u32 = 65534;

/// An environment whose daemon socket a member (uid/gid 65534) may use, and a
/// directory of that member's own.
fn member_env() -> (Env, PathBuf) {
    let mut env = Env::new();
    env.start();
    for d in [env.state().to_path_buf(), env.run_dir()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let sock = env.run_dir().join("bangerd.sock");
    std::os::unix::fs::chown(&sock, None, Some(MEMBER)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660)).unwrap();
    let mine = env.state().join("member");
    std::fs::create_dir(&mine).unwrap();
    std::os::unix::fs::chown(&mine, Some(MEMBER), Some(MEMBER)).unwrap();
    (env, mine)
}

/// A copy of `src` at `dst` owned by `uid` with `mode`.
fn copy_as(src: &Path, dst: &Path, uid: u32, mode: u32) -> PathBuf {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
    std::os::unix::fs::chown(dst, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode)).unwrap();
    dst.to_path_buf()
}

fn member(env: &Env, args: &[&str]) -> std::process::Output {
    env.cmd_as(Some(MEMBER), args).output().unwrap()
}

fn sha(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn a_member_uses_only_files_it_may_open_itself() {
    let (env, mine) = member_env();
    let g = guest();
    // Root's files: readable and writable by root alone.
    let secret_kernel = copy_as(&g.kernel, &env.state().join("root-kernel"), 0, 0o600);
    let secret_disk = copy_as(&g.rootfs, &env.state().join("root-disk.ext4"), 0, 0o600);
    let disk_before = sha(&secret_disk);
    // The member's own copies.
    let kernel = copy_as(&g.kernel, &mine.join("vmlinuz"), MEMBER, 0o644);
    let initrd = copy_as(&g.initrd, &mine.join("initrd"), MEMBER, 0o644);
    let disk = copy_as(&g.rootfs, &mine.join("disk.ext4"), MEMBER, 0o644);
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // 1. Naming root's files: refused at create, nothing recorded.
    for (k, r) in [(&secret_kernel, &disk), (&kernel, &secret_disk)] {
        let out = member(
            &env,
            &[
                "vm",
                "create",
                "steal",
                "--kernel",
                &s(k),
                "--initrd",
                &s(&initrd),
                "--rootfs",
                &s(r),
                "--start",
            ],
        );
        assert!(!out.status.success(), "root's file was accepted");
        let err = stderr(&out);
        assert!(
            err.contains("as uid 65534") && err.contains("Permission denied"),
            "{err}"
        );
    }
    assert_eq!(
        env.json(&["vm", "list"]).as_array().unwrap().len(),
        0,
        "a refused create left a VM"
    );

    // 2. A FIFO of its own as the kernel: a clear error, at once, and nobody hangs.
    let fifo = mine.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    std::os::unix::fs::chown(&fifo, Some(MEMBER), Some(MEMBER)).unwrap();
    let t = Instant::now();
    let out = member(
        &env,
        &[
            "vm",
            "create",
            "fifo",
            "--kernel",
            &s(&fifo),
            "--rootfs",
            &s(&disk),
        ],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "a FIFO took {:?}",
        t.elapsed()
    );

    // 3. Its own files: the VM boots (the positive control for 1 and 2).
    member(
        &env,
        &[
            "vm",
            "create",
            "own",
            "--kernel",
            &s(&kernel),
            "--initrd",
            &s(&initrd),
            "--rootfs",
            &s(&disk),
            "--memory",
            "256",
        ],
    );
    let out = member(&env, &["vm", "start", "own"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_console("own", "BANGER_READY");
    env.ok(&["vm", "kill", "own"]);

    // 4. Swapped after create: the disk path now leads to root's disk. The helper
    //    opens it again, as the member, at start: refused, root's disk untouched.
    std::fs::remove_file(&disk).unwrap();
    std::os::unix::fs::symlink(&secret_disk, &disk).unwrap();
    let out = env.banger(&["vm", "start", "own"]);
    assert!(
        !out.status.success(),
        "a start through a swapped path succeeded"
    );
    let err = stderr(&out);
    assert!(
        err.contains("opened as uid 65534") && err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(sha(&secret_disk), disk_before, "root's disk changed");

    // 5. Import: root's kernel is refused and nothing is published.
    let rootfs2 = copy_as(&g.rootfs, &mine.join("disk2.ext4"), MEMBER, 0o644);
    let out = member(
        &env,
        &[
            "image",
            "import",
            "--name",
            "stolen",
            "--kernel",
            &s(&secret_kernel),
            "--rootfs",
            &s(&rootfs2),
        ],
    );
    assert!(!out.status.success(), "root's kernel was imported");
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.json(&["image", "list"]).as_array().unwrap().len(), 0);
    let images = env.state().join("images");
    let left: Vec<_> = std::fs::read_dir(&images)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "import left {left:?}");
    // ... and its own files import (the positive control), root-owned and private.
    let out = member(
        &env,
        &[
            "image",
            "import",
            "--name",
            "mine",
            "--kernel",
            &s(&kernel),
            "--rootfs",
            &s(&rootfs2),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let img = env.json(&["image", "show", "mine"]);
    let kernel_copy = PathBuf::from(img["kernel"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&kernel_copy).unwrap().uid(), 0);
}

#[test]
fn a_member_cannot_hold_the_daemon_with_slow_or_many_connections() {
    let (env, _) = member_env();
    let sock = env.run_dir().join("bangerd.sock");
    // As the member: 48 connections (over its share of 32), each sending half a
    // request: headers on most, a body that never ends on some. Reports when each
    // one was closed by the daemon.
    let script = r#"
import socket, sys, time
held = []
for i in range(48):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    try:
        if i % 4 == 0:
            s.send(b'POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"na')
        else:
            s.send(b'GET /v1/vms HTTP/1.1\r\nHost: x\r\n')
    except OSError:
        pass
    held.append(s)
print("holding", flush=True)
t0 = time.time()
closed = []
for s in held:
    s.settimeout(60)
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    closed.append(time.time() - t0)
print("closed", len(closed), "max %.1f" % max(closed), flush=True)
"#;
    let mut hog = env
        .netns
        .cmd_as("python3", MEMBER)
        .args(["-c", script])
        .arg(&sock)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(hog.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "holding");
    // Root is served at once while the member holds its connections.
    for _ in 0..5 {
        let t = Instant::now();
        env.ok(&["vm", "list"]);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "root waited {:?}",
            t.elapsed()
        );
    }
    // Every held connection is closed by the daemon, the last within the header and
    // body timeouts (10 s each) and some slack.
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let _ = hog.wait();
    let max: f64 = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::MAX);
    assert!(line.starts_with("closed 48") && max < 25.0, "{line}");
    // The daemon still serves the member afterwards.
    let out = member(&env, &["vm", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// With root daemons, the VMM (banger-vmm-qemu and its QEMU) runs as banger-vmm,
/// never root. It gets its files as descriptors, so a disk only root may open boots
/// without being given away (owner and mode unchanged), and its sockets live in a
/// directory of its own while the VM's run directory stays root's.
#[test]
fn vmms_of_root_daemons_never_run_as_root_and_get_their_files_as_descriptors() {
    let mut env = Env::new();
    env.start();
    let g = guest();
    let disk = copy_as(&g.rootfs, &env.state().join("private.ext4"), 0, 0o600);
    let vm = env.json(&[
        "vm",
        "create",
        "apart",
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
    env.wait_console("apart", "BANGER_READY");
    let pid = vm["pid"].as_i64().unwrap() as i32;
    let id = vm["id"].as_str().unwrap();
    let (vmm_uid, _) = vmm_user();
    let uid_of = |p: i32| std::fs::metadata(format!("/proc/{p}")).unwrap().uid();
    assert_eq!(uid_of(pid), vmm_uid, "banger-vmm-qemu runs as banger-vmm");
    let children: Vec<i32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(!children.is_empty(), "QEMU runs");
    for c in children {
        assert_eq!(uid_of(c), vmm_uid, "QEMU (pid {c}) runs as banger-vmm");
    }
    let m = std::fs::metadata(&disk).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o777),
        (0, 0o600),
        "the disk was not given away"
    );
    let run = env.run_dir().join("vms").join(id);
    assert_eq!(
        std::fs::metadata(&run).unwrap().uid(),
        0,
        "the VM's run directory stays root's"
    );
    assert_eq!(
        std::fs::metadata(run.join("vmm")).unwrap().uid(),
        vmm_uid,
        "the VMM's own directory"
    );
    assert!(!run.join("vmm/handles.json").exists());
    // Another local user (not a member), with the state and run directories open to
    // it as /var/lib and /run are: reads no disk, key, database or VM log.
    for d in [env.state().to_path_buf(), env.run_dir()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let walk = r#"
import os, sys
for root, dirs, files in os.walk(sys.argv[1]):
    for f in files:
        p = os.path.join(root, f)
        try:
            with open(p, 'rb') as fh:
                fh.read(1)
            print(p)
        except OSError:
            pass
"#;
    let out = env
        .netns
        .cmd_as("python3", 65534)
        .args(["-c", walk])
        .arg(env.state())
        .output()
        .unwrap();
    let readable = String::from_utf8_lossy(&out.stdout).into_owned();
    let secret = |p: &str| {
        [
            ".ext4",
            "id_",
            "_key",
            "authorized_keys",
            "known_hosts",
            "banger.db",
            "console.log",
            "vmm.log",
            "handles.json",
        ]
        .iter()
        .any(|s| p.contains(s))
            && !p.ends_with("private.ext4") // the test's own copy, 0600 anyway
    };
    let leaked: Vec<&str> = readable.lines().filter(|p| secret(p)).collect();
    assert!(
        leaked.is_empty(),
        "another user reads {leaked:?} (all readable: {readable})"
    );
    // Stop and start again: the VMM's directory is made afresh, the guest keeps its disk.
    env.ok(&["vm", "stop", "apart", "--timeout", "30"]);
    env.ok(&["vm", "start", "apart"]);
    wait_for(Duration::from_secs(60), "the second boot", || {
        env.boot_ids("apart").len() == 2
    });
    env.ok(&["vm", "rm", "-f", "apart"]);
}

/// The daemon's user (system mode: here uid 65534 owns the state and run directories)
/// replaces `<run>/vms`, `<state>/vms` and the helper's pid file with links to root's
/// files while the helper is down. The next helper start refuses, saying which, and
/// root's directory and file keep their owner, mode and bytes.
#[test]
fn links_the_daemon_s_user_plants_where_the_helper_starts_reach_nothing_of_root_s() {
    let mut env = Env::new();
    env.run_daemon_as(MEMBER);
    env.start();
    let out = env
        .netns
        .cmd(bin("banger"))
        .args(["daemon", "stop"])
        .env("BANGER_STATE_DIR", env.state())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Root's: a directory (0755) with a file (0644) in it.
    let victim = tempfile::tempdir().unwrap();
    std::fs::set_permissions(victim.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root_file = victim.path().join("root-owned");
    std::fs::write(&root_file, b"root's").unwrap();
    let before = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode())
    };
    let (dir_before, file_before) = (before(victim.path()), before(&root_file));
    let plant = |what: &str, script: &str| {
        let out = env
            .netns
            .cmd_as("sh", MEMBER)
            .args(["-c", script, "sh"])
            .arg(env.state())
            .arg(victim.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "planting {what} as the daemon's user: {}",
            stderr(&out)
        );
    };
    // One link at a time: each must stop the helper by itself.
    let cases: [(&str, &str, &str); 3] = [
        (
            "<run>/vms",
            r#"mv "$1/run/vms" "$1/run/vms.old" && ln -s "$2" "$1/run/vms""#,
            "run/vms",
        ),
        (
            "<state>/vms",
            r#"mv "$1/vms" "$1/vms.old" && ln -s "$2" "$1/vms""#,
            "vms",
        ),
        (
            "the pid file",
            r#"rm -f "$1/run/bangerd-root.pid" && ln -s "$2/root-owned" "$1/run/bangerd-root.pid""#,
            "",
        ),
    ];
    for (what, script, undo) in cases {
        plant(what, script);
        let mut helper = env.helper_cmd().spawn().unwrap();
        if undo.is_empty() {
            // The pid file's link is unlinked and a new file made in its place: the
            // helper starts, and root's file is not written through the link.
            wait_for(Duration::from_secs(10), "the helper's socket", || {
                std::os::unix::net::UnixStream::connect(env.run_dir().join("root.sock")).is_ok()
            });
            let pidfile = env.run_dir().join("bangerd-root.pid");
            let m = std::fs::symlink_metadata(&pidfile).unwrap();
            assert!(m.is_file(), "the pid file is a new regular file");
            assert_eq!(
                std::fs::read_to_string(&pidfile).unwrap(),
                helper.id().to_string()
            );
            let _ = helper.kill();
            let _ = helper.wait();
        } else {
            let t = Instant::now();
            let status = loop {
                if let Some(st) = helper.try_wait().unwrap() {
                    break st;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    let _ = helper.kill();
                    panic!("the helper started over a planted {what}");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(!status.success(), "{what}");
            let log = std::fs::read_to_string(env.state().join("bangerd-root.log")).unwrap();
            assert!(
                log.contains("cannot make") && log.contains("/vms for uid 65534"),
                "{what}: {log}"
            );
            // Put it back for the next case.
            let p = env.state().join(undo);
            std::fs::remove_file(&p).unwrap();
            std::fs::rename(p.with_extension("old"), &p).unwrap();
        }
        assert_eq!(
            before(victim.path()),
            dir_before,
            "{what}: root's directory changed"
        );
        assert_eq!(
            before(&root_file),
            file_before,
            "{what}: root's file changed"
        );
        assert_eq!(std::fs::read(&root_file).unwrap(), b"root's", "{what}");
        let inside: Vec<_> = std::fs::read_dir(victim.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            inside,
            vec![std::ffi::OsString::from("root-owned")],
            "{what}: something was made in root's directory"
        );
    }
}

/// Members act on their own VMs only: another's (here root's) VM is listed, and
/// nothing more: no console, no details (its errors may quote the console), no verb.
#[test]
fn a_member_cannot_read_or_act_on_a_vm_another_user_created() {
    let (env, _) = member_env();
    let g = guest();
    env.ok(&[
        "vm",
        "create",
        "roots",
        "--kernel",
        g.kernel.to_str().unwrap(),
    ]);
    let listed = member(&env, &["--json", "vm", "list"]);
    assert!(
        listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains("roots"),
        "{}",
        stderr(&listed)
    );
    for verb in [
        &["vm", "show", "roots"][..],
        &["vm", "logs", "roots"],
        &["vm", "start", "roots"],
        &["vm", "stop", "roots"],
        &["vm", "kill", "roots"],
        &["vm", "rm", "-f", "roots"],
    ] {
        let out = member(&env, verb);
        assert_eq!(out.status.code(), Some(6), "{verb:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("VM roots belongs to uid 0; only its creator"),
            "{verb:?}: {}",
            stderr(&out)
        );
    }
    let vm = env.json(&["vm", "show", "roots"]);
    assert_eq!(
        vm["state"], "created",
        "nothing the member asked for happened: {vm}"
    );
    env.ok(&["vm", "rm", "roots"]);
}
