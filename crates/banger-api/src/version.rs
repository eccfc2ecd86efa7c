//! Release versions: one type for banger's own releases and the VMMs it checks
//! (`semver::Version`), and one parser for the plain `MAJOR.MINOR.PATCH` they are
//! written as.

pub use semver::Version;

/// Why a text is not a release version.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    #[error("{text:?} is not a version like 1.2.3: {reason}")]
    Malformed { text: String, reason: String },
    /// Semantic versioning allows `1.2.3-rc.1` and `1.2.3+build`; a release is
    /// neither, so none is ever compared with one.
    #[error("{0:?} is a pre-release or build version, not a release like 1.2.3")]
    NotARelease(String),
}

/// Parses `MAJOR.MINOR.PATCH` (digits only, no leading zeros, no pre-release or build
/// part), with one optional leading `v` as tags and `--to` are written. Versions
/// compare numerically (`0.10.0 > 0.9.9`).
pub fn parse_version(text: &str) -> Result<Version, VersionError> {
    let plain = text.strip_prefix('v').unwrap_or(text);
    let v = Version::parse(plain).map_err(|e| VersionError::Malformed {
        text: text.to_string(),
        reason: e.to_string(),
    })?;
    if v.pre.is_empty() && v.build.is_empty() {
        Ok(v)
    } else {
        Err(VersionError::NotARelease(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_version_with_or_without_v_is_parsed_and_prints_back() {
        assert_eq!(parse_version("1.20.3"), Ok(Version::new(1, 20, 3)));
        assert_eq!(parse_version("v1.20.3"), Ok(Version::new(1, 20, 3)));
        assert_eq!(parse_version("v1.20.3").unwrap().to_string(), "1.20.3");
        assert_eq!(
            parse_version("18446744073709551615.0.0"),
            Ok(Version::new(u64::MAX, 0, 0))
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("v0.10.0").unwrap() > parse_version("0.9.9").unwrap());
        assert!(parse_version("1.10.0").unwrap() > parse_version("1.9.1").unwrap());
    }

    #[test]
    fn anything_but_three_plain_numbers_is_malformed_and_says_why() {
        for bad in [
            "",
            "v",
            "vv1.2.3",
            "1.2",
            "1.2.3.4",
            "1.x.3",
            "1..2",
            "-1.2.3",
            "+1.2.3",
            "1.+2.3",
            "1.2. 3",
            "1.2.3 ",
            " 1.2.3",
            "01.2.3",
            "V1.2.3",
            "18446744073709551616.0.0",
        ] {
            match parse_version(bad) {
                Err(VersionError::Malformed { text, reason }) => {
                    assert_eq!(text, bad);
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let e = parse_version("1.x.3").unwrap_err().to_string();
        assert!(
            e.starts_with("\"1.x.3\" is not a version like 1.2.3: "),
            "{e}"
        );
    }

    #[test]
    fn a_pre_release_or_build_is_not_a_release() {
        for bad in ["1.2.3-rc.1", "v1.2.3-dev", "1.2.3+build.5", "1.2.3-rc+b"] {
            assert_eq!(
                parse_version(bad),
                Err(VersionError::NotARelease(bad.to_string())),
                "{bad}"
            );
        }
    }
}
