//! Attacks on the operator dashboard's API (`/ui/api/*`, the list filters it drives, and
//! `POST /admin/redeliver`): what a careless operator, a hostile client or a large table do.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Behaviour, Receiver, TestServer, read};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "hostile-dashboard-admin";

async fn bulk(app: &TestServer, query: &str) -> (u16, Value) {
    let request = app
        .client
        .post(app.url(&format!("/admin/redeliver?{query}")))
        .bearer_auth(TOKEN);
    read(request.send().await.expect("sent")).await
}

/// Two callback_failed requests to a refusing receiver.
async fn two_failed(app: &TestServer, receiver: &Receiver) -> Vec<String> {
    let ids = vec![
        app.submit("one", &receiver.url()).await,
        app.submit("two", &receiver.url()).await,
    ];
    for id in &ids {
        app.wait_for_status(id, "callback_failed", WAIT).await;
    }
    ids
}

/// A destructive bulk action must not widen to "everything" because a filter's name was
/// mistyped: `GET /requests` may ignore unknown parameters, but `POST /admin/redeliver`
/// silently drops `callback-host=…` (or `host=`, `id=`) and redelivers every failed request.
#[tokio::test]
async fn bulk_redelivery_refuses_a_filter_name_it_does_not_know() {
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .setting("callback-max-retries", "0")
        .start()
        .await;
    let refusing = Receiver::start(Behaviour::always_fail(500)).await;
    let failed = two_failed(&app, &refusing).await;
    for query in [
        "callback-host=nowhere.example",
        "host=nowhere.example",
        "id=0000",
        "callback_host=nowhere.example&idprefix=0000",
    ] {
        let (status, body) = bulk(&app, query).await;
        assert_eq!(
            status, 422,
            "{query}: a filter the endpoint does not know was dropped: {body}"
        );
    }
    for id in &failed {
        let record = app.get_json(&format!("/requests/{id}")).await;
        assert_eq!(record["callback_attempts"], 1, "redelivered: {record}");
    }
    refusing.stop().await;
    app.stop().await;
}
