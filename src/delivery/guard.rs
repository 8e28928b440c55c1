//! SSRF protection (SPEC §5): which callback destinations the service refuses to reach.
//!
//! A callback URL is chosen by whoever calls `POST /async`, so without a guard anyone could
//! make this service POST into the network it runs in (cloud metadata at 169.254.169.254, an
//! admin port on localhost, …). The guard works at two moments:
//! - at submit, [`check_callback_url`] refuses a URL whose host is `localhost` or an IP
//!   literal in a blocked range. The `url` crate has already normalised every spelling of the
//!   address (`2130706433`, `0x7f.1`, `0177.0.0.1`, `[::ffff:127.0.0.1]`), so one check on the
//!   parsed host catches them all. No DNS lookup happens here: it would be slow, and its
//!   answer could change before delivery anyway.
//! - at connect, every address a name resolves to is checked with [`is_blocked`] before it is
//!   dialled (the callback client's resolver), which defeats DNS rebinding.
//!
//! The blocked ranges are one table, [`BLOCKED_V4`] and [`BLOCKED_V6`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Longest callback URL accepted, in characters.
pub const MAX_URL_CHARS: usize = 2048;

/// IPv4 ranges that are not globally reachable unicast (IANA special-purpose registry).
pub const BLOCKED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // carrier-grade NAT
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, cloud metadata
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // TEST-NET-1
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

/// IPv6 ranges blocked outright. Forms that embed an IPv4 address are handled by
/// [`embedded_ipv4`] instead, so that they are judged by the address they carry.
pub const BLOCKED_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128), // unspecified
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128), // loopback
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
    (Ipv6Addr::new(0x2001, 0x0db8, 0, 0, 0, 0, 0, 0), 32), // documentation
];

/// Whether the service must never connect to `ip`.
pub fn is_blocked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_blocked_v4(v4),
        IpAddr::V6(v6) => {
            BLOCKED_V6.iter().any(|&(net, len)| in_v6(v6, net, len))
                || embedded_ipv4(v6).is_some_and(is_blocked_v4)
        }
    }
}

fn is_blocked_v4(ip: Ipv4Addr) -> bool {
    BLOCKED_V4.iter().any(|&(net, len)| in_v4(ip, net, len))
}

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// The IPv4 address carried by an IPv6 address that is really an IPv4 destination:
/// IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96` (deprecated, still routable on some
/// stacks), NAT64 `64:ff9b::/96` and 6to4 `2002::/16`.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    let prefixes_96: [Ipv6Addr; 3] = [
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
    ];
    if prefixes_96.iter().any(|&p| in_v6(ip, p, 96)) {
        return Some(low32);
    }
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// Why a callback URL was refused at submit. The message completes "callback_url: …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("must be at most {MAX_URL_CHARS} characters")]
    TooLong,
    #[error("is not a valid URL: {0}")]
    Invalid(url::ParseError),
    #[error("scheme must be http or https")]
    Scheme,
    #[error("must have a host")]
    NoHost,
    #[error("host {0} is not allowed (private, loopback or reserved address)")]
    Blocked(String),
}

/// Parses and checks a callback URL at submit time (no DNS). With `block_private` off, only
/// the syntactic rules apply.
pub fn check_callback_url(raw: &str, block_private: bool) -> Result<Url, UrlError> {
    if raw.chars().count() > MAX_URL_CHARS {
        return Err(UrlError::TooLong);
    }
    let url = Url::parse(raw).map_err(UrlError::Invalid)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::Scheme);
    }
    let host = url.host().ok_or(UrlError::NoHost)?;
    if block_private && host_is_blocked(&host) {
        return Err(UrlError::Blocked(host.to_string()));
    }
    Ok(url)
}

fn host_is_blocked(host: &Host<&str>) -> bool {
    match host {
        Host::Ipv4(ip) => is_blocked(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => is_blocked(IpAddr::V6(*ip)),
        Host::Domain(name) => {
            // `url` lower-cases domains; a trailing dot names the same host.
            let name = name.strip_suffix('.').unwrap_or(name);
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(s: &str) -> bool {
        is_blocked(s.parse().unwrap())
    }

    #[test]
    fn every_blocked_v4_range_is_blocked_at_both_ends_and_neighbours_are_not() {
        for &(net, len) in BLOCKED_V4 {
            let first = u32::from(net);
            let last = first | (u32::MAX >> len);
            assert!(is_blocked_v4(Ipv4Addr::from(first)), "{net}/{len} first");
            assert!(is_blocked_v4(Ipv4Addr::from(last)), "{net}/{len} last");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "198.51.101.0",
            "203.0.112.255",
            "203.0.114.0",
            "223.255.255.255",
        ] {
            assert!(!blocked(ip), "{ip} is public and must not be blocked");
        }
    }

    #[test]
    fn every_blocked_v6_range_is_blocked() {
        for ip in [
            "::",
            "::1",
            "fc00::",
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fe80::1",
            "febf:ffff::1",
            "ff02::1",
            "ffff::",
            "2001:db8::",
            "2001:db8:ffff::1",
        ] {
            assert!(blocked(ip), "{ip}");
        }
        for ip in [
            "2606:4700::1111",
            "2001:4860::8888",
            "fec0::1",
            "2001:db9::1",
            "::2:1:1:1",
        ] {
            assert!(!blocked(ip), "{ip} is public and must not be blocked");
        }
    }

    #[test]
    fn ipv6_forms_embedding_a_blocked_ipv4_are_blocked() {
        for ip in [
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "2002:c0a8:101::",
        ] {
            assert!(blocked(ip), "{ip}");
        }
        // The same forms carrying a public address are allowed.
        for ip in ["::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::1"] {
            assert!(!blocked(ip), "{ip}");
        }
        assert_eq!(
            embedded_ipv4("2002:c0a8:0101::1".parse().unwrap()),
            Some(Ipv4Addr::new(192, 168, 1, 1))
        );
    }

    #[test]
    fn every_spelling_of_a_blocked_host_is_refused_at_submit() {
        for url in [
            "http://localhost/cb",
            "http://LOCALHOST:8080/cb",
            "http://localhost./cb",
            "http://api.localhost/cb",
            "http://127.0.0.1/cb",
            "http://127.1/cb",
            "http://2130706433/cb",
            "http://0177.0.0.1/cb",
            "http://0x7f.1/cb",
            "http://0x7f000001/cb",
            "http://[::1]/cb",
            "http://[::]/cb",
            "http://[::ffff:127.0.0.1]/cb",
            "http://[::ffff:7f00:1]/cb",
            "http://0.0.0.0/cb",
            "http://0/cb",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/cb",
            "http://192.168.1.1/cb",
            "https://172.16.0.1/cb",
            "http://[fd00::1]/cb",
            "http://[fe80::1]/cb",
            "http://[64:ff9b::7f00:1]/cb",
            "http://[2002:7f00:1::]/cb",
            "http://user:pass@127.0.0.1:9999/cb",
        ] {
            match check_callback_url(url, true) {
                Err(UrlError::Blocked(_)) => {}
                other => panic!("{url} must be refused as blocked, got {other:?}"),
            }
        }
    }

    #[test]
    fn public_hosts_and_names_pass_without_dns() {
        for url in [
            "http://example.com/cb",
            "https://hooks.example.com:8443/a/b?c=d",
            "http://8.8.8.8/cb",
            "http://[2606:4700::1111]/cb",
            "http://localhost.example.com/cb",
        ] {
            assert!(check_callback_url(url, true).is_ok(), "{url}");
        }
    }

    #[test]
    fn protection_off_allows_loopback_but_keeps_syntax_rules() {
        assert!(check_callback_url("http://127.0.0.1:9999/cb", false).is_ok());
        assert!(check_callback_url("http://localhost/cb", false).is_ok());
        assert_eq!(
            check_callback_url("ftp://example.com/", false),
            Err(UrlError::Scheme)
        );
    }

    #[test]
    fn syntax_rules() {
        assert_eq!(
            check_callback_url("file:///etc/passwd", true),
            Err(UrlError::Scheme)
        );
        assert_eq!(
            check_callback_url("javascript:alert(1)", true),
            Err(UrlError::Scheme)
        );
        assert!(matches!(
            check_callback_url("not a url", true),
            Err(UrlError::Invalid(_))
        ));
        assert!(matches!(
            check_callback_url("http://", true),
            Err(UrlError::Invalid(_))
        ));
        let long = format!("http://example.com/{}", "a".repeat(MAX_URL_CHARS));
        assert_eq!(check_callback_url(&long, true), Err(UrlError::TooLong));
        let exact = format!("http://example.com/{}", "a".repeat(MAX_URL_CHARS - 19));
        assert_eq!(exact.chars().count(), MAX_URL_CHARS);
        assert!(check_callback_url(&exact, true).is_ok());
    }
}
