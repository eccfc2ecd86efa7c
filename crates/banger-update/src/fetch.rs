//! Downloading a release with size caps and timeouts, verifying as it goes.

use std::io::Read;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, parse_sums};
use crate::signature::{PublicKeys, verify};
use crate::UpdateError;

/// Caps for what is not announced by a signed document.
const SUMS_LIMIT: u64 = 64 * 1024;
const SIG_LIMIT: u64 = 4 * 1024;
const MANIFEST_LIMIT: u64 = 1024 * 1024;
/// No banger binary is anywhere near this; an announced size above it is refused.
pub const ARTEFACT_LIMIT: u64 = 512 * 1024 * 1024;

/// A verified release: its manifest and each artefact's bytes.
#[derive(Debug)]
pub struct Fetched {
    pub manifest: Manifest,
    pub artefacts: Vec<(String, Vec<u8>)>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .timeout_connect(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// GETs `url`, refusing more than `limit` bytes; with `exact`, fewer is an error too.
fn get(agent: &ureq::Agent, url: &str, limit: u64, exact: bool) -> Result<Vec<u8>, UpdateError> {
    let fail = |reason: String| UpdateError::Fetch { url: url.to_string(), reason };
    let resp = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    let mut body = Vec::new();
    resp.into_body()
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| fail(e.to_string()))?;
    if body.len() as u64 > limit {
        return Err(UpdateError::TooLarge { what: url.to_string(), limit });
    }
    if exact && (body.len() as u64) < limit {
        return Err(UpdateError::Truncated { what: url.to_string(), got: body.len() as u64, want: limit });
    }
    Ok(body)
}

fn sha256_hex(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// The URL of `name` next to `manifest_url`.
pub fn sibling(manifest_url: &str, name: &str) -> String {
    if name.contains("://") {
        return name.to_string();
    }
    match manifest_url.rfind('/') {
        Some(i) => format!("{}/{name}", &manifest_url[..i]),
        None => name.to_string(),
    }
}

/// Fetches and verifies the release at `manifest_url`: SHA256SUMS and its signature,
/// then the manifest (whose hash must be in SHA256SUMS), then, unless
/// `manifest_only`, every artefact (announced size, manifest hash, SHA256SUMS hash).
pub fn fetch_verified(manifest_url: &str, keys: &PublicKeys, manifest_only: bool) -> Result<Fetched, UpdateError> {
    let agent = agent();
    let sums = get(&agent, &sibling(manifest_url, "SHA256SUMS"), SUMS_LIMIT, false)?;
    let sig = get(&agent, &sibling(manifest_url, "SHA256SUMS.sig"), SIG_LIMIT, false)?;
    verify(keys, &sums, &sig)?;
    let sums = parse_sums(&sums)?;
    let listed = |name: &str| -> Result<String, UpdateError> {
        sums.iter().find(|(_, n)| n == name).map(|(h, _)| h.clone()).ok_or_else(|| UpdateError::NotListed { name: name.into() })
    };
    let manifest_bytes = get(&agent, manifest_url, MANIFEST_LIMIT, false)?;
    let want = listed("manifest.json")?;
    let got = sha256_hex(&manifest_bytes);
    if want != got {
        return Err(UpdateError::HashMismatch { name: "manifest.json".into(), want, got });
    }
    let manifest = Manifest::parse(&manifest_bytes)?;
    let mut artefacts = Vec::new();
    if !manifest_only {
        for a in &manifest.artefacts {
            if a.size > ARTEFACT_LIMIT {
                return Err(UpdateError::TooLarge { what: a.name.clone(), limit: ARTEFACT_LIMIT });
            }
            let listed_hash = listed(&a.name)?;
            if listed_hash != a.sha256.to_ascii_lowercase() {
                return Err(UpdateError::HashMismatch { name: a.name.clone(), want: listed_hash, got: a.sha256.clone() });
            }
            let bytes = get(&agent, &sibling(manifest_url, &a.url), a.size, true)?;
            let got = sha256_hex(&bytes);
            if got != listed_hash {
                return Err(UpdateError::HashMismatch { name: a.name.clone(), want: listed_hash, got });
            }
            artefacts.push((a.name.clone(), bytes));
        }
    }
    Ok(Fetched { manifest, artefacts })
}

#[cfg(test)]
mod tests {
    #[test]
    fn siblings_resolve_next_to_the_manifest() {
        assert_eq!(super::sibling("http://h/v1/manifest.json", "SHA256SUMS"), "http://h/v1/SHA256SUMS");
        assert_eq!(super::sibling("http://h/v1/manifest.json", "https://cdn/x"), "https://cdn/x");
    }
}
