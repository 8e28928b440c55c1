//! `POST /sync`: the test vectors over HTTP and the record each request leaves.

use serde_json::json;

use crate::helpers::TestServer;

#[tokio::test]
async fn sync_returns_the_spec_test_vectors() {
    let app = TestServer::builder().start().await;
    let vectors = [
        (
            "hello world",
            1000,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9",
            "fe95811b8cb653eff38837427b8bb5d243daae5920c86cf8f494c8edc7e0b744",
        ),
        (
            "test data",
            100,
            "916f0027a575074ce72a331777c3478d6513f786a591bd892da1a577bf2335f9",
            "c05ae8cf2d0157a8276c179394cd8bd61b399cf63b0e0048c869853fa5b865f7",
        ),
        (
            "héllo wörld ✓",
            1,
            "c2a59c71097b678dc5af2eb1f98ddc575b63948b0fa6740071a945673aaada4d",
            "22774497307711da8fea7c242d32b227b6587ba8ffa1e0f41b5166bc7399577e",
        ),
        (
            "x",
            1_000_000,
            "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
            "f5d9c5410aeca2d468591ebd93b006c8878f851bd6a6655dba15d3ca11218b5e",
        ),
    ];
    for (data, iterations, input_hash, output_hash) in vectors {
        let response = app
            .post_sync(&json!({"data": data, "iterations": iterations}))
            .await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "success");
        let result = &body["result"];
        assert_eq!(result["input_hash"], input_hash, "{data}");
        assert_eq!(result["output_hash"], output_hash, "{data}");
        assert_eq!(result["iterations"], iterations);
        assert!(result["processing_time_ms"].as_f64().unwrap() > 0.0);

        // The request is on record, completed, with the same result.
        let id = result["request_id"].as_str().unwrap();
        let record = app.get_json(&format!("/requests/{id}")).await;
        assert_eq!(record["mode"], "sync");
        assert_eq!(record["status"], "completed");
        assert_eq!(record["payload_hash"], &input_hash[..16]);
        assert_eq!(record["result"], *result);
        assert_eq!(record["callback_url"], serde_json::Value::Null);
        assert_eq!(record["attempts"], json!([]));
        crate::helpers::parse_time(&record["completed_at"]);
    }
}

#[tokio::test]
async fn iterations_default_to_1000() {
    let app = TestServer::builder().start().await;
    let body: serde_json::Value = app
        .post_sync(&json!({"data": "hello world"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["result"]["iterations"], 1000);
    assert_eq!(
        body["result"]["output_hash"],
        "fe95811b8cb653eff38837427b8bb5d243daae5920c86cf8f494c8edc7e0b744"
    );
}

/// A sync request is written once, finished, unless it is still working after a moment
/// (the service waits 50 ms): then it is recorded as `processing` while it works, so that
/// lists and the dashboard show it and a crash leaves it marked failed.
#[tokio::test]
async fn a_sync_request_still_working_is_listed_as_processing_until_it_finishes() {
    use std::time::{Duration, Instant};
    // Each unit of work takes a second (simulated I/O, which holds no thread).
    let app = TestServer::builder()
        .setting("work-duration-seconds", "1")
        .start()
        .await;
    let slow = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/sync");
        async move {
            let response = client
                .post(url)
                .json(&json!({"data": "slow", "iterations": 1}))
                .send()
                .await
                .unwrap();
            response.json::<serde_json::Value>().await.unwrap()
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let list = app.get_json("/requests?mode=sync&status=processing").await;
        if let Some(record) = list["requests"].as_array().unwrap().first() {
            break record.clone();
        }
        assert!(
            !slow.is_finished(),
            "the request finished without ever being listed as processing"
        );
        assert!(Instant::now() < deadline, "never listed: {list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(listed["result"].is_null(), "{listed}");
    let answer = slow.await.unwrap();
    assert_eq!(answer["status"], "success", "{answer}");
    assert_eq!(answer["result"]["request_id"], listed["id"]);
    let record = app
        .get_json(&format!("/requests/{}", listed["id"].as_str().unwrap()))
        .await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["result"], answer["result"], "{record}");
}
