//! `POST /async/batch`: valid items committed together and answered with their ids, invalid
//! ones with their errors by index; the queue bound applies to the batch as a whole.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, read};

#[tokio::test]
async fn valid_items_are_queued_together_and_invalid_ones_answered_by_index() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    let batch = json!({"requests": [
        {"data": "first", "iterations": 10, "callback_url": receiver.url()},
        {"data": "bad iterations", "iterations": 0, "callback_url": receiver.url()},
        {"data": "third", "iterations": "5", "callback_url": receiver.url()},
        {"iterations": 10},
    ]});
    let (status, answer) = read(app.post_json("/async/batch", &batch).await).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["accepted"].clone(), answer["rejected"].clone()),
        (json!(2), json!(2))
    );
    let results = answer["results"].as_array().expect("results");
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(statuses, ["accepted", "rejected", "accepted", "rejected"]);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["index"], i, "{result}");
    }
    assert_eq!(
        results[1]["detail"][0]["loc"],
        json!(["body", "requests", 1, "iterations"])
    );
    let missing: Vec<&Value> = results[3]["detail"]
        .as_array()
        .expect("detail")
        .iter()
        .map(|d| &d["loc"])
        .collect();
    assert!(
        missing.contains(&&json!(["body", "requests", 3, "data"])),
        "{missing:?}"
    );
    assert!(
        missing.contains(&&json!(["body", "requests", 3, "callback_url"])),
        "{missing:?}"
    );

    let ids: Vec<String> = [0, 2]
        .iter()
        .map(|&i| results[i]["request_id"].as_str().expect("id").to_string())
        .collect();
    receiver
        .wait_for_deliveries(2, Duration::from_secs(10))
        .await;
    let mut delivered = receiver.delivered_ids();
    delivered.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        delivered, expected,
        "each accepted item is called back once"
    );
    for id in &ids {
        let record = app.get_json(&format!("/requests/{id}")).await;
        assert_eq!(record["mode"], "async", "{record}");
    }
    assert_eq!(
        app.get_json("/requests").await["total"],
        2,
        "refused items wrote nothing"
    );
}

#[tokio::test]
async fn a_batch_that_does_not_fit_is_refused_whole() {
    let receiver = Receiver::start(Behaviour::hang(Duration::from_secs(30))).await;
    let app = TestServer::builder()
        .setting("async-queue-max-size", "5")
        .start()
        .await;
    let item = json!({"data": "x", "iterations": 1, "callback_url": receiver.url()});
    let six = json!({"requests": vec![item.clone(); 6]});
    let response = app.post_json("/async/batch", &six).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        app.get_json("/requests").await["total"],
        0,
        "nothing of a refused batch is written"
    );

    let five = json!({"requests": vec![item.clone(); 5]});
    let (status, answer) = read(app.post_json("/async/batch", &five).await).await;
    assert_eq!(
        (status, answer["accepted"].clone()),
        (200, json!(5)),
        "{answer}"
    );
    // Now full: one more, alone or in a batch, is refused.
    let one = json!({"requests": [item.clone()]});
    assert_eq!(app.post_json("/async/batch", &one).await.status(), 503);
    assert_eq!(app.post_async(&item).await.status(), 503);
}

#[tokio::test]
async fn malformed_batches_are_refused_whole() {
    let app = TestServer::builder().start().await;
    let item = json!({"data": "x", "iterations": 1, "callback_url": "http://127.0.0.1:9/cb"});
    for (body, loc) in [
        (json!([item.clone()]), json!(["body"])),
        (json!({}), json!(["body", "requests"])),
        (json!({"requests": null}), json!(["body", "requests"])),
        (json!({"requests": []}), json!(["body", "requests"])),
        (
            json!({"requests": item.clone()}),
            json!(["body", "requests"]),
        ),
        (
            json!({"requests": vec![item.clone(); 1001]}),
            json!(["body", "requests"]),
        ),
        // An item that is not even an object makes the batch malformed: nothing is queued.
        (
            json!({"requests": [item.clone(), "not an object"]}),
            json!(["body", "requests", 1]),
        ),
        (
            json!({"requests": [item.clone(), null]}),
            json!(["body", "requests", 1]),
        ),
    ] {
        let (status, answer) = read(app.post_json("/async/batch", &body).await).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["detail"][0]["loc"], loc, "{answer}");
    }
    // The largest batch is fine.
    let (status, answer) = read(
        app.post_json(
            "/async/batch",
            &json!({"requests": vec![item.clone(); 1000]}),
        )
        .await,
    )
    .await;
    assert_eq!((status, answer["accepted"].clone()), (200, json!(1000)));

    let response = app
        .client
        .post(app.url("/async/batch"))
        .header("Idempotency-Key", "k")
        .json(&json!({"requests": [item]}))
        .send()
        .await
        .expect("sent");
    let (status, answer) = read(response).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["detail"][0]["loc"],
        json!(["header", "Idempotency-Key"])
    );
}

#[tokio::test]
async fn each_item_passes_the_callback_guard() {
    let app = TestServer::builder()
        .setting("callback-block-private-ips", "true")
        .start()
        .await;
    let batch = json!({"requests": [
        {"data": "x", "iterations": 1, "callback_url": "http://127.0.0.1:9/cb"},
        {"data": "x", "iterations": 1, "callback_url": "http://[::1]:9/cb"},
    ]});
    let (status, answer) = read(app.post_json("/async/batch", &batch).await).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rejected"], 2, "{answer}");
    assert_eq!(
        answer["results"][0]["detail"][0]["loc"],
        json!(["body", "requests", 0, "callback_url"])
    );
    assert_eq!(app.get_json("/requests").await["total"], 0);
}
