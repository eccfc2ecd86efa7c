//! `manifest.json` as `banger update` reads it: `Manifest::parse`, then the version,
//! expiry and each artefact's URL next to the manifest (`fetch::sibling`). The
//! manifest is parsed only after its hash matched the signed SHA256SUMS, but the
//! parser must hold even without that. Also `parse_version` on the raw input.

#![no_main]

use banger_api::parse_version;
use banger_update::manifest::{ARTEFACTS, Manifest};
use libfuzzer_sys::fuzz_target;

const MANIFEST_URL: &str = "https://releases.banger.dev/stable/latest/manifest.json";

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        let v = m.version().expect("a parsed manifest has a version");
        assert_eq!(parse_version(&v.to_string()), Ok(v));
        m.expiry().expect("a parsed manifest has an expiry");
        let _ = m.check_not_expired(time::OffsetDateTime::UNIX_EPOCH);

        let mut names: Vec<&str> = m.artefacts.iter().map(|a| a.name.as_str()).collect();
        names.sort_unstable();
        let mut want = ARTEFACTS.to_vec();
        want.sort_unstable();
        assert_eq!(names, want, "only banger's binaries, each once");
        for a in &m.artefacts {
            assert!(a.sha256.len() == 64 && a.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
            let _ = banger_update::fetch::sibling(MANIFEST_URL, &a.url);
        }

        let text = serde_json::to_vec(&m).expect("a manifest serializes");
        assert_eq!(
            Manifest::parse(&text).expect("a serialized manifest parses"),
            m
        );
    }

    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(v) = parse_version(s)
    {
        // A release prints back as itself, with or without its `v`.
        assert_eq!(parse_version(&v.to_string()).as_ref(), Ok(&v));
        assert_eq!(parse_version(&format!("v{v}")), Ok(v));
    }
});
