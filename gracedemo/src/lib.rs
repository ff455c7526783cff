//! The demo's parts, as a library so the benchmark's baseline (plain hyper, no grace) serves
//! exactly the same handler: Go's duration grammar, Go's time format, the `/sleep/` handler.

pub mod duration;
pub mod gotime;
pub mod handler;
pub mod logging;
