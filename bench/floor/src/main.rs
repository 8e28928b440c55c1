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
use sha2::digest::{generic_array::GenericArray, typenum::U64};
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Work {
    data: String,
    iterations: u32,
    callback_url: Option<String>,
}

/// The work function of SPEC §1, as the service writes it (src/work.rs, `Rounds`):
/// `iterations` chained SHA-256 rounds over `"{previous hex}:{i}"`, each message laid out in
/// place as its two padded blocks and compressed in one call.
fn compute(id: &str, data: &str, iterations: u32) -> Value {
    let started = Instant::now();
    let mut blocks = [GenericArray::<u8, U64>::default(); 2];
    hex(&Sha256::digest(data.as_bytes()), &mut blocks[0]);
    let input_hash = String::from_utf8_lossy(&blocks[0]).into_owned();
    // The second block: ':', the counter's decimal digits, the padding, the length in bits.
    let lay_out = |block: &mut GenericArray<u8, U64>, digits: usize| {
        block.fill(0);
        block[0] = b':';
        block[1..1 + digits].fill(b'0');
        block[1] = if digits == 1 { b'0' } else { b'1' };
        block[1 + digits] = 0x80;
        block[56..].copy_from_slice(&(((65 + digits) * 8) as u64).to_be_bytes());
    };
    let mut digits = 1;
    lay_out(&mut blocks[1], digits);
    for _ in 0..iterations {
        let mut state = SHA256_INIT;
        sha2::compress256(&mut state, &blocks);
        let mut digest = [0u8; 32];
        for (bytes, word) in digest.chunks_exact_mut(4).zip(state) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        hex(&digest, &mut blocks[0]);
        // The counter one up, in place; a carry out of every digit makes it 10^digits.
        let carried = blocks[1][1..1 + digits].iter_mut().rev().all(|d| {
            let nine = *d == b'9';
            *d = if nine { b'0' } else { *d + 1 };
            nine
        });
        if carried && digits < 10 {
            digits += 1;
            lay_out(&mut blocks[1], digits);
        }
    }
    json!({"request_id": id, "input_hash": input_hash,
           "output_hash": String::from_utf8_lossy(&blocks[0]), "iterations": iterations,
           "processing_time_ms": started.elapsed().as_secs_f64() * 1000.0})
}

const SHA256_INIT: [u32; 8] = [
    0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab,
    0x5be0_cd19,
];

/// Each byte's two hex digits, one lookup a byte.
static HEX_PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [b"0123456789abcdef"[byte >> 4], b"0123456789abcdef"[byte & 15]];
        byte += 1;
    }
    pairs
};

fn hex(digest: &[u8], out: &mut [u8]) {
    for (pair, &byte) in out.chunks_exact_mut(2).zip(digest) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
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
