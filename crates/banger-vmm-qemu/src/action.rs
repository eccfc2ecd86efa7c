//! What a parsed request asks the VMM to do: Firecracker's `VmmAction`, one variant per
//! operation, with its typed body. Parsing ([`crate::request`]) makes one; the VMM's
//! state ([`crate::vmm`]) applies it.

use banger_fc::models::{
    BootSource, Drive, EntropyDevice, Logger, MachineConfiguration, MachineConfigurationUpdate,
    Metrics, MmdsConfig, NetworkInterface, PartialDrive, PartialNetworkInterface, SerialDevice,
    VmStateRequest,
};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum VmmAction {
    GetInstanceInfo,
    GetVersion,
    GetMachineConfig,
    GetFullVmConfig,
    GetMmds,
    PutMachineConfig(MachineConfiguration),
    PatchMachineConfig(MachineConfigurationUpdate),
    PutBootSource(BootSource),
    PutDrive(Drive),
    PatchDrive(PartialDrive),
    PutNetworkInterface(NetworkInterface),
    PatchNetworkInterface(PartialNetworkInterface),
    PutLogger(Logger),
    PutMetrics(Metrics),
    PutSerial(SerialDevice),
    PutEntropy(EntropyDevice),
    PutMmds(Value),
    PatchMmds(Value),
    PutMmdsConfig(MmdsConfig),
    PatchVm(VmStateRequest),
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
    /// A Firecracker endpoint banger-vmm-qemu does not implement (docs/vmm-qemu.md).
    Unsupported(String),
}
