//! Group commit (both backends: SQLite's writer thread, PostgreSQL's batched statements):
//! concurrent acceptances share commits, yet each is answered only after its own row is
//! committed, each idempotency key creates exactly one request, and every request accepted
//! is delivered once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, assert_all_delivered};

#[tokio::test]
async fn concurrent_acceptances_are_each_committed_before_their_answer_and_keys_stay_unique() {
    let app = TestServer::builder().start().await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    // 200 submissions at once: 100 without a key, and 50 keys sent twice each (the same
    // body), so that duplicates land in the same batches as their originals.
    let submissions = (0..200).map(|i| {
        let client = app.client.clone();
        let url = app.url("/async");
        let get = app.url("/requests/");
        let callback = receiver.url();
        async move {
            let key = (i >= 100).then(|| format!("group-commit-{}", i % 50));
            let data = match &key {
                Some(key) => key.clone(),
                None => format!("unkeyed-{i}"),
            };
            let mut request = client
                .post(url)
                .json(&json!({"data": data, "iterations": 1, "callback_url": callback}));
            if let Some(key) = &key {
                request = request.header("Idempotency-Key", key);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            let id = body["request_id"].as_str().unwrap().to_string();
            // Answered means committed: the request is there for anyone to read at once.
            let record = client.get(format!("{get}{id}")).send().await.unwrap();
            assert_eq!(
                record.status(),
                200,
                "{id} answered before it was committed"
            );
            (key, id)
        }
    });
    let answers = futures_util::future::join_all(submissions).await;

    let mut by_key: HashMap<String, HashSet<String>> = HashMap::new();
    let mut unkeyed = HashSet::new();
    for (key, id) in &answers {
        match key {
            Some(key) => {
                by_key.entry(key.clone()).or_default().insert(id.clone());
            }
            None => {
                unkeyed.insert(id.clone());
            }
        }
    }
    assert_eq!(
        unkeyed.len(),
        100,
        "every unkeyed submission is its own request"
    );
    assert_eq!(by_key.len(), 50);
    for (key, ids) in &by_key {
        assert_eq!(ids.len(), 1, "key {key} created {ids:?}");
    }
    let created: Vec<String> = unkeyed
        .into_iter()
        .chain(by_key.into_values().flatten())
        .collect();
    receiver
        .wait_for_deliveries(created.len(), Duration::from_secs(30))
        .await;
    // Once each, and nothing that was not created.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_all_delivered(&receiver, &created);
    assert_eq!(receiver.delivered_ids().len(), created.len());
}
