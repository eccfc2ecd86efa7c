//! Test harness for end-to-end scenarios: real `bangerd-root`, `bangerd` and `banger`
//! processes on a temporary state directory, real guests booted by banger-vmm-qemu
//! from the assets `scripts/guest-assets` prepares.
//!
//! Binaries are taken from the cargo target directory this test binary lives in (or
//! `BANGER_BIN_DIR`); `scripts/test` builds them before running the tests.
//!
//! Tests stay on this machine's own networks: every [`Env`] has a network namespace
//! of its own ([`Netns`]), and its daemons, bridge, taps, nftables table, VMMs and
//! SSH live there, never in the host's namespace.

mod assets;
mod container;
mod env;
mod netns;
mod processes;
mod releases;

pub use assets::*;
pub use container::*;
pub use env::*;
pub use netns::*;
pub use processes::*;
pub use releases::*;
