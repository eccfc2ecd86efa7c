//! The daemon's request bodies (`crates/banger-api`), parsed as axum's `Json` parses
//! them (`serde_json` over the body bytes) and then checked as `bangerd` checks them:
//! `VmSpec::validate` (create), `StopRequest::validate` (stop), the image name,
//! release and package names (build), the image name and absolute paths (import).
//!
//! Each input is tried as every body. A spec the daemon accepts is stored as JSON and
//! read back at every start, so it must survive that round trip unchanged.

#![no_main]

use banger_api::{
    ImageBuildRequest, ImageImportRequest, MAX_BOOT_ARGS, MAX_STOP_TIMEOUT_SECS, StopRequest,
    VmName, VmSpec, VmState, validate_image_name,
};
use banger_helper::{PackageName, Release};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // POST /v1/vms
    if let Ok(spec) = serde_json::from_slice::<VmSpec>(data) {
        let stored = store_text(&spec);
        if spec.validate().is_ok() {
            check_accepted_spec(&spec, &stored);
        }
    }
    // POST /v1/vms/{name}/stop
    if let Ok(stop) = serde_json::from_slice::<StopRequest>(data)
        && stop.validate().is_ok()
    {
        assert!(stop.timeout_secs.is_none_or(|t| t <= MAX_STOP_TIMEOUT_SECS));
    }
    // POST /v1/images/build
    if let Ok(req) = serde_json::from_slice::<ImageBuildRequest>(data) {
        let _ = validate_image_name(&req.name);
        let _ = Release::new(req.release.clone());
        for p in &req.packages {
            let _ = PackageName::new(p.clone());
        }
    }
    // POST /v1/images/import
    if let Ok(req) = serde_json::from_slice::<ImageImportRequest>(data) {
        let _ = validate_image_name(&req.name);
        let _ = [Some(&req.kernel), req.initrd.as_ref(), Some(&req.rootfs)]
            .into_iter()
            .flatten()
            .all(|p| p.is_absolute());
    }
    // Path segments and stored states.
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(name) = VmName::new(s) {
            check_name(name.as_str());
        }
        if let Some(state) = VmState::parse(s) {
            assert_eq!(state.as_str(), s);
        }
    }
});

/// `bangerd`'s store writes the spec with `serde_json::to_string`.
fn store_text(spec: &VmSpec) -> String {
    serde_json::to_string(spec).expect("a parsed spec always serializes")
}

fn check_accepted_spec(spec: &VmSpec, stored: &str) {
    let back: VmSpec = serde_json::from_str(stored)
        .unwrap_or_else(|e| panic!("stored spec {stored} does not read back: {e}"));
    assert_eq!(&back, spec, "stored spec {stored} changed on the way back");
    assert_eq!(
        back.validate(),
        Ok(()),
        "stored spec {stored} no longer validates"
    );

    check_name(spec.name.as_str());
    assert!(
        spec.boot_args
            .as_ref()
            .is_none_or(|a| a.len() <= MAX_BOOT_ARGS)
    );
    assert!(spec.image.is_some() != spec.kernel.is_some());
    for p in [
        spec.kernel.as_ref(),
        spec.initrd.as_ref(),
        spec.rootfs.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(p.is_absolute());
    }
    for k in &spec.ssh_keys {
        assert!(
            !k.contains(['\n', '\r', '\0']),
            "an SSH key line break reaches authorized_keys"
        );
    }
}

/// A VM name becomes a path component, a host name and part of instance ids.
fn check_name(n: &str) {
    assert!(
        !n.is_empty() && n.len() <= 64 && !n.starts_with('-') && !n.contains(['/', '.', '\0']),
        "{n:?}"
    );
}
