//! What a request asked for, as its idempotency key's fingerprint: a replay must ask for the
//! same thing, or it is answered 422.
//!
//! The mode and the parsed input are digested, so that a replay whose JSON differs only in
//! spelling (key order, `"100"` for `100`) is the same request, and one that differs in any
//! value is not. A stored fingerprint names its format: keys stored by an earlier release
//! keep theirs, and a retry of such a request is still recognised after an upgrade.

use sha2::{Digest, Sha256};

use crate::model::Mode;

/// How a fingerprint in the current format starts. The first format, a bare 64-digit hex
/// digest, never holds a colon.
const CURRENT_PREFIX: &str = "2:";

/// A request's fingerprint in each format a stored key may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    current: String,
    first: String,
}

impl Fingerprint {
    /// `controls` is what an async request asked for beyond the original's fields, in a
    /// canonical form (empty when nothing); a sync request has no `callback_url`.
    pub fn of(
        mode: Mode,
        iterations: u32,
        callback_url: Option<&str>,
        controls: &str,
        data: &str,
    ) -> Self {
        let url = callback_url.unwrap_or_default();
        Self {
            current: current(mode, iterations, url, controls, data),
            first: first(mode, iterations, url, controls, data),
        }
    }

    /// What a new request's row records.
    pub fn stored(&self) -> &str {
        &self.current
    }

    /// Whether `stored`, the fingerprint of the request holding the key, in whichever
    /// format it was written, is this request's.
    pub fn matches(&self, stored: &str) -> bool {
        if stored.starts_with(CURRENT_PREFIX) {
            stored == self.current
        } else {
            stored == self.first
        }
    }
}

/// Every field with its length before it, so that no two different requests concatenate to
/// the same bytes.
fn current(mode: Mode, iterations: u32, url: &str, controls: &str, data: &str) -> String {
    let mut digest = Sha256::new();
    for field in [mode.as_str(), url, controls, data] {
        digest.update((field.len() as u64).to_be_bytes());
        digest.update(field.as_bytes());
    }
    digest.update(iterations.to_be_bytes());
    format!("{CURRENT_PREFIX}{}", hex::encode(digest.finalize()))
}

/// The first format, kept to read the keys it stored. It wrote the controls' length only
/// when there were controls, and `data` without one: a request without controls whose
/// `data` starts with a length and a canonical controls string digests like the request
/// that asked for those controls.
fn first(mode: Mode, iterations: u32, url: &str, controls: &str, data: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(mode.as_str().as_bytes());
    digest.update(iterations.to_be_bytes());
    digest.update((url.len() as u64).to_be_bytes());
    digest.update(url.as_bytes());
    if !controls.is_empty() {
        digest.update((controls.len() as u64).to_be_bytes());
        digest.update(controls.as_bytes());
    }
    digest.update(data.as_bytes());
    hex::encode(digest.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:9000/cb";

    #[test]
    fn a_request_matches_its_own_fingerprint_in_either_format() {
        let asked = Fingerprint::of(Mode::Async, 5, Some(URL), ";Some(1);None", "data");
        assert!(asked.matches(asked.stored()));
        assert!(asked.stored().starts_with(CURRENT_PREFIX));
        let stored_before = first(Mode::Async, 5, URL, ";Some(1);None", "data");
        assert!(
            !stored_before.contains(':'),
            "the first format holds no colon"
        );
        assert!(asked.matches(&stored_before));
    }

    #[test]
    fn a_request_without_controls_whose_data_spells_them_is_another_request() {
        let controls = ";Some(1);None";
        let with = Fingerprint::of(Mode::Async, 5, Some(URL), controls, "data");
        // The bytes the first format digested for `with`, after the URL, as `data` alone.
        let mut crafted = (controls.len() as u64).to_be_bytes().to_vec();
        crafted.extend_from_slice(controls.as_bytes());
        crafted.extend_from_slice(b"data");
        let crafted = String::from_utf8(crafted).unwrap();
        let without = Fingerprint::of(Mode::Async, 5, Some(URL), "", &crafted);
        assert_eq!(
            with.first, without.first,
            "the ambiguity the first format had"
        );
        assert!(!without.matches(with.stored()));
        assert!(!with.matches(without.stored()));
    }

    #[test]
    fn every_field_changes_the_fingerprint() {
        let base = Fingerprint::of(Mode::Async, 5, Some(URL), "", "data");
        let others = [
            Fingerprint::of(Mode::Sync, 5, Some(URL), "", "data"),
            Fingerprint::of(Mode::Async, 6, Some(URL), "", "data"),
            Fingerprint::of(Mode::Async, 5, Some("http://127.0.0.1:9000/cc"), "", "data"),
            Fingerprint::of(Mode::Async, 5, Some(URL), ";Some(1);None", "data"),
            Fingerprint::of(Mode::Async, 5, Some(URL), "", "datb"),
            // A field's end moved into the next one.
            Fingerprint::of(Mode::Async, 5, Some(&URL[..URL.len() - 1]), "b", "data"),
        ];
        for other in others {
            assert!(!base.matches(other.stored()), "{other:?}");
        }
    }
}
