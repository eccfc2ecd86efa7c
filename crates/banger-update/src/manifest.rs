//! `manifest.json` and `SHA256SUMS`.

use serde::{Deserialize, Serialize};

use banger_api::{Version, parse_version};

use crate::UpdateError;

/// The binaries a release carries, all and only them; nothing else is ever installed.
pub use banger_api::BINARIES as ARTEFACTS;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artefact {
    pub name: String,
    /// Relative to the manifest's URL, or absolute.
    pub url: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub version: String,
    pub channel: String,
    /// RFC 3339.
    pub published_at: String,
    /// RFC 3339; an expired manifest is refused (freeze attacks).
    pub expires_at: String,
    pub artefacts: Vec<Artefact>,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Self, UpdateError> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| UpdateError::MalformedManifest(e.to_string()))?;
        if m.schema != 1 {
            return Err(UpdateError::MalformedManifest(format!(
                "unknown schema {}",
                m.schema
            )));
        }
        m.version()?;
        m.expiry()?;
        let mut names: Vec<&str> = m.artefacts.iter().map(|a| a.name.as_str()).collect();
        names.sort();
        let mut want = ARTEFACTS.to_vec();
        want.sort();
        if names != want {
            return Err(UpdateError::MalformedManifest(format!(
                "artefacts must be exactly {ARTEFACTS:?}, got {names:?}"
            )));
        }
        for a in &m.artefacts {
            if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(UpdateError::MalformedManifest(format!(
                    "bad sha256 for {}",
                    a.name
                )));
            }
        }
        Ok(m)
    }

    pub fn version(&self) -> Result<Version, UpdateError> {
        parse_version(&self.version)
            .map_err(|e| UpdateError::MalformedManifest(format!("bad version: {e}")))
    }

    pub fn expiry(&self) -> Result<time::OffsetDateTime, UpdateError> {
        time::OffsetDateTime::parse(
            &self.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| UpdateError::MalformedManifest(format!("bad expires_at: {e}")))
    }

    pub fn check_not_expired(&self, now: time::OffsetDateTime) -> Result<(), UpdateError> {
        if self.expiry()? <= now {
            Err(UpdateError::Expired(self.expires_at.clone()))
        } else {
            Ok(())
        }
    }
}

/// `SHA256SUMS`: lines of `<64 hex>  <name>` (sha256sum's format, `*` for binary mode
/// accepted).
pub fn parse_sums(text: &[u8]) -> Result<Vec<(String, String)>, UpdateError> {
    let text =
        std::str::from_utf8(text).map_err(|_| UpdateError::MalformedSums("not UTF-8".into()))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (hash, name) = line
            .split_once("  ")
            .or_else(|| line.split_once(" *"))
            .ok_or_else(|| UpdateError::MalformedSums(format!("bad line {line:?}")))?;
        if hash.len() != 64
            || !hash.bytes().all(|b| b.is_ascii_hexdigit())
            || name.is_empty()
            || name.contains('/')
        {
            return Err(UpdateError::MalformedSums(format!("bad line {line:?}")));
        }
        if out.iter().any(|(_, n)| n == name) {
            return Err(UpdateError::MalformedSums(format!("{name} listed twice")));
        }
        out.push((hash.to_ascii_lowercase(), name.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: &str, expires: &str) -> String {
        let arts: Vec<String> = ARTEFACTS
            .iter()
            .map(|n| {
                format!(
                    r#"{{"name":"{n}","url":"{n}","size":1,"sha256":"{}"}}"#,
                    "a".repeat(64)
                )
            })
            .collect();
        format!(
            r#"{{"schema":1,"version":"{version}","channel":"stable","published_at":"2026-11-01T00:00:00Z","expires_at":"{expires}","artefacts":[{}]}}"#,
            arts.join(",")
        )
    }

    #[test]
    fn manifests_are_checked() {
        let now = time::OffsetDateTime::parse(
            "2026-11-23T00:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let m = Manifest::parse(manifest("0.2.0", "2027-01-01T00:00:00Z").as_bytes()).unwrap();
        m.check_not_expired(now).unwrap();
        let old = Manifest::parse(manifest("0.2.0", "2026-11-01T00:00:00Z").as_bytes()).unwrap();
        assert!(matches!(
            old.check_not_expired(now),
            Err(UpdateError::Expired(_))
        ));
        assert!(Manifest::parse(manifest("latest", "2027-01-01T00:00:00Z").as_bytes()).is_err());
        assert!(Manifest::parse(b"{}").is_err());
        let extra = manifest("0.2.0", "2027-01-01T00:00:00Z")
            .replace(r#""name":"banger","#, r#""name":"evil","#);
        assert!(
            Manifest::parse(extra.as_bytes()).is_err(),
            "only banger's binaries"
        );
        let unknown = manifest("0.2.0", "2027-01-01T00:00:00Z")
            .replace(r#""schema":1"#, r#""schema":1,"x":1"#);
        assert!(Manifest::parse(unknown.as_bytes()).is_err());
    }

    #[test]
    fn sums_are_parsed_strictly() {
        let h = "a".repeat(64);
        let ok = format!("{h}  manifest.json\n{h} *banger\n");
        assert_eq!(parse_sums(ok.as_bytes()).unwrap().len(), 2);
        for bad in [
            format!("{h} banger"),
            format!("{h}  ../etc/passwd"),
            "zz  banger".into(),
            format!("{h}  b\n{h}  b"),
        ] {
            assert!(parse_sums(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_manifest_version_is_a_plain_release() {
        let v = |version: &str| {
            Manifest::parse(manifest(version, "2027-01-01T00:00:00Z").as_bytes())?.version()
        };
        assert_eq!(v("0.2.0").unwrap(), Version::new(0, 2, 0));
        assert_eq!(v("v0.10.0").unwrap(), Version::new(0, 10, 0));
        match v("0.2.0-rc.1") {
            Err(UpdateError::MalformedManifest(m)) => {
                assert!(m.contains("pre-release"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_artefact_hash_must_be_64_hex_digits() {
        let good = manifest("0.2.0", "2027-01-01T00:00:00Z");
        let a64 = "a".repeat(64);
        for bad in [
            "a".repeat(63),
            "a".repeat(65),
            "g".repeat(64),
            format!("{}-", "a".repeat(63)),
        ] {
            let m = good.replacen(&a64, &bad, 1);
            match Manifest::parse(m.as_bytes()) {
                Err(UpdateError::MalformedManifest(e)) => {
                    assert_eq!(e, "bad sha256 for banger", "{bad}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(
            Manifest::parse(good.replace(&a64, &"A".repeat(64)).as_bytes()).is_ok(),
            "capitals are hex"
        );
        let schema2 = good.replace(r#""schema":1"#, r#""schema":2"#);
        assert!(
            matches!(Manifest::parse(schema2.as_bytes()), Err(UpdateError::MalformedManifest(e)) if e == "unknown schema 2")
        );
    }

    #[test]
    fn each_rule_of_a_sums_line_is_checked_on_its_own() {
        let h = "b".repeat(64);
        for (line, why) in [
            (format!("{}  banger", "b".repeat(63)), "63 digits"),
            (format!("{}  banger", "b".repeat(65)), "65 digits"),
            (format!("{}  banger", "x".repeat(64)), "64 non-hex"),
            (format!("{h}  "), "no name"),
            (format!("{h}  a/banger"), "a path"),
            (format!("{h}\tbanger"), "a tab"),
        ] {
            match parse_sums(line.as_bytes()) {
                Err(UpdateError::MalformedSums(e)) => {
                    assert!(e.starts_with("bad line"), "{why}: {e}")
                }
                other => panic!("{why}: {other:?}"),
            }
        }
        assert!(
            matches!(parse_sums(&[0xff, 0xfe]), Err(UpdateError::MalformedSums(e)) if e == "not UTF-8")
        );
        let upper = format!("{}  banger\n\n  \n", "B".repeat(64));
        assert_eq!(
            parse_sums(upper.as_bytes()).unwrap(),
            vec![(h, "banger".to_string())],
            "lowercased, blank lines skipped"
        );
    }
}
