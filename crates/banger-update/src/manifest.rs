//! `manifest.json` and `SHA256SUMS`.

use serde::{Deserialize, Serialize};

use crate::UpdateError;

/// `MAJOR.MINOR.PATCH`, compared numerically; a leading `v` is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.strip_prefix('v').unwrap_or(s);
        let mut it = s.split('.').map(|p| {
            if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() {
                p.parse().ok()
            } else {
                None
            }
        });
        let v = Version(it.next()??, it.next()??, it.next()??);
        if it.next().is_some() { None } else { Some(v) }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The binaries a release may carry; nothing else is ever installed.
pub const ARTEFACTS: [&str; 4] = ["banger", "bangerd", "bangerd-root", "banger-vmm-qemu"];

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
        Version::parse(&self.version).ok_or_else(|| {
            UpdateError::MalformedManifest(format!("bad version {:?}", self.version))
        })
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
    fn versions_compare_numerically() {
        assert!(Version::parse("v0.10.0").unwrap() > Version::parse("0.9.9").unwrap());
        for bad in ["", "1.2", "1.2.3.4", "1.x.3", "v", "1..2", "-1.2.3"] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
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
    fn version_parts_are_plain_digits_and_print_back() {
        for bad in ["+1.2.3", "1.+2.3", "1.2. 3", "1.2.3 "] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(Version::parse("v1.20.3").unwrap().to_string(), "1.20.3");
        assert_eq!(
            Version::parse("4294967295.0.0"),
            Some(Version(u32::MAX, 0, 0))
        );
        assert!(Version::parse("4294967296.0.0").is_none(), "overflow");
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
