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

impl Vmm {
    fn spawn() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let stdout = std::fs::File::create(dir.path().join("console.log")).unwrap();
        let child = Command::new(VMM)
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
    let vmm = Vmm::spawn();
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
        json!({"iface_id": "eth0", "host_dev_name": "lo", "guest_mac": "06:00:ac:10:00:02"}),
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
    assert_eq!(cfg["network-interfaces"][0]["host_dev_name"], "lo");
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
        "The vCPU number is invalid!",
    );
    vmm.fault(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":3,"mem_size_mib":128,"smt":true}"#),
        "The vCPU number is invalid!",
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
        "The kernel file cannot be opened",
    );
    vmm.fault(
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path":"{k}","initrd_path":"/nonexistent"}}"#
        )),
        "The initrd file cannot be opened",
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
        "Unable to create the block device",
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
        "A root block device already exists!",
    );
    vmm.fault(
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id":"eth1","host_dev_name":"lo"}"#),
        "The id from the path [eth0] does not match the id from the body [eth1]!",
    );
    vmm.put_ok(
        "PUT",
        "/network-interfaces/eth0",
        "NetworkInterface",
        json!({"iface_id": "eth0", "host_dev_name": "lo", "guest_mac": "06:00:00:00:00:01"}),
    );
    vmm.fault(
        "PUT",
        "/network-interfaces/eth1",
        Some(r#"{"iface_id":"eth1","host_dev_name":"lo","guest_mac":"06:00:00:00:00:01"}"#),
        "The MAC address is already in use",
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
        "Cannot initialize the metrics system",
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
    let mut vmm = Vmm::spawn();
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
    vmm.put_ok(
        "PUT",
        "/actions",
        "InstanceActionInfo",
        json!({"action_type": "InstanceStart"}),
    );
    assert_eq!(vmm.get_ok("/", "InstanceInfo")["state"], "Running");

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
