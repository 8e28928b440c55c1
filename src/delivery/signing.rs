//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `"{webhook-id}.{webhook-timestamp}.{body}"`, keyed by the decoded `whsec_` secret.
//!
//! Several secrets may be configured (space-separated) so that a secret can be rotated
//! without a window of failed verification: every callback is signed with each.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("a secret must start with `whsec_`")]
    Prefix,
    #[error("a secret must be `whsec_` followed by base64")]
    Base64,
    #[error("a secret's key must not be empty")]
    Empty,
    #[error("is only whitespace")]
    Blank,
    #[error("secrets must be separated by spaces, with no other whitespace or control characters")]
    Separator,
}

/// The keys callbacks are signed with, each kept as an HMAC already keyed (cloning one is
/// cheaper than keying again for every callback).
#[derive(Clone, Default)]
pub struct Signer {
    keys: Vec<Hmac<Sha256>>,
}

// Keys never reach logs or debug output.
impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} key(s))", self.keys.len())
    }
}

impl Signer {
    /// Parses one or more space-separated `whsec_…` secrets; an empty string signs nothing.
    /// Whitespace around the list is not part of it (a secret file ends with a newline), but
    /// a list that is nothing but whitespace is refused rather than read as "no signing": a
    /// secret meant to be set and silently lost would leave callbacks unsigned.
    pub fn from_secrets(secrets: &str) -> Result<Self, SecretError> {
        let list = secrets.trim_ascii();
        if list.is_empty() && !secrets.is_empty() {
            return Err(SecretError::Blank);
        }
        if list
            .chars()
            .any(|c| c != ' ' && (c.is_whitespace() || c.is_control()))
        {
            return Err(SecretError::Separator);
        }
        let keys = list
            .split(' ')
            .filter(|secret| !secret.is_empty())
            .map(|secret| {
                let encoded = secret.strip_prefix(PREFIX).ok_or(SecretError::Prefix)?;
                let key = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
                if key.is_empty() {
                    return Err(SecretError::Empty);
                }
                Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SecretError::Empty)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The `webhook-signature` header value, or `None` when signing is off.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
        if self.keys.is_empty() {
            return None;
        }
        let signatures: Vec<String> = self
            .keys
            .iter()
            .map(|key| {
                let mac = signed_content(key, id, timestamp, body);
                format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
            })
            .collect();
        Some(signatures.join(" "))
    }
}

impl Signer {
    /// Whether any `v1,` signature in a `webhook-signature` header matches `body` under any
    /// of the keys (the receiver's side; each comparison takes constant time).
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let presented: Vec<Vec<u8>> = header
            .split_whitespace()
            .filter_map(|sig| sig.strip_prefix("v1,"))
            .filter_map(|sig| STANDARD.decode(sig).ok())
            .collect();
        self.keys.iter().any(|key| {
            presented.iter().any(|sig| {
                signed_content(key, id, timestamp, body)
                    .verify_slice(sig)
                    .is_ok()
            })
        })
    }
}

/// The MAC of `"{id}.{timestamp}.{body}"`, as Standard Webhooks defines the signed content.
fn signed_content(key: &Hmac<Sha256>, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = key.clone();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_the_standard_webhooks_test_vector() {
        let signer = Signer::from_secrets("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let signature = signer.sign(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(
            signature.as_deref(),
            Some("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=")
        );
    }

    #[test]
    fn verifies_its_own_signatures_and_nothing_else() {
        let signer = Signer::from_secrets("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let header = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        assert!(signer.verify("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body, header));
        // Another signature first (a rotated-out key) does not hide the good one.
        let rotated = format!("v1,AAAA v1,bm90IGl0 {header}");
        assert!(signer.verify(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            body,
            &rotated
        ));
        assert!(!signer.verify("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367554, body, header));
        assert!(!signer.verify("msg_other", 1649367553, body, header));
        assert!(!signer.verify("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, b"{}", header));
        assert!(!signer.verify(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            body,
            "v2,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        ));
        assert!(!signer.verify("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body, ""));
    }

    #[test]
    fn whitespace_around_the_secrets_is_not_part_of_them() {
        let signer = Signer::from_secrets("\n whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\r\n").unwrap();
        assert_eq!(
            signer
                .sign(
                    "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                    1649367553,
                    br#"{"email":"test@example.com","username":"test_user"}"#,
                )
                .as_deref(),
            Some("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=")
        );
    }

    #[test]
    fn signs_with_every_secret_for_rotation() {
        let signer = Signer::from_secrets(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD  whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .unwrap();
        let header = signer.sign("msg_1", 1, b"{}").unwrap();
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn refuses_malformed_secrets_and_signs_nothing_without_one() {
        assert_eq!(
            Signer::from_secrets("C2FVsBQIhrscChlQIMV").unwrap_err(),
            SecretError::Prefix
        );
        assert_eq!(
            Signer::from_secrets("whsec_!!!").unwrap_err(),
            SecretError::Base64
        );
        assert_eq!(
            Signer::from_secrets("whsec_").unwrap_err(),
            SecretError::Empty
        );
        assert_eq!(Signer::from_secrets(" \n").unwrap_err(), SecretError::Blank);
        assert_eq!(
            Signer::from_secrets(
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\twhsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            )
            .unwrap_err(),
            SecretError::Separator
        );
        assert_eq!(
            Signer::from_secrets("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD,whsec_x").unwrap_err(),
            SecretError::Base64
        );
        let off = Signer::from_secrets("").unwrap();
        assert!(!off.is_enabled());
        assert_eq!(off.sign("a", 1, b""), None);
    }
}
