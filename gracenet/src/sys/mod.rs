//! Platform calls, in one place. Linux gets its fast paths (`close_range`, `pipe2`,
//! `SO_DOMAIN`, pidfd, abstract Unix names, the child subreaper); every other POSIX system
//! gets a portable path, and a feature a platform lacks is an [`Unsupported`](std::io::ErrorKind::Unsupported)
//! error, never a build failure.
//!
//! The portable path can be chosen on Linux too, to test it where no other system is at
//! hand: build with `RUSTFLAGS='--cfg gracenet_portable'` (`.ci/run` runs gracenet's tests
//! that way a second time).

#[cfg(all(target_os = "linux", not(gracenet_portable)))]
mod linux;
#[cfg(all(target_os = "linux", not(gracenet_portable)))]
pub(crate) use linux::*;

#[cfg(any(not(target_os = "linux"), gracenet_portable))]
mod portable;
#[cfg(any(not(target_os = "linux"), gracenet_portable))]
pub(crate) use portable::*;

mod common;
pub(crate) use common::*;
