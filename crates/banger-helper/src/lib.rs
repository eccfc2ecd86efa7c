//! The privileged boundary between `bangerd` and `bangerd-root`.
//!
//! - [`protocol`]: the closed set of requests, one struct each with the reply type it
//!   declares ([`HelperRequest`]), and their wire form ([`Request`], [`Reply`]).
//! - [`client`]: the daemon's blocking client ([`HelperClient`]).
//! - [`host`]: what the daemons share about their host and process (file system
//!   identity per thread, boot id, the single-instance lock, fault points).
//! - [`copy`]: reflinks and sparse copies of file data.
//!
//! The ids and the directory layout they derive paths from live in `banger-layout`
//! (which the CLI uses alone) and are re-exported here.

#![deny(unsafe_code)]

pub mod client;
pub mod copy;
pub mod host;
pub mod protocol;

pub use banger_layout::{ArgError, Digest, Dirs, ImageFile, PackageName, Release, VmId, tool};
pub use client::{ClientError, HelperClient, typed_reply};
pub use host::{as_identity, boot_id, fault_point, lock_exclusive};
pub use protocol::*;
