//! The request bodies: `{"data":…,"iterations":N}` (plus `callback_url` for async), with
//! `data` of a chosen size and different in every request.
//!
//! Unique data keeps the measurement honest: a server (or a cache in front of it) that
//! remembered answers would otherwise be measured on its cache. The body is assembled from
//! a prefix and a suffix serialised once per phase, plus the request's number written in
//! hex, so building one costs one small allocation and no JSON encoding on the hot path.

use std::fmt::Write as _;

/// Bodies of one phase.
#[derive(Debug, Clone)]
pub struct Payloads {
    /// `{"data":"` and the run tag and filler, `data_size` bytes of data minus the index.
    head: Vec<u8>,
    /// `","iterations":N` and the callback URL (without the closing `}`).
    tail: Vec<u8>,
    data_size: usize,
    /// Spread the requests over this many ordering keys, round robin.
    ordering_keys: Option<u64>,
}

/// Characters of filler; ASCII letters so no byte needs JSON escaping.
const FILLER: u8 = b'x';

impl Payloads {
    /// `tag` makes bodies differ between runs too (a run's tag is random).
    pub fn new(data_size: usize, iterations: u32, callback_url: Option<&str>, tag: u32) -> Self {
        let mut head = Vec::with_capacity(16 + data_size);
        head.extend_from_slice(br#"{"data":""#);
        let mut tail = format!(r#"","iterations":{iterations}"#);
        if let Some(url) = callback_url {
            // serde_json escapes what a URL may contain (quotes, backslashes).
            let quoted = serde_json::Value::String(url.to_string()).to_string();
            let _ = write!(tail, r#","callback_url":{quoted}"#);
        }
        let mut data_start = format!("{tag:08x}-");
        data_start.truncate(data_size);
        head.extend_from_slice(data_start.as_bytes());
        Self {
            head,
            tail: tail.into_bytes(),
            data_size,
            ordering_keys: None,
        }
    }

    /// Gives request `index` the ordering key `k{index mod keys}` (with the run's tag: each run
    /// has keys of its own).
    pub fn with_ordering_keys(mut self, keys: Option<u64>) -> Self {
        self.ordering_keys = keys.filter(|n| *n > 0);
        self
    }

    /// The body of request `index`: its data is the run tag, filler, and the index in hex,
    /// `data_size` bytes in all. Data of fewer bytes than the index's hex digits keeps its
    /// last digits, so it is unique only up to 16^data_size requests.
    pub fn body(&self, index: u64) -> Vec<u8> {
        let mut digits = [0u8; 16];
        let hex = hex_digits(index, &mut digits);
        let prefix_len = self.head.len() - br#"{"data":""#.len();
        let mut body = Vec::with_capacity(self.head.len() + self.data_size + self.tail.len());
        if hex.len() >= self.data_size {
            body.extend_from_slice(br#"{"data":""#);
            body.extend_from_slice(&hex[hex.len() - self.data_size..]);
        } else {
            let room = self.data_size - hex.len();
            let keep = prefix_len.min(room);
            body.extend_from_slice(&self.head[..self.head.len() - prefix_len + keep]);
            body.resize(body.len() + (room - keep), FILLER);
            body.extend_from_slice(hex);
        }
        body.extend_from_slice(&self.tail);
        if let Some(keys) = self.ordering_keys {
            // The tag (the data's first 8 bytes) ties the key to this run.
            let tag = &self.head[br#"{"data":""#.len()..];
            let tag = &tag[..tag.len().min(8)];
            body.extend_from_slice(br#","ordering_key":"lg-"#);
            body.extend_from_slice(tag);
            let _ = write!(VecWriter(&mut body), "-k{}", index % keys);
            body.push(b'"');
        }
        body.push(b'}');
        body
    }
}

/// A `POST /async/batch` body of the requests numbered `indexes`.
pub fn batch_body(payloads: &Payloads, indexes: impl Iterator<Item = u64>) -> Vec<u8> {
    let mut body = br#"{"requests":["#.to_vec();
    for (n, index) in indexes.enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&payloads.body(index));
    }
    body.extend_from_slice(b"]}");
    body
}

/// `fmt::Write` into a byte vector.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// `value` in lowercase hex without leading zeros, written into `buf`.
fn hex_digits(value: u64, buf: &mut [u8; 16]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len();
    let mut v = value;
    loop {
        i -= 1;
        buf[i] = HEX[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).expect("valid JSON")
    }

    #[test]
    fn bodies_are_json_of_the_requested_size_and_all_different() {
        let payloads = Payloads::new(64, 1000, None, 0xdead_beef);
        let a = parse(&payloads.body(0));
        let b = parse(&payloads.body(255));
        assert_eq!(a["iterations"], 1000);
        assert!(a.get("callback_url").is_none());
        let (a, b) = (a["data"].as_str().unwrap(), b["data"].as_str().unwrap());
        assert_eq!(a.len(), 64);
        assert_eq!(b.len(), 64);
        assert!(a.starts_with("deadbeef-xxx"), "{a}");
        assert!(b.ends_with("xff"), "{b}");
        assert_ne!(a, b);
    }

    #[test]
    fn ordering_keys_go_round_robin_and_are_the_runs_own() {
        let payloads =
            Payloads::new(16, 1, Some("http://127.0.0.1:9/cb"), 0xabcd).with_ordering_keys(Some(3));
        let keys: Vec<Value> = (0..4)
            .map(|i| parse(&payloads.body(i))["ordering_key"].clone())
            .collect();
        assert_eq!(
            keys,
            [
                "lg-0000abcd-k0",
                "lg-0000abcd-k1",
                "lg-0000abcd-k2",
                "lg-0000abcd-k0"
            ]
        );
        let plain = Payloads::new(16, 1, None, 1).with_ordering_keys(None);
        assert!(parse(&plain.body(1)).get("ordering_key").is_none());
    }

    #[test]
    fn async_bodies_carry_the_callback_url_escaped() {
        let payloads = Payloads::new(8, 1, Some("http://127.0.0.1:9/cb?a=\"b\""), 1);
        let body = parse(&payloads.body(7));
        assert_eq!(body["callback_url"], "http://127.0.0.1:9/cb?a=\"b\"");
        // The tag's first 7 hex digits, then the index.
        assert_eq!(body["data"], "00000007");
    }

    #[test]
    fn a_batch_body_holds_each_request_in_order() {
        let payloads = Payloads::new(8, 3, Some("http://127.0.0.1:9/cb"), 1);
        let batch = parse(&batch_body(&payloads, [4, 5, 6].into_iter()));
        let items = batch["requests"].as_array().expect("requests");
        assert_eq!(items.len(), 3);
        for (item, index) in items.iter().zip([4u64, 5, 6]) {
            assert_eq!(item, &parse(&payloads.body(index)));
        }
    }

    #[test]
    fn tiny_data_keeps_the_last_digits_of_the_index() {
        let payloads = Payloads::new(2, 1, None, 1);
        assert_eq!(parse(&payloads.body(0x1234))["data"], "34");
        assert_eq!(parse(&payloads.body(0x5))["data"], "05");
    }
}
