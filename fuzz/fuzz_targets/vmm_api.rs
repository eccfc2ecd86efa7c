//! The Firecracker API bodies `banger-vmm-qemu` accepts, parsed as its `api::parse`
//! parses them (`serde_json::from_slice` into the types of its `config.rs`), then
//! validated and serialized again as its routes do: `GET /machine-config` and
//! `GET /vm/config` serialize what was stored with `.expect("json")` and `json!`, so
//! anything a PUT accepts must serialize. The same bytes are also read as the
//! responses banger's Firecracker client parses (`banger_fc::models`).
//!
//! Each input is tried as every body, and as a path resource id (`/drives/{id}`).

#![no_main]

use libfuzzer_sys::fuzz_target;

/// `banger-vmm-qemu` is a binary crate; its body types and checks live in `config.rs`,
/// which uses nothing but serde, so the target compiles that very file. (Were it ever
/// to depend on the rest of the binary, this stops building, loudly.) `rustfmt::skip`:
/// the file is formatted with its crate, never by formatting this target.
#[allow(dead_code)]
#[rustfmt::skip]
#[path = "../../crates/banger-vmm-qemu/src/config.rs"]
mod config;

use config::*;

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    serde_json::from_slice(body).ok()
}

/// What `GET /machine-config` and `GET /vm/config` do with a stored body.
fn serializes<T: serde::Serialize>(v: &T) {
    let value = serde_json::to_value(v).expect("an accepted body serializes");
    serde_json::to_vec(&value).expect("its value serializes");
}

fuzz_target!(|data: &[u8]| {
    if let Some(mc) = parse::<MachineConfig>(data) {
        if mc.validate().is_ok() {
            assert!((1..=MAX_VCPUS).contains(&mc.vcpu_count) && mc.mem_size_mib > 0);
        }
        serializes(&mc);
    }
    if let Some(p) = parse::<MachineConfigPatch>(data) {
        let _ = p.is_empty();
    }
    if let Some(bs) = parse::<BootSource>(data) {
        serializes(&bs);
    }
    if let Some(d) = parse::<Drive>(data) {
        let _ = valid_resource_id(&d.drive_id);
        serializes(&d);
    }
    if let Some(d) = parse::<PartialDrive>(data) {
        let _ = valid_resource_id(&d.drive_id);
    }
    if let Some(n) = parse::<NetworkInterface>(data) {
        serializes(&n);
    }
    let _ = parse::<PartialNetworkInterface>(data);
    if let Some(l) = parse::<Logger>(data) {
        let _ = l.level.map(|l| l.to_lowercase());
    }
    let _ = parse::<Metrics>(data);
    let _ = parse::<SerialDevice>(data);
    if let Some(e) = parse::<EntropyDevice>(data) {
        serializes(&e);
    }
    let _ = parse::<ActionBody>(data);
    let _ = parse::<VmBody>(data);
    // PUT/PATCH /mmds store any JSON value and serve it back.
    if let Some(v) = parse::<serde_json::Value>(data) {
        serializes(&v);
    }

    // What banger reads from a VMM.
    use banger_fc::models;
    let _ = parse::<models::InstanceInfo>(data);
    let _ = parse::<models::FaultBody>(data);
    let _ = parse::<models::MachineConfiguration>(data);
    if let Some(c) = parse::<models::FullVmConfiguration>(data) {
        serializes(&c);
    }

    if let Ok(id) = std::str::from_utf8(data)
        && valid_resource_id(id)
    {
        assert!(
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{id:?}"
        );
    }
});
