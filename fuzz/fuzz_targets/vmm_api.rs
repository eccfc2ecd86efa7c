//! The Firecracker API as `banger-vmm-qemu` reads it: each input is tried as the body
//! (and, as UTF-8, as the resource id) of every route its parser knows
//! (`request::parse`), and what parses is applied to a fresh VMM's state where that
//! touches no file or device (machine config, MMDS data and config, the GETs), whose
//! answers must serialize. The same bytes are also read as the responses banger's
//! Firecracker client parses (`banger_fc::models`).

#![no_main]

use banger_vmm_qemu::action::VmmAction;
use banger_vmm_qemu::request::parse;
use banger_vmm_qemu::vmm::{Applied, Vmm};
use hyper::Method;
use libfuzzer_sys::fuzz_target;

const ROUTES: &[(&str, &str)] = &[
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/rootfs"),
    ("PATCH", "/drives/rootfs"),
    ("PUT", "/network-interfaces/eth0"),
    ("PATCH", "/network-interfaces/eth0"),
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
    ("PUT", "/serial"),
    ("PUT", "/entropy"),
    ("PUT", "/mmds"),
    ("PATCH", "/mmds"),
    ("PUT", "/mmds/config"),
    ("PUT", "/actions"),
    ("PATCH", "/vm"),
    ("GET", "/vm/config"),
];

/// Actions that only change the in-memory state.
fn harmless(a: &VmmAction) -> bool {
    use VmmAction as A;
    matches!(
        a,
        A::PutMachineConfig(_)
            | A::PatchMachineConfig(_)
            | A::PutMmds(_)
            | A::PatchMmds(_)
            | A::PutMmdsConfig(_)
            | A::GetFullVmConfig
            | A::GetMachineConfig
            | A::GetMmds
    )
}

fuzz_target!(|data: &[u8]| {
    let log = banger_vmm_qemu::log::Logger::new("fuzz");
    log.configure(&banger_fc::models::Logger {
        level: Some(banger_fc::models::LogLevel::Off),
        ..Default::default()
    });
    let mut vmm = Vmm::new("fuzz".into(), "/nonexistent/api.sock".into(), 4096, log);
    for (method, path) in ROUTES {
        let method: Method = method.parse().unwrap();
        let Ok(parsed) = parse(&method, path, Some(data)) else {
            continue;
        };
        if harmless(&parsed.action) {
            match vmm.apply(parsed.action) {
                Ok(Applied::Body(v)) => {
                    serde_json::to_vec(&v).expect("an answer serializes");
                }
                Ok(_) => {}
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
    for get in ["/", "/machine-config", "/vm/config", "/mmds"] {
        let p = parse(&Method::GET, get, None).expect("a GET without body parses");
        if let Ok(Applied::Body(v)) = vmm.apply(p.action) {
            serde_json::to_vec(&v).expect("an answer serializes");
        }
    }
    if let Ok(id) = std::str::from_utf8(data)
        && !id.contains('/')
    {
        let path = format!("/drives/{id}");
        let body = format!(r#"{{"drive_id":{},"is_root_device":true}}"#, serde_json::json!(id));
        if parse(&Method::PUT, &path, Some(body.as_bytes())).is_ok() {
            assert!(
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{id:?}"
            );
        }
    }

    // What banger reads from a VMM.
    use banger_fc::models;
    let _ = serde_json::from_slice::<models::InstanceInfo>(data);
    let _ = serde_json::from_slice::<models::FaultBody>(data);
    let _ = serde_json::from_slice::<models::MachineConfiguration>(data);
    if let Ok(c) = serde_json::from_slice::<models::FullVmConfiguration>(data) {
        serde_json::to_vec(&c).expect("a parsed config serializes");
    }
});
