//! Typed state for [`GenerationBuilder::hand_state`](crate::GenerationBuilder::hand_state):
//! any `Serialize` value as bytes with a version tag ([`encode`]), and back ([`decode`]),
//! which refuses another version with a reason that names both, for
//! [`Generation::refuse`](crate::Generation::refuse) to roll the restart back.
//!
//! The bytes are a line `gracenet-state v<version>` then the value as JSON: the tag is
//! read before the value, so a new program meets an old version with that reason, never
//! with a serializer's complaint about a field.
//!
//! ```no_run
//! # async fn f() -> Result<(), gracenet::Error> {
//! #[derive(serde::Serialize, serde::Deserialize, Default)]
//! struct Counters { hits: u64 }
//! const VERSION: u32 = 1;
//!
//! let counters = std::sync::Arc::new(tokio::sync::Mutex::new(Counters::default()));
//! let handed = counters.clone();
//! let generation = gracenet::Generation::builder()
//!     .hand_state(move || {
//!         let counters = handed.clone();
//!         async move {
//!             let counters = counters.lock().await;
//!             gracenet::state::encode(VERSION, &*counters).unwrap_or_default()
//!         }
//!     })
//!     .start()?;
//! if let Some(inherited) = generation.inherited_state().await? {
//!     match gracenet::state::decode::<Counters>(VERSION, &inherited.snapshot) {
//!         Ok(c) => *counters.lock().await = c,
//!         Err(e) => {
//!             generation.refuse(&e.to_string()); // the old generation keeps serving
//!             return Err(e);
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// What every tagged state begins with, before the version number and a newline.
const TAG: &[u8] = b"gracenet-state v";

/// `value` as handed-over state of version `version`.
///
/// # Errors
/// [`Error::StateFormat`] when `value` cannot be serialized (a map with keys that are not
/// strings, say).
pub fn encode<T: Serialize + ?Sized>(version: u32, value: &T) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(TAG);
    bytes.extend_from_slice(version.to_string().as_bytes());
    bytes.push(b'\n');
    serde_json::to_writer(&mut bytes, value).map_err(|e| Error::StateFormat {
        version,
        reason: format!("cannot encode it: {e}"),
    })?;
    Ok(bytes)
}

/// The value `bytes` carry, if they are state of version `version` ([`encode`]).
///
/// # Errors
/// [`Error::StateVersion`] when `bytes` are of another version, or untagged (naming what
/// was found); [`Error::StateFormat`] when they are of this version but do not decode as `T`.
pub fn decode<T: DeserializeOwned>(version: u32, bytes: &[u8]) -> Result<T, Error> {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let found = line
        .strip_prefix(TAG)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<u32>().ok());
    match found {
        Some(v) if v == version => {}
        Some(v) => {
            return Err(Error::StateVersion {
                found: format!("version {v}"),
                expected: version,
            });
        }
        None => {
            let start = String::from_utf8_lossy(&line[..line.len().min(32)]).into_owned();
            return Err(Error::StateVersion {
                found: format!("untagged (it begins {start:?}, not \"gracenet-state v<N>\")"),
                expected: version,
            });
        }
    }
    serde_json::from_slice(&bytes[line.len() + 1..]).map_err(|e| Error::StateFormat {
        version,
        reason: format!("cannot decode it: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_reads_back_at_its_version_and_another_version_is_named() {
        let notes: std::collections::BTreeMap<String, String> = [("1".into(), "hello".into())].into();
        let bytes = encode(3, &notes).expect("encodes");
        let back: std::collections::BTreeMap<String, String> = decode(3, &bytes).expect("decodes");
        assert_eq!(back, notes);
        let e = decode::<std::collections::BTreeMap<String, String>>(4, &bytes).expect_err("v3 is not v4");
        assert_eq!(
            e.to_string(),
            "the handed-over state is version 3, and this program reads version 4 only: refuse it (the old generation keeps serving) or read both versions"
        );
        let e = decode::<u64>(1, b"v1:7").expect_err("untagged");
        assert!(e.to_string().contains("untagged (it begins \"v1:7\""), "{e}");
        let e = decode::<u64>(3, &bytes).expect_err("not a u64");
        assert!(
            e.to_string()
                .starts_with("handed-over state version 3: cannot decode it"),
            "{e}"
        );
    }
}
