//! Everything banger knows about talking to a Firecracker-compatible VMM:
//!
//! - [`client`]: typed calls over the VMM's API socket (`fault_message` errors surfaced
//!   as they are);
//! - [`models`]: the request and response bodies banger uses, shaped as in the v1.16.1
//!   swagger file;
//! - [`launch`]: the command line for a direct or jailed launch and the jail layout;
//! - [`pid`]: finding a running VMM's pid from its API socket (`find_pid`);
//! - [`version`]: parsing `firecracker --version`;
//! - [`kernel`]: extracting an ELF vmlinux from a compressed kernel image.
//!
//! Nothing here spawns processes; the root helper does that with what [`launch`] builds.

#![forbid(unsafe_code)]

pub mod client;
pub mod kernel;
pub mod launch;
pub mod models;
pub mod pid;
pub mod version;

pub use client::{Client, Error as ClientError};
pub use pid::find_pid;
pub use version::parse_version_output;
