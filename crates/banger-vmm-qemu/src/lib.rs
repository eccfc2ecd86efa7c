//! banger-vmm-qemu's parts, as a library for its binary (`main.rs`) and its fuzz
//! target: the Firecracker API parsed into actions ([`request`], [`action`]), the
//! state they apply to ([`vmm`]), the HTTP side ([`http`]), MMDS ([`mmds`]), taps,
//! QEMU's command line and QMP ([`qemu`]), and InstanceStart ([`start`]).

pub mod action;
pub mod http;
pub mod log;
pub mod mmds;
pub mod qemu;
pub mod request;
pub mod start;
pub mod tap;
pub mod vmm;
