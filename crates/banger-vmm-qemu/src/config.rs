//! Request bodies, shaped as in Firecracker's swagger v1.16.1 and its serde structs:
//! unknown fields are refused (`deny_unknown_fields`), defaults are Firecracker's.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u32,
    pub mem_size_mib: u32,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default = "huge_none")]
    pub huge_pages: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

fn huge_none() -> String {
    "None".into()
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            huge_pages: huge_none(),
            cpu_template: None,
        }
    }
}

/// PATCH /machine-config: every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigPatch {
    pub vcpu_count: Option<u32>,
    pub mem_size_mib: Option<u32>,
    pub smt: Option<bool>,
    pub track_dirty_pages: Option<bool>,
    pub huge_pages: Option<String>,
    pub cpu_template: Option<String>,
}

impl MachineConfigPatch {
    pub fn is_empty(&self) -> bool {
        self.vcpu_count.is_none()
            && self.mem_size_mib.is_none()
            && self.smt.is_none()
            && self.track_dirty_pages.is_none()
            && self.huge_pages.is_none()
            && self.cpu_template.is_none()
    }
}

pub const MAX_VCPUS: u32 = 32;

impl MachineConfig {
    /// Firecracker's VmConfigError texts (vmm_config/machine_config.rs).
    pub fn validate(&self) -> Result<(), String> {
        if self.vcpu_count == 0
            || self.vcpu_count > MAX_VCPUS
            || (self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 == 1)
        {
            return Err("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.".into());
        }
        if self.mem_size_mib == 0 {
            return Err(
                "The memory size (MiB) is either 0, or not a multiple of the configured page size."
                    .into(),
            );
        }
        if !matches!(self.huge_pages.as_str(), "None" | "2M") {
            return Err(format!(
                "unknown variant `{}`, expected `None` or `2M`",
                self.huge_pages
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default)]
    pub initrd_path: Option<String>,
    #[serde(default)]
    pub boot_args: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CacheType {
    #[default]
    Unsafe,
    Writeback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum IoEngine {
    #[default]
    Sync,
    Async,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    #[serde(default)]
    pub partuuid: Option<String>,
    pub is_root_device: bool,
    #[serde(default)]
    pub cache_type: CacheType,
    #[serde(default)]
    pub is_read_only: Option<bool>,
    #[serde(default)]
    pub path_on_host: Option<String>,
    #[serde(default)]
    pub rate_limiter: Option<Value>,
    #[serde(default)]
    pub io_engine: IoEngine,
    #[serde(default)]
    pub socket: Option<String>,
}

/// Parsed to validate the body; banger-vmm-qemu refuses the patch itself.
#[allow(dead_code)]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    pub drive_id: String,
    #[serde(default)]
    pub path_on_host: Option<String>,
    #[serde(default)]
    pub rate_limiter: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default)]
    pub guest_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    #[serde(default)]
    pub rx_rate_limiter: Option<Value>,
    #[serde(default)]
    pub tx_rate_limiter: Option<Value>,
}

/// Rate limiters are accepted and not enforced (docs/vmm-qemu.md).
#[allow(dead_code)]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    pub iface_id: String,
    #[serde(default)]
    pub rx_rate_limiter: Option<Value>,
    #[serde(default)]
    pub tx_rate_limiter: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    FlushMetrics,
    InstanceStart,
    SendCtrlAltDel,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VmStateReq {
    Paused,
    Resumed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmBody {
    pub state: VmStateReq,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    #[serde(default)]
    pub log_path: Option<String>,
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub show_level: Option<bool>,
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    #[serde(default)]
    pub module: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub metrics_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialDevice {
    #[serde(default)]
    pub serial_out_path: Option<String>,
    #[serde(default)]
    pub rate_limiter: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    #[serde(default)]
    pub rate_limiter: Option<Value>,
}

/// Firecracker's check on path ids (`{drive_id}`, `{iface_id}`).
pub fn valid_resource_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
