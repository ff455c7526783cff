//! Graceful-restart HTTP serving on hyper, built on [`gracenet`].
//!
//! Not written yet: issue 5 fills this crate. Until then it only re-exports `gracenet`, so the
//! workspace layout is in place.

pub use gracenet;
