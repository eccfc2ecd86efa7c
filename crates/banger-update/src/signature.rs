//! ECDSA P-256 over SHA-256, DER signatures, base64 with any whitespace (cosign writes
//! one line, `openssl base64` wraps at 64 columns). High-S signatures are valid
//! (neither OpenSSL nor Go normalise S), and P-256 does not require low S.

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

use crate::UpdateError;

/// The keys banger trusts. The first is the release key; the second slot is for the
/// next key during a rotation (a release signed by either is accepted).
pub const EMBEDDED_KEYS: &[&str] = &[include_str!("../keys/release-1.pub")];

#[derive(Debug, Clone)]
pub struct PublicKeys(Vec<VerifyingKey>);

impl PublicKeys {
    /// Keys from SPKI PEM texts (`-----BEGIN PUBLIC KEY-----`, as `openssl ec -pubout`
    /// and `cosign.pub` are).
    pub fn from_pems<'a>(pems: impl IntoIterator<Item = &'a str>) -> Result<Self, UpdateError> {
        let keys = pems
            .into_iter()
            .map(|p| {
                VerifyingKey::from_public_key_pem(p.trim())
                    .map_err(|e| UpdateError::Key(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(UpdateError::Key("no key".into()));
        }
        Ok(Self(keys))
    }

    pub fn embedded() -> Self {
        Self::from_pems(EMBEDDED_KEYS.iter().copied()).expect("embedded keys are valid")
    }
}

/// Verifies `sig_text` (base64 DER) over `message` with any of `keys`.
pub fn verify(keys: &PublicKeys, message: &[u8], sig_text: &[u8]) -> Result<(), UpdateError> {
    let compact: Vec<u8> = sig_text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|e| UpdateError::MalformedSignature(format!("not base64: {e}")))?;
    let sig = Signature::from_der(&der)
        .map_err(|_| UpdateError::MalformedSignature("not a DER ECDSA signature".into()))?;
    if keys.0.iter().any(|k| k.verify(message, &sig).is_ok()) {
        Ok(())
    } else {
        Err(UpdateError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    //! Pinned against the real `openssl`: what it signs we verify, what `openssl dgst
    //! -verify` rejects we reject.
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn openssl(args: &[&str], dir: &Path) -> std::process::Output {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        out
    }

    fn keypair(dir: &Path, name: &str) -> String {
        assert!(
            openssl(
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    &format!("{name}.ec")
                ],
                dir
            )
            .status
            .success()
        );
        assert!(
            openssl(
                &[
                    "pkcs8",
                    "-topk8",
                    "-nocrypt",
                    "-in",
                    &format!("{name}.ec"),
                    "-out",
                    &format!("{name}.key")
                ],
                dir
            )
            .status
            .success()
        );
        assert!(
            openssl(
                &[
                    "ec",
                    "-in",
                    &format!("{name}.key"),
                    "-pubout",
                    "-out",
                    &format!("{name}.pub")
                ],
                dir
            )
            .status
            .success()
        );
        std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap()
    }

    fn sign(dir: &Path, key: &str, file: &str) -> Vec<u8> {
        assert!(
            openssl(
                &[
                    "dgst",
                    "-sha256",
                    "-sign",
                    &format!("{key}.key"),
                    "-out",
                    "sig.der",
                    file
                ],
                dir
            )
            .status
            .success()
        );
        let der = std::fs::read(dir.join("sig.der")).unwrap();
        base64::engine::general_purpose::STANDARD
            .encode(der)
            .into_bytes()
    }

    fn openssl_accepts(dir: &Path, key: &str, file: &str, sig_b64: &[u8]) -> bool {
        let compact: Vec<u8> = sig_b64
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(compact) else {
            return false;
        };
        std::fs::write(dir.join("check.der"), der).unwrap();
        openssl(
            &[
                "dgst",
                "-sha256",
                "-verify",
                &format!("{key}.pub"),
                "-signature",
                "check.der",
                file,
            ],
            dir,
        )
        .status
        .success()
    }

    #[test]
    fn openssl_signatures_verify_including_high_s_and_wrapped_base64() {
        let d = tempfile::tempdir().unwrap();
        let pem = keypair(d.path(), "rel");
        let keys = PublicKeys::from_pems([pem.as_str()]).unwrap();
        let mut high_s = 0;
        for i in 0..12 {
            let msg = format!("0123  banger-{i}\n");
            std::fs::write(d.path().join("SUMS"), &msg).unwrap();
            let sig = sign(d.path(), "rel", "SUMS");
            verify(&keys, msg.as_bytes(), &sig).unwrap();
            assert!(openssl_accepts(d.path(), "rel", "SUMS", &sig));
            let der = base64::engine::general_purpose::STANDARD
                .decode(&sig)
                .unwrap();
            if Signature::from_der(&der).unwrap().normalize_s().is_some() {
                high_s += 1;
            }
            // 64-column wrapping and a trailing newline, as `openssl base64` writes.
            let wrapped: Vec<u8> = sig
                .chunks(64)
                .flat_map(|c| c.iter().copied().chain([b'\n']))
                .collect();
            verify(&keys, msg.as_bytes(), &wrapped).unwrap();
        }
        assert!(
            high_s > 0,
            "no high-S signature among 12; the high-S path went untested"
        );
    }

    #[test]
    fn what_openssl_rejects_we_reject() {
        let d = tempfile::tempdir().unwrap();
        let pem = keypair(d.path(), "rel");
        keypair(d.path(), "other");
        let keys = PublicKeys::from_pems([pem.as_str()]).unwrap();
        let msg = b"abc  banger\n";
        std::fs::write(d.path().join("SUMS"), msg).unwrap();
        let good = sign(d.path(), "rel", "SUMS");

        // Tampered message.
        std::fs::write(d.path().join("T"), b"abd  banger\n").unwrap();
        assert!(!openssl_accepts(d.path(), "rel", "T", &good));
        assert!(matches!(
            verify(&keys, b"abd  banger\n", &good),
            Err(UpdateError::BadSignature)
        ));
        // Another key.
        let other = sign(d.path(), "other", "SUMS");
        assert!(!openssl_accepts(d.path(), "rel", "SUMS", &other));
        assert!(matches!(
            verify(&keys, msg, &other),
            Err(UpdateError::BadSignature)
        ));
        // Truncated and non-base64 signatures.
        let truncated = &good[..good.len() - 8];
        assert!(!openssl_accepts(d.path(), "rel", "SUMS", truncated));
        assert!(verify(&keys, msg, truncated).is_err());
        assert!(matches!(
            verify(&keys, msg, b"not*base64!"),
            Err(UpdateError::MalformedSignature(_))
        ));
        assert!(verify(&keys, msg, b"").is_err());
        // A fixed-size r||s signature is not what the format promises.
        assert!(matches!(
            verify(
                &keys,
                msg,
                base64::engine::general_purpose::STANDARD
                    .encode([1u8; 64])
                    .as_bytes()
            ),
            Err(UpdateError::MalformedSignature(_))
        ));
    }

    #[test]
    fn a_second_key_slot_allows_rotation_and_the_embedded_key_parses() {
        let d = tempfile::tempdir().unwrap();
        let old = keypair(d.path(), "old");
        let new = keypair(d.path(), "new");
        let keys = PublicKeys::from_pems([old.as_str(), new.as_str()]).unwrap();
        std::fs::write(d.path().join("SUMS"), b"x\n").unwrap();
        verify(&keys, b"x\n", &sign(d.path(), "new", "SUMS")).unwrap();
        verify(&keys, b"x\n", &sign(d.path(), "old", "SUMS")).unwrap();
        let _ = PublicKeys::embedded();
        assert!(
            PublicKeys::from_pems(["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"])
                .is_err()
        );
    }
}
