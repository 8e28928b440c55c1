//! The floor: syncasync's wire format and work function with nothing else. `POST /sync` does
//! the work inline on the runtime's threads and answers; `POST /async` answers, then does
//! the work and POSTs the callback on a kept-alive connection. No database, pool, audit,
//! metrics, logs or retries: what a server must do at the least, to measure the service by.
//!
//!     syncasync-floor 127.0.0.1:8100

use std::time::Instant;

use axum::{Json, Router, extract::State, routing::post};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Work {
    data: String,
    iterations: u32,
    callback_url: Option<String>,
}

/// The work function of SPEC §1, as the service writes it: `iterations` chained SHA-256
/// rounds, each over `"{previous hex}:{i}"`, in a reused buffer.
fn compute(id: &str, data: &str, iterations: u32) -> Value {
    let started = Instant::now();
    let hex = |digest: &[u8], out: &mut [u8]| {
        for (i, b) in digest.iter().enumerate() {
            out[2 * i] = b"0123456789abcdef"[usize::from(b >> 4)];
            out[2 * i + 1] = b"0123456789abcdef"[usize::from(b & 15)];
        }
    };
    let mut buf = [0u8; 64 + 1 + 10];
    hex(&Sha256::digest(data.as_bytes()), &mut buf[..64]);
    let input_hash = String::from_utf8_lossy(&buf[..64]).into_owned();
    buf[64] = b':';
    for i in 0..iterations {
        let len = decimal(i, &mut buf[65..]);
        let digest = Sha256::digest(&buf[..65 + len]);
        hex(&digest, &mut buf[..64]);
    }
    json!({"request_id": id, "input_hash": input_hash,
           "output_hash": String::from_utf8_lossy(&buf[..64]), "iterations": iterations,
           "processing_time_ms": started.elapsed().as_secs_f64() * 1000.0})
}

/// `n` in decimal at the start of `out`; answers its length.
fn decimal(n: u32, out: &mut [u8]) -> usize {
    let len = n.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut rest = n;
    for slot in out[..len].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    len
}

async fn sync(Json(work): Json<Work>) -> Json<Value> {
    let id = uuid::Uuid::new_v4().to_string();
    Json(json!({"status": "completed", "result": compute(&id, &work.data, work.iterations)}))
}

async fn accept(State(client): State<reqwest::Client>, Json(work): Json<Work>) -> Json<Value> {
    let id = uuid::Uuid::new_v4().to_string();
    let answer = json!({"status": "accepted", "request_id": id, "message": "accepted"});
    tokio::spawn(async move {
        let result = compute(&id, &work.data, work.iterations);
        let body = json!({"request_id": id, "status": "success", "result": result});
        if let Some(url) = work.callback_url {
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let request = client.post(url).header("content-type", "application/json");
            let _ = request.body(body).send().await;
        }
    });
    Json(answer)
}

#[tokio::main]
async fn main() {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8100".into());
    let app = Router::new()
        .route("/sync", post(sync))
        .route("/async", post(accept))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(reqwest::Client::new());
    let listener = tokio::net::TcpListener::bind(&address).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
