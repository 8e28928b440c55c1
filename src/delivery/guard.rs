//! SSRF protection (SPEC §5): which callback destinations the service refuses to reach.
//!
//! A callback URL is chosen by whoever calls `POST /async`, so without a guard anyone could
//! make this service POST into the network it runs in (cloud metadata at 169.254.169.254, an
//! admin port on localhost, …). The guard works at two moments:
//! - at submit, [`Guard::check_url`] refuses a URL whose host is `localhost` or an IP
//!   literal in a blocked range. The `url` crate has already normalised every spelling of the
//!   address (`2130706433`, `0x7f.1`, `0177.0.0.1`, `[::ffff:127.0.0.1]`), so one check on the
//!   parsed host catches them all. No DNS lookup happens here: it would be slow, and its
//!   answer could change before delivery anyway.
//! - at connect, every address a name resolves to is checked with [`Guard::allows`] before it
//!   is dialled (the callback client's resolver), which defeats DNS rebinding.
//!
//! Host names in `APP_CALLBACK_ALLOWED_HOSTS` bypass both checks: for callbacks to a known
//! internal service. Whoever can submit requests can then make the service POST to those
//! hosts, so list only hosts built to receive these callbacks. Each entry is read as the URL
//! parser reads a URL's host ([`AllowedHost`]), so an entry and a callback URL naming the
//! same host compare equal; an entry that could never equal a host (one with a port or a
//! scheme) is refused at start instead of silently matching nothing.
//!
//! The blocked ranges are one table, [`BLOCKED_V4`] and [`BLOCKED_V6`].

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

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
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32), // Teredo: tunnels to any IPv4
    // Local-use NAT64 (RFC 8215): translates to IPv4 through a network's own translator,
    // with the IPv4 address at a position only that network knows.
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
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
/// IPv4-mapped `::ffff:0:0/96`, SIIT IPv4-translated `::ffff:0:0:0/96`, IPv4-compatible
/// `::/96` (deprecated, still routable on some stacks), NAT64 `64:ff9b::/96` and 6to4
/// `2002::/16`.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    let prefixes_96: [Ipv6Addr; 4] = [
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0),
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

/// A host an operator trusts (an entry of `APP_CALLBACK_ALLOWED_HOSTS`): a host name
/// (lower-case, punycode, without a final dot) or an IP address, as a callback URL's host
/// is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AllowedHost {
    Name(String),
    Ip(IpAddr),
}

/// Why an entry of `APP_CALLBACK_ALLOWED_HOSTS` was refused; each names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowedHostError {
    #[error("`{0}` has a scheme: list the host alone")]
    Scheme(String),
    #[error("`{0}` has user info: list the host alone")]
    UserInfo(String),
    #[error("`{0}` has a path: list the host alone")]
    Path(String),
    #[error("`{0}` has a port: a host is allowed on every port, list it alone")]
    Port(String),
    #[error("`{0}` is not a host name or an IP address")]
    Invalid(String),
}

impl FromStr for AllowedHost {
    type Err = AllowedHostError;

    /// A host name, or an IP address (IPv6 with or without brackets); nothing else.
    fn from_str(entry: &str) -> Result<Self, AllowedHostError> {
        let refuse = |reason: fn(String) -> AllowedHostError| Err(reason(entry.to_string()));
        if entry.contains("://") {
            return refuse(AllowedHostError::Scheme);
        }
        if entry.contains('@') {
            return refuse(AllowedHostError::UserInfo);
        }
        if entry.contains(['/', '\\', '?', '#']) {
            return refuse(AllowedHostError::Path);
        }
        if let Ok(ip) = entry.parse() {
            return Ok(AllowedHost::Ip(ip));
        }
        if let Some(bracketed) = entry.strip_prefix('[') {
            return match bracketed.split_once(']') {
                Some((ip, "")) => match ip.parse::<Ipv6Addr>() {
                    Ok(ip) => Ok(AllowedHost::Ip(IpAddr::V6(ip))),
                    Err(_) => refuse(AllowedHostError::Invalid),
                },
                Some((_, port)) if port.starts_with(':') => refuse(AllowedHostError::Port),
                _ => refuse(AllowedHostError::Invalid),
            };
        }
        if let Some((_, port)) = entry.rsplit_once(':') {
            return if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                refuse(AllowedHostError::Port)
            } else {
                refuse(AllowedHostError::Invalid)
            };
        }
        // The URL parser's own reading: case, punycode and the spellings of an IPv4 address
        // (`0x7f.1`) come out as they do for a callback URL.
        match Host::parse(entry) {
            Ok(Host::Ipv4(ip)) => Ok(AllowedHost::Ip(IpAddr::V4(ip))),
            Ok(Host::Ipv6(ip)) => Ok(AllowedHost::Ip(IpAddr::V6(ip))),
            Ok(Host::Domain(name)) if is_plain_domain(&name) => Ok(AllowedHost::of_url_host(&name)),
            _ => refuse(AllowedHostError::Invalid),
        }
    }
}

impl AllowedHost {
    /// A callback URL's host (as the URL parser wrote it) in the form entries are kept in.
    fn of_url_host(host: &str) -> Self {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match literal.parse() {
            Ok(ip) => AllowedHost::Ip(ip),
            Err(_) => AllowedHost::Name(normalize_host(host)),
        }
    }
}

/// Labels of letters, digits, hyphens and underscores, none empty, with an optional final
/// dot: what a host name can be, once the URL parser has lower-cased and punycoded it. A
/// wildcard (`*.internal`) is not one, and would never match.
fn is_plain_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `APP_CALLBACK_ALLOWED_HOSTS`: entries separated by commas, with the spaces around each and
/// empty ones (a trailing comma) ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<AllowedHost>);

impl FromStr for AllowedHosts {
    type Err = AllowedHostError;

    fn from_str(list: &str) -> Result<Self, AllowedHostError> {
        list.split(',')
            .map(str::trim_ascii)
            .filter(|entry| !entry.is_empty())
            .map(AllowedHost::from_str)
            .collect::<Result<_, _>>()
            .map(AllowedHosts)
    }
}

impl IntoIterator for AllowedHosts {
    type Item = AllowedHost;
    type IntoIter = std::vec::IntoIter<AllowedHost>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// The SSRF policy in force: whether protection is on, which addresses count as blocked,
/// and which host names an operator trusts anyway (`APP_CALLBACK_ALLOWED_HOSTS`).
///
/// One value is shared by the submit-time check, the resolver and the client, so the three
/// can never disagree.
#[derive(Clone)]
pub struct Guard {
    enabled: bool,
    blocked: fn(IpAddr) -> bool,
    allowed_hosts: Arc<HashSet<AllowedHost>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("enabled", &self.enabled)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

impl Guard {
    /// `allowed_hosts` bypass the guard entirely.
    pub fn new(enabled: bool, allowed_hosts: impl IntoIterator<Item = AllowedHost>) -> Self {
        Self {
            enabled,
            blocked: is_blocked,
            allowed_hosts: Arc::new(allowed_hosts.into_iter().collect()),
        }
    }

    /// The same policy with another rule for what is blocked: for tests that must tell two
    /// loopback addresses apart.
    pub fn with_rule(mut self, blocked: fn(IpAddr) -> bool) -> Self {
        self.blocked = blocked;
        self
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a connection to `ip`, reached through the URL host `host`, may be made.
    pub fn allows(&self, host: &str, ip: IpAddr) -> bool {
        !self.enabled || self.is_allowed_host(host) || !(self.blocked)(ip)
    }

    fn is_allowed_host(&self, host: &str) -> bool {
        !self.allowed_hosts.is_empty()
            && self.allowed_hosts.contains(&AllowedHost::of_url_host(host))
    }

    /// Parses and checks a callback URL at submit time (no DNS). With protection off, only
    /// the syntactic rules apply.
    pub fn check_url(&self, raw: &str) -> Result<Url, UrlError> {
        if raw.chars().count() > MAX_URL_CHARS {
            return Err(UrlError::TooLong);
        }
        let url = Url::parse(raw).map_err(UrlError::Invalid)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlError::Scheme);
        }
        let host = url.host().ok_or(UrlError::NoHost)?;
        if self.enabled && !self.is_allowed_host(&host.to_string()) && self.host_is_blocked(&host) {
            return Err(UrlError::Blocked(host.to_string()));
        }
        Ok(url)
    }

    fn host_is_blocked(&self, host: &Host<&str>) -> bool {
        match host {
            Host::Ipv4(ip) => (self.blocked)(IpAddr::V4(*ip)),
            Host::Ipv6(ip) => (self.blocked)(IpAddr::V6(*ip)),
            Host::Domain(name) => {
                let name = normalize_host(name);
                name == "localhost" || name.ends_with(".localhost")
            }
        }
    }
}

/// Lower-case, without a trailing dot (which names the same host) or IPv6 brackets.
fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(s: &str) -> bool {
        is_blocked(s.parse().unwrap())
    }

    fn on() -> Guard {
        Guard::new(true, [])
    }

    fn off() -> Guard {
        Guard::new(false, [])
    }

    fn allowed(list: &str) -> Guard {
        Guard::new(true, list.parse::<AllowedHosts>().unwrap())
    }

    #[test]
    fn allowed_hosts_bypass_the_guard_at_submit_and_at_connect() {
        let guard =
            allowed(" Internal.Example. , 10.1.2.3,[fd00::1], fd00::2, 0x7f.2, ::ffff:a00:1,");
        assert!(guard.check_url("http://internal.example/cb").is_ok());
        assert!(guard.check_url("http://INTERNAL.example.:1/cb").is_ok());
        assert!(guard.check_url("http://10.1.2.3:8080/cb").is_ok());
        assert!(guard.check_url("http://[fd00::1]/cb").is_ok());
        assert!(guard.check_url("http://[fd00:0::2]/cb").is_ok());
        assert!(guard.check_url("http://127.0.0.2/cb").is_ok());
        assert!(guard.check_url("http://[::ffff:10.0.0.1]/cb").is_ok());
        // Written as an IPv4 address, 10.0.0.1 is not the IPv6 entry that maps it.
        assert!(matches!(
            guard.check_url("http://10.0.0.1/cb"),
            Err(UrlError::Blocked(_))
        ));
        assert!(matches!(
            guard.check_url("http://10.1.2.4/cb"),
            Err(UrlError::Blocked(_))
        ));
        let private: IpAddr = "10.9.9.9".parse().unwrap();
        assert!(guard.allows("INTERNAL.example", private));
        assert!(!guard.allows("other.example", private));
        assert!(guard.allows("other.example", "8.8.8.8".parse().unwrap()));
        assert!(off().allows("anything", private));
    }

    #[test]
    fn an_allowed_host_is_a_host_alone() {
        let host = |s: &str| s.parse::<AllowedHost>();
        let ip = |s: &str| Ok(AllowedHost::Ip(s.parse().unwrap()));
        assert_eq!(
            host("Hooks.Internal"),
            Ok(AllowedHost::Name("hooks.internal".into()))
        );
        assert_eq!(
            host("hooks.internal."),
            Ok(AllowedHost::Name("hooks.internal".into()))
        );
        assert_eq!(
            host("my_service"),
            Ok(AllowedHost::Name("my_service".into()))
        );
        assert_eq!(
            host("bücher.example"),
            Ok(AllowedHost::Name("xn--bcher-kva.example".into()))
        );
        assert_eq!(host("10.0.0.7"), ip("10.0.0.7"));
        assert_eq!(host("2130706433"), ip("127.0.0.1"));
        assert_eq!(host("[fd00::1]"), ip("fd00::1"));
        assert_eq!(host("fd00::1"), ip("fd00::1"));
        for (entry, refused) in [
            (
                "https://hooks.internal",
                AllowedHostError::Scheme as fn(String) -> _,
            ),
            ("hooks.internal:8443", AllowedHostError::Port),
            ("[fd00::1]:8443", AllowedHostError::Port),
            ("hooks.internal/callback", AllowedHostError::Path),
            ("hooks.internal?x", AllowedHostError::Path),
            ("user@hooks.internal", AllowedHostError::UserInfo),
            ("hooks internal", AllowedHostError::Invalid),
            ("*.internal", AllowedHostError::Invalid),
            ("a..b", AllowedHostError::Invalid),
            ("[fd00::1", AllowedHostError::Invalid),
            ("[10.0.0.1]", AllowedHostError::Invalid),
            ("hooks.internal:", AllowedHostError::Invalid),
            ("300.1.1.1", AllowedHostError::Invalid),
        ] {
            assert_eq!(host(entry), Err(refused(entry.to_string())), "{entry}");
        }
        assert_eq!(
            "a, b ,,c,"
                .parse::<AllowedHosts>()
                .unwrap()
                .into_iter()
                .count(),
            3
        );
        assert_eq!(
            "a, https://b"
                .parse::<AllowedHosts>()
                .unwrap_err()
                .to_string(),
            "`https://b` has a scheme: list the host alone"
        );
        assert_eq!("".parse::<AllowedHosts>(), Ok(AllowedHosts::default()));
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
            // Teredo, whatever IPv4 it tunnels to.
            "2001::",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:0:ffff:ffff:ffff:ffff:ffff:ffff",
            // Local-use NAT64, whatever it carries.
            "64:ff9b:1::",
            "64:ff9b:1::808:808",
            "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(blocked(ip), "{ip}");
        }
        for ip in [
            "2606:4700::1111",
            "2001:4860::8888",
            "fec0::1",
            "2001:db9::1",
            "2001:1::1",
            "64:ff9b:2::1",
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
            // SIIT IPv4-translated addresses (RFC 6145).
            "::ffff:0:127.0.0.1",
            "::ffff:0:a00:1",
            "::ffff:0:169.254.169.254",
        ] {
            assert!(blocked(ip), "{ip}");
        }
        // The same forms carrying a public address are allowed.
        for ip in [
            "::ffff:8.8.8.8",
            "::ffff:0:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
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
            "http://[::ffff:0:7f00:1]/cb",
            "http://[2001::1]/cb",
            "http://[64:ff9b:1::a00:1]/cb",
            "http://user:pass@127.0.0.1:9999/cb",
        ] {
            match on().check_url(url) {
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
            assert!(on().check_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn protection_off_allows_loopback_but_keeps_syntax_rules() {
        assert!(off().check_url("http://127.0.0.1:9999/cb").is_ok());
        assert!(off().check_url("http://localhost/cb").is_ok());
        assert_eq!(off().check_url("ftp://example.com/"), Err(UrlError::Scheme));
    }

    #[test]
    fn syntax_rules() {
        assert_eq!(on().check_url("file:///etc/passwd"), Err(UrlError::Scheme));
        assert_eq!(on().check_url("javascript:alert(1)"), Err(UrlError::Scheme));
        assert!(matches!(
            on().check_url("not a url"),
            Err(UrlError::Invalid(_))
        ));
        assert!(matches!(
            on().check_url("http://"),
            Err(UrlError::Invalid(_))
        ));
        let long = format!("http://example.com/{}", "a".repeat(MAX_URL_CHARS));
        assert_eq!(on().check_url(&long), Err(UrlError::TooLong));
        let exact = format!("http://example.com/{}", "a".repeat(MAX_URL_CHARS - 19));
        assert_eq!(exact.chars().count(), MAX_URL_CHARS);
        assert!(on().check_url(&exact).is_ok());
    }

    mod spellings {
        //! Property: every spelling of a blocked address that the URL parser accepts is
        //! refused at submit, and the same spellings of a public address are not.

        use super::*;
        use proptest::prelude::*;

        /// An address inside one of the blocked IPv4 ranges.
        fn blocked_v4() -> impl Strategy<Value = Ipv4Addr> {
            (0..BLOCKED_V4.len(), any::<u32>()).prop_map(|(i, bits)| {
                let (net, len) = BLOCKED_V4[i];
                let host_mask = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                Ipv4Addr::from(u32::from(net) & !host_mask | bits & host_mask)
            })
        }

        /// One part of a dotted IPv4 host in decimal, octal or hex (any case), as the URL
        /// standard reads them.
        fn part(value: u32, radix: u8, upper: bool) -> String {
            match radix {
                8 => format!("0{value:o}"),
                16 if upper => format!("0X{value:X}"),
                16 => format!("0x{value:x}"),
                _ => value.to_string(),
            }
        }

        /// The IPv4 host spelled with 1 to 4 parts, each in its own radix: `a.b.c.d`,
        /// `a.b.cd`, `a.bcd`, `abcd` (the last part holds the remaining bytes).
        fn ipv4_spelling(ip: Ipv4Addr, parts: usize, radixes: [u8; 4], upper: bool) -> String {
            let bits = u32::from(ip);
            let octets = ip.octets();
            let leading = parts - 1;
            let mut out: Vec<String> = (0..leading)
                .map(|i| part(u32::from(octets[i]), radixes[i], upper))
                .collect();
            let rest_bits = 8 * (4 - leading) as u32;
            let rest = bits & u32::MAX.checked_shr(32 - rest_bits).unwrap_or(u32::MAX);
            out.push(part(rest, radixes[leading], upper));
            out.join(".")
        }

        /// The address as an IPv6 literal that embeds it (mapped, SIIT, compatible,
        /// NAT64, 6to4), in one of several textual forms.
        fn ipv6_spellings(ip: Ipv4Addr) -> Vec<String> {
            let [a, b, c, d] = ip.octets();
            let hi = u16::from_be_bytes([a, b]);
            let lo = u16::from_be_bytes([c, d]);
            vec![
                format!("[::ffff:{ip}]"),
                format!("[::FFFF:{hi:x}:{lo:X}]"),
                format!("[0:0:0:0:0:ffff:{ip}]"),
                format!("[::ffff:0:{ip}]"),
                format!("[64:ff9b::{ip}]"),
                format!("[64:ff9b:0:0:0:0:{hi:x}:{lo:x}]"),
                format!("[2002:{hi:x}:{lo:x}::1]"),
            ]
        }

        fn url(host: &str, port: Option<u16>, userinfo: bool, dot: bool) -> String {
            let userinfo = if userinfo { "user:pass@" } else { "" };
            let dot = if dot && !host.starts_with('[') {
                "."
            } else {
                ""
            };
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            format!("http://{userinfo}{host}{dot}{port}/cb?x=1")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn every_spelling_of_a_blocked_ipv4_is_refused(
                ip in blocked_v4(),
                parts in 1usize..=4,
                radixes in any::<[u8; 4]>().prop_map(|r| r.map(|x| [8, 10, 16][usize::from(x % 3)])),
                upper in any::<bool>(),
                port in proptest::option::of(1u16..),
                userinfo in any::<bool>(),
                dot in any::<bool>(),
            ) {
                let host = ipv4_spelling(ip, parts, radixes, upper);
                let raw = url(&host, port, userinfo, dot);
                // The spelling means the address (as the URL parser reads it) ...
                let parsed = Url::parse(&raw).expect("the URL parser accepts the spelling");
                prop_assert_eq!(parsed.host(), Some(Host::Ipv4(ip)), "{}", raw);
                // ... and is refused.
                prop_assert!(matches!(on().check_url(&raw), Err(UrlError::Blocked(_))), "{}", raw);
            }

            #[test]
            fn every_ipv6_form_embedding_a_blocked_ipv4_is_refused(
                ip in blocked_v4(),
                form in 0usize..7,
                port in proptest::option::of(1u16..),
            ) {
                let host = &ipv6_spellings(ip)[form];
                let raw = url(host, port, false, false);
                prop_assert!(Url::parse(&raw).is_ok(), "{}", raw);
                prop_assert!(matches!(on().check_url(&raw), Err(UrlError::Blocked(_))), "{}", raw);
            }

            #[test]
            fn the_same_spellings_of_a_public_address_pass(
                bits in any::<u32>(),
                parts in 1usize..=4,
                radixes in any::<[u8; 4]>().prop_map(|r| r.map(|x| [8, 10, 16][usize::from(x % 3)])),
            ) {
                let ip = Ipv4Addr::from(bits);
                prop_assume!(!is_blocked_v4(ip));
                let raw = url(&ipv4_spelling(ip, parts, radixes, false), None, false, false);
                prop_assert!(on().check_url(&raw).is_ok(), "{}", raw);
            }
        }
    }
}
