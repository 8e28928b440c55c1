//! The connect-time SSRF guard (SPEC §5): names resolve through the guarded resolver, IP
//! literals are checked before dialling, redirects are not followed. Every address used is a
//! loopback address; made-up names are mapped to them by a test resolver, so no test can
//! make the service connect anywhere else.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use syncasync::delivery::client::{CallbackClient, GuardedResolver};
use syncasync::delivery::guard::Guard;
use syncasync::delivery::signing::Signer;
use syncasync::model::WorkResult;
use syncasync::store::FinishedWork;

use crate::helpers::{Behaviour, Receiver, StaticLookup, TestServer};

const WAIT: Duration = Duration::from_secs(20);

fn result() -> FinishedWork {
    FinishedWork::now(WorkResult {
        request_id: "guard-test".into(),
        input_hash: "a".repeat(64),
        output_hash: "b".repeat(64),
        iterations: 1,
        processing_time_ms: 0.1,
    })
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_at_connect_and_not_retried() {
    // DNS rebinding: the name passes the submit check (no DNS then), and resolves to
    // 127.0.0.1 at delivery.
    let receiver = Receiver::start(Behaviour::accept()).await;
    let lookup = StaticLookup::default().with("rebind.test", &["127.0.0.1"]);
    let app = TestServer::builder()
        .setting("callback-block-private-ips", "true")
        .lookup(lookup)
        .start()
        .await;
    let url = format!("http://rebind.test:{}/callback", receiver.address.port());

    let id = app.submit("rebinding", &url).await;
    let record = app.wait_for_status(&id, "callback_failed", WAIT).await;
    assert_eq!(
        record["callback_attempts"], 1,
        "a blocked destination is not retried"
    );
    // Not retried, so not "Max retries exceeded".
    let error = record["callback_last_error"].as_str().unwrap();
    assert!(
        error.starts_with("blocked destination") && error.contains("rebind.test"),
        "{error}"
    );
    assert!(
        !error.contains("127.0.0.1"),
        "the stored error must not name the addresses a blocked name resolved to: {error}"
    );
    assert!(
        receiver.received().is_empty(),
        "the receiver must never be reached"
    );
}

#[tokio::test]
async fn the_same_name_is_delivered_with_protection_off() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let lookup = StaticLookup::default().with("rebind.test", &["127.0.0.1"]);
    let app = TestServer::builder()
        .setting("callback-block-private-ips", "false")
        .lookup(lookup)
        .start()
        .await;
    let url = format!("http://rebind.test:{}/callback", receiver.address.port());
    let id = app.submit("protection off", &url).await;
    app.wait_for_status(&id, "callback_success", WAIT).await;
    assert_eq!(receiver.delivered_ids(), [id]);
}

#[tokio::test]
async fn allowed_hosts_bypass_the_guard() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let lookup = StaticLookup::default()
        .with("internal.test", &["127.0.0.1"])
        .with("localhost", &["127.0.0.1"])
        .with("other.test", &["127.0.0.1"]);
    let app = TestServer::builder()
        .setting("callback-block-private-ips", "true")
        .setting("callback-allowed-hosts", "internal.test,localhost")
        .lookup(lookup)
        .start()
        .await;
    let port = receiver.address.port();
    let id = app
        .submit("trusted", &format!("http://internal.test:{port}/callback"))
        .await;
    app.wait_for_status(&id, "callback_success", WAIT).await;
    // Even `localhost`, refused at submit otherwise, passes once listed.
    let id = app
        .submit(
            "trusted by name",
            &format!("http://localhost:{port}/callback"),
        )
        .await;
    app.wait_for_status(&id, "callback_success", WAIT).await;
    // A name not on the list is still refused at connect.
    let id = app
        .submit("untrusted", &format!("http://other.test:{port}/callback"))
        .await;
    app.wait_for_status(&id, "callback_failed", WAIT).await;
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test]
async fn a_name_with_allowed_and_blocked_addresses_connects_only_to_the_allowed_one() {
    // For this test 127.0.0.2 stands for a blocked address and 127.0.0.1 for an allowed one.
    let allowed = Receiver::start(Behaviour::accept()).await;
    let port = allowed.address.port();
    let blocked = Receiver::start_on(
        format!("127.0.0.2:{port}").parse().unwrap(),
        Behaviour::accept(),
    )
    .await;

    // The blocked address comes first, where a naive client would try it first.
    let lookup = StaticLookup::default()
        .with("both.test", &["127.0.0.2", "127.0.0.1"])
        .with("only-blocked.test", &["127.0.0.2"]);
    let guard = Guard::new(true, []).with_rule(|ip| ip == std::net::IpAddr::from([127, 0, 0, 2]));
    let client = CallbackClient::new(
        Duration::from_secs(5),
        Signer::default(),
        GuardedResolver::new(Arc::new(lookup), guard),
        8,
    )
    .unwrap();

    for attempt in 1..=3 {
        let report = client
            .deliver(
                &format!("http://both.test:{port}/callback"),
                &result(),
                attempt,
            )
            .await;
        assert!(report.delivered(), "{report:?}");
    }
    assert_eq!(allowed.received().len(), 3);
    assert!(
        blocked.received().is_empty(),
        "127.0.0.2 must never be dialled"
    );

    let report = client
        .deliver(
            &format!("http://only-blocked.test:{port}/callback"),
            &result(),
            1,
        )
        .await;
    assert!(!report.delivered() && report.permanent(), "{report:?}");
    // The error says the name is blocked, never which addresses it resolved to: the error is
    // public (GET /requests), and naming them would map the internal DNS for anyone.
    let error = report.error.unwrap();
    assert!(
        error.contains("only-blocked.test") && !error.contains("127.0.0.2"),
        "{error}"
    );
    assert!(blocked.received().is_empty());
}

#[tokio::test]
async fn ip_literals_are_checked_before_connecting() {
    // The HTTP stack does not ask the resolver about IP literals; the client checks them.
    let receiver = Receiver::start(Behaviour::accept()).await;
    let client = CallbackClient::new(
        Duration::from_secs(5),
        Signer::default(),
        GuardedResolver::new(Arc::new(StaticLookup::default()), Guard::new(true, [])),
        8,
    )
    .unwrap();
    for url in [
        format!("http://127.0.0.1:{}/callback", receiver.address.port()),
        format!(
            "http://[::ffff:127.0.0.1]:{}/callback",
            receiver.address.port()
        ),
    ] {
        let report = client.deliver(&url, &result(), 1).await;
        assert!(
            !report.delivered() && report.permanent(),
            "{url}: {report:?}"
        );
        assert!(report.error.unwrap().contains("blocked"));
    }
    assert!(receiver.received().is_empty());

    // Why the client must check literals itself: the HTTP stack never asks the resolver
    // about them. With protection off and a resolver that knows no name at all, a literal
    // is still delivered.
    let unguarded = CallbackClient::new(
        Duration::from_secs(5),
        Signer::default(),
        GuardedResolver::new(Arc::new(StaticLookup::default()), Guard::new(false, [])),
        8,
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{}/callback", receiver.address.port());
    assert!(unguarded.deliver(&url, &result(), 1).await.delivered());
}

#[tokio::test]
async fn a_redirect_is_a_failed_attempt_and_is_not_followed() {
    let target = Receiver::start(Behaviour::accept()).await;
    let location = target.url();
    let redirector =
        Router::new().route(
            "/callback",
            post(move || {
                let location = location.clone();
                async move {
                    (StatusCode::FOUND, [(header::LOCATION, location)], "moved").into_response()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect_url = format!("http://{}/callback", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, redirector).await });

    let app = TestServer::builder()
        .setting("callback-max-retries", "1")
        .lookup(StaticLookup::default())
        .start()
        .await;
    let id = app.submit("redirected", &redirect_url).await;
    let record = app.wait_for_status(&id, "callback_failed", WAIT).await;
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    for attempt in attempts {
        assert_eq!(attempt["status_code"], 302);
        assert_eq!(attempt["error"], "HTTP 302 (redirects are not followed)");
        assert_eq!(attempt["response_body"], "moved");
    }
    assert!(
        target.received().is_empty(),
        "the redirect target must never be reached"
    );
}
