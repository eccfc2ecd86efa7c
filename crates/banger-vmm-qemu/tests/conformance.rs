//! Conformance of banger-vmm-qemu with Firecracker's API contract (v1.16.1).
//!
//! Every exchange banger relies on, and the error cases, run against the real binary
//! over its Unix socket. Request and response bodies are validated against the
//! vendored swagger file (`swagger/firecracker-v1.16.1.yaml`). Firecracker serialises
//! `Option::None` as `null` where the swagger has no `x-nullable`; null-valued keys are
//! treated as absent before validation, as they are by Firecracker's own clients.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const VMM: &str = env!("CARGO_BIN_EXE_banger-vmm-qemu");

fn swagger() -> Value {
    let text = include_str!("../swagger/firecracker-v1.16.1.yaml");
    serde_yaml::from_str(text).expect("swagger parses")
}

/// Validates `body` against `#/definitions/<def>`.
fn check_schema(def: &str, body: &Value) {
    let sw = swagger();
    let schema =
        json!({ "definitions": sw["definitions"], "$ref": format!("#/definitions/{def}") });
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let body = strip_nulls(body.clone());
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{def} does not match the swagger: {errors:?}\n{body:#}"
    );
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

struct Vmm {
    child: Child,
    dir: tempfile::TempDir,
}

/// Where a VMM runs: as the test's user in the test's network namespace, or in a
/// network namespace of its own (`unshare -n`; its taps made there with `ip`), as
/// root or as `nobody`. Tests that touch taps never touch the host's network.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    Here,
    OwnNetns,
    OwnNetnsAsNobody,
}

impl Vmm {
    fn spawn() -> Self {
        Self::spawn_with(VMM, Place::Here, &[])
    }

    fn spawn_with(bin: &str, place: Place, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let stdout = std::fs::File::create(dir.path().join("console.log")).unwrap();
        // Firecracker before 1.14 logs only to a file that exists.
        std::fs::File::create(dir.path().join("vmm.log")).unwrap();
        let mut cmd = match place {
            Place::Here => Command::new(bin),
            Place::OwnNetns | Place::OwnNetnsAsNobody => {
                let mut c = Command::new("unshare");
                c.args(["--net", "--"]);
                if place == Place::OwnNetnsAsNobody {
                    use std::os::unix::fs::PermissionsExt;
                    for p in [dir.path().to_path_buf(), dir.path().join("vmm.log")] {
                        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777))
                            .unwrap();
                    }
                    c.args([
                        "setpriv",
                        "--reuid=nobody",
                        "--regid=nogroup",
                        "--clear-groups",
                    ]);
                }
                c.arg(bin);
                c
            }
        };
        let child = cmd
            .args(extra)
            .args([
                "--api-sock",
                sock.to_str().unwrap(),
                "--id",
                "conf-1",
                "--log-path",
            ])
            .arg(dir.path().join("vmm.log"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "VMM socket never appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
        Self { child, dir }
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    /// Runs `ip ARGS` in the VMM's network namespace.
    fn ip(&self, args: &[&str]) {
        let st = Command::new("nsenter")
            .args([
                "--net=/proc/".to_string() + &self.child.id().to_string() + "/ns/net",
                "ip".into(),
            ])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    }

    /// One raw HTTP/1.1 exchange; returns the status line, headers and body.
    fn raw(&self, method: &str, path: &str, body: Option<&str>) -> (String, Vec<String>, String) {
        let mut s = UnixStream::connect(self.sock()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        // Keep-alive: read the head, then exactly Content-Length bytes.
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed mid-head");
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).unwrap();
        let mut lines = head.trim_end().split("\r\n");
        let status = lines.next().unwrap().to_string();
        let headers: Vec<String> = lines.map(String::from).collect();
        let len = headers
            .iter()
            .find_map(|h| h.strip_prefix("Content-Length: "))
            .map(|v| v.parse::<usize>().unwrap())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        (status, headers, String::from_utf8(body).unwrap())
    }

    /// An exchange that must succeed with 204 and no body; checks the request body
    /// against the swagger definition first.
    fn put_ok(&self, method: &str, path: &str, def: &str, body: Value) {
        check_schema(def, &body);
        let (status, headers, resp) = self.raw(method, path, Some(&body.to_string()));
        assert_eq!(status, "HTTP/1.1 204 ", "{method} {path} {body}: {resp}");
        assert!(
            !headers
                .iter()
                .any(|h| h.to_lowercase().starts_with("content-length")),
            "{headers:?}"
        );
        assert!(resp.is_empty());
    }

    fn get_ok(&self, path: &str, def: &str) -> Value {
        let (status, headers, body) = self.raw("GET", path, None);
        assert_eq!(status, "HTTP/1.1 200 ", "GET {path}: {body}");
        assert!(
            headers.contains(&"Content-Type: application/json".to_string()),
            "{headers:?}"
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        check_schema(def, &v);
        v
    }

    /// An exchange that must fail with 400 and a fault_message containing `want`.
    fn fault(&self, method: &str, path: &str, body: Option<&str>, want: &str) {
        let (status, headers, resp) = self.raw(method, path, body);
        assert_eq!(status, "HTTP/1.1 400 ", "{method} {path} {body:?}: {resp}");
        assert!(headers.contains(&"Content-Type: application/json".to_string()));
        let v: Value = serde_json::from_str(&resp).expect("fault body is JSON");
        check_schema("Error", &v);
        let msg = v["fault_message"].as_str().expect("fault_message");
        assert!(
            msg.contains(want),
            "{method} {path}: {msg:?} does not contain {want:?}"
        );
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn guest_dir() -> PathBuf {
    std::env::var_os("BANGER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache"))
        .join("guest")
}

#[test]
fn responses_have_firecracker_s_status_line_and_headers() {
    let vmm = Vmm::spawn();
    let (status, headers, _) = vmm.raw("GET", "/", None);
    assert_eq!(status, "HTTP/1.1 200 ", "no reason phrase, like micro_http");
    for h in [
        "Server: Firecracker API",
        "Connection: keep-alive",
        "Content-Type: application/json",
    ] {
        assert!(headers.contains(&h.to_string()), "missing {h}: {headers:?}");
    }
    assert!(headers.iter().any(|h| h.starts_with("Content-Length: ")));
    assert!(
        !headers.iter().any(|h| h.to_lowercase().starts_with("date")),
        "{headers:?}"
    );
}

#[test]
fn pre_boot_exchanges_banger_relies_on() {
    let vmm = Vmm::spawn_with(VMM, Place::OwnNetns, &[]);
    vmm.ip(&["tuntap", "add", "tap0", "mode", "tap"]);
    let info = vmm.get_ok("/", "InstanceInfo");
    assert_eq!(
        info,
        json!({"app_name": "Firecracker", "id": "conf-1", "state": "Not started", "vmm_version": "1.16.1"})
    );
    assert_eq!(
        vmm.get_ok("/version", "FirecrackerVersion"),
        json!({"firecracker_version": "1.16.1"})
    );
    let mc = vmm.get_ok("/machine-config", "MachineConfiguration");
    assert_eq!(
        mc,
        json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": false, "huge_pages": "None"})
    );

    vmm.put_ok(
        "PUT",
        "/machine-config",
        "MachineConfiguration",
        json!({"vcpu_count": 2, "mem_size_mib": 256}),
    );
    vmm.put_ok(
        "PATCH",
        "/machine-config",
        "MachineConfiguration",
        json!({"vcpu_count": 2, "mem_size_mib": 512}),
    );
    assert_eq!(
        vmm.get_ok("/machine-config", "MachineConfiguration")["mem_size_mib"],
        512
    );

    let kernel = vmm.dir.path().join("vmlinux");
    let disk = vmm.dir.path().join("rootfs.ext4");
    std::fs::write(&kernel, b"k").unwrap();
    std::fs::write(&disk, b"d").unwrap();
    vmm.put_ok(
        "PUT",
        "/boot-source",
        "BootSource",
        json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0"}),
    );
    vmm.put_ok("PUT", "/drives/rootfs", "Drive", json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": false}));
    vmm.put_ok("PUT", "/drives/data", "Drive", json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false, "is_read_only": true}));
    vmm.put_ok(
        "PUT",
        "/network-interfaces/eth0",
        "NetworkInterface",
        json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"}),
    );
    vmm.put_ok(
        "PUT",
        "/logger",
        "Logger",
        json!({"log_path": vmm.dir.path().join("vmm2.log"), "level": "Info"}),
    );
    vmm.put_ok(
        "PUT",
        "/metrics",
        "Metrics",
        json!({"metrics_path": vmm.dir.path().join("metrics.json")}),
    );
    vmm.put_ok("PUT", "/entropy", "EntropyDevice", json!({}));

    let cfg = vmm.get_ok("/vm/config", "FullVmConfiguration");
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    assert_eq!(
        cfg["boot-source"]["kernel_image_path"],
        kernel.to_str().unwrap()
    );
    let drives = cfg["drives"].as_array().unwrap();
    assert_eq!(
        drives[0]["drive_id"], "rootfs",
        "the root device comes first"
    );
    assert_eq!(drives[0]["cache_type"], "Unsafe");
    assert_eq!(drives[0]["io_engine"], "Sync");
    let nic = &cfg["network-interfaces"][0];
    assert_eq!(nic["host_dev_name"], "tap0");
    assert_eq!(nic["guest_mac"], "06:00:ac:10:00:02", "shown in lower case");
    assert!(
        nic.get("mtu").is_some_and(Value::is_null),
        "mtu: null, as 1.16 shows it"
    );
    assert!(
        cfg.get("serial").is_none(),
        "Firecracker's VmmConfig has no serial key"
    );
    for key in [
        "balloon",
        "cpu-config",
        "logger",
        "metrics",
        "memory-hotplug",
        "mmds-config",
        "vsock",
        "pmem",
    ] {
        assert!(
            cfg.get(key).is_some(),
            "{key} must be present (null or empty) as in Firecracker"
        );
    }
}

#[test]
fn error_cases_give_400_with_firecracker_s_fault_messages() {
    let vmm = Vmm::spawn();
    let kernel = vmm.dir.path().join("vmlinux");
    std::fs::write(&kernel, b"k").unwrap();
    let k = kernel.to_str().unwrap();

    vmm.fault(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":128,"foo":1}"#),
        "An error occurred when deserializing the json body of a request: unknown field `foo`",
    );
    vmm.fault(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":0,"mem_size_mib":128}"#),
        "Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.",
    );
    vmm.fault(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":3,"mem_size_mib":128,"smt":true}"#),
        "Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.",
    );
    vmm.fault(
        "PUT",
        "/machine-config",
        Some(r#"{"mem_size_mib":128}"#),
        "missing field `vcpu_count`",
    );
    vmm.fault(
        "PATCH",
        "/machine-config",
        Some("{}"),
        "Empty PATCH request.",
    );
    vmm.fault("PUT", "/machine-config", None, "Empty PUT request.");
    vmm.fault("PATCH", "/vm", None, "Empty PATCH request.");
    vmm.fault(
        "GET",
        "/machine-config",
        Some("{}"),
        "GET request cannot have a body.",
    );
    vmm.fault(
        "GET",
        "/foo",
        None,
        "Invalid request method and/or path: GET foo.",
    );
    vmm.fault(
        "DELETE",
        "/machine-config",
        None,
        "Invalid request method and/or path: DELETE machine-config.",
    );
    vmm.fault(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path":"/nonexistent/vmlinux"}"#),
        "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)",
    );
    vmm.fault(
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path":"{k}","initrd_path":"/nonexistent"}}"#
        )),
        "Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions.",
    );
    vmm.fault(
        "PUT",
        "/drives/rootfs",
        Some(r#"{"drive_id":"other","is_root_device":true,"path_on_host":"/x"}"#),
        "The id from the path does not match the id from the body!",
    );
    vmm.fault(
        "PUT",
        "/drives/bad-id",
        Some(r#"{"drive_id":"bad-id","is_root_device":true}"#),
        "API Resource IDs can only contain alphanumeric characters and underscores.",
    );
    vmm.fault(
        "PUT",
        "/drives",
        Some(r#"{"drive_id":"x","is_root_device":true}"#),
        "The ID cannot be empty.",
    );
    vmm.fault(
        "PUT",
        "/drives/rootfs",
        Some(r#"{"drive_id":"rootfs","is_root_device":true,"path_on_host":"/nonexistent.ext4"}"#),
        "Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) /nonexistent.ext4",
    );
    vmm.put_ok(
        "PUT",
        "/drives/a",
        "Drive",
        json!({"drive_id": "a", "is_root_device": true, "path_on_host": k}),
    );
    vmm.fault(
        "PUT",
        "/drives/b",
        Some(&format!(
            r#"{{"drive_id":"b","is_root_device":true,"path_on_host":"{k}"}}"#
        )),
        "Drive config error: A root block device already exists!",
    );
    vmm.fault(
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id":"eth1","host_dev_name":"lo"}"#),
        "The id from the path [eth0] does not match the id from the body [eth1]!",
    );
    vmm.fault(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"Reboot"}"#),
        "unknown variant `Reboot`",
    );
    vmm.fault(
        "PUT",
        "/metrics",
        Some(r#"{"metrics_path":"/nonexistent/dir/m.json"}"#),
        "Metrics error: Cannot initialize the metrics system due to bad user input: No such file or directory (os error 2)",
    );

    // Post-boot-only actions before boot.
    let post = "The requested operation is not supported before starting the microVM.";
    vmm.fault(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"SendCtrlAltDel"}"#),
        post,
    );
    vmm.fault(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"FlushMetrics"}"#),
        post,
    );
    vmm.fault("PATCH", "/vm", Some(r#"{"state":"Paused"}"#), post);
    vmm.fault("PATCH", "/drives/a", Some(r#"{"drive_id":"a"}"#), post);

    // InstanceStart without a kernel.
    let fresh = Vmm::spawn();
    fresh.fault(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
        "Start microvm error: Cannot start microvm without kernel configuration.",
    );
}

#[test]
fn the_command_line_behaves_like_firecracker_s() {
    let out = Command::new(VMM).arg("--version").output().unwrap();
    assert_eq!(out.stdout, b"Firecracker v1.16.1\n\n");
    let parsed = banger_fc::parse_version_output(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(parsed.to_string(), "1.16.1");

    let out = Command::new(VMM).arg("--api-sock=/tmp/x").output().unwrap();
    assert_eq!(out.status.code(), Some(153), "ArgParsing");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Found argument 'api-sock=/tmp/x'"));

    let out = Command::new(VMM)
        .args(["--id", "x", "--id", "y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(153), "duplicate flags are refused");

    use std::os::unix::process::ExitStatusExt;
    let out = Command::new(VMM)
        .args(["--id", "bad_id!", "--api-sock", "/tmp/never"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(6),
        "an invalid id aborts, as Firecracker's expect() does"
    );

    // An existing socket path is an error (exit 1), and the file is not removed.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("taken.sock");
    std::fs::write(&sock, b"").unwrap();
    let out = Command::new(VMM)
        .args(["--api-sock", sock.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Check that it is not already used."));
    assert!(sock.exists());
}

#[test]
fn a_real_guest_boots_pauses_resumes_and_ends_with_ctrl_alt_del() {
    let g = guest_dir();
    let (kernel, initrd) = (g.join("vmlinuz"), g.join("initrd.img"));
    assert!(
        kernel.exists() && initrd.exists(),
        "guest assets missing in {}: run scripts/guest-assets",
        g.display()
    );
    // Under the address-space limit Firecracker's own tests give a VMM (1e9 bytes):
    // QEMU's TCG code buffer is sized to fit it.
    let mut vmm = Vmm::spawn_with("prlimit", Place::Here, &["--as=1000000000", "--", VMM]);
    let disk = vmm.dir.path().join("rootfs.ext4");
    std::fs::copy(g.join("rootfs.ext4"), &disk).unwrap();
    vmm.put_ok(
        "PUT",
        "/machine-config",
        "MachineConfiguration",
        json!({"vcpu_count": 1, "mem_size_mib": 256}),
    );
    vmm.put_ok("PUT", "/boot-source", "BootSource",
        json!({"kernel_image_path": kernel, "initrd_path": initrd, "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}));
    vmm.put_ok("PUT", "/drives/rootfs", "Drive", json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": false}));
    // InstanceStart from a client that hangs up at once: the start still runs to its
    // end (it is not the client's request future), and the VMM is Running.
    {
        use std::io::Write;
        let body = r#"{"action_type":"InstanceStart"}"#;
        let mut c = std::os::unix::net::UnixStream::connect(vmm.sock()).unwrap();
        write!(
            c,
            "PUT /actions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        c.shutdown(std::net::Shutdown::Both).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while vmm.get_ok("/", "InstanceInfo")["state"] != "Running" {
        assert!(
            Instant::now() < deadline,
            "the start was dropped with its client"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Pre-boot-only calls now fail with Firecracker's post-boot message.
    let pre = "The requested operation is not supported after starting the microVM.";
    vmm.fault(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":128}"#),
        pre,
    );
    vmm.fault(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path":"/x"}"#),
        pre,
    );
    vmm.fault(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
        pre,
    );

    let console = vmm.dir.path().join("console.log");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("BANGER_READY")
    {
        assert!(Instant::now() < deadline, "the guest never got ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(
        !text.contains("pci=off"),
        "pci=off must not reach a -M pc guest"
    );
    assert!(
        text.contains("BANGER_ROOTFS=banger-test-disk"),
        "root drive attached as /dev/vda"
    );

    vmm.put_ok("PATCH", "/vm", "Vm", json!({"state": "Paused"}));
    assert_eq!(vmm.get_ok("/", "InstanceInfo")["state"], "Paused");
    vmm.put_ok("PATCH", "/vm", "Vm", json!({"state": "Paused"}));
    vmm.put_ok("PATCH", "/vm", "Vm", json!({"state": "Resumed"}));
    assert_eq!(vmm.get_ok("/", "InstanceInfo")["state"], "Running");

    // Ctrl-Alt-Del → guest reboot (reboot=k) → the VMM exits 0 and leaves its socket.
    vmm.put_ok(
        "PUT",
        "/actions",
        "InstanceActionInfo",
        json!({"action_type": "SendCtrlAltDel"}),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = vmm.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the VMM did not exit after Ctrl-Alt-Del"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert!(vmm.sock().exists(), "Firecracker never unlinks its socket");
    let log = std::fs::read_to_string(vmm.dir.path().join("vmm.log")).unwrap();
    assert!(
        log.contains("Firecracker exiting successfully. exit_code=0"),
        "{log}"
    );
}

#[test]
fn the_swagger_file_declares_every_route_banger_uses() {
    let sw = swagger();
    for (path, method) in [
        ("/", "get"),
        ("/machine-config", "put"),
        ("/machine-config", "get"),
        ("/boot-source", "put"),
        ("/drives/{drive_id}", "put"),
        ("/network-interfaces/{iface_id}", "put"),
        ("/actions", "put"),
        ("/vm", "patch"),
        ("/vm/config", "get"),
        ("/version", "get"),
    ] {
        assert!(
            sw["paths"][path][method].is_object(),
            "{method} {path} missing from the swagger"
        );
    }
    assert_eq!(sw["info"]["version"], "1.16.1");
}

/// Taps are opened at PUT time as Firecracker opens them (`IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR`), so a busy, multi-queue or (to an unprivileged VMM) missing tap is
/// refused there with Firecracker's text. Each VMM runs in a network namespace of its
/// own. Needs root (scripts/test runs as root).
#[test]
fn taps_are_opened_at_put_as_firecracker_opens_them() {
    let vmm = Vmm::spawn_with(VMM, Place::OwnNetns, &[]);
    vmm.ip(&["tuntap", "add", "tap0", "mode", "tap"]);
    vmm.ip(&["tuntap", "add", "mq0", "mode", "tap", "multi_queue"]);
    let nic = |id: &str, tap: &str, mac: &str| {
        format!(r#"{{"iface_id":"{id}","host_dev_name":"{tap}","guest_mac":"{mac}"}}"#)
    };
    vmm.put_ok(
        "PUT",
        "/network-interfaces/eth0",
        "NetworkInterface",
        serde_json::from_str(&nic("eth0", "tap0", "06:00:00:00:00:01")).unwrap(),
    );
    let tap_failed = "Network config error: Could not create the network device: Open tap device failed: Error while creating ifreq structure: ";
    vmm.fault(
        "PUT",
        "/network-interfaces/eth1",
        Some(&nic("eth1", "tap0", "06:00:00:00:00:02")),
        &format!("{tap_failed}Device or resource busy (os error 16). Invalid TUN/TAP Backend provided by tap0. Check our documentation on setting up the network devices."),
    );
    vmm.fault(
        "PUT",
        "/network-interfaces/eth1",
        Some(&nic("eth1", "mq0", "06:00:00:00:00:02")),
        "Invalid argument (os error 22). Invalid TUN/TAP Backend provided by mq0.",
    );
    vmm.fault(
        "PUT",
        "/network-interfaces/eth1",
        Some(&nic("eth1", "tap1", "06:00:00:00:00:01")),
        "Network config error: The MAC address is already in use: 06:00:00:00:00:01",
    );
    vmm.fault(
        "PUT",
        "/network-interfaces/eth1",
        Some(r#"{"iface_id":"eth1","host_dev_name":"tap1","mtu":67}"#),
        "Network config error: Could not create the network device: MTU 67 is out of range [68, 65535]",
    );
    vmm.fault(
        "PUT",
        "/network-interfaces/eth1",
        Some(r#"{"iface_id":"eth1","host_dev_name":"a-name-too-long-for-linux"}"#),
        "Open tap device failed: Invalid interface name",
    );
    // A re-PUT of eth0 that fails leaves no eth0 (Firecracker drops the old device
    // first), so its MAC is free again.
    vmm.fault(
        "PUT",
        "/network-interfaces/eth0",
        Some(&nic("eth0", "mq0", "06:00:00:00:00:01")),
        tap_failed,
    );
    let cfg = vmm.get_ok("/vm/config", "FullVmConfiguration");
    assert_eq!(cfg["network-interfaces"], json!([]), "{cfg}");
    vmm.put_ok(
        "PUT",
        "/network-interfaces/eth1",
        "NetworkInterface",
        serde_json::from_str(&nic("eth1", "tap0", "06:00:00:00:00:01")).unwrap(),
    );
    vmm.put_ok(
        "PUT",
        "/mmds/config",
        "MmdsConfig",
        json!({"network_interfaces": ["eth1"], "version": "V2"}),
    );
    let cfg = vmm.get_ok("/vm/config", "FullVmConfiguration");
    assert_eq!(
        cfg["mmds-config"],
        json!({"version": "V2", "imds_compat": false, "network_interfaces": ["eth1"], "ipv4_address": "169.254.169.254"})
    );

    // An unprivileged VMM cannot create a tap: a missing one is refused at PUT.
    let nobody = Vmm::spawn_with(VMM, Place::OwnNetnsAsNobody, &[]);
    nobody.ip(&["tuntap", "add", "mine", "mode", "tap", "user", "nobody"]);
    nobody.put_ok(
        "PUT",
        "/network-interfaces/eth0",
        "NetworkInterface",
        json!({"iface_id": "eth0", "host_dev_name": "mine"}),
    );
    nobody.fault(
        "PUT",
        "/network-interfaces/eth1",
        Some(r#"{"iface_id":"eth1","host_dev_name":"missing0"}"#),
        "Operation not permitted (os error 1). Invalid TUN/TAP Backend provided by missing0.",
    );
}

/// The header, log lines and payload limit as Firecracker writes them.
#[test]
fn headers_logs_and_the_payload_limit_are_firecracker_s() {
    let vmm = Vmm::spawn_with(
        VMM,
        Place::Here,
        &["--show-level", "--http-api-max-payload-size", "100"],
    );
    let (status, headers, _) = vmm.raw(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"T2"}"#),
    );
    assert_eq!(status, "HTTP/1.1 204 ");
    assert_eq!(
        headers,
        [
            "Server: Firecracker API",
            "Connection: keep-alive",
            "Deprecation: true"
        ]
    );
    let (_, headers, _) = vmm.raw(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":128}"#),
    );
    assert!(
        !headers.iter().any(|h| h.starts_with("Deprecation")),
        "{headers:?}"
    );
    let big = format!(r#"{{"kernel_image_path":"{}"}}"#, "k".repeat(100));
    let (status, _, body) = vmm.raw("PUT", "/boot-source", Some(&big));
    assert_eq!(status, "HTTP/1.1 400 ");
    assert_eq!(
        body,
        format!(
            "{{ \"error\": \"Request payload with size {} is larger than the limit of 100 allowed by server.\nAll previous unanswered requests will be dropped.\" }}",
            big.len()
        )
    );
    vmm.fault("PUT", "/drives", Some("{}"), "The ID cannot be empty.");
    vmm.get_ok("/", "InstanceInfo");
    let log = std::fs::read_to_string(vmm.dir.path().join("vmm.log")).unwrap();
    for want in [
        "[conf-1:fc_api:INFO] API server started.",
        "[conf-1:fc_api:INFO] The API server received a Put request on \"/machine-config\" with body \"{\\\"vcpu_count\\\":1,\\\"mem_size_mib\\\":128,\\\"cpu_template\\\":\\\"T2\\\"}\".",
        "[conf-1:fc_api:WARN] PUT /machine-config: cpu_template field is deprecated.",
        "[conf-1:fc_api:INFO] The request was executed successfully. Status code: 204 No Content.",
        "[conf-1:fc_api:ERROR] EmptyID",
        "[conf-1:fc_api:INFO] The API server received a Get request on \"/\".",
        "[conf-1:fc_api:INFO] The request was executed successfully. Status code: 200 OK.",
    ] {
        assert!(log.contains(want), "missing {want:?} in\n{log}");
    }
}

/// The same requests, sent to banger-vmm-qemu and to the real Firecracker
/// (`scripts/firecracker-assets`, v1.12.1 here), get the same status, body and
/// `Deprecation` header: the cases where 1.12.1 and 1.16.1 agree (see docs/vmm-qemu.md
/// for the few that changed between them).
#[test]
fn the_same_requests_get_the_real_firecracker_s_answers() {
    let fc = std::env::var_os("BANGER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache"))
        .join("firecracker/bin/firecracker");
    assert!(
        fc.exists(),
        "{} missing: run scripts/firecracker-assets",
        fc.display()
    );
    let ours = Vmm::spawn_with(VMM, Place::Here, &["--mmds-size-limit", "64"]);
    let theirs = Vmm::spawn_with(
        fc.to_str().unwrap(),
        Place::Here,
        &["--mmds-size-limit", "64"],
    );
    let kernel = ours.dir.path().join("vmlinux");
    std::fs::write(&kernel, b"k").unwrap();
    let k = kernel.to_str().unwrap();
    let cases: Vec<(&str, &str, Option<String>)> = vec![
        ("GET", "/mmds", None),
        ("PATCH", "/mmds", Some(r#"{"a":1}"#.into())),
        ("PUT", "/mmds/foo", Some("{}".into())),
        (
            "PUT",
            "/mmds",
            Some(format!(r#"{{"a":"{}"}}"#, "x".repeat(64))),
        ),
        ("PUT", "/mmds", Some(r#"{"a":{"b":1}}"#.into())),
        ("PATCH", "/mmds", Some(r#"{"a":{"b":null,"c":"d"}}"#.into())),
        (
            "PATCH",
            "/mmds",
            Some(format!(r#"{{"e":"{}"}}"#, "x".repeat(50))),
        ),
        ("GET", "/mmds", None),
        (
            "PUT",
            "/mmds/config",
            Some(r#"{"network_interfaces":[]}"#.into()),
        ),
        (
            "PUT",
            "/mmds/config",
            Some(r#"{"network_interfaces":["eth9"],"version":"V2"}"#.into()),
        ),
        (
            "PUT",
            "/mmds/config",
            Some(
                r#"{"network_interfaces":["eth9"],"version":"V2","ipv4_address":"10.0.0.1"}"#
                    .into(),
            ),
        ),
        (
            "PUT",
            "/mmds/config",
            Some(r#"{"network_interfaces":["eth9"],"version":"V3"}"#.into()),
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"T2"}"#.into()),
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"Z1"}"#.into()),
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":1,"mem_size_mib":129,"huge_pages":"2M"}"#.into()),
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":0,"mem_size_mib":128}"#.into()),
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":300,"mem_size_mib":128}"#.into()),
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":1,"mem_size_mib":-5}"#.into()),
        ),
        (
            "PATCH",
            "/machine-config",
            Some(r#"{"cpu_template":"None"}"#.into()),
        ),
        ("PATCH", "/machine-config", Some("{}".into())),
        ("GET", "/machine-config", None),
        (
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path":"/nonexistent/vmlinux"}"#.into()),
        ),
        (
            "PUT",
            "/boot-source",
            Some(format!(
                r#"{{"kernel_image_path":"{k}","initrd_path":"/nonexistent"}}"#
            )),
        ),
        (
            "PUT",
            "/boot-source",
            Some(format!(
                r#"{{"kernel_image_path":"{k}","boot_args":"{}"}}"#,
                "x".repeat(2100)
            )),
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(
                r#"{"drive_id":"rootfs","is_root_device":true,"path_on_host":"/nonexistent.ext4"}"#
                    .into(),
            ),
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(r#"{"drive_id":"rootfs","is_root_device":true,"cache_type":"Fast"}"#.into()),
        ),
        ("PUT", "/drives/a-b", Some("{}".into())),
        (
            "PUT",
            "/network-interfaces/eth0",
            Some(
                r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:zz:00:00:01"}"#
                    .into(),
            ),
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            Some(r#"{"iface_id":"eth1","host_dev_name":"tap0"}"#.into()),
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            Some(r#"{"iface_id":"eth0","host_dev_name":"a-name-too-long-for-linux"}"#.into()),
        ),
        ("PUT", "/logger", Some(r#"{"level":"loud"}"#.into())),
        (
            "PUT",
            "/logger",
            Some(r#"{"level":"Info","colour":1}"#.into()),
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#.into()),
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type":"Reboot"}"#.into()),
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type":"FlushMetrics"}"#.into()),
        ),
        ("PATCH", "/vm", Some(r#"{"state":"Paused"}"#.into())),
        ("PATCH", "/vm", Some(r#"{"state":"Stopped"}"#.into())),
        ("PUT", "/machine-config", None),
        ("GET", "/machine-config", Some("{}".into())),
        ("GET", "/nothing", None),
        ("POST", "/machine-config", Some("{}".into())),
        ("PUT", "/drives", Some("{}".into())),
    ];
    let mut differ = Vec::new();
    for (method, path, body) in &cases {
        let a = ours.raw(method, path, body.as_deref());
        let b = theirs.raw(method, path, body.as_deref());
        let dep = |h: &[String]| h.iter().any(|x| x == "Deprecation: true");
        // JSON bodies compare as JSON (Firecracker writes struct order, we sorted keys).
        let as_json = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.into()));
        if (a.0.as_str(), dep(&a.1), as_json(&a.2)) != (b.0.as_str(), dep(&b.1), as_json(&b.2)) {
            differ.push(format!(
                "{method} {path} {body:?}\n  banger-vmm-qemu: {} dep={} {}\n  firecracker:     {} dep={} {}",
                a.0, dep(&a.1), a.2, b.0, dep(&b.1), b.2
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} differ:\n{}",
        differ.len(),
        cases.len(),
        differ.join("\n")
    );
    // The full configuration of a fresh VMM: the keys 1.12.1 has, equal.
    let a = Vmm::spawn().get_ok("/vm/config", "FullVmConfiguration");
    let b = Vmm::spawn_with(fc.to_str().unwrap(), Place::Here, &[])
        .get_ok("/vm/config", "FullVmConfiguration");
    for (key, value) in b.as_object().unwrap() {
        assert_eq!(&a[key], value, "{key}");
    }
}

/// MMDS from a real guest, with curl (the host's, copied with its libraries onto the
/// guest's disk with a script the test guest's init runs): V2 needs a token, the
/// token comes from `PUT /latest/api/token`, paths answer in IMDS and JSON formats.
/// The VMM runs in its own network namespace with a tap of its own. Needs root.
#[test]
fn a_real_guest_reads_mmds_v2_with_curl() {
    let g = guest_dir();
    let (kernel, initrd) = (g.join("vmlinuz"), g.join("initrd.img"));
    assert!(
        kernel.exists() && initrd.exists(),
        "run scripts/guest-assets"
    );
    let mut vmm = Vmm::spawn_with(VMM, Place::OwnNetns, &[]);
    vmm.ip(&["tuntap", "add", "tap0", "mode", "tap"]);
    vmm.ip(&["addr", "add", "10.0.0.1/24", "dev", "tap0"]);
    vmm.ip(&["link", "set", "tap0", "up"]);

    // The disk: curl, the libraries it loads, and the script.
    let root = vmm.dir.path().join("disk");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("lib")).unwrap();
    let curl = Path::new("/usr/bin/curl");
    assert!(
        curl.exists(),
        "curl missing: scripts/install-deps installs it"
    );
    std::fs::copy(curl, root.join("bin/curl")).unwrap();
    let ldd = Command::new("ldd").arg(curl).output().unwrap();
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if word.starts_with('/') {
            let name = Path::new(word).file_name().unwrap();
            std::fs::copy(word, root.join("lib").join(name)).unwrap();
        }
    }
    let script = r#"#!/bin/sh
ip link set eth0 up
ip addr add 10.0.0.2/24 dev eth0
ip route add 169.254.169.254 dev eth0
C="/mnt/lib/ld-linux-x86-64.so.2 --library-path /mnt/lib /mnt/bin/curl -s -m 20"
M=http://169.254.169.254
echo "MMDS_NOTOKEN=$($C -o /dev/null -w '%{http_code}' $M/hostname)"
T=$($C -X PUT -H 'X-metadata-token-ttl-seconds: 60' $M/latest/api/token)
echo "MMDS_HOSTNAME=$($C -H "X-metadata-token: $T" $M/hostname)"
echo "MMDS_KEYS=$($C -H "X-metadata-token: $T" $M/latest/meta-data/ | tr '\n' ,)"
echo "MMDS_JSON=$($C -H "X-metadata-token: $T" -H 'Accept: application/json' $M/latest/meta-data/ami-id)"
echo "MMDS_MISSING=$($C -o /dev/null -w '%{http_code}' -H "X-metadata-token: $T" $M/nothing)"
ping -c 1 -W 10 10.0.0.1 >/dev/null 2>&1; echo "MMDS_TAP_PING=$?"
echo MMDS_DONE
"#;
    std::fs::write(root.join("run.sh"), script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("marker"), "mmds-disk\n").unwrap();
    let disk = vmm.dir.path().join("rootfs.ext4");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&disk)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.ext4");

    vmm.put_ok(
        "PUT",
        "/machine-config",
        "MachineConfiguration",
        json!({"vcpu_count": 1, "mem_size_mib": 256}),
    );
    vmm.put_ok("PUT", "/boot-source", "BootSource",
        json!({"kernel_image_path": kernel, "initrd_path": initrd, "boot_args": "console=ttyS0 reboot=k panic=1"}));
    vmm.put_ok("PUT", "/drives/rootfs", "Drive", json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": false}));
    vmm.put_ok(
        "PUT",
        "/network-interfaces/eth0",
        "NetworkInterface",
        json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:0a:00:00:02"}),
    );
    vmm.put_ok(
        "PUT",
        "/mmds/config",
        "MmdsConfig",
        json!({"network_interfaces": ["eth0"], "version": "V2"}),
    );
    vmm.put_ok("PUT", "/mmds", "MmdsContentsObject", json!({
        "hostname": "vm-from-mmds",
        "latest": {"meta-data": {"ami-id": "ami-42", "public-keys": {"0": "ssh-ed25519 AAAA"}, "local-ipv4": "10.0.0.2"}}
    }));
    vmm.put_ok(
        "PUT",
        "/actions",
        "InstanceActionInfo",
        json!({"action_type": "InstanceStart"}),
    );

    let console = vmm.dir.path().join("console.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("MMDS_DONE")
    {
        assert!(
            Instant::now() < deadline,
            "the guest never finished: {}",
            std::fs::read_to_string(&console).unwrap_or_default()
        );
        assert!(vmm.child.try_wait().unwrap().is_none(), "the VMM exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&console).unwrap();
    for want in [
        "MMDS_NOTOKEN=401",
        "MMDS_HOSTNAME=vm-from-mmds",
        "MMDS_KEYS=ami-id,local-ipv4,public-keys/",
        "MMDS_JSON=\"ami-42\"",
        "MMDS_MISSING=404",
        // The guest's other traffic still crosses the switch to the tap (and back).
        "MMDS_TAP_PING=0",
    ] {
        assert!(
            text.contains(want),
            "missing {want:?} in the console:\n{text}"
        );
    }
    // IMDS format ends without a newline after the last key.
    assert!(!text.contains("public-keys/,"), "{text}");
}
