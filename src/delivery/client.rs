//! The HTTP client that POSTs callbacks, and the resolver that keeps it off blocked networks.
//!
//! Checking the URL at submit is not enough: a name can resolve to a public address then and
//! to 127.0.0.1 at delivery (DNS rebinding). So the client resolves names through
//! [`GuardedResolver`], which drops every blocked address and fails when none is left; the
//! connection can only go to an address that passed the check. The HTTP stack does not call
//! a resolver for IP literals, so those are checked here before sending.
//!
//! Redirects are never followed: a 3xx is a failed attempt, because following it would let
//! a receiver steer the service to a URL that was never checked.

use crate::trace_context::AttemptSpan;
use std::error::Error as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use super::guard::Guard;
use super::lookup::NameLookup;
use super::retry::parse_retry_after;
use super::signing::Signer;
use crate::model::CallbackPayload;
use crate::store::FinishedWork;

/// How long an idle keep-alive connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of a receiver's answer is kept in the attempt audit: of its body, and of its
/// headers.
const RESPONSE_BODY_LIMIT: usize = 1024;

/// The error a resolution fails with when every address of a name is blocked. It does not
/// name the addresses: it ends up in `callback_last_error`, which anyone who can list
/// requests reads, and would let them map the internal DNS through us.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to blocked addresses")]
pub struct BlockedDestination {
    host: String,
}

/// Resolves through a [`NameLookup`] and keeps only the addresses the [`Guard`] allows.
#[derive(Clone)]
pub struct GuardedResolver {
    lookup: Arc<dyn NameLookup>,
    guard: Guard,
}

impl GuardedResolver {
    pub fn new(lookup: Arc<dyn NameLookup>, guard: Guard) -> Self {
        Self { lookup, guard }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let lookup = Arc::clone(&self.lookup);
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all = lookup.lookup(host.clone()).await?;
            let allowed: Vec<SocketAddr> = all
                .iter()
                .filter(|ip| guard.allows(&host, **ip))
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect();
            if allowed.is_empty() {
                // For the operator only, at debug level: never stored, never at info.
                tracing::debug!(host = %host, addresses = ?all, "every address of a callback host is blocked");
                return Err(Box::new(BlockedDestination { host }) as Box<_>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    /// A 2xx answer.
    Delivered,
    /// Any other answer, redirects included.
    HttpStatus,
    Timeout,
    Connection,
    /// The destination is on the SSRF block list.
    Blocked,
    /// The callback could not even be built (an unparseable stored URL, or a header no
    /// HTTP request can carry).
    Invalid,
    Other,
}

impl AttemptKind {
    /// Retrying cannot help.
    pub fn is_permanent(self) -> bool {
        matches!(self, AttemptKind::Blocked | AttemptKind::Invalid)
    }
}

/// What one delivery attempt came to.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub kind: AttemptKind,
    pub started_at: chrono::DateTime<Utc>,
    pub duration: Duration,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    /// The receiver's answer headers, one `name: value` per line (see [`answer_headers`]),
    /// when it answered with anything but a success.
    pub response_headers: Option<String>,
    /// The receiver's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
}

impl AttemptReport {
    pub fn delivered(&self) -> bool {
        self.kind == AttemptKind::Delivered
    }

    /// Retrying cannot help (the destination is blocked, or the callback cannot be built).
    pub fn permanent(&self) -> bool {
        self.kind.is_permanent()
    }

    /// How long the receiver asked every sender to wait, when it answered 429 (Too Many
    /// Requests) or 503 (Service Unavailable) with a `Retry-After` of more than nothing.
    pub fn slow_down(&self) -> Option<Duration> {
        match (self.kind, self.status_code) {
            (AttemptKind::HttpStatus, Some(429 | 503)) => {
                self.retry_after.filter(|wait| !wait.is_zero())
            }
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct CallbackClient {
    /// For the busiest destinations: connections kept alive between deliveries.
    keep_alive: reqwest::Client,
    /// For every other destination: a connection per delivery, closed after it, so that idle
    /// connections (file descriptors) stay bounded however many destinations callers name.
    one_shot: reqwest::Client,
    signer: Signer,
    guard: Guard,
    /// The operator's callback timeout: each attempt's, unless its request chose a shorter.
    timeout: Duration,
}

impl CallbackClient {
    /// `idle_per_destination`: idle connections kept for each of the busiest destinations
    /// (their cap of deliveries in flight).
    pub fn new(
        timeout: Duration,
        signer: Signer,
        resolver: GuardedResolver,
        idle_per_destination: usize,
    ) -> Result<Self, reqwest::Error> {
        let guard = resolver.guard.clone();
        // reqwest is built without a crypto provider (ring builds far faster than aws-lc);
        // installing it twice is harmless, so every client may try.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let resolver = Arc::new(resolver);
        let build = |idle_per_destination: usize| {
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(USER_AGENT)
                .pool_max_idle_per_host(idle_per_destination)
                .pool_idle_timeout(IDLE_TIMEOUT)
                .dns_resolver(Arc::clone(&resolver))
                // A proxy would connect on our behalf to an address we never checked.
                .no_proxy()
                .build()
        };
        Ok(Self {
            keep_alive: build(idle_per_destination)?,
            one_shot: build(0)?,
            signer,
            guard,
            timeout,
        })
    }

    /// The operator's callback timeout (`APP_CALLBACK_TIMEOUT_SECONDS`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs the result of `request_id` to `url` as attempt number `attempt`, on a connection
    /// of its own.
    pub async fn deliver(&self, url: &str, work: &FinishedWork, attempt: u32) -> AttemptReport {
        self.deliver_on(url, work, attempt, false, None, None).await
    }

    /// As [`deliver`](Self::deliver), on a kept-alive connection if `keep_alive` (for the
    /// busiest destinations, see `destinations::KEEP_ALIVE_DESTINATIONS`), within `timeout`
    /// when the request asked for a shorter one than the client's; carrying `span`'s trace
    /// headers.
    pub async fn deliver_on(
        &self,
        url: &str,
        work: &FinishedWork,
        attempt: u32,
        keep_alive: bool,
        timeout: Option<Duration>,
        span: Option<&AttemptSpan>,
    ) -> AttemptReport {
        let started_at = Utc::now();
        let started = Instant::now();
        let http = if keep_alive {
            &self.keep_alive
        } else {
            &self.one_shot
        };
        let outcome = self
            .send(http, url, work, attempt, started_at, (timeout, span))
            .await;
        let duration = started.elapsed();
        match outcome {
            Ok(answer) => {
                let ok = answer.status.is_success();
                AttemptReport {
                    kind: if ok {
                        AttemptKind::Delivered
                    } else {
                        AttemptKind::HttpStatus
                    },
                    started_at,
                    duration,
                    status_code: Some(answer.status.as_u16()),
                    error: (!ok).then(|| describe_status(answer.status)),
                    response_body: answer.body,
                    response_headers: answer.headers,
                    retry_after: answer.retry_after,
                }
            }
            Err(failure) => AttemptReport {
                kind: failure.kind,
                started_at,
                duration,
                status_code: None,
                error: Some(failure.message),
                response_body: None,
                response_headers: None,
                retry_after: None,
            },
        }
    }

    async fn send(
        &self,
        http: &reqwest::Client,
        url: &str,
        work: &FinishedWork,
        attempt: u32,
        started_at: chrono::DateTime<Utc>,
        (timeout, span): (Option<Duration>, Option<&AttemptSpan>),
    ) -> Result<Answer, Failure> {
        let parsed = url::Url::parse(url).map_err(|e| {
            Failure::new(AttemptKind::Invalid, format!("invalid callback URL: {e}"))
        })?;
        let literal: Option<IpAddr> = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(ip.into()),
            Some(url::Host::Ipv6(ip)) => Some(ip.into()),
            _ => None,
        };
        // The HTTP stack dials IP literals without asking the resolver: check them here.
        let host = parsed.host_str().unwrap_or_default();
        if let Some(ip) = literal.filter(|ip| !self.guard.allows(host, *ip)) {
            return Err(Failure::new(
                AttemptKind::Blocked,
                format!("blocked destination: {ip} is a blocked address"),
            ));
        }

        let result = &work.result;
        let body = callback_body(work);
        let webhook_timestamp = started_at.timestamp();
        // Gathered into one map: each `RequestBuilder::header` moves the whole builder.
        let mut headers = HeaderMap::with_capacity(8);
        let signature = self
            .signer
            .sign(&result.request_id, webhook_timestamp, &body)
            .map(|signature| ("webhook-signature", signature));
        for (name, value) in callback_headers(&result.request_id, attempt, webhook_timestamp)
            .into_iter()
            .chain(span.map(AttemptSpan::headers).into_iter().flatten())
            .chain(signature)
        {
            let invalid = |e: &dyn std::fmt::Display| {
                Failure::new(AttemptKind::Invalid, format!("invalid {name} header: {e}"))
            };
            let name_of = HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(&e))?;
            let value = HeaderValue::try_from(value).map_err(|e| invalid(&e))?;
            headers.append(name_of, value);
        }
        let mut request = http.post(parsed).headers(headers);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let mut response = request
            .body(body)
            .send()
            .await
            .map_err(Failure::from_reqwest)?;

        let status = response.status();
        // Kept for an answer that refused the callback, what an operator reads them for: a
        // success's headers would lengthen every delivery's write for nobody.
        let headers = if status.is_success() {
            None
        } else {
            answer_headers(response.headers())
        };
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // Keep the start of the answer for the audit; a receiver that streams forever is cut
        // off by the client's timeout, and an unreadable body does not change the verdict.
        let mut body = Vec::new();
        while body.len() < RESPONSE_BODY_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        let body = (!body.is_empty()).then(|| snippet(&body));
        Ok(Answer {
            status,
            retry_after,
            body,
            headers,
        })
    }
}

/// The body of every callback of `work`: the same on every attempt (a receiver may dedupe or
/// verify by it); the attempt's own time travels in `webhook-timestamp`, which the signature
/// covers.
pub fn callback_body(work: &FinishedWork) -> Vec<u8> {
    // Strings and numbers only, with derived impls: serialising it cannot fail (serde_json
    // fails only on a map key that is not a string or an impl that errors; NaN is null).
    serde_json::to_vec(&CallbackPayload {
        request_id: work.result.request_id.clone(),
        status: "success".into(),
        result: work.result.clone(),
        error: None,
        timestamp: crate::timestamps::format(&work.completed_at),
    })
    .unwrap_or_default()
}

/// The headers of attempt `attempt` of a callback, besides its user agent (the client's) and
/// signature: the dashboard shows them as sent.
pub fn callback_headers(
    request_id: &str,
    attempt: u32,
    webhook_timestamp: i64,
) -> [(&'static str, String); 5] {
    [
        ("Content-Type", "application/json".to_string()),
        ("X-Request-ID", request_id.to_string()),
        ("X-Attempt", attempt.to_string()),
        ("webhook-id", request_id.to_string()),
        ("webhook-timestamp", webhook_timestamp.to_string()),
    ]
}

/// The user agent of every callback.
pub const USER_AGENT: &str = concat!("syncasync/", env!("CARGO_PKG_VERSION"));

struct Answer {
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: Option<String>,
    headers: Option<String>,
}

struct Failure {
    kind: AttemptKind,
    message: String,
}

impl Failure {
    fn new(kind: AttemptKind, message: String) -> Self {
        Self { kind, message }
    }

    fn from_reqwest(err: reqwest::Error) -> Self {
        let mut source = err.source();
        while let Some(cause) = source {
            if let Some(blocked) = cause.downcast_ref::<BlockedDestination>() {
                return Self::new(
                    AttemptKind::Blocked,
                    format!("blocked destination: {blocked}"),
                );
            }
            source = cause.source();
        }
        let (kind, label) = if err.is_timeout() {
            (AttemptKind::Timeout, "timeout")
        } else if err.is_connect() {
            (AttemptKind::Connection, "connection error")
        } else {
            (AttemptKind::Other, "request error")
        };
        // Without the URL: its query string may carry the receiver's secrets, and the message
        // is stored and shown to anyone who can list requests.
        let err = err.without_url();
        Self::new(
            kind,
            snippet(format!("{label}: {}", error_chain(&err)).as_bytes()),
        )
    }
}

fn describe_status(status: reqwest::StatusCode) -> String {
    if status.is_redirection() {
        format!("HTTP {} (redirects are not followed)", status.as_u16())
    } else {
        format!("HTTP {}", status.as_u16())
    }
}

/// The error and its causes on one line: reqwest's own message alone ("error sending
/// request") does not say what went wrong.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Longest header line kept, in bytes: a long one (a policy, a cookie) is cut here, so that
/// the headers after it still fit.
const HEADER_LINE_LIMIT: usize = 256;

/// What is kept of a receiver's answer headers, for the audit, which anyone who can list
/// requests reads: `name: value` lines in the order received (repeated names together), each
/// cut at [`HEADER_LINE_LIMIT`] and made printable as [`snippet`] makes a body, as many as fit
/// in [`RESPONSE_BODY_LIMIT`] bytes. A cookie's value is not kept, nor a `Location`'s query
/// (a redirect to `https` repeats the callback URL, whose query may carry the receiver's
/// secret). `None` for an answer with no headers.
fn answer_headers(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let mut kept = String::new();
    for (name, value) in headers {
        let value = if name == reqwest::header::SET_COOKIE {
            "(not kept)".to_string()
        } else if name == reqwest::header::LOCATION {
            location_without_secrets(&String::from_utf8_lossy(value.as_bytes()))
        } else {
            snippet(value.as_bytes())
        };
        // Line breaks are not text a header value holds (hyper refuses them): one line each.
        let mut line = format!("{name}: {value}").replace(['\r', '\n'], "\u{fffd}");
        if line.len() > HEADER_LINE_LIMIT {
            let mut end = HEADER_LINE_LIMIT - '…'.len_utf8();
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push('…');
        }
        if kept.len() + line.len() + 1 > RESPONSE_BODY_LIMIT {
            break;
        }
        kept.push_str(&line);
        kept.push('\n');
    }
    kept.pop();
    (!kept.is_empty()).then_some(kept)
}

/// A redirect's target without what may be secret: its user and password, its query and
/// fragment.
fn location_without_secrets(location: &str) -> String {
    let end = location.find(['?', '#']).unwrap_or(location.len());
    let (before, cut) = location.split_at(end);
    let before = match url::Url::parse(before) {
        Ok(mut url) if url.has_authority() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        _ => before.to_string(),
    };
    let mark = if cut.is_empty() {
        ""
    } else {
        "?(query not kept)"
    };
    snippet(format!("{before}{mark}").as_bytes())
}

/// What is kept of text that came from a receiver: at most [`RESPONSE_BODY_LIMIT`] bytes,
/// cut at a character boundary, invalid UTF-8 and control characters other than tab and line
/// breaks replaced by U+FFFD. Whatever a receiver answers (a NUL byte, binary, megabytes),
/// what is stored is printable text every backend accepts.
pub fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(RESPONSE_BODY_LIMIT)]);
    let mut kept = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
            char::REPLACEMENT_CHARACTER
        } else {
            c
        };
        if kept.len() + c.len_utf8() > RESPONSE_BODY_LIMIT {
            break;
        }
        kept.push(c);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::{
        HEADER_LINE_LIMIT, RESPONSE_BODY_LIMIT, answer_headers, location_without_secrets, snippet,
    };

    #[test]
    fn snippets_are_printable_and_capped() {
        assert_eq!(snippet(b"{\"ok\":true}\0"), "{\"ok\":true}\u{fffd}");
        assert_eq!(snippet(b"a\x01b\tc\r\n"), "a\u{fffd}b\tc\r\n");
        assert_eq!(snippet(&[0xff, b'x']), "\u{fffd}x");
        let long = "é".repeat(RESPONSE_BODY_LIMIT);
        let kept = snippet(long.as_bytes());
        assert!(kept.len() <= RESPONSE_BODY_LIMIT && kept.chars().all(|c| c == 'é'));
        assert!(!snippet(&[0u8; 5000]).contains('\0'));
    }

    #[test]
    fn answer_headers_are_whole_printable_lines_and_capped() {
        use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append(
            "x-odd",
            HeaderValue::from_bytes(b"caf\xc3\xa9 \xff\tend").unwrap(),
        );
        assert_eq!(
            answer_headers(&headers).as_deref(),
            Some("content-type: text/plain\nx-odd: caf\u{e9} \u{fffd}\tend")
        );
        assert_eq!(answer_headers(&HeaderMap::new()), None);
        let mut many = HeaderMap::new();
        for n in 0..200 {
            many.insert(
                HeaderName::from_bytes(format!("x-header-{n}").as_bytes()).unwrap(),
                HeaderValue::from_static("some value"),
            );
        }
        let kept = answer_headers(&many).unwrap();
        assert!(kept.len() <= RESPONSE_BODY_LIMIT, "{}", kept.len());
        assert!(kept.lines().all(|line| line.ends_with(": some value")));

        // A long line is cut, and the ones after it are kept; secrets are not.
        let mut odd = HeaderMap::new();
        let policy = "default-src 'self'; ".repeat(100);
        odd.insert(
            "content-security-policy",
            HeaderValue::from_str(&policy).unwrap(),
        );
        odd.insert(
            "location",
            HeaderValue::from_static("https://hooks.example/cb?token=s3cret#x"),
        );
        odd.insert("set-cookie", HeaderValue::from_static("session=s3cret"));
        odd.insert("retry-after", HeaderValue::from_static("30"));
        let kept = answer_headers(&odd).unwrap();
        let lines: Vec<&str> = kept.lines().collect();
        assert_eq!(lines.len(), 4, "{kept}");
        assert!(lines[0].len() <= HEADER_LINE_LIMIT && lines[0].ends_with('…'));
        assert_eq!(
            lines[1],
            "location: https://hooks.example/cb?(query not kept)"
        );
        assert_eq!(lines[2], "set-cookie: (not kept)");
        assert_eq!(lines[3], "retry-after: 30");
        assert!(!kept.contains("s3cret"));
        assert_eq!(
            location_without_secrets("https://u:s3cret@hooks.example:8443/cb"),
            "https://hooks.example:8443/cb"
        );
        assert_eq!(
            location_without_secrets("/next?a=1"),
            "/next?(query not kept)"
        );
    }
}
