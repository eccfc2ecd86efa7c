//! The root helper's request line, read as `bangerd-root`'s `serve` reads it: at most
//! 64 KiB, up to the first newline, UTF-8 (`read_line`), then
//! `serde_json::from_str::<Request>`; a refusal is answered with a `Failure`.
//!
//! Beyond "no panic", an accepted request must survive the daemon's own serialization
//! (what `HelperClient::call` sends), and every id in it must be one plain path
//! component, so the paths the helper derives stay in banger's directories.

#![no_main]

use std::path::{Component, Path};

use banger_helper::{
    AllowGuest, BootFile, BuildImage, CreateTap, CreateVmDirs, DeleteTap, Digest, Dirs, Failure,
    FailureKind, LaunchVmm, Launches, NetworkConfig, PackageName, Ping, Release, RemoveVmRuntime,
    RemoveVmState, Reply, Request, Response, SetupNetwork, SignalVmm, TeardownNetwork, VmId,
    VmmExited,
};
use libfuzzer_sys::fuzz_target;

/// `bangerd-root`'s `TakeLimited`.
const LINE_LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(LINE_LIMIT)];
    let line = match data.iter().position(|&b| b == b'\n') {
        Some(i) => &data[..=i],
        None => data,
    };
    // `read_line` refuses a line that is not UTF-8 before anything parses it.
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };

    let response: Response = match serde_json::from_str::<Request>(line) {
        Ok(req) => {
            check_request(&req);
            Ok(Reply::Done)
        }
        Err(e) => Err(Failure {
            kind: FailureKind::BadArgument,
            message: format!("malformed request: {e}"),
        }),
    };
    serde_json::to_vec(&response).expect("a response always serializes");

    // The validated constructors on their own, with the whole input as the value.
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = VmId::new(s) {
            check_vm_id(&id);
        }
        if let Ok(d) = Digest::new(s) {
            check_component(d.as_str());
        }
        if let Ok(p) = PackageName::new(s) {
            check_package(&p);
        }
        if let Ok(r) = Release::new(s) {
            assert!(Release::KNOWN.contains(&r.as_str()));
        }
    }
});

fn check_request(req: &Request) {
    let wire = serde_json::to_string(req).expect("a request always serializes");
    let again: Request =
        serde_json::from_str(&wire).unwrap_or_else(|e| panic!("{wire} does not parse back: {e}"));
    assert_eq!(&again, req, "{wire} changed on the way back");

    match req {
        Request::Ping(Ping {})
        | Request::Launches(Launches {})
        | Request::SetupNetwork(SetupNetwork {})
        | Request::TeardownNetwork(TeardownNetwork {}) => {}
        Request::CreateVmDirs(CreateVmDirs { vm_id })
        | Request::RemoveVmRuntime(RemoveVmRuntime { vm_id })
        | Request::RemoveVmState(RemoveVmState { vm_id })
        | Request::DeleteTap(DeleteTap { vm_id })
        | Request::VmmExited(VmmExited { vm_id, .. })
        | Request::SignalVmm(SignalVmm { vm_id, .. })
        | Request::CreateTap(CreateTap { vm_id, .. })
        | Request::AllowGuest(AllowGuest { vm_id, .. }) => check_vm_id(vm_id),
        Request::LaunchVmm(LaunchVmm { vm_id, files, .. }) => {
            check_vm_id(vm_id);
            for f in [
                Some(&files.kernel),
                files.initrd.as_ref(),
                files.rootfs.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                if let BootFile::Image { digest, file } = f {
                    check_component(digest.as_str());
                    check_component(file.file_name());
                }
            }
        }
        Request::BuildImage(BuildImage {
            build_id,
            release,
            packages,
        }) => {
            check_vm_id(build_id);
            assert!(Release::KNOWN.contains(&release.as_str()));
            packages.iter().for_each(check_package);
        }
    }
}

/// Every path the helper derives from a VM id is exactly its directory plus the id.
fn check_vm_id(id: &VmId) {
    check_component(id.as_str());
    let dirs = Dirs::system();
    for (base, derived, depth) in [
        (&dirs.run, dirs.vm_run_dir(id), 2),
        (&dirs.state, dirs.vm_state_dir(id), 2),
        (&dirs.state, dirs.image_build(id), 2),
    ] {
        let rest = derived
            .strip_prefix(base)
            .expect("derived path under its base");
        assert_eq!(rest.components().count(), depth, "{}", derived.display());
    }
    assert!(
        NetworkConfig::tap_name(id).len() < 16,
        "tap name over IFNAMSIZ"
    );
}

fn check_component(s: &str) {
    let mut c = Path::new(s).components();
    assert!(
        matches!(c.next(), Some(Component::Normal(n)) if n == s),
        "{s:?} is not one path component"
    );
    assert!(c.next().is_none());
}

/// A package name reaches debootstrap's argument list: never an option.
fn check_package(p: &PackageName) {
    assert!(
        !p.as_str().starts_with('-') && !p.as_str().contains(['/', ' ', '\0']),
        "{p:?}"
    );
}
