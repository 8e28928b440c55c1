//! What a request asked for, as its idempotency key's fingerprint: a replay must ask for the
//! same thing, or it is answered 422.
//!
//! The mode and the parsed input are digested, so that a replay whose JSON differs only in
//! spelling (key order, `"100"` for `100`) is the same request, and one that differs in any
//! value is not.
//!
//! The first format wrote the controls' length only when there were controls, and `data`
//! without one, so a request without controls whose `data` starts with a length and a
//! canonical controls string digests like the request that asked for those controls. Such a
//! `data` starts with a NUL character (a length's first byte, big-endian), so only requests
//! without controls whose `data` starts with one are ambiguous. They alone are stored in a
//! second format, which names itself and writes every field after its length, and they never
//! match a key stored in the first format. Every other request is stored in the first format
//! still: one format for nearly every key, whichever release wrote it.

use sha2::{Digest, Sha256};

use crate::model::Mode;

/// How a fingerprint in the second format starts. The first, a bare 64-digit hex digest,
/// never holds a colon.
const SECOND_PREFIX: &str = "2:";

/// A request's fingerprint in each format a stored key may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    first: String,
    second: String,
    /// Whether the first format cannot tell this request from one that asked for controls.
    ambiguous: bool,
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
            first: first(mode, iterations, url, controls, data),
            second: second(mode, iterations, url, controls, data),
            ambiguous: controls.is_empty() && data.starts_with('\0'),
        }
    }

    /// What a new request's row records.
    pub fn stored(&self) -> &str {
        if self.ambiguous {
            &self.second
        } else {
            &self.first
        }
    }

    /// Whether `stored`, the fingerprint of the request holding the key, in whichever
    /// format it was written, is this request's.
    pub fn matches(&self, stored: &str) -> bool {
        if stored.starts_with(SECOND_PREFIX) {
            stored == self.second
        } else {
            !self.ambiguous && stored == self.first
        }
    }
}

/// Lengths only where the first release wrote them: the mode (`sync` and `async` differ in
/// their first byte) and the iterations have fixed ends, the URL is written after its
/// length, and `data` comes last.
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

/// Every field after its length: no two different requests concatenate to the same bytes.
fn second(mode: Mode, iterations: u32, url: &str, controls: &str, data: &str) -> String {
    let mut digest = Sha256::new();
    for field in [mode.as_str(), url, controls, data] {
        digest.update((field.len() as u64).to_be_bytes());
        digest.update(field.as_bytes());
    }
    digest.update(iterations.to_be_bytes());
    format!("{SECOND_PREFIX}{}", hex::encode(digest.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:9000/cb";
    const CONTROLS: &str = ";Some(1);None";

    /// `data` for a request without controls that the first format digests like a request
    /// asking for [`CONTROLS`] with `data`.
    fn spelling_controls(data: &str) -> String {
        let mut crafted: String = (CONTROLS.len() as u64)
            .to_be_bytes()
            .iter()
            .map(|&b| char::from(b))
            .collect();
        crafted.push_str(CONTROLS);
        crafted.push_str(data);
        crafted
    }

    #[test]
    fn a_plain_request_is_stored_in_the_first_format_an_earlier_release_reads() {
        let asked = Fingerprint::of(Mode::Async, 5, Some(URL), CONTROLS, "data");
        assert_eq!(asked.stored(), first(Mode::Async, 5, URL, CONTROLS, "data"));
        assert!(
            !asked.stored().contains(':'),
            "the first format holds no colon"
        );
        assert!(asked.matches(asked.stored()));
        let sync = Fingerprint::of(Mode::Sync, 5, None, "", "data");
        assert!(sync.matches(sync.stored()));
    }

    #[test]
    fn a_request_without_controls_whose_data_spells_them_is_another_request() {
        let with = Fingerprint::of(Mode::Async, 5, Some(URL), CONTROLS, "data");
        let without = Fingerprint::of(Mode::Async, 5, Some(URL), "", &spelling_controls("data"));
        assert_eq!(
            with.first, without.first,
            "the ambiguity the first format has"
        );
        assert!(without.stored().starts_with(SECOND_PREFIX));
        assert!(
            without.matches(without.stored()),
            "its own repeat still replays"
        );
        assert!(!without.matches(with.stored()), "nor a key stored before");
        assert!(!with.matches(without.stored()));
    }

    #[test]
    fn every_field_changes_the_fingerprint() {
        for data in ["data", "\0data"] {
            let base = Fingerprint::of(Mode::Async, 5, Some(URL), "", data);
            let others = [
                Fingerprint::of(Mode::Sync, 5, Some(URL), "", data),
                Fingerprint::of(Mode::Async, 6, Some(URL), "", data),
                Fingerprint::of(Mode::Async, 5, Some("http://127.0.0.1:9000/cc"), "", data),
                Fingerprint::of(Mode::Async, 5, Some(URL), CONTROLS, data),
                Fingerprint::of(Mode::Async, 5, Some(URL), "", "datb"),
                // A field's end moved into the next one.
                Fingerprint::of(Mode::Async, 5, Some(&URL[..URL.len() - 1]), "b", data),
            ];
            for other in others {
                assert!(!base.matches(other.stored()), "{data:?} {other:?}");
                assert!(!other.matches(base.stored()), "{data:?} {other:?}");
            }
        }
    }
}
