//! Bad input gets a clear error and loses nothing. Tried here: hostile and malformed
//! names, duplicate names, out-of-range cpus and memory, unknown VMs, malformed and
//! unknown-field JSON, an unauthorised user on the daemon socket, a caller other than
//! the daemon on the helper socket, paths with `..` or outside banger's directories
//! at the helper, and a VMM that dies during start.

use std::os::unix::process::CommandExt;
use std::process::Command;

use banger_helper::{CreateVmDirs, HelperClient, Ping, VmId};
use banger_tests::*;

fn create_args<'a>(name: &'a str, kernel: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["vm", "create", name, "--kernel", kernel];
    v.extend_from_slice(extra);
    v
}

#[test]
fn names_sizes_duplicates_and_unknown_vms_are_refused_clearly() {
    let mut env = Env::new();
    env.start();
    let kernel = guest().kernel;
    let k = kernel.to_str().unwrap();

    let long = "a".repeat(65);
    for bad in ["Dev", "a_b", "../etc", "a/b", "x-", "", long.as_str(), "é"] {
        let out = env.banger(&create_args(bad, k, &[]));
        assert_eq!(out.status.code(), Some(7), "name {bad:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("invalid VM name"),
            "{bad:?}: {}",
            stderr(&out)
        );
    }
    for (flag, value, msg) in [
        ("--cpus", "0", "invalid cpu count 0"),
        ("--cpus", "33", "invalid cpu count 33"),
        ("--memory", "127", "invalid memory size 127"),
    ] {
        let out = env.banger(&create_args("ok", k, &[flag, value]));
        assert_eq!(
            out.status.code(),
            Some(7),
            "{flag} {value}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(msg), "{}", stderr(&out));
    }
    // Nothing was recorded by any of the refusals.
    assert_eq!(env.json(&["vm", "list"]).as_array().unwrap().len(), 0);

    env.ok(&create_args("dup", k, &[]));
    let out = env.banger(&create_args("dup", k, &["--cpus", "2"]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a VM named dup already exists"),
        "{}",
        stderr(&out)
    );
    // The first VM is untouched.
    assert_eq!(env.json(&["vm", "show", "dup"])["spec"]["vcpus"], 1);

    for verb in [
        &["vm", "show", "ghost"][..],
        &["vm", "start", "ghost"],
        &["vm", "stop", "ghost"],
        &["vm", "rm", "ghost"],
        &["vm", "logs", "ghost"],
    ] {
        let out = env.banger(verb);
        assert_eq!(out.status.code(), Some(4), "{verb:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("no VM named \"ghost\""),
            "{verb:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn the_api_refuses_malformed_json_unknown_fields_and_bad_values() {
    let mut env = Env::new();
    env.start();
    let sock = env.run_dir().join("bangerd.sock");
    let curl = |method: &str, path: &str, body: &str| -> (String, String) {
        let out = Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&sock)
            .args([
                "-X",
                method,
                "-H",
                "content-type: application/json",
                "--data-raw",
                body,
            ])
            .arg(format!("http://bangerd{path}"))
            .output()
            .expect("curl");
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = s.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    for (body, want) in [
        ("{", "malformed request body"),
        ("[]", "malformed request body"),
        (
            r#"{"name":"x","kernel":"/k","colour":"red"}"#,
            "unknown field `colour`",
        ),
        (r#"{"name":"BAD","kernel":"/k"}"#, "invalid VM name"),
        (r#"{"name":"x","kernel":"relative"}"#, "must be absolute"),
        (
            r#"{"name":"x","kernel":"/k","vcpus":64}"#,
            "invalid cpu count 64",
        ),
    ] {
        let (code, resp) = curl("POST", "/v1/vms", body);
        assert_eq!(code, "400", "{body}: {resp}");
        let v: serde_json::Value = serde_json::from_str(&resp).expect("error body is JSON");
        assert_eq!(v["kind"], "bad_request");
        assert!(
            v["message"].as_str().unwrap().contains(want),
            "{body}: {resp}"
        );
    }
    let (code, resp) = curl("GET", "/v1/vms/nope", "");
    assert_eq!(code, "404");
    assert!(resp.contains("no VM named \\\"nope\\\""), "{resp}");
    let (code, _) = curl("GET", "/v2/vms", "");
    assert_eq!(code, "404");
    assert_eq!(env.json(&["vm", "list"]).as_array().unwrap().len(), 0);
}

const NOBODY: u32 = 65534;

#[test]
fn a_user_without_access_gets_a_permission_error_with_a_hint() {
    let mut env = Env::new();
    env.start();
    // The state dir must be traversable for the socket's own mode to be what decides.
    std::fs::set_permissions(
        env.state(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = env
        .netns
        .cmd_as(bin("banger"), NOBODY)
        .args(["vm", "list"])
        .env("BANGER_STATE_DIR", env.state())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("permission denied") && err.contains("'banger' group"),
        "{err}"
    );
}

#[test]
fn the_helper_refuses_callers_other_than_the_daemon_and_paths_outside_its_dirs() {
    let mut env = Env::new();
    env.start();
    std::fs::set_permissions(
        env.state(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        env.run_dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let helper_sock = env.run_dir().join("root.sock");

    // Another user may connect (SO_PEERCRED is the gate) but is refused.
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"op":"remove_vm_state","vm_id":"0123456789ab"}\n')
except BrokenPipeError:
    pass  # a stranger is refused before the helper reads anything
print(s.makefile().readline())
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&helper_sock)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.contains("\"denied\"") && reply.contains("uid 65534 may not use the root helper"),
        "{reply} {}",
        stderr(&out)
    );

    // An allowed caller names files by id; the paths of banger's own files are not
    // part of the protocol, and a file it names is opened with its own rights.
    let client = HelperClient::new(&helper_sock);
    let id = VmId::new("0123456789ab").unwrap();
    client.call(CreateVmDirs { vm_id: id.clone() }).unwrap();
    for (files, want) in [
        (
            r#"{"kernel":{"kind":"named","path":"vmlinux"},"initrd":null,"rootfs":null}"#,
            "is not absolute",
        ),
        (
            r#"{"kernel":{"kind":"named","path":"/nonexistent/vmlinux"},"initrd":null,"rootfs":null}"#,
            "cannot open /nonexistent/vmlinux",
        ),
        (
            r#"{"kernel":{"kind":"image","digest":"../../../etc","file":"vmlinux"},"initrd":null,"rootfs":null}"#,
            "invalid image digest",
        ),
        (
            r#"{"kernel":{"kind":"vm_disk","path":"/etc/shadow"},"initrd":null,"rootfs":null}"#,
            "unknown field",
        ),
    ] {
        let line = format!(r#"{{"op":"launch_vmm","vm_id":"{id}","files":{files}}}"#);
        let mut s = std::os::unix::net::UnixStream::connect(&helper_sock).unwrap();
        std::io::Write::write_all(&mut s, format!("{line}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut reply).unwrap();
        assert!(reply.contains(want), "{files}: {reply}");
        assert!(!reply.contains("\"launched\""), "{files}: {reply}");
    }
    // Malformed and unknown requests.
    for line in [
        "not json",
        r#"{"op":"exec","argv":["/bin/sh"]}"#,
        r#"{"op":"create_vm_dirs","vm_id":"../../etc"}"#,
    ] {
        let out = Command::new("python3")
            .args([
                "-c",
                &script.replace(
                    r#"b'{"op":"remove_vm_state","vm_id":"0123456789ab"}\n'"#,
                    &format!("{:?}.encode() + b'\\n'", line),
                ),
            ])
            .arg(&helper_sock)
            .output()
            .unwrap();
        let reply = String::from_utf8_lossy(&out.stdout);
        assert!(
            reply.contains("\"bad_argument\""),
            "{line}: {reply} {}",
            stderr(&out)
        );
    }
    assert!(!std::path::Path::new("/etc/evil.sock").exists());
}

#[test]
fn a_vmm_that_dies_during_start_marks_the_vm_failed_and_keeps_its_console() {
    // A root daemon runs only banger-vmm-qemu or a jailed Firecracker (VMMs never run
    // as root), so this fake VMM runs under a daemon of its own user, as in system mode.
    let mut env = Env::new();
    let fake = env.state().join("dying-vmm");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'dying-vmm: simulated crash before the API came up'\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    env.use_vmm(&fake);
    env.run_daemon_as(NOBODY);
    env.start();
    let k = env.own_copy(&guest().kernel, "vmlinuz");
    env.ok(&create_args("crashy", k.to_str().unwrap(), &[]));
    let out = env.banger(&["vm", "start", "crashy"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("VM crashy failed to start")
            && err.contains("exited before its API socket answered"),
        "{err}"
    );
    assert!(
        err.contains("simulated crash"),
        "the console tail is part of the error: {err}"
    );
    let vm = env.json(&["vm", "show", "crashy"]);
    assert_eq!(vm["state"], "failed");
    assert!(
        vm["last_error"]
            .as_str()
            .unwrap()
            .contains("simulated crash")
    );
    assert!(
        env.console("crashy").contains("simulated crash"),
        "console log kept"
    );
    // A failed VM can be removed.
    env.ok(&["vm", "rm", "crashy"]);
}

#[test]
fn a_kernel_the_vmm_cannot_boot_fails_the_start_with_the_vmm_s_reason() {
    let mut env = Env::new();
    env.start();
    let junk = env.state().join("junk-kernel");
    std::fs::write(&junk, b"this is not a kernel").unwrap();
    env.ok(&create_args("junk", junk.to_str().unwrap(), &[]));
    let out = env.banger(&["vm", "start", "junk"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("failed to start"), "{}", stderr(&out));
    assert_eq!(env.json(&["vm", "show", "junk"])["state"], "failed");
    // No VMM is left running for it.
    let id = env.json(&["vm", "show", "junk"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(
        std::time::Duration::from_secs(10),
        "no process for the failed VM",
        || env.processes().iter().all(|(_, c)| !c.contains(&id)),
    );
}

#[test]
fn the_address_pool_runs_out_with_a_clear_error_and_rm_frees_an_address() {
    // A /29: six host addresses, one of them the gateway.
    let mut env = Env::with_gateway(&format!(
        "10.{}.{}.1/29",
        90 + std::process::id() % 9,
        std::process::id() % 250
    ));
    env.start();
    let k = guest().kernel;
    let k = k.to_str().unwrap();
    let mut ips = Vec::new();
    for i in 0..5 {
        let vm = env.json(&create_args(&format!("p{i}"), k, &[]));
        ips.push(vm["ip"].as_str().unwrap().to_string());
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 5, "addresses handed out twice: {ips:?}");
    let out = env.banger(&create_args("p5", k, &[]));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no free guest address"),
        "{}",
        stderr(&out)
    );
    assert!(
        env.banger(&["vm", "show", "p5"]).status.code() == Some(4),
        "a refused create leaves no VM"
    );
    env.ok(&["vm", "rm", "p2"]);
    env.ok(&create_args("p5", k, &[]));
}

#[test]
fn importing_a_rootfs_that_is_not_ext4_is_refused() {
    let mut env = Env::new();
    env.start();
    let g = guest();
    let junk = env.state().join("junk.img");
    std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
    for rootfs in [junk.to_str().unwrap(), "/etc/hostname", "/nonexistent.ext4"] {
        let out = env.banger(&[
            "image",
            "import",
            "--name",
            "bad",
            "--kernel",
            g.kernel.to_str().unwrap(),
            "--rootfs",
            rootfs,
        ]);
        assert_eq!(out.status.code(), Some(7), "{rootfs}: {}", stderr(&out));
        assert!(stderr(&out).contains("cannot import"), "{}", stderr(&out));
    }
    assert_eq!(env.json(&["image", "ls"]).as_array().unwrap().len(), 0);
    let leftovers: Vec<_> = std::fs::read_dir(env.state().join("images"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A valid import works, and the same name twice is a conflict.
    let args = [
        "image",
        "import",
        "--name",
        "tiny",
        "--kernel",
        g.kernel.to_str().unwrap(),
        "--initrd",
        g.initrd.to_str().unwrap(),
        "--rootfs",
        g.rootfs.to_str().unwrap(),
    ];
    env.ok(&args);
    assert_eq!(env.banger(&args).status.code(), Some(5));
}

#[test]
fn a_guest_that_never_opens_ssh_makes_vm_run_give_up_with_its_console() {
    let mut env = Env::new();
    env.start();
    let g = guest();
    // The busybox test guest boots but runs no sshd.
    env.ok(&[
        "image",
        "import",
        "--name",
        "nossh",
        "--kernel",
        g.kernel.to_str().unwrap(),
        "--initrd",
        g.initrd.to_str().unwrap(),
        "--rootfs",
        g.rootfs.to_str().unwrap(),
    ]);
    let out = env.banger(&[
        "vm",
        "run",
        "--name",
        "mute",
        "--image",
        "nossh",
        "--memory",
        "256",
        "--ssh-timeout",
        "15",
        "--rm",
        "--quiet",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("did not answer SSH") && err.contains("within 15 s"),
        "{err}"
    );
    assert!(
        err.contains("BANGER_BOOT_ID="),
        "the console tail is shown: {err}"
    );
    // --rm cleaned up even though the run failed.
    assert_eq!(env.json(&["vm", "list"]).as_array().unwrap().len(), 0);
}

#[test]
fn an_image_build_that_fails_midway_leaves_no_image() {
    let mut env = Env::with_mirror();
    env.start();
    let out = env.banger(&[
        "image",
        "build",
        "debian",
        "--name",
        "broken",
        "--package",
        "no-such-package-banger",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("debootstrap failed"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("no-such-package-banger"),
        "the reason is shown: {}",
        stderr(&out)
    );
    assert_eq!(env.json(&["image", "ls"]).as_array().unwrap().len(), 0);
    let leftovers: Vec<_> = std::fs::read_dir(env.state().join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "half-made image left: {leftovers:?}");
    // Bad arguments never reach debootstrap: each is refused as a bad request with
    // its own reason (a debootstrap run would fail with "debootstrap failed" instead).
    for (args, why) in [
        (
            &["--name", "evil", "--release", "sid;rm"][..],
            r#"unknown release "sid;rm""#,
        ),
        (
            &["--release", "sid;rm"],
            r#"invalid image name "debian-sid;rm""#,
        ),
        (
            &["--package=--include=evil"],
            r#"invalid package name "--include=evil""#,
        ),
        (
            &["--package", "Bad Name"],
            r#"invalid package name "Bad Name""#,
        ),
    ] {
        let mut a = vec!["image", "build", "debian", "--quiet"];
        a.extend_from_slice(args);
        let out = env.banger(&a);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(7), "{args:?}: {err}");
        assert!(
            err.contains(why) && !err.contains("debootstrap failed"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_local_user_holding_a_thousand_connections_does_not_stall_the_helper() {
    let mut env = Env::new();
    env.start();
    std::fs::set_permissions(
        env.state(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        env.run_dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let helper_sock = env.run_dir().join("root.sock");
    // As nobody: 1100 connections (more than the helper's default descriptor limit),
    // each sending half a request, held open until we let go.
    let script = r#"
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for _ in range(1100):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    try:
        s.send(b'{"op":"pi')
    except OSError:
        pass  # refused and closed at once: nothing to hold
    held.append(s)
print("holding", len(held), flush=True)
sys.stdin.read()
"#;
    let mut hog = Command::new("python3")
        .args(["-c", script])
        .arg(&helper_sock)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hog.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "holding 1100", "the hog could not connect");
    // Root's and the daemon's requests are still served at once.
    let client = HelperClient::new(&helper_sock);
    for _ in 0..20 {
        let t = std::time::Instant::now();
        client.call(Ping {}).expect("the helper answers root");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "a ping took {:?}",
            t.elapsed()
        );
    }
    env.ok(&["vm", "list"]);
    drop(hog.stdin.take());
    let _ = hog.wait();
    // And the refusals did not flood the log (one line a second at most).
    let log = std::fs::metadata(env.state().join("bangerd-root.log"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(log < 64 * 1024, "the helper log grew to {log} bytes");
}
