//! `SHA256SUMS.sig` as `banger update` checks it: `signature::verify(keys, message,
//! sig_text)` (whitespace-tolerant base64, DER, ECDSA P-256), with the embedded
//! release key and a fuzzing-only key whose private half was thrown away after
//! signing the seeds in `fuzz/seeds/signature/`, so the accepting path is reachable.
//!
//! Input: `[mode][message length][message][signature]`. Mode bit 0 set: the
//! signature bytes are raw DER, base64-encoded here, so mutations reach the DER and
//! ECDSA code rather than mostly breaking the base64.

#![no_main]

use banger_update::signature::{EMBEDDED_KEYS, PublicKeys, verify};
use base64::Engine;
use libfuzzer_sys::fuzz_target;

/// Not trusted by banger: a P-256 key made for the seeds (`openssl ecparam -name
/// prime256v1 -genkey`), its private key discarded.
const FUZZ_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE5HfRGRzq9JQaou9kU2VpwkJR2iXe
oTHmROP+ifO6r79Fzmg4ML/bpf7D3g3EIDwWIvbvobh2p/w9S/SYxaKRLg==
-----END PUBLIC KEY-----";

fn keys() -> &'static PublicKeys {
    static KEYS: std::sync::OnceLock<PublicKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        PublicKeys::from_pems(EMBEDDED_KEYS.iter().copied().chain([FUZZ_KEY]))
            .expect("the keys parse")
    })
}

fuzz_target!(|data: &[u8]| {
    let [mode, len, rest @ ..] = data else { return };
    let (message, sig) = rest.split_at((*len as usize).min(rest.len()));
    let encoded;
    let sig_text = if mode & 1 == 1 {
        encoded = base64::engine::general_purpose::STANDARD.encode(sig);
        encoded.as_bytes()
    } else {
        sig
    };
    let _ = verify(keys(), message, sig_text);
});
