//! Firecracker's API bodies (swagger v1.16.1), shaped as Firecracker's own serde structs
//! in `src/vmm/src/vmm_config/*.rs`: the same field types, defaults and
//! `deny_unknown_fields`, and `Option::None` serialised as `null` as Firecracker's
//! `GET /vm/config` shows it. banger's client sends them and banger-vmm-qemu parses
//! and serves them, so the two cannot drift apart.
//!
//! One exception keeps older Firecrackers working: `mtu` (new in 1.16) is left out of
//! a body when unset, because earlier versions refuse the unknown field.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub app_name: String,
    pub id: String,
    pub state: String,
    pub vmm_version: String,
}

/// `x86_64` static CPU templates (deprecated in PUT/PATCH /machine-config), in
/// Firecracker's order, which its "expected one of" error lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StaticCpuTemplate {
    C3,
    T2,
    T2S,
    None,
    T2CL,
    T2A,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    #[default]
    None,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

impl HugePages {
    /// The page size in KiB.
    pub fn page_kib(self) -> usize {
        match self {
            HugePages::None => 4,
            HugePages::Hugetlbfs2M => 2048,
        }
    }
}

/// `PUT /machine-config` and `GET /machine-config` (`MachineConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    pub vcpu_count: u8,
    pub mem_size_mib: usize,
    #[serde(default)]
    pub smt: bool,
    /// Not shown when unset or `None`, as Firecracker shows it.
    #[serde(default, skip_serializing_if = "no_template")]
    pub cpu_template: Option<StaticCpuTemplate>,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub huge_pages: HugePages,
}

fn no_template(t: &Option<StaticCpuTemplate>) -> bool {
    matches!(t, None | Some(StaticCpuTemplate::None))
}

impl Default for MachineConfiguration {
    /// Firecracker's configuration before any PUT: 1 vCPU, 128 MiB.
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

/// `PATCH /machine-config` (`MachineConfigUpdate`): only the fields given change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigurationUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<StaticCpuTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigurationUpdate {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `base` with the given fields replaced.
    pub fn apply_to(&self, base: &MachineConfiguration) -> MachineConfiguration {
        MachineConfiguration {
            vcpu_count: self.vcpu_count.unwrap_or(base.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(base.mem_size_mib),
            smt: self.smt.unwrap_or(base.smt),
            cpu_template: self.cpu_template.or(base.cpu_template),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(base.track_dirty_pages),
            huge_pages: self.huge_pages.unwrap_or(base.huge_pages),
        }
    }
}

/// `PUT /boot-source` (`BootSourceConfig`). The default is what `GET /vm/config`
/// shows before any PUT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default)]
    pub initrd_path: Option<String>,
    #[serde(default)]
    pub boot_args: Option<String>,
}

/// A token bucket (`TokenBucketConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    pub size: u64,
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    pub refill_time: u64,
}

/// `RateLimiterConfig`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    #[serde(default)]
    pub bandwidth: Option<TokenBucket>,
    #[serde(default)]
    pub ops: Option<TokenBucket>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    #[default]
    Unsafe,
    Writeback,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    #[default]
    Sync,
    Async,
}

/// `PUT /drives/{drive_id}` (`BlockDeviceConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    pub rate_limiter: Option<RateLimiter>,
    #[serde(default)]
    pub io_engine: IoEngine,
    /// vhost-user-block.
    #[serde(default)]
    pub socket: Option<String>,
}

impl Drive {
    /// A virtio-block drive on `path`, the way banger attaches disks.
    pub fn on_file(id: &str, path: &str, root: bool, read_only: bool) -> Self {
        Self {
            drive_id: id.into(),
            partuuid: None,
            is_root_device: root,
            cache_type: CacheType::Unsafe,
            is_read_only: Some(read_only),
            path_on_host: Some(path.into()),
            rate_limiter: None,
            io_engine: IoEngine::Sync,
            socket: None,
        }
    }
}

/// `PATCH /drives/{drive_id}` (`BlockDeviceUpdateConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    pub drive_id: String,
    #[serde(default)]
    pub path_on_host: Option<String>,
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /network-interfaces/{iface_id}` (`NetworkInterfaceConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, deserialize_with = "mac_address")]
    pub guest_mac: Option<String>,
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
    /// 1.16+; left out when unset so that older Firecrackers accept the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

/// Firecracker's `MacAddr`: six `:`-separated two-digit hex bytes, refused while the
/// body is read (so serde's error carries the position).
fn mac_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let mac = Option::<String>::deserialize(d)?;
    if let Some(m) = &mac {
        let parts: Vec<&str> = m.split(':').collect();
        let ok = parts.len() == 6
            && parts
                .iter()
                .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
        if !ok {
            return Err(serde::de::Error::custom(
                "The provided MAC address is invalid.",
            ));
        }
    }
    Ok(mac)
}

impl NetworkInterface {
    pub fn new(iface_id: &str, host_dev_name: &str, guest_mac: Option<String>) -> Self {
        Self {
            iface_id: iface_id.into(),
            host_dev_name: host_dev_name.into(),
            guest_mac,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            mtu: None,
        }
    }
}

/// `PATCH /network-interfaces/{iface_id}` (`NetworkInterfaceUpdateConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    pub iface_id: String,
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// A log level, parsed as Firecracker's `LevelFilter`: case-insensitive, `warn` too,
/// and anything else refused with its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum LogLevel {
    Off,
    Error,
    Warning,
    Info,
    Debug,
    Trace,
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.to_lowercase().as_str() {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warning,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return Err(serde::de::Error::custom("Invalid LevelFilter")),
        })
    }
}

/// `PUT /logger` (`LoggerConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    #[serde(default)]
    pub log_path: Option<String>,
    #[serde(default)]
    pub level: Option<LogLevel>,
    #[serde(default)]
    pub show_level: Option<bool>,
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    #[serde(default)]
    pub module: Option<String>,
}

/// `PUT /metrics` (`MetricsConfig`; unknown fields are ignored, as Firecracker does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    pub metrics_path: String,
}

/// `PUT /serial` (`SerialConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialDevice {
    #[serde(default)]
    pub serial_out_path: Option<String>,
    #[serde(default)]
    pub rate_limiter: Option<TokenBucket>,
}

/// `PUT /entropy` (`EntropyDeviceConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    /// Deprecated.
    #[default]
    V1,
    V2,
}

/// The address MMDS answers at unless `ipv4_address` says otherwise.
pub const MMDS_DEFAULT_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// `PUT /mmds/config` (`MmdsConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    #[serde(default)]
    pub version: MmdsVersion,
    pub network_interfaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<Ipv4Addr>,
    /// Sent only when set: older Firecracker (v1.12) refuses the field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub imds_compat: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    FlushMetrics,
    InstanceStart,
    SendCtrlAltDel,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmStateRequest {
    Paused,
    Resumed,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmPatch {
    pub state: VmStateRequest,
}

/// `GET /vm/config`; the parts banger does not read are kept as loose JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FullVmConfiguration {
    #[serde(rename = "machine-config")]
    pub machine_config: Option<MachineConfiguration>,
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// A refusal: `{"fault_message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultBody {
    pub fault_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_serialise_as_firecracker_shows_them() {
        assert_eq!(
            serde_json::to_value(MachineConfiguration::default()).unwrap(),
            json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false,
                   "track_dirty_pages": false, "huge_pages": "None"})
        );
        assert_eq!(
            serde_json::to_value(BootSource::default()).unwrap(),
            json!({"kernel_image_path": "", "initrd_path": null, "boot_args": null})
        );
        assert_eq!(
            serde_json::to_value(Drive::on_file("rootfs", "/d", true, false)).unwrap(),
            json!({"drive_id": "rootfs", "partuuid": null, "is_root_device": true,
                   "cache_type": "Unsafe", "is_read_only": false, "path_on_host": "/d",
                   "rate_limiter": null, "io_engine": "Sync", "socket": null})
        );
        // No `mtu` key when unset: Firecracker before 1.16 refuses it.
        assert_eq!(
            serde_json::to_value(NetworkInterface::new("eth0", "tap0", None)).unwrap(),
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": null,
                   "rx_rate_limiter": null, "tx_rate_limiter": null})
        );
    }

    #[test]
    fn parsing_refuses_what_firecracker_refuses() {
        let err = |v: serde_json::Value| {
            serde_json::from_value::<MachineConfiguration>(v)
                .unwrap_err()
                .to_string()
        };
        assert!(err(json!({"vcpu_count": 256, "mem_size_mib": 1})).contains("u8"));
        assert!(
            err(json!({"vcpu_count": 1, "mem_size_mib": 1, "cpu_template": "X9"}))
                .contains("unknown variant `X9`")
        );
        assert!(
            err(json!({"vcpu_count": 1, "mem_size_mib": 1, "huge_pages": "1G"}))
                .contains("unknown variant `1G`")
        );
        assert!(err(json!({"vcpu_count": 1, "mem_size_mib": 1, "x": 1})).contains("unknown field"));
        let patch: MachineConfigurationUpdate =
            serde_json::from_value(json!({"mem_size_mib": 256})).unwrap();
        let m = patch.apply_to(&MachineConfiguration::default());
        assert_eq!((m.vcpu_count, m.mem_size_mib), (1, 256));
        assert!(MachineConfigurationUpdate::default().is_empty());
        assert!(!patch.is_empty());
        let mac = |m: &str| {
            serde_json::from_value::<NetworkInterface>(
                json!({"iface_id": "e", "host_dev_name": "t", "guest_mac": m}),
            )
            .map_err(|e| e.to_string())
        };
        assert!(mac("06:00:AC:10:00:02").is_ok());
        for bad in [
            "06:00:ac:10:00",
            "06:00:ac:10:00:0g",
            "0600ac100002",
            "06:00:ac:10:00:002",
        ] {
            assert_eq!(
                mac(bad).unwrap_err(),
                "The provided MAC address is invalid.",
                "{bad}"
            );
        }
        let level =
            |s: &str| serde_json::from_value::<LogLevel>(json!(s)).map_err(|e| e.to_string());
        assert_eq!(level("WARN"), Ok(LogLevel::Warning));
        assert_eq!(level("info"), Ok(LogLevel::Info));
        assert_eq!(level("loud"), Err("Invalid LevelFilter".into()));
        let mmds: MmdsConfig =
            serde_json::from_value(json!({"network_interfaces": ["eth0"]})).unwrap();
        assert_eq!((mmds.version, mmds.ipv4_address), (MmdsVersion::V1, None));
    }
}
