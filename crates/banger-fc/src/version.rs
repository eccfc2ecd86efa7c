//! `firecracker --version` prints exactly `Firecracker v1.16.1\n\n` (main.rs@v1.16.1);
//! the jailer prints `Jailer v1.16.1\n\n`.

pub use banger_api::Version;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unrecognised `--version` output {0:?}: expected \"<Name> vX.Y.Z\" then an empty line")]
pub struct ParseVersionError(pub String);

/// Parses the output of `firecracker --version` (or `jailer --version` with
/// `app = "Jailer"`): a first line `<app> vX.Y.Z`, then an empty line.
pub fn parse_version_output_of(app: &str, out: &str) -> Result<Version, ParseVersionError> {
    let err = || ParseVersionError(out.to_string());
    let mut lines = out.split('\n');
    let first = lines.next().ok_or_else(err)?;
    if lines.next() != Some("") {
        return Err(err());
    }
    // `v` then a plain release: `parse_version` takes the one `v` and refuses a
    // pre-release (`v1.16.1-dev`), a build part or anything but three numbers.
    let rest = first
        .strip_prefix(app)
        .and_then(|r| r.strip_prefix(' '))
        .filter(|r| r.starts_with('v'))
        .ok_or_else(err)?;
    banger_api::parse_version(rest).map_err(|_| err())
}

/// Parses `firecracker --version`.
pub fn parse_version_output(out: &str) -> Result<Version, ParseVersionError> {
    parse_version_output_of("Firecracker", out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exact_release_output() {
        let v = parse_version_output("Firecracker v1.16.1\n\n").unwrap();
        assert_eq!(v, Version::new(1, 16, 1));
        assert_eq!(v.to_string(), "1.16.1");
    }

    #[test]
    fn parses_the_jailer() {
        assert_eq!(
            parse_version_output_of("Jailer", "Jailer v1.10.1\n\n")
                .unwrap()
                .minor,
            10
        );
    }

    #[test]
    fn rejects_anything_else() {
        for bad in [
            "",
            "Firecracker v1.16.1",       // no empty line
            "Firecracker v1.16.1\nx\n",  // second line not empty
            "Firecracker 1.16.1\n\n",    // no v
            "firecracker v1.16.1\n\n",   // wrong case
            "Firecracker v1.16\n\n",     // two parts
            "Firecracker v1.16.1.2\n\n", // four parts
            "Firecracker v1.x.1\n\n",
            "Firecracker v1.16.1-dev\n\n",
            "Firecracker v+1.16.1\n\n",
            "Jailer v1.16.1\n\n",
            "Firecracker vv1.16.1\n\n",
            "Firecracker  v1.16.1\n\n",
            "Firecracker v01.16.1\n\n",
            "Firecracker v1.16.1+b\n\n",
        ] {
            assert!(parse_version_output(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn versions_order_numerically() {
        let a = parse_version_output("Firecracker v1.9.0\n\n").unwrap();
        let b = parse_version_output("Firecracker v1.10.1\n\n").unwrap();
        assert!(a < b);
    }
}
