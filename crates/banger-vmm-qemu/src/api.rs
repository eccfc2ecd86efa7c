//! The Firecracker API, served over the VMM's Unix socket.
//!
//! Routing is one match on (method, first path segment), as in Firecracker's
//! `parsed_request.rs`; every failure is `400 {"fault_message": ...}` with
//! Firecracker's texts; the pre/post-boot rules are in [`Phase`].

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue, SERVER};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::config::*;
use crate::log::Logger as Log;
use crate::qemu;

pub const VMM_VERSION: &str = "1.16.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    NotStarted,
    Running,
    Paused,
}

impl InstanceState {
    fn as_str(self) -> &'static str {
        match self {
            InstanceState::NotStarted => "Not started",
            InstanceState::Running => "Running",
            InstanceState::Paused => "Paused",
        }
    }
}

/// Everything configured through the API, plus the running QEMU.
#[derive(Debug)]
pub struct Vmm {
    pub id: String,
    pub api_sock: PathBuf,
    pub state: InstanceState,
    pub machine: MachineConfig,
    pub boot: Option<BootSource>,
    pub drives: Vec<Drive>,
    pub nets: Vec<NetworkInterface>,
    pub logger_configured: bool,
    pub metrics: Option<Metrics>,
    pub serial: Option<SerialDevice>,
    pub entropy: Option<EntropyDevice>,
    pub mmds: Value,
    pub max_payload: usize,
    pub log: Log,
}

impl Vmm {
    pub fn new(id: String, api_sock: PathBuf, max_payload: usize, log: Log) -> Self {
        Self {
            id,
            api_sock,
            state: InstanceState::NotStarted,
            machine: MachineConfig::default(),
            boot: None,
            drives: Vec::new(),
            nets: Vec::new(),
            logger_configured: false,
            metrics: None,
            serial: None,
            entropy: None,
            mmds: json!({}),
            max_payload,
            log,
        }
    }

    fn qmp_socket(&self) -> PathBuf {
        let mut s = self.api_sock.clone().into_os_string();
        s.push(".qmp");
        s.into()
    }
}

pub type Shared = Arc<Mutex<Vmm>>;

/// When an action is legal (rpc_interface.rs@v1.16.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    PreBoot,
    PostBoot,
}

const PRE_BOOT_ONLY: &str = "The requested operation is not supported after starting the microVM.";
const POST_BOOT_ONLY: &str =
    "The requested operation is not supported before starting the microVM.";

fn check_phase(vmm: &Vmm, phase: Phase) -> Result<(), Fault> {
    let started = vmm.state != InstanceState::NotStarted;
    match phase {
        Phase::PreBoot if started => Err(Fault(PRE_BOOT_ONLY.into())),
        Phase::PostBoot if !started => Err(Fault(POST_BOOT_ONLY.into())),
        _ => Ok(()),
    }
}

/// A 400 with `{"fault_message": ...}`.
#[derive(Debug)]
pub struct Fault(pub String);

type Reply = Result<Option<Value>, Fault>;

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Fault> {
    serde_json::from_slice(body).map_err(|e| {
        Fault(format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

fn resource_id(tokens: &[&str]) -> Result<String, Fault> {
    match tokens.get(1) {
        None | Some(&"") => Err(Fault("The ID cannot be empty.".into())),
        Some(id) if !valid_resource_id(id) => Err(Fault(
            "API Resource IDs can only contain alphanumeric characters and underscores.".into(),
        )),
        Some(id) => Ok((*id).to_string()),
    }
}

pub async fn serve(
    vmm: Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let max = vmm.lock().await.max_payload;
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(respond(Err(Fault(format!(
                "Request payload with size larger than the limit of {max} allowed by server."
            )))));
        }
    };
    let body = if body.is_empty() { None } else { Some(body) };
    let log_body = body
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    let reply = route(&vmm, &method, &path, body.as_deref()).await;
    {
        let v = vmm.lock().await;
        v.log.info(&format!(
            "The API server received a {} request on \"{}\" with body {:?}.",
            titlecase(&method),
            path,
            log_body.unwrap_or_default()
        ));
        match &reply {
            Ok(Some(_)) => v
                .log
                .info("The request was executed successfully. Status code: 200 OK."),
            Ok(None) => v
                .log
                .info("The request was executed successfully. Status code: 204 No Content."),
            Err(Fault(m)) => v.log.info(&format!(
                "Received Error. Status code: 400 Bad Request. Message: {m}"
            )),
        }
    }
    Ok(respond(reply))
}

fn titlecase(m: &Method) -> String {
    let s = m.as_str();
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_string() + &c.as_str().to_lowercase(),
        None => String::new(),
    }
}

/// Firecracker's (micro_http's) response shape: no reason phrase, `Server` and
/// `Connection` headers, JSON content type when there is a body, none on 204.
fn respond(reply: Reply) -> Response<Full<Bytes>> {
    let (status, body) = match reply {
        Ok(None) => (StatusCode::NO_CONTENT, None),
        Ok(Some(v)) => (StatusCode::OK, Some(v)),
        Err(Fault(m)) => (StatusCode::BAD_REQUEST, Some(json!({ "fault_message": m }))),
    };
    let bytes = body.map(|b| Bytes::from(serde_json::to_vec(&b).expect("json")));
    let has_body = bytes.is_some();
    let mut resp = Response::new(Full::new(bytes.unwrap_or_default()));
    *resp.status_mut() = status;
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(b""));
    let h = resp.headers_mut();
    h.insert(SERVER, HeaderValue::from_static("Firecracker API"));
    h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
    if has_body {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    resp
}

async fn route(vmm: &Shared, method: &Method, path: &str, body: Option<&[u8]>) -> Reply {
    let tokens: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let first = tokens[0];
    let mut v = vmm.lock().await;
    match (method.clone(), first, body) {
        (Method::GET, "", None) => Ok(Some(json!({
            "app_name": "Firecracker",
            "id": v.id,
            "state": v.state.as_str(),
            "vmm_version": VMM_VERSION,
        }))),
        (Method::GET, "version", None) => Ok(Some(json!({ "firecracker_version": VMM_VERSION }))),
        (Method::GET, "machine-config", None) => {
            Ok(Some(serde_json::to_value(&v.machine).expect("json")))
        }
        (Method::PUT, "machine-config", Some(b)) => {
            check_phase(&v, Phase::PreBoot)?;
            let mc: MachineConfig = parse(b)?;
            mc.validate().map_err(Fault)?;
            if mc.cpu_template.is_some() {
                v.log
                    .warn("PUT /machine-config: cpu_template is deprecated.");
            }
            v.machine = mc;
            Ok(None)
        }
        (Method::PATCH, "machine-config", Some(b)) => {
            check_phase(&v, Phase::PreBoot)?;
            let p: MachineConfigPatch = parse(b)?;
            if p.is_empty() {
                return Err(Fault("Empty PATCH request.".into()));
            }
            let mut mc = v.machine.clone();
            if let Some(x) = p.vcpu_count {
                mc.vcpu_count = x;
            }
            if let Some(x) = p.mem_size_mib {
                mc.mem_size_mib = x;
            }
            if let Some(x) = p.smt {
                mc.smt = x;
            }
            if let Some(x) = p.track_dirty_pages {
                mc.track_dirty_pages = x;
            }
            if let Some(x) = p.huge_pages {
                mc.huge_pages = x;
            }
            if p.cpu_template.is_some() {
                mc.cpu_template = p.cpu_template;
            }
            mc.validate().map_err(Fault)?;
            v.machine = mc;
            Ok(None)
        }
        (Method::PUT, "boot-source", Some(b)) => {
            check_phase(&v, Phase::PreBoot)?;
            let bs: BootSource = parse(b)?;
            // Firecracker opens both files at PUT time.
            std::fs::File::open(&bs.kernel_image_path)
                .map_err(|e| Fault(format!("The kernel file cannot be opened: {e}")))?;
            if let Some(i) = &bs.initrd_path {
                std::fs::File::open(i)
                    .map_err(|e| Fault(format!("The initrd file cannot be opened: {e}")))?;
            }
            if bs.boot_args.as_ref().is_some_and(|a| a.len() > 2048) {
                return Err(Fault(
                    "The kernel command line is invalid: Cmdline too long".into(),
                ));
            }
            v.boot = Some(bs);
            Ok(None)
        }
        (Method::PUT, "drives", Some(b)) => {
            let id = resource_id(&tokens)?;
            check_phase(&v, Phase::PreBoot)?;
            let d: Drive = parse(b)?;
            if d.drive_id != id {
                return Err(Fault(
                    "The id from the path does not match the id from the body!".into(),
                ));
            }
            put_drive(&mut v, d)?;
            Ok(None)
        }
        (Method::PATCH, "drives", Some(b)) => {
            let id = resource_id(&tokens)?;
            check_phase(&v, Phase::PostBoot)?;
            let d: PartialDrive = parse(b)?;
            if d.drive_id != id {
                return Err(Fault(
                    "The id from the path does not match the id from the body!".into(),
                ));
            }
            Err(Fault(format!(
                "Unable to patch the block device: banger-vmm-qemu does not support changing drive {id} after boot"
            )))
        }
        (Method::PUT, "network-interfaces", Some(b)) => {
            let id = resource_id(&tokens)?;
            check_phase(&v, Phase::PreBoot)?;
            let n: NetworkInterface = parse(b)?;
            if n.iface_id != id {
                return Err(Fault(format!(
                    "The id from the path [{id}] does not match the id from the body [{}]!",
                    n.iface_id
                )));
            }
            put_net(&mut v, n)?;
            Ok(None)
        }
        (Method::PATCH, "network-interfaces", Some(b)) => {
            let id = resource_id(&tokens)?;
            check_phase(&v, Phase::PostBoot)?;
            let n: PartialNetworkInterface = parse(b)?;
            if n.iface_id != id {
                return Err(Fault(format!(
                    "The id from the path [{id}] does not match the id from the body [{}]!",
                    n.iface_id
                )));
            }
            if !v.nets.iter().any(|x| x.iface_id == id) {
                return Err(Fault(format!("Invalid interface ID - not found: {id}")));
            }
            // Rate limiters are accepted and not enforced (docs/vmm-qemu.md).
            Ok(None)
        }
        (Method::PUT, "logger", Some(b)) => {
            check_phase(&v, Phase::PreBoot)?;
            let l: Logger = parse(b)?;
            if let Some(level) = &l.level
                && !["error", "warning", "warn", "info", "debug", "trace", "off"]
                    .contains(&level.to_lowercase().as_str())
            {
                return Err(Fault(format!("Invalid log level: {level}")));
            }
            if let Some(p) = &l.log_path {
                v.log.redirect(Path::new(p)).map_err(|e| {
                    Fault(format!(
                        "Cannot initialize logging system: Failed to open target file: {e}"
                    ))
                })?;
            }
            v.logger_configured = true;
            Ok(None)
        }
        (Method::PUT, "metrics", Some(b)) => {
            check_phase(&v, Phase::PreBoot)?;
            let m: Metrics = parse(b)?;
            if v.metrics.is_some() {
                return Err(Fault("Reinitialization of metrics not allowed.".into()));
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&m.metrics_path)
                .map_err(|e| Fault(format!("Cannot initialize the metrics system: {e}")))?;
            v.metrics = Some(m);
            Ok(None)
        }
        (Method::PUT, "serial", Some(b)) => {
            check_phase(&v, Phase::PreBoot)?;
            v.serial = Some(parse(b)?);
            Ok(None)
        }
        (Method::PUT, "entropy", Some(b)) => {
            check_phase(&v, Phase::PreBoot)?;
            v.entropy = Some(parse(b)?);
            Ok(None)
        }
        (Method::GET, "mmds", None) if tokens.len() == 1 => Ok(Some(v.mmds.clone())),
        (Method::PUT, "mmds", Some(b)) if tokens.len() == 1 => {
            let val: Value = parse(b)?;
            v.mmds = val;
            Ok(None)
        }
        (Method::PATCH, "mmds", Some(b)) if tokens.len() == 1 => {
            let patch: Value = parse(b)?;
            merge(&mut v.mmds, patch);
            Ok(None)
        }
        (Method::GET, "vm", None) if tokens.get(1) == Some(&"config") => Ok(Some(full_config(&v))),
        (Method::PATCH, "vm", Some(b)) if tokens.len() == 1 => {
            check_phase(&v, Phase::PostBoot)?;
            let body: VmBody = parse(b)?;
            let (cmd, next) = match body.state {
                VmStateReq::Paused => ("stop", InstanceState::Paused),
                VmStateReq::Resumed => ("cont", InstanceState::Running),
            };
            if v.state != next {
                qemu::qmp(&v.qmp_socket(), cmd, None)
                    .await
                    .map_err(|e| Fault(format!("Failed to {cmd} the microVM: {e}")))?;
                v.state = next;
            }
            Ok(None)
        }
        (Method::PUT, "actions", Some(b)) => {
            let a: ActionBody = parse(b)?;
            match a.action_type {
                ActionType::InstanceStart => {
                    check_phase(&v, Phase::PreBoot)?;
                    crate::start::instance_start(vmm.clone(), &mut v).await?;
                    Ok(None)
                }
                ActionType::SendCtrlAltDel => {
                    check_phase(&v, Phase::PostBoot)?;
                    let keys = json!({"keys": [
                        {"type": "qcode", "data": "ctrl"},
                        {"type": "qcode", "data": "alt"},
                        {"type": "qcode", "data": "delete"}
                    ]});
                    qemu::qmp(&v.qmp_socket(), "send-key", Some(keys))
                        .await
                        .map_err(|e| Fault(format!("Failed to send CTRL+ALT+DEL: {e}")))?;
                    Ok(None)
                }
                ActionType::FlushMetrics => {
                    check_phase(&v, Phase::PostBoot)?;
                    if let Some(m) = &v.metrics {
                        use std::io::Write;
                        let line =
                            json!({"utc_timestamp_ms": now_ms(), "vmm": {"banger_vmm_qemu": 1}});
                        let mut f = std::fs::OpenOptions::new()
                            .append(true)
                            .open(&m.metrics_path)
                            .map_err(|e| Fault(format!("Failed to write metrics: {e}")))?;
                        writeln!(f, "{line}")
                            .map_err(|e| Fault(format!("Failed to write metrics: {e}")))?;
                    }
                    Ok(None)
                }
            }
        }
        (
            Method::PUT,
            "vsock" | "balloon" | "snapshot" | "cpu-config" | "pmem" | "hotplug",
            Some(_),
        )
        | (Method::PATCH, "balloon" | "hotplug", Some(_))
        | (Method::GET, "balloon" | "hotplug", None) => Err(Fault(format!(
            "banger-vmm-qemu does not support /{first} (see docs/vmm-qemu.md)"
        ))),
        (Method::GET, _, Some(_)) => Err(Fault("GET request cannot have a body.".into())),
        (Method::PUT, _, None) => Err(Fault("Empty PUT request.".into())),
        (Method::PATCH, _, None) => Err(Fault("Empty PATCH request.".into())),
        (m, _, _) => Err(Fault(format!(
            "Invalid request method and/or path: {m} {first}."
        ))),
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn put_drive(v: &mut Vmm, d: Drive) -> Result<(), Fault> {
    match (&d.path_on_host, &d.socket) {
        (Some(p), None) => {
            let ro = d.is_read_only.unwrap_or(false);
            match crate::qemu::inherited_fd(p) {
                // A descriptor we were given is used as it is, never reopened: check
                // that it is open, and for writing when the drive is writable.
                Some(n) => {
                    // SAFETY: F_GETFL on a descriptor number only reads its flags.
                    let flags = unsafe { libc::fcntl(n, libc::F_GETFL) };
                    let acc = flags & libc::O_ACCMODE;
                    if flags < 0 || (!ro && acc != libc::O_RDWR) || acc == libc::O_WRONLY {
                        return Err(Fault(format!(
                            "Unable to create the block device: {p}: not an open descriptor with the access the drive needs"
                        )));
                    }
                }
                None => {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(!ro)
                        .open(p)
                        .map_err(|e| {
                            Fault(format!("Unable to create the block device: {p}: {e}"))
                        })?;
                }
            }
        }
        (None, Some(_)) => {
            return Err(Fault(
                "banger-vmm-qemu does not support vhost-user block devices".into(),
            ));
        }
        _ => {
            return Err(Fault(
                "Unable to create the block device: exactly one of path_on_host and socket must be given"
                    .into(),
            ));
        }
    }
    if d.is_root_device
        && v.drives
            .iter()
            .any(|x| x.is_root_device && x.drive_id != d.drive_id)
    {
        return Err(Fault("A root block device already exists!".into()));
    }
    // Re-PUT of an id overwrites it; the root device goes first.
    v.drives.retain(|x| x.drive_id != d.drive_id);
    if d.is_root_device {
        v.drives.insert(0, d);
    } else {
        v.drives.push(d);
    }
    Ok(())
}

fn put_net(v: &mut Vmm, n: NetworkInterface) -> Result<(), Fault> {
    if let Some(mtu) = n.mtu
        && mtu < 68
    {
        return Err(Fault(format!(
            "Invalid MTU {mtu}: must be between 68 and 65535"
        )));
    }
    if let Some(mac) = &n.guest_mac {
        let ok = mac.split(':').count() == 6
            && mac
                .split(':')
                .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
        if !ok {
            return Err(Fault(format!(
                "An error occurred when deserializing the json body of a request: invalid MAC address {mac}."
            )));
        }
        if v.nets
            .iter()
            .any(|x| x.iface_id != n.iface_id && x.guest_mac.as_deref() == Some(mac))
        {
            return Err(Fault("The MAC address is already in use".into()));
        }
    }
    // Firecracker opens the tap at PUT time; the device must exist for QEMU to open it.
    // Looked up in this process's network namespace (sysfs shows the namespace of
    // whoever mounted it, which need not be ours).
    let exists = std::ffi::CString::new(n.host_dev_name.as_str())
        // SAFETY: if_nametoindex reads a NUL-terminated name.
        .is_ok_and(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0);
    if !exists || n.host_dev_name.contains('/') {
        return Err(Fault(format!(
            "Could not create the network device: Open tap device failed: no device named {}",
            n.host_dev_name
        )));
    }
    v.nets.retain(|x| x.iface_id != n.iface_id);
    v.nets.push(n);
    Ok(())
}

/// RFC 7396 merge, as PATCH /mmds does.
fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other,
    }
}

fn full_config(v: &Vmm) -> Value {
    json!({
        "balloon": null,
        "drives": v.drives,
        "boot-source": v.boot,
        "cpu-config": null,
        "logger": null,
        "machine-config": v.machine,
        "metrics": null,
        "memory-hotplug": null,
        "mmds-config": null,
        "network-interfaces": v.nets,
        "pmem": [],
        "vsock": null,
        "entropy": v.entropy,
    })
}
