//! Process plumbing: the program a restart runs ([`Executable`]), starting it with the
//! sockets ([`NextProcess`], fed by a [`Handoff`]), and the handle on it ([`ChildProcess`]).
//! [`Generation`](crate::Generation) does all of this for you; use these directly only to
//! build a lifecycle of your own.

mod child;
mod executable;
mod spawn;

pub use child::ChildProcess;
pub use executable::Executable;
#[cfg(feature = "tokio")]
pub(crate) use executable::FileIdentity;
pub use spawn::{Handoff, NextProcess};
