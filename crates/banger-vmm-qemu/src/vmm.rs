//! The VMM's state and the one place it changes: [`Vmm::apply`] takes a parsed
//! [`VmmAction`], checks it against the phase rules of Firecracker's
//! `rpc_interface.rs` and its resource rules (`vmm_config/*.rs`), and either answers
//! at once or hands back the QEMU work ([`Applied::Start`], [`Applied::Qmp`]) for the
//! caller to run without holding the state. Errors are Firecracker's
//! `VmmActionError`, texts included.

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use banger_fc::models::{
    BootSource, Drive, EntropyDevice, MMDS_DEFAULT_IPV4, MachineConfiguration, Metrics, MmdsConfig,
    NetworkInterface, SerialDevice, VmStateRequest,
};
use serde_json::{Value, json};

use crate::action::VmmAction;
use crate::log::Logger;
use crate::mmds::{DataStore, MmdsError};
use crate::tap::TapError;

pub const VMM_VERSION: &str = "1.16.1";
pub const MAX_VCPUS: u8 = 32;
/// `CMDLINE_MAX_SIZE` on x86_64, NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    NotStarted,
    /// InstanceStart is under way (QEMU starting): pre-boot calls are refused, and
    /// `GET /` still says "Not started", as Firecracker's answer would once it returns.
    Starting,
    Running,
    Paused,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::NotStarted | InstanceState::Starting => "Not started",
            InstanceState::Running => "Running",
            InstanceState::Paused => "Paused",
        }
    }
}

/// `VmmActionError`: the text after the prefix is the resource's own error.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("Boot source error: {0}")]
    BootSource(#[from] BootSourceError),
    #[error("Drive config error: {0}")]
    Drive(#[from] DriveError),
    #[error("Internal VMM error: {0}")]
    Internal(String),
    #[error("Logger error: Failed to open target file: {0}")]
    Logger(#[source] std::io::Error),
    #[error("Machine config error: {0}")]
    MachineConfig(#[from] MachineConfigError),
    #[error("Metrics error: Cannot initialize the metrics system due to bad user input: {0}")]
    Metrics(#[from] MetricsError),
    #[error("MMDS error: {0}")]
    Mmds(#[source] MmdsError),
    // Sic: Firecracker's text has three Ms.
    #[error("MMMDS config error: {0}")]
    MmdsConfig(#[from] MmdsConfigError),
    #[error("MMDS limit exceeded error: {0}")]
    MmdsLimitExceeded(#[source] MmdsError),
    #[error("Network config error: {0}")]
    Network(#[from] NetworkError),
    #[error("The requested operation is not supported: {0}")]
    NotSupported(String),
    #[error("The requested operation is not supported after starting the microVM.")]
    NotSupportedPostBoot,
    #[error("The requested operation is not supported before starting the microVM.")]
    NotSupportedPreBoot,
    #[error("Start microvm error: {0}")]
    StartMicrovm(#[from] StartMicrovmError),
}

impl ActionError {
    /// 413 for a store that would outgrow its limit, 400 for everything else.
    pub fn status(&self) -> u16 {
        match self {
            ActionError::MmdsLimitExceeded(_) => 413,
            _ => 400,
        }
    }
}

impl From<MmdsError> for ActionError {
    fn from(e: MmdsError) -> Self {
        match e {
            MmdsError::DataStoreLimitExceeded => ActionError::MmdsLimitExceeded(e),
            MmdsError::NotInitialized => ActionError::Mmds(e),
        }
    }
}

/// Why InstanceStart failed. Each text is what the API returns to the client after
/// "Start microvm error: " (the first is Firecracker's own), so a variant with a cause
/// shows it inline as the other resource errors here do, and keeps it as its source.
#[derive(Debug, thiserror::Error)]
pub enum StartMicrovmError {
    #[error("Cannot start microvm without kernel configuration.")]
    MissingKernelConfig,
    #[error("cannot duplicate the tap: {0}")]
    DuplicateTap(#[source] std::io::Error),
    #[error("cannot make MMDS's socket pair: {0}")]
    MmdsSocketPair(#[source] nix::Error),
    #[error("cannot run {}: {source}", .bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start MMDS: {0}")]
    MmdsStart(#[source] std::io::Error),
    /// Waiting on QEMU's process failed (the text is the bare OS error, as before).
    #[error("{0}")]
    Wait(#[source] std::io::Error),
    #[error("qemu exited during start ({0}); see the VMM log")]
    Exited(std::process::ExitStatus),
    #[error("qemu did not start the guest within {} s", .0.as_secs())]
    Timeout(std::time::Duration),
    #[error("the start failed unexpectedly: {0}")]
    Panicked(String),
}

#[derive(Debug, thiserror::Error)]
pub enum BootSourceError {
    #[error("The kernel file cannot be opened: {0}")]
    KernelFile(#[source] std::io::Error),
    #[error("The initrd file cannot be opened due to invalid path or invalid permissions. {0}")]
    InitrdFile(#[source] std::io::Error),
    #[error("The kernel command line is invalid: {0}")]
    KernelCommandLine(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineConfigError {
    #[error(
        "The number of vCPUs must be greater than 0, less than {MAX_VCPUS} and must be 1 or an even number if SMT is enabled."
    )]
    InvalidVcpuCount,
    #[error("The memory size (MiB) is either 0, or not a multiple of the configured page size.")]
    InvalidMemorySize,
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("A root block device already exists!")]
    RootBlockDeviceAlreadyAdded,
    #[error(
        "Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: {0} {1}"
    )]
    BackingFile(#[source] std::io::Error, String),
    #[error("Unable to patch the block device: {0} Please verify the request arguments.")]
    DeviceUpdate(String),
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("The MAC address is already in use: {0}")]
    GuestMacAddressInUse(String),
    #[error("Could not create the network device: Open tap device failed: {0}")]
    OpenTap(#[from] TapError),
    #[error("Could not create the network device: MTU {0} is out of range [68, 65535]")]
    MtuOutOfRange(u16),
    #[error("Unable to update the net device: {0}")]
    DeviceUpdate(String),
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{0}")]
    Open(#[source] std::io::Error),
    #[error("Reinitialization of metrics not allowed.")]
    AlreadyInitialized,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmdsConfigError {
    #[error("The MMDS IPv4 address is not link local.")]
    InvalidIpv4Addr,
    #[error("The list of network interface IDs that allow forwarding MMDS requests is empty.")]
    EmptyNetworkIfaceList,
    #[error(
        "The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface."
    )]
    InvalidNetworkInterfaceId,
}

/// A network interface and the tap opened for it at PUT time.
#[derive(Debug)]
pub struct Net {
    pub config: NetworkInterface,
    pub tap: OwnedFd,
}

/// An interface as the start needs it: its configuration, its tap (a duplicate of the
/// descriptor opened at PUT), and the MMDS it serves, if `PUT /mmds/config` named it.
#[derive(Debug)]
pub struct PlanNet {
    pub config: NetworkInterface,
    pub tap: OwnedFd,
    pub mmds: Option<PlanMmds>,
}

#[derive(Debug, Clone)]
pub struct PlanMmds {
    pub ip: std::net::Ipv4Addr,
    pub version: banger_fc::models::MmdsVersion,
    pub imds_compat: bool,
    pub store: Arc<Mutex<DataStore>>,
}

/// Everything QEMU is started with, copied out of the state so that the start runs
/// without it.
#[derive(Debug)]
pub struct StartPlan {
    pub id: String,
    pub machine: MachineConfiguration,
    pub boot: BootSource,
    /// Root device first.
    pub drives: Vec<Drive>,
    pub nets: Vec<PlanNet>,
    pub qmp_socket: PathBuf,
    pub serial_out: Option<PathBuf>,
    pub entropy: bool,
    pub log: Logger,
}

/// A QMP command to run for a post-boot action, and the state it leads to.
#[derive(Debug, Clone)]
pub struct QmpCall {
    pub socket: PathBuf,
    pub command: &'static str,
    pub arguments: Option<Value>,
    pub then: Option<InstanceState>,
    /// What failed, for the error ("pause the microVM").
    pub what: &'static str,
}

/// What applying an action produced.
#[derive(Debug)]
pub enum Applied {
    /// 204.
    Done,
    /// 200 with this body.
    Body(Value),
    /// InstanceStart: start QEMU with this plan, then [`Vmm::started`].
    Start(Box<StartPlan>),
    /// Run this QMP command, then [`Vmm::qmp_done`].
    Qmp(QmpCall),
}

/// Everything configured through the API.
#[derive(Debug)]
pub struct Vmm {
    pub id: String,
    pub api_sock: PathBuf,
    pub state: InstanceState,
    pub machine: MachineConfiguration,
    pub boot: Option<BootSource>,
    pub drives: Vec<Drive>,
    pub nets: Vec<Net>,
    pub metrics: Option<Metrics>,
    pub serial: Option<SerialDevice>,
    pub entropy: Option<EntropyDevice>,
    /// Shared with the MMDS that serves the guest.
    pub mmds: Arc<Mutex<DataStore>>,
    pub mmds_config: Option<MmdsConfig>,
    pub log: Logger,
}

fn pre_boot(v: &Vmm) -> Result<(), ActionError> {
    match v.state {
        InstanceState::NotStarted => Ok(()),
        _ => Err(ActionError::NotSupportedPostBoot),
    }
}

fn post_boot(v: &Vmm) -> Result<(), ActionError> {
    match v.state {
        InstanceState::Running | InstanceState::Paused => Ok(()),
        _ => Err(ActionError::NotSupportedPreBoot),
    }
}

impl Vmm {
    pub fn new(id: String, api_sock: PathBuf, mmds_limit: usize, log: Logger) -> Self {
        Self {
            id,
            api_sock,
            state: InstanceState::NotStarted,
            machine: MachineConfiguration::default(),
            boot: None,
            drives: Vec::new(),
            nets: Vec::new(),
            metrics: None,
            serial: None,
            entropy: None,
            mmds: Arc::new(Mutex::new(DataStore::new(mmds_limit))),
            mmds_config: None,
            log,
        }
    }

    pub fn qmp_socket(&self) -> PathBuf {
        let mut s = self.api_sock.clone().into_os_string();
        s.push(".qmp");
        s.into()
    }

    pub fn apply(&mut self, action: VmmAction) -> Result<Applied, ActionError> {
        use VmmAction as A;
        match action {
            A::GetInstanceInfo => Ok(Applied::Body(json!({
                "app_name": "Firecracker",
                "id": self.id,
                "state": self.state.as_str(),
                "vmm_version": VMM_VERSION,
            }))),
            A::GetVersion => Ok(Applied::Body(json!({ "firecracker_version": VMM_VERSION }))),
            A::GetMachineConfig => Ok(Applied::Body(to_json(&self.machine))),
            A::GetFullVmConfig => {
                if self.state == InstanceState::NotStarted {
                    self.log.main_warn(
                        "If the VM was restored from snapshot, boot-source, machine-config.smt, and machine-config.cpu_template will all be empty.",
                    );
                }
                Ok(Applied::Body(self.full_config()))
            }
            A::GetMmds => Ok(Applied::Body(self.store().get())),
            A::PutMachineConfig(mc) => {
                pre_boot(self)?;
                self.machine = validate_machine(mc)?;
                Ok(Applied::Done)
            }
            A::PatchMachineConfig(update) => {
                pre_boot(self)?;
                self.machine = validate_machine(update.apply_to(&self.machine))?;
                Ok(Applied::Done)
            }
            A::PutBootSource(bs) => {
                pre_boot(self)?;
                self.boot = Some(check_boot_source(bs)?);
                Ok(Applied::Done)
            }
            A::PutDrive(d) => {
                pre_boot(self)?;
                self.put_drive(d)?;
                Ok(Applied::Done)
            }
            A::PatchDrive(d) => {
                post_boot(self)?;
                Err(DriveError::DeviceUpdate(format!(
                    "banger-vmm-qemu does not support changing drive {} after boot.",
                    d.drive_id
                ))
                .into())
            }
            A::PutNetworkInterface(n) => {
                pre_boot(self)?;
                self.put_net(n)?;
                Ok(Applied::Done)
            }
            A::PatchNetworkInterface(n) => {
                post_boot(self)?;
                if !self.nets.iter().any(|x| x.config.iface_id == n.iface_id) {
                    return Err(NetworkError::DeviceUpdate(format!(
                        "Invalid interface ID - not found: {}",
                        n.iface_id
                    ))
                    .into());
                }
                // Rate limiters are accepted and not enforced (docs/vmm-qemu.md).
                Ok(Applied::Done)
            }
            A::PutLogger(l) => {
                pre_boot(self)?;
                if let Some(p) = &l.log_path {
                    self.log
                        .redirect(Path::new(p))
                        .map_err(ActionError::Logger)?;
                }
                self.log.configure(&l);
                Ok(Applied::Done)
            }
            A::PutMetrics(m) => {
                pre_boot(self)?;
                self.init_metrics(m)?;
                Ok(Applied::Done)
            }
            A::PutSerial(s) => {
                pre_boot(self)?;
                self.serial = Some(s);
                Ok(Applied::Done)
            }
            A::PutEntropy(e) => {
                pre_boot(self)?;
                self.entropy = Some(e);
                Ok(Applied::Done)
            }
            A::PutMmds(data) => {
                self.store().put(data)?;
                Ok(Applied::Done)
            }
            A::PatchMmds(patch) => {
                self.store().patch(patch)?;
                Ok(Applied::Done)
            }
            A::PutMmdsConfig(c) => {
                pre_boot(self)?;
                self.mmds_config = Some(self.check_mmds_config(c)?);
                Ok(Applied::Done)
            }
            A::PatchVm(want) => {
                post_boot(self)?;
                let (command, next, what) = match want {
                    VmStateRequest::Paused => ("stop", InstanceState::Paused, "pause the microVM"),
                    VmStateRequest::Resumed => {
                        ("cont", InstanceState::Running, "resume the microVM")
                    }
                };
                if self.state == next {
                    return Ok(Applied::Done);
                }
                Ok(Applied::Qmp(QmpCall {
                    socket: self.qmp_socket(),
                    command,
                    arguments: None,
                    then: Some(next),
                    what,
                }))
            }
            A::InstanceStart => {
                pre_boot(self)?;
                let Some(boot) = self.boot.clone() else {
                    return Err(StartMicrovmError::MissingKernelConfig.into());
                };
                let mut nets = Vec::new();
                for n in &self.nets {
                    let tap = n.tap.try_clone().map_err(StartMicrovmError::DuplicateTap)?;
                    nets.push(PlanNet {
                        config: n.config.clone(),
                        tap,
                        mmds: self.mmds_for(&n.config.iface_id),
                    });
                }
                self.state = InstanceState::Starting;
                Ok(Applied::Start(Box::new(StartPlan {
                    id: self.id.clone(),
                    machine: self.machine.clone(),
                    boot,
                    drives: self.drives.clone(),
                    nets,
                    qmp_socket: self.qmp_socket(),
                    serial_out: self
                        .serial
                        .as_ref()
                        .and_then(|s| s.serial_out_path.clone())
                        .map(PathBuf::from),
                    entropy: self.entropy.is_some(),
                    log: self.log.clone(),
                })))
            }
            A::SendCtrlAltDel => {
                post_boot(self)?;
                Ok(Applied::Qmp(QmpCall {
                    socket: self.qmp_socket(),
                    command: "send-key",
                    arguments: Some(json!({"keys": [
                        {"type": "qcode", "data": "ctrl"},
                        {"type": "qcode", "data": "alt"},
                        {"type": "qcode", "data": "delete"}
                    ]})),
                    then: None,
                    what: "send CTRL+ALT+DEL",
                }))
            }
            A::FlushMetrics => {
                post_boot(self)?;
                self.flush_metrics()?;
                Ok(Applied::Done)
            }
            A::Unsupported(resource) => Err(ActionError::NotSupported(format!(
                "banger-vmm-qemu does not implement /{resource} (see docs/vmm-qemu.md)"
            ))),
        }
    }

    pub fn store(&self) -> std::sync::MutexGuard<'_, DataStore> {
        self.mmds.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mmds_for(&self, iface_id: &str) -> Option<PlanMmds> {
        let c = self.mmds_config.as_ref()?;
        c.network_interfaces
            .iter()
            .any(|i| i == iface_id)
            .then(|| PlanMmds {
                ip: c.ipv4_address.unwrap_or(MMDS_DEFAULT_IPV4),
                version: c.version,
                imds_compat: c.imds_compat,
                store: self.mmds.clone(),
            })
    }

    /// The end of an InstanceStart: running, or back to not started.
    pub fn started(&mut self, ok: bool) {
        self.state = if ok {
            InstanceState::Running
        } else {
            InstanceState::NotStarted
        };
    }

    /// The end of a QMP call that succeeded.
    pub fn qmp_done(&mut self, call: &QmpCall) {
        if let Some(next) = call.then {
            self.state = next;
        }
    }

    fn put_drive(&mut self, d: Drive) -> Result<(), ActionError> {
        let existing_root = self
            .drives
            .iter()
            .any(|x| x.is_root_device && x.drive_id != d.drive_id);
        if d.is_root_device && existing_root {
            return Err(DriveError::RootBlockDeviceAlreadyAdded.into());
        }
        match (&d.path_on_host, &d.socket) {
            (Some(p), None) => check_backing_file(p, d.is_read_only.unwrap_or(false))?,
            (None, Some(_)) => {
                return Err(ActionError::NotSupported(
                    "banger-vmm-qemu does not implement vhost-user block devices".into(),
                ));
            }
            _ => {
                return Err(DriveError::BackingFile(
                    std::io::Error::from(std::io::ErrorKind::InvalidInput),
                    "(exactly one of path_on_host and socket must be given)".into(),
                )
                .into());
            }
        }
        // Re-PUT of an id replaces it; the root device goes first.
        self.drives.retain(|x| x.drive_id != d.drive_id);
        if d.is_root_device {
            self.drives.insert(0, d);
        } else {
            self.drives.push(d);
        }
        Ok(())
    }

    fn put_net(&mut self, mut n: NetworkInterface) -> Result<(), ActionError> {
        if let Some(mac) = &n.guest_mac {
            // Firecracker shows a MAC in lower case whatever it was given in.
            let mac = mac.to_lowercase();
            if self.nets.iter().any(|x| {
                x.config.iface_id != n.iface_id && x.config.guest_mac.as_ref() == Some(&mac)
            }) {
                return Err(NetworkError::GuestMacAddressInUse(mac).into());
            }
            n.guest_mac = Some(mac);
        }
        // The old device of that id goes first, so that a failed re-PUT leaves none
        // (Firecracker's NetBuilder::build) and its tap is free for the new one.
        self.nets.retain(|x| x.config.iface_id != n.iface_id);
        let tap = crate::tap::open(&n.host_dev_name).map_err(NetworkError::from)?;
        if let Some(mtu) = n.mtu
            && mtu < 68
        {
            return Err(NetworkError::MtuOutOfRange(mtu).into());
        }
        self.nets.push(Net { config: n, tap });
        Ok(())
    }

    fn init_metrics(&mut self, m: Metrics) -> Result<(), ActionError> {
        // Firecracker opens (creating) the file before it looks at an earlier init.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&m.metrics_path)
            .map_err(MetricsError::Open)?;
        if self.metrics.is_some() {
            return Err(MetricsError::AlreadyInitialized.into());
        }
        self.metrics = Some(m);
        Ok(())
    }

    fn flush_metrics(&self) -> Result<(), ActionError> {
        use std::io::Write;
        let Some(m) = &self.metrics else {
            return Ok(());
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let line = json!({"utc_timestamp_ms": now_ms, "vmm": {"banger_vmm_qemu": 1}});
        std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&m.metrics_path)
            .and_then(|mut f| writeln!(f, "{line}"))
            .map_err(|e| ActionError::Internal(format!("Failed to write metrics: {e}")))
    }

    fn check_mmds_config(&self, c: MmdsConfig) -> Result<MmdsConfig, MmdsConfigError> {
        let ip = c.ipv4_address.unwrap_or(MMDS_DEFAULT_IPV4);
        let o = ip.octets();
        if !(o[0] == 169 && o[1] == 254 && o[2] != 0 && o[2] != 255) {
            return Err(MmdsConfigError::InvalidIpv4Addr);
        }
        if c.network_interfaces.is_empty() {
            return Err(MmdsConfigError::EmptyNetworkIfaceList);
        }
        if !c
            .network_interfaces
            .iter()
            .all(|id| self.nets.iter().any(|n| &n.config.iface_id == id))
        {
            return Err(MmdsConfigError::InvalidNetworkInterfaceId);
        }
        Ok(MmdsConfig {
            ipv4_address: Some(ip),
            ..c
        })
    }

    /// `GET /vm/config`, shaped as Firecracker's `VmmConfig` (no `serial` key; `logger`,
    /// `metrics` and `cpu-config` always null).
    fn full_config(&self) -> Value {
        let nets: Vec<Value> = self
            .nets
            .iter()
            .map(|n| {
                let mut v = to_json(&n.config);
                // Firecracker 1.16 shows an unset MTU as null.
                v.as_object_mut()
                    .expect("an interface is an object")
                    .entry("mtu")
                    .or_insert(Value::Null);
                v
            })
            .collect();
        let mmds = self.mmds_config.as_ref().map(|c| {
            json!({
                "version": c.version,
                "imds_compat": c.imds_compat,
                "network_interfaces": c.network_interfaces,
                "ipv4_address": c.ipv4_address.unwrap_or(MMDS_DEFAULT_IPV4),
            })
        });
        json!({
            "balloon": null,
            "drives": self.drives,
            "boot-source": self.boot.clone().unwrap_or_default(),
            "cpu-config": null,
            "logger": null,
            "machine-config": self.machine,
            "metrics": null,
            "mmds-config": mmds,
            "network-interfaces": nets,
            "vsock": null,
            "entropy": self.entropy,
            "pmem": [],
            "memory-hotplug": null,
        })
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("API models always serialize")
}

/// Firecracker's `MachineConfig::update` checks.
fn validate_machine(mc: MachineConfiguration) -> Result<MachineConfiguration, MachineConfigError> {
    if mc.vcpu_count == 0
        || mc.vcpu_count > MAX_VCPUS
        || (mc.smt && mc.vcpu_count > 1 && mc.vcpu_count % 2 == 1)
    {
        return Err(MachineConfigError::InvalidVcpuCount);
    }
    let page_mib_multiple = (mc.huge_pages.page_kib() / 1024).max(1);
    if mc.mem_size_mib == 0 || mc.mem_size_mib % page_mib_multiple != 0 {
        return Err(MachineConfigError::InvalidMemorySize);
    }
    Ok(mc)
}

/// Firecracker opens both files at PUT time, and checks the command line.
fn check_boot_source(bs: BootSource) -> Result<BootSource, BootSourceError> {
    std::fs::File::open(&bs.kernel_image_path).map_err(BootSourceError::KernelFile)?;
    if let Some(i) = &bs.initrd_path {
        std::fs::File::open(i).map_err(BootSourceError::InitrdFile)?;
    }
    let cmdline = bs
        .boot_args
        .as_deref()
        .unwrap_or(crate::qemu::DEFAULT_KERNEL_CMDLINE);
    // What Firecracker's linux-loader answers for a line that does not fit.
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(BootSourceError::KernelCommandLine(
            "Invalid cmdline capacity provided.",
        ));
    }
    if cmdline.bytes().any(|b| b == 0) {
        return Err(BootSourceError::KernelCommandLine(
            "Null terminator detected in the command line structure.",
        ));
    }
    if !cmdline.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(BootSourceError::KernelCommandLine(
            "String contains a non-printable ASCII character.",
        ));
    }
    Ok(bs)
}

/// The drive's file, opened as Firecracker's virtio-block would (read-write unless
/// read-only). A descriptor this VMM was handed (`/proc/self/fd/N`) is checked, never
/// reopened.
fn check_backing_file(path: &str, read_only: bool) -> Result<(), DriveError> {
    let fail = |e| DriveError::BackingFile(e, path.to_string());
    match crate::qemu::inherited_fd(path) {
        Some(n) => {
            use nix::fcntl::{FcntlArg, OFlag, fcntl};
            // SAFETY: the number is only queried for its flags, not taken over.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(n) };
            let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| fail(e.into()))?;
            let acc = OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE;
            let ok = if read_only {
                acc != OFlag::O_WRONLY
            } else {
                acc == OFlag::O_RDWR
            };
            if !ok {
                return Err(fail(std::io::Error::from_raw_os_error(libc::EBADF)));
            }
            Ok(())
        }
        None => std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map(drop)
            .map_err(fail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_fc::models::{HugePages, MachineConfigurationUpdate, MmdsVersion};

    fn vmm() -> Vmm {
        Vmm::new(
            "t".into(),
            "/nonexistent/api.sock".into(),
            51200,
            Logger::new("t"),
        )
    }

    fn err(v: &mut Vmm, a: VmmAction) -> String {
        v.apply(a).unwrap_err().to_string()
    }

    #[test]
    fn the_phase_rules_follow_rpc_interface() {
        let mut v = vmm();
        let pre = "The requested operation is not supported before starting the microVM.";
        for a in [
            VmmAction::SendCtrlAltDel,
            VmmAction::FlushMetrics,
            VmmAction::PatchVm(VmStateRequest::Paused),
        ] {
            assert_eq!(err(&mut v, a), pre);
        }
        v.state = InstanceState::Starting;
        let post = "The requested operation is not supported after starting the microVM.";
        assert_eq!(
            err(&mut v, VmmAction::InstanceStart),
            post,
            "a second start while starting"
        );
        assert_eq!(
            err(&mut v, VmmAction::PutMachineConfig(Default::default())),
            post
        );
        assert_eq!(
            err(&mut v, VmmAction::SendCtrlAltDel),
            pre,
            "not running yet"
        );
        v.state = InstanceState::Running;
        assert_eq!(
            err(&mut v, VmmAction::PutBootSource(Default::default())),
            post
        );
        assert!(matches!(
            v.apply(VmmAction::FlushMetrics),
            Ok(Applied::Done)
        ));
        match v.apply(VmmAction::PatchVm(VmStateRequest::Paused)).unwrap() {
            Applied::Qmp(c) => {
                assert_eq!(c.command, "stop");
                v.qmp_done(&c);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(v.state, InstanceState::Paused);
        // The state it is already in: nothing to do.
        assert!(matches!(
            v.apply(VmmAction::PatchVm(VmStateRequest::Paused)),
            Ok(Applied::Done)
        ));
        // MMDS data and every GET work in every phase.
        v.apply(VmmAction::PutMmds(json!({"a": 1}))).unwrap();
        assert!(
            matches!(v.apply(VmmAction::GetMmds), Ok(Applied::Body(b)) if b == json!({"a": 1}))
        );
    }

    /// What a failed start tells the client is the text it always was (the
    /// conformance suite compares the first with Firecracker's), and each cause stays
    /// reachable as the error's source.
    #[test]
    fn start_errors_keep_their_client_texts_and_their_causes() {
        use std::error::Error as _;
        use std::os::unix::process::ExitStatusExt;
        let io = || std::io::Error::from_raw_os_error(libc::EBADF);
        let bad_fd = io().to_string();
        let cases = [
            (
                StartMicrovmError::MissingKernelConfig,
                "Cannot start microvm without kernel configuration.".to_string(),
                None,
            ),
            (
                StartMicrovmError::DuplicateTap(io()),
                format!("cannot duplicate the tap: {bad_fd}"),
                Some(bad_fd.clone()),
            ),
            (
                StartMicrovmError::MmdsSocketPair(nix::Error::EMFILE),
                format!("cannot make MMDS's socket pair: {}", nix::Error::EMFILE),
                Some(nix::Error::EMFILE.to_string()),
            ),
            (
                StartMicrovmError::Spawn {
                    bin: "/usr/bin/qemu-system-x86_64".into(),
                    source: io(),
                },
                format!("cannot run /usr/bin/qemu-system-x86_64: {bad_fd}"),
                Some(bad_fd.clone()),
            ),
            (
                StartMicrovmError::MmdsStart(io()),
                format!("cannot start MMDS: {bad_fd}"),
                Some(bad_fd.clone()),
            ),
            (
                StartMicrovmError::Wait(io()),
                bad_fd.clone(),
                Some(bad_fd.clone()),
            ),
            (
                StartMicrovmError::Exited(std::process::ExitStatus::from_raw(1 << 8)),
                "qemu exited during start (exit status: 1); see the VMM log".to_string(),
                None,
            ),
            (
                StartMicrovmError::Timeout(std::time::Duration::from_secs(30)),
                "qemu did not start the guest within 30 s".to_string(),
                None,
            ),
            (
                StartMicrovmError::Panicked("task 1 panicked".into()),
                "the start failed unexpectedly: task 1 panicked".to_string(),
                None,
            ),
        ];
        for (e, text, source) in cases {
            assert_eq!(
                e.source().map(|s| s.to_string()),
                source,
                "the cause of {e:?}"
            );
            let e = ActionError::from(e);
            assert_eq!(e.to_string(), format!("Start microvm error: {text}"));
            assert_eq!(e.status(), 400, "{e}");
        }
    }

    #[test]
    fn a_start_needs_a_kernel_and_takes_a_copy_of_the_configuration() {
        let mut v = vmm();
        assert_eq!(
            err(&mut v, VmmAction::InstanceStart),
            "Start microvm error: Cannot start microvm without kernel configuration."
        );
        assert_eq!(v.state, InstanceState::NotStarted);
        v.boot = Some(BootSource {
            kernel_image_path: "/k".into(),
            ..Default::default()
        });
        let Applied::Start(plan) = v.apply(VmmAction::InstanceStart).unwrap() else {
            panic!()
        };
        assert_eq!(plan.boot.kernel_image_path, "/k");
        assert_eq!(plan.qmp_socket, Path::new("/nonexistent/api.sock.qmp"));
        assert_eq!(v.state, InstanceState::Starting);
        assert_eq!(
            v.apply(VmmAction::GetInstanceInfo)
                .ok()
                .map(|a| matches!(a, Applied::Body(b) if b["state"] == "Not started")),
            Some(true)
        );
        v.started(false);
        assert_eq!(
            v.state,
            InstanceState::NotStarted,
            "a failed start can be retried"
        );
        v.state = InstanceState::Starting;
        v.started(true);
        assert_eq!(v.state, InstanceState::Running);
    }

    #[test]
    fn machine_config_rules_and_texts() {
        let mc = |vcpu_count, mem_size_mib, smt, huge_pages| MachineConfiguration {
            vcpu_count,
            mem_size_mib,
            smt,
            huge_pages,
            ..Default::default()
        };
        let vcpus = "Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.";
        let memory = "Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.";
        let mut v = vmm();
        for (c, want) in [
            (mc(0, 128, false, HugePages::None), vcpus),
            (mc(33, 128, false, HugePages::None), vcpus),
            (mc(3, 128, true, HugePages::None), vcpus),
            (mc(1, 0, false, HugePages::None), memory),
            (mc(1, 129, false, HugePages::Hugetlbfs2M), memory),
        ] {
            assert_eq!(err(&mut v, VmmAction::PutMachineConfig(c)), want);
        }
        for ok in [
            mc(32, 128, false, HugePages::None),
            mc(1, 128, true, HugePages::None),
            mc(2, 130, true, HugePages::Hugetlbfs2M),
        ] {
            v.apply(VmmAction::PutMachineConfig(ok.clone())).unwrap();
            assert_eq!(v.machine, ok);
        }
        let patch = MachineConfigurationUpdate {
            mem_size_mib: Some(0),
            ..Default::default()
        };
        assert_eq!(err(&mut v, VmmAction::PatchMachineConfig(patch)), memory);
        assert_eq!(
            v.machine.mem_size_mib, 130,
            "a refused patch changes nothing"
        );
    }

    #[test]
    fn boot_source_files_and_command_line_are_checked_at_put() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, b"k").unwrap();
        let k = k.to_str().unwrap().to_string();
        let mut v = vmm();
        let bs = |kernel: &str, initrd: Option<&str>, args: Option<String>| {
            VmmAction::PutBootSource(BootSource {
                kernel_image_path: kernel.into(),
                initrd_path: initrd.map(String::from),
                boot_args: args,
            })
        };
        assert_eq!(
            err(&mut v, bs("/nonexistent/k", None, None)),
            "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)"
        );
        assert_eq!(
            err(&mut v, bs(&k, Some("/nonexistent/i"), None)),
            "Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. No such file or directory (os error 2)"
        );
        assert_eq!(
            err(&mut v, bs(&k, None, Some("x".repeat(2048)))),
            "Boot source error: The kernel command line is invalid: Invalid cmdline capacity provided."
        );
        assert!(err(&mut v, bs(&k, None, Some("a\u{7}b".into()))).contains("non-printable"));
        v.apply(bs(&k, None, Some("x".repeat(2047)))).unwrap();
        assert_eq!(v.boot.as_ref().unwrap().kernel_image_path, k);
    }

    #[test]
    fn drives_open_their_file_and_keep_one_root_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        std::fs::write(&d, b"d").unwrap();
        let d = d.to_str().unwrap();
        let mut v = vmm();
        let missing = "/nonexistent/disk";
        assert_eq!(
            err(
                &mut v,
                VmmAction::PutDrive(Drive::on_file("rootfs", missing, true, false))
            ),
            format!(
                "Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) {missing}"
            )
        );
        v.apply(VmmAction::PutDrive(Drive::on_file("data", d, false, true)))
            .unwrap();
        v.apply(VmmAction::PutDrive(Drive::on_file(
            "rootfs", d, true, false,
        )))
        .unwrap();
        assert_eq!(
            err(
                &mut v,
                VmmAction::PutDrive(Drive::on_file("other", d, true, false))
            ),
            "Drive config error: A root block device already exists!"
        );
        let ids: Vec<&str> = v.drives.iter().map(|x| x.drive_id.as_str()).collect();
        assert_eq!(ids, ["rootfs", "data"]);
        // Re-PUT of the root's id replaces it.
        v.apply(VmmAction::PutDrive(Drive::on_file("rootfs", d, true, true)))
            .unwrap();
        assert_eq!(v.drives.len(), 2);
        assert_eq!(v.drives[0].is_read_only, Some(true));
    }

    #[test]
    fn metrics_init_once_and_mmds_config_is_checked_against_the_interfaces() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics {
            metrics_path: dir.path().join("m").to_str().unwrap().into(),
        };
        let mut v = vmm();
        v.apply(VmmAction::PutMetrics(m.clone())).unwrap();
        assert_eq!(
            err(&mut v, VmmAction::PutMetrics(m)),
            "Metrics error: Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed."
        );
        let cfg = |ifaces: &[&str], ip: Option<[u8; 4]>| {
            VmmAction::PutMmdsConfig(MmdsConfig {
                version: MmdsVersion::V2,
                network_interfaces: ifaces.iter().map(|s| s.to_string()).collect(),
                ipv4_address: ip.map(Into::into),
                imds_compat: false,
            })
        };
        assert_eq!(
            err(&mut v, cfg(&[], None)),
            "MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty."
        );
        assert_eq!(
            err(&mut v, cfg(&["eth0"], Some([10, 0, 0, 1]))),
            "MMMDS config error: The MMDS IPv4 address is not link local."
        );
        assert_eq!(
            err(&mut v, cfg(&["eth0"], Some([169, 254, 0, 1]))),
            "MMMDS config error: The MMDS IPv4 address is not link local."
        );
        assert!(
            err(&mut v, cfg(&["eth0"], None))
                .contains("does not correspond to any existing network interface")
        );
        assert!(v.full_config()["mmds-config"].is_null());
        // MMDS data errors: 400 before a PUT, 413 past the limit.
        let e = v.apply(VmmAction::PatchMmds(json!({"a": 1}))).unwrap_err();
        assert_eq!(
            (e.status(), e.to_string().as_str()),
            (400, "MMDS error: The MMDS data store is not initialized.")
        );
        let e = v
            .apply(VmmAction::PutMmds(json!({"a": "x".repeat(51200)})))
            .unwrap_err();
        assert_eq!(
            (e.status(), e.to_string().as_str()),
            (
                413,
                "MMDS limit exceeded error: The MMDS patch request doesn't fit."
            )
        );
    }

    #[test]
    fn a_fresh_vm_config_is_firecracker_s() {
        assert_eq!(
            vmm().full_config(),
            json!({"balloon": null, "drives": [], "boot-source": {"kernel_image_path": "", "initrd_path": null, "boot_args": null},
                   "cpu-config": null, "logger": null,
                   "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": false, "huge_pages": "None"},
                   "metrics": null, "mmds-config": null, "network-interfaces": [], "vsock": null, "entropy": null,
                   "pmem": [], "memory-hotplug": null})
        );
    }
}
