//! Signed releases.
//!
//! A release directory holds the binaries, `manifest.json` (version, channel,
//! publication and expiry times, each artefact's name, URL, size and SHA-256),
//! `SHA256SUMS` (which covers `manifest.json` too, so version and artefacts cannot be
//! mixed across releases) and `SHA256SUMS.sig`: a base64 DER ECDSA P-256 signature
//! over `SHA256SUMS`, the format `cosign sign-blob --key` and
//! `openssl dgst -sha256 -sign` produce.
//!
//! [`fetch_verified`] never trusts a byte before it is verified: the sums and their
//! signature first (small, capped), then the manifest against the sums, then each
//! artefact against both, each download capped at its announced size.

#![forbid(unsafe_code)]

pub mod fetch;
pub mod manifest;
pub mod signature;

pub use fetch::{Fetched, fetch_verified};
pub use manifest::{Artefact, Manifest};
pub use signature::{PublicKeys, verify};

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("cannot fetch {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("{what} is truncated: {got} of {want} bytes")]
    Truncated { what: String, got: u64, want: u64 },
    #[error("the signature over SHA256SUMS is not valid for any trusted key")]
    BadSignature,
    #[error("the signature is malformed: {0}")]
    MalformedSignature(String),
    #[error("SHA256SUMS is malformed: {0}")]
    MalformedSums(String),
    #[error("{name} is not listed in SHA256SUMS")]
    NotListed { name: String },
    #[error("{name} does not match its SHA-256 (expected {want}, got {got})")]
    HashMismatch {
        name: String,
        want: String,
        got: String,
    },
    #[error("the manifest is malformed: {0}")]
    MalformedManifest(String),
    #[error("the manifest expired at {0}; refusing a release that may be frozen or replayed")]
    Expired(String),
    #[error("public key: {0}")]
    Key(String),
}
