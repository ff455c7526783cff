//! Cluster in a node: N worker processes of the program on the same listening sockets, under
//! one primary (today's supervisor grown up: it holds the sockets and the stable pid, forwards
//! signals, owns the control socket). One worker failing loses nothing: the others keep
//! accepting on the same sockets while the primary starts its replacement; a hung worker is
//! noticed by its silence and replaced; a rolling restart replaces the workers one slot at a
//! time, each by its own restart (so state, connection and TLS ticket hand-over work per
//! worker).
//!
//! The primary's decisions are a pure state machine ([`machine`]), tested like the
//! generation's. The driver that performs its actions on real processes comes next; until
//! then nothing outside the tests uses it.

#![allow(dead_code)]

pub(crate) mod machine;
