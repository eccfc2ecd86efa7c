//! Downloading a release with size caps and timeouts, verifying as it goes.

use std::io::Read;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::UpdateError;
use crate::manifest::{Manifest, parse_sums};
use crate::signature::{PublicKeys, verify};

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
    let fail = |reason: String| UpdateError::Fetch {
        url: url.to_string(),
        reason,
    };
    let resp = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    let mut body = Vec::new();
    resp.into_body()
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| fail(e.to_string()))?;
    if body.len() as u64 > limit {
        return Err(UpdateError::TooLarge {
            what: url.to_string(),
            limit,
        });
    }
    if exact && (body.len() as u64) < limit {
        return Err(UpdateError::Truncated {
            what: url.to_string(),
            got: body.len() as u64,
            want: limit,
        });
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
pub fn fetch_verified(
    manifest_url: &str,
    keys: &PublicKeys,
    manifest_only: bool,
) -> Result<Fetched, UpdateError> {
    let agent = agent();
    let sums = get(
        &agent,
        &sibling(manifest_url, "SHA256SUMS"),
        SUMS_LIMIT,
        false,
    )?;
    let sig = get(
        &agent,
        &sibling(manifest_url, "SHA256SUMS.sig"),
        SIG_LIMIT,
        false,
    )?;
    verify(keys, &sums, &sig)?;
    let sums = parse_sums(&sums)?;
    let listed = |name: &str| -> Result<String, UpdateError> {
        sums.iter()
            .find(|(_, n)| n == name)
            .map(|(h, _)| h.clone())
            .ok_or_else(|| UpdateError::NotListed { name: name.into() })
    };
    let manifest_bytes = get(&agent, manifest_url, MANIFEST_LIMIT, false)?;
    let want = listed("manifest.json")?;
    let got = sha256_hex(&manifest_bytes);
    if want != got {
        return Err(UpdateError::HashMismatch {
            name: "manifest.json".into(),
            want,
            got,
        });
    }
    let manifest = Manifest::parse(&manifest_bytes)?;
    let mut artefacts = Vec::new();
    if !manifest_only {
        for a in &manifest.artefacts {
            if a.size > ARTEFACT_LIMIT {
                return Err(UpdateError::TooLarge {
                    what: a.name.clone(),
                    limit: ARTEFACT_LIMIT,
                });
            }
            let listed_hash = listed(&a.name)?;
            if listed_hash != a.sha256.to_ascii_lowercase() {
                return Err(UpdateError::HashMismatch {
                    name: a.name.clone(),
                    want: listed_hash,
                    got: a.sha256.clone(),
                });
            }
            let bytes = get(&agent, &sibling(manifest_url, &a.url), a.size, true)?;
            let got = sha256_hex(&bytes);
            if got != listed_hash {
                return Err(UpdateError::HashMismatch {
                    name: a.name.clone(),
                    want: listed_hash,
                    got,
                });
            }
            artefacts.push((a.name.clone(), bytes));
        }
    }
    Ok(Fetched {
        manifest,
        artefacts,
    })
}

#[cfg(test)]
mod tests {
    //! `fetch_verified` against a release served by our own HTTP server on loopback,
    //! which can serve exactly the bytes a hostile or broken server would: a body cut
    //! mid-way (a complete HTTP response, so only banger's own size check sees it), one
    //! byte too many, a same-size flip, files the sums do not list. Each test makes the
    //! one change its name says and expects the one error that change produces.

    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    /// Serves `files` (URL path -> body) until dropped; records every path asked for.
    struct Server {
        server: Arc<tiny_http::Server>,
        files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
        asked: Arc<Mutex<Vec<String>>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Server {
        fn new() -> Self {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
            let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
            let asked: Arc<Mutex<Vec<String>>> = Arc::default();
            let (s, f, a) = (server.clone(), files.clone(), asked.clone());
            let thread = std::thread::spawn(move || {
                for req in s.incoming_requests() {
                    let path = req.url().to_string();
                    a.lock().unwrap().push(path.clone());
                    let body = f.lock().unwrap().get(&path).cloned();
                    let _ = match body {
                        Some(b) => req.respond(tiny_http::Response::from_data(b)),
                        None => req.respond(tiny_http::Response::empty(404)),
                    };
                }
            });
            Server {
                server,
                files,
                asked,
                thread: Some(thread),
            }
        }

        fn url(&self, name: &str) -> String {
            format!(
                "http://{}/r/{name}",
                self.server.server_addr().to_ip().unwrap()
            )
        }

        fn put(&self, name: &str, body: impl Into<Vec<u8>>) {
            self.files
                .lock()
                .unwrap()
                .insert(format!("/r/{name}"), body.into());
        }

        fn asked(&self, name: &str) -> bool {
            self.asked
                .lock()
                .unwrap()
                .iter()
                .any(|p| p == &format!("/r/{name}"))
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.server.unblock();
            let _ = self.thread.take().map(|t| t.join());
        }
    }

    fn signing_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32].into()).unwrap()
    }

    fn keys() -> PublicKeys {
        use p256::pkcs8::EncodePublicKey;
        let pem = signing_key()
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        PublicKeys::from_pems([pem.as_str()]).unwrap()
    }

    fn sign(message: &[u8]) -> Vec<u8> {
        let sig: p256::ecdsa::Signature = signing_key().sign(message);
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(sig.to_der().as_bytes())
            .into_bytes()
    }

    /// A release as `scripts/release` lays it out, before anything is tampered with.
    struct Release {
        bins: Vec<(String, Vec<u8>)>,
        /// The manifest's artefacts: (name, announced size, announced sha256).
        announced: Vec<(String, u64, String)>,
        /// Extra lines for SHA256SUMS, and names to leave out of it.
        sums_extra: String,
        unlisted: Vec<String>,
    }

    impl Release {
        fn new() -> Self {
            let bins: Vec<(String, Vec<u8>)> = crate::manifest::ARTEFACTS
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    (
                        n.to_string(),
                        format!("#!{n} build {i}\n").repeat(100 + i).into_bytes(),
                    )
                })
                .collect();
            let announced = bins
                .iter()
                .map(|(n, b)| (n.clone(), b.len() as u64, sha256_hex(b)))
                .collect();
            Release {
                bins,
                announced,
                sums_extra: String::new(),
                unlisted: Vec::new(),
            }
        }

        fn manifest(&self) -> Vec<u8> {
            let arts: Vec<String> = self
                .announced
                .iter()
                .map(|(n, size, h)| {
                    format!(r#"{{"name":"{n}","url":"{n}","size":{size},"sha256":"{h}"}}"#)
                })
                .collect();
            format!(
                r#"{{"schema":1,"version":"9.1.0","channel":"stable","published_at":"2026-11-01T00:00:00Z","expires_at":"2099-01-01T00:00:00Z","artefacts":[{}]}}"#,
                arts.join(",")
            )
            .into_bytes()
        }

        fn sums(&self, manifest: &[u8]) -> Vec<u8> {
            let mut s = String::new();
            let listed = std::iter::once(("manifest.json".to_string(), sha256_hex(manifest)))
                .chain(self.bins.iter().map(|(n, b)| (n.clone(), sha256_hex(b))));
            for (name, h) in listed.filter(|(n, _)| !self.unlisted.contains(n)) {
                s.push_str(&format!("{h}  {name}\n"));
            }
            s.push_str(&self.sums_extra);
            s.into_bytes()
        }

        /// Serves the release; the binaries' bodies may be replaced afterwards.
        fn serve(&self) -> Server {
            let srv = Server::new();
            let manifest = self.manifest();
            let sums = self.sums(&manifest);
            srv.put("SHA256SUMS.sig", sign(&sums));
            srv.put("SHA256SUMS", sums);
            srv.put("manifest.json", manifest);
            for (n, b) in &self.bins {
                srv.put(n, b.clone());
            }
            srv
        }
    }

    fn fetch(srv: &Server) -> Result<Fetched, UpdateError> {
        fetch_verified(&srv.url("manifest.json"), &keys(), false)
    }

    #[test]
    fn an_intact_release_is_fetched_with_every_artefact_s_bytes() {
        let rel = Release::new();
        let srv = rel.serve();
        let got = fetch(&srv).unwrap();
        assert_eq!(got.manifest.version, "9.1.0");
        assert_eq!(got.artefacts, rel.bins);
    }

    #[test]
    fn a_manifest_only_fetch_downloads_no_artefact() {
        let srv = Release::new().serve();
        let got = fetch_verified(&srv.url("manifest.json"), &keys(), true).unwrap();
        assert!(got.artefacts.is_empty());
        assert!(srv.asked("manifest.json"));
        assert!(!srv.asked("bangerd"), "an artefact was downloaded");
    }

    #[test]
    fn an_artefact_with_one_byte_flipped_is_refused_by_its_hash() {
        let rel = Release::new();
        let srv = rel.serve();
        let mut b = rel.bins[1].1.clone();
        b[10] ^= 1;
        let want = sha256_hex(&rel.bins[1].1);
        let flipped = sha256_hex(&b);
        srv.put("bangerd", b);
        match fetch(&srv) {
            Err(UpdateError::HashMismatch { name, want: w, got }) => {
                assert_eq!((name.as_str(), w, got), ("bangerd", want, flipped));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_artefact_cut_mid_way_is_refused_as_truncated() {
        let rel = Release::new();
        let srv = rel.serve();
        let full = rel.bins[2].1.clone();
        // A complete HTTP response (Content-Length says so): only banger's check sees it.
        srv.put("bangerd-root", full[..full.len() / 2].to_vec());
        match fetch(&srv) {
            Err(UpdateError::Truncated { what, got, want }) => {
                assert!(what.ends_with("/bangerd-root"), "{what}");
                assert_eq!((got, want), (full.len() as u64 / 2, full.len() as u64));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_artefact_one_byte_longer_than_announced_is_refused_as_too_large() {
        let rel = Release::new();
        let srv = rel.serve();
        let mut b = rel.bins[0].1.clone();
        b.push(b'x');
        srv.put("banger", b);
        match fetch(&srv) {
            Err(UpdateError::TooLarge { what, limit }) => {
                assert!(what.ends_with("/banger"), "{what}");
                assert_eq!(limit, rel.bins[0].1.len() as u64);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_announced_size_above_the_cap_is_refused_before_any_download() {
        let mut rel = Release::new();
        rel.announced[3].1 = ARTEFACT_LIMIT + 1;
        let srv = rel.serve();
        match fetch(&srv) {
            Err(UpdateError::TooLarge { what, limit }) => {
                assert_eq!((what.as_str(), limit), ("banger-vmm-qemu", ARTEFACT_LIMIT))
            }
            other => panic!("{other:?}"),
        }
        assert!(!srv.asked("banger-vmm-qemu"));
        // At the cap exactly, the size is not what stops it (the download is short).
        let mut rel = Release::new();
        rel.announced[3].1 = ARTEFACT_LIMIT;
        assert!(matches!(
            fetch(&rel.serve()),
            Err(UpdateError::Truncated {
                want: ARTEFACT_LIMIT,
                ..
            })
        ));
    }

    #[test]
    fn a_manifest_whose_hash_differs_from_the_signed_sums_is_refused() {
        let rel = Release::new();
        let srv = rel.serve();
        // Same length, one character changed, the sums and signature left as they were.
        let mut m = rel.manifest();
        let at = m.windows(5).position(|w| w == b"9.1.0").unwrap();
        m[at] = b'8';
        srv.put("manifest.json", m);
        assert!(
            matches!(fetch(&srv), Err(UpdateError::HashMismatch { name, .. }) if name == "manifest.json")
        );
        assert!(!srv.asked("banger"));
    }

    #[test]
    fn a_manifest_hash_that_differs_from_the_sums_is_refused_before_download() {
        let mut rel = Release::new();
        let real = rel.announced[1].2.clone();
        rel.announced[1].2 = "0".repeat(64);
        let srv = rel.serve();
        match fetch(&srv) {
            Err(UpdateError::HashMismatch { name, want, got }) => {
                assert_eq!(
                    (name.as_str(), want, got),
                    ("bangerd", real, "0".repeat(64))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!srv.asked("bangerd"));
    }

    #[test]
    fn a_manifest_hash_in_capitals_is_the_same_hash() {
        let mut rel = Release::new();
        for a in &mut rel.announced {
            a.2 = a.2.to_ascii_uppercase();
        }
        assert_eq!(fetch(&rel.serve()).unwrap().artefacts.len(), 4);
    }

    #[test]
    fn an_artefact_or_manifest_missing_from_the_sums_is_refused() {
        for name in ["bangerd", "manifest.json"] {
            let mut rel = Release::new();
            rel.unlisted.push(name.into());
            match fetch(&rel.serve()) {
                Err(UpdateError::NotListed { name: n }) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn sums_signed_by_another_key_or_changed_after_signing_are_refused_first() {
        let rel = Release::new();
        let srv = rel.serve();
        let other = SigningKey::from_bytes(&[9u8; 32].into()).unwrap();
        let sums = rel.sums(&rel.manifest());
        let sig: p256::ecdsa::Signature = other.sign(&sums);
        use base64::Engine;
        srv.put(
            "SHA256SUMS.sig",
            base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes()),
        );
        assert!(matches!(fetch(&srv), Err(UpdateError::BadSignature)));
        assert!(
            !srv.asked("manifest.json"),
            "the manifest was fetched before the signature held"
        );

        let srv = rel.serve();
        let mut changed = sums.clone();
        changed[0] = if changed[0] == b'0' { b'1' } else { b'0' };
        srv.put("SHA256SUMS", changed);
        assert!(matches!(fetch(&srv), Err(UpdateError::BadSignature)));
    }

    #[test]
    fn the_caps_are_the_documented_sizes() {
        // docs/update.md: SHA256SUMS 64 KiB, its signature 4 KiB, the manifest 1 MiB,
        // an artefact 512 MiB. The tests below use these, so each is also exercised.
        assert_eq!(
            (SUMS_LIMIT, SIG_LIMIT, MANIFEST_LIMIT, ARTEFACT_LIMIT),
            (65_536, 4_096, 1_048_576, 536_870_912)
        );
    }

    #[test]
    fn the_unsigned_documents_are_capped_at_their_limits() {
        // SHA256SUMS: blank lines pad it to exactly the cap (accepted), then one more.
        for (extra, ok) in [(0, true), (1, false)] {
            let mut rel = Release::new();
            let base = rel.sums(&rel.manifest()).len() as u64;
            rel.sums_extra = "\n".repeat((SUMS_LIMIT - base + extra) as usize);
            let r = fetch(&rel.serve());
            match (ok, r) {
                (true, Ok(_)) => {}
                (false, Err(UpdateError::TooLarge { what, limit })) => {
                    assert!(what.ends_with("/SHA256SUMS"), "{what}");
                    assert_eq!(limit, SUMS_LIMIT);
                }
                (_, r) => panic!("sums {extra} over: {r:?}"),
            }
        }
        // The signature: whitespace pads it (it is ignored when verifying).
        for (extra, ok) in [(0, true), (1, false)] {
            let rel = Release::new();
            let srv = rel.serve();
            let mut sig = sign(&rel.sums(&rel.manifest()));
            sig.resize(SIG_LIMIT as usize + extra, b'\n');
            srv.put("SHA256SUMS.sig", sig);
            match (ok, fetch(&srv)) {
                (true, Ok(_)) => {}
                (false, Err(UpdateError::TooLarge { what, limit })) => {
                    assert!(what.ends_with("/SHA256SUMS.sig"), "{what}");
                    assert_eq!(limit, SIG_LIMIT);
                }
                (_, r) => panic!("signature {extra} over: {r:?}"),
            }
        }
        // The manifest: its limit is checked before its hash.
        let rel = Release::new();
        let srv = rel.serve();
        srv.put("manifest.json", vec![b' '; MANIFEST_LIMIT as usize + 1]);
        assert!(matches!(
            fetch(&srv),
            Err(UpdateError::TooLarge {
                limit: MANIFEST_LIMIT,
                ..
            })
        ));
        srv.put("manifest.json", vec![b' '; MANIFEST_LIMIT as usize]);
        assert!(
            matches!(fetch(&srv), Err(UpdateError::HashMismatch { name, .. }) if name == "manifest.json")
        );
    }

    #[test]
    fn a_missing_file_is_a_fetch_error_naming_its_url() {
        let srv = Release::new().serve();
        srv.files.lock().unwrap().remove("/r/SHA256SUMS.sig");
        match fetch(&srv) {
            Err(UpdateError::Fetch { url, reason }) => {
                assert!(url.ends_with("/r/SHA256SUMS.sig"), "{url}");
                assert!(reason.contains("404"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn siblings_resolve_next_to_the_manifest() {
        assert_eq!(
            sibling("http://h/v1/manifest.json", "SHA256SUMS"),
            "http://h/v1/SHA256SUMS"
        );
        assert_eq!(
            sibling("http://h/v1/manifest.json", "https://cdn/x"),
            "https://cdn/x"
        );
        assert_eq!(sibling("manifest.json", "SHA256SUMS"), "SHA256SUMS");
    }
}
