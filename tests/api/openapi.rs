//! The API describes itself: `GET /openapi.json` is a valid OpenAPI 3.1 document listing
//! exactly the routes served, and `GET /docs` works offline.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::helpers::{TestServer, read};

/// Every operation of SPEC §3 and beyond, as the document must list it.
const OPERATIONS: &[(&str, &str)] = &[
    ("post", "/sync"),
    ("post", "/async"),
    ("post", "/async/batch"),
    ("get", "/requests"),
    ("get", "/requests/{id}"),
    ("get", "/requests/{id}/events"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("post", "/admin/cleanup"),
    ("post", "/admin/redeliver"),
    ("post", "/requests/{id}/redeliver"),
    ("post", "/requests/{id}/cancel"),
    ("post", "/requests/{id}/retry"),
    ("get", "/destinations"),
    ("post", "/destinations/{key}/pause"),
    ("post", "/destinations/{key}/resume"),
    ("post", "/destinations/{key}/reset"),
    ("put", "/destinations/{key}/limits"),
    ("delete", "/destinations/{key}/limits"),
];

async fn document(app: &TestServer) -> Value {
    let (status, doc) = read(app.get("/openapi.json").await).await;
    assert_eq!(status, 200);
    doc
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect()
}

#[tokio::test]
async fn the_document_lists_every_route_and_each_is_served() {
    let app = TestServer::builder()
        .setting("admin-token", "t")
        .start()
        .await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let expected: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(operations(&doc), expected);

    // Each documented operation reaches its handler: never the router's 404 or 405.
    for (method, path) in OPERATIONS {
        let url = app.url(&path.replace("{id}", "no-such-id"));
        let request = match *method {
            "get" => app.client.get(url),
            "delete" => app.client.delete(url).bearer_auth("t"),
            "put" => app
                .client
                .put(url)
                .bearer_auth("t")
                .json(&serde_json::json!({})),
            _ => app
                .client
                .post(url)
                .bearer_auth("t")
                .json(&serde_json::json!({})),
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value =
            serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
        assert_ne!(status, 405, "{method} {path}");
        assert!(
            status != 404 || body["error"] == "Request not found",
            "{method} {path} is documented but not served: {body}"
        );
    }

    // The error shapes and statuses of SPEC §3 are documented.
    let sync = &doc["paths"]["/sync"]["post"]["responses"];
    for status in ["200", "413", "415", "422", "503"] {
        assert!(sync.get(status).is_some(), "POST /sync documents {status}");
    }
    let submit = &doc["paths"]["/async"]["post"]["responses"];
    for status in ["200", "413", "415", "422", "503"] {
        assert!(
            submit.get(status).is_some(),
            "POST /async documents {status}"
        );
    }
    assert!(submit["503"]["headers"].get("Retry-After").is_some());
    assert!(submit["200"]["headers"].get("Location").is_some());
    let schemas = &doc["components"]["schemas"];
    for schema in [
        "SyncRequest",
        "AsyncRequest",
        "ErrorBody",
        "FieldError",
        "RequestRecord",
        "CallbackPayload",
    ] {
        assert!(schemas.get(schema).is_some(), "schema {schema}");
    }
    // `iterations` is documented as accepted: an integer in range, or one in a string.
    let iterations = &schemas["WorkFields"]["properties"]["iterations"];
    let types: Vec<&str> = iterations["oneOf"]
        .as_array()
        .expect("iterations: oneOf")
        .iter()
        .map(|branch| branch["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["integer", "string"], "{iterations}");
    assert_eq!(iterations["oneOf"][0]["minimum"], 1);
    assert_eq!(iterations["oneOf"][0]["maximum"], 1_000_000);
    assert_eq!(iterations["default"], 1000);
    // The `"request_id": null` of 404 and 503 bodies is documented, and not required.
    let error_body = &schemas["ErrorBody"];
    assert_eq!(error_body["properties"]["request_id"]["type"], "null");
    assert_eq!(
        error_body["required"],
        serde_json::json!(["status", "error"])
    );
    let params: Vec<&str> = doc["paths"]["/requests"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        params,
        [
            "mode",
            "status",
            "created_from",
            "created_to",
            "callback_host",
            "last_status",
            "error_contains",
            "id_prefix",
            "order",
            "before",
            "after",
            "limit",
            "offset"
        ]
    );
}

#[tokio::test]
async fn without_an_admin_token_the_admin_routes_are_neither_served_nor_documented() {
    let app = TestServer::builder().start().await;
    let documented = operations(&document(&app).await);
    assert!(!documented.contains(&("post".into(), "/admin/cleanup".into())));
    assert!(!documented.contains(&("post".into(), "/requests/{id}/redeliver".into())));
    assert!(!documented.contains(&("get".into(), "/destinations".into())));
    assert!(!documented.contains(&("post".into(), "/admin/redeliver".into())));
    assert!(!documented.contains(&("post".into(), "/requests/{id}/retry".into())));
    for action in ["pause", "resume", "reset"] {
        assert!(!documented.contains(&("post".into(), format!("/destinations/{{key}}/{action}"))));
    }
    assert!(!documented.contains(&("put".into(), "/destinations/{key}/limits".into())));
    assert!(!documented.contains(&("delete".into(), "/destinations/{key}/limits".into())));
    assert_eq!(documented.len(), OPERATIONS.len() - 10);
    // The dashboard is a user interface, not API.
    assert!(documented.iter().all(|(_, path)| !path.starts_with("/ui")));
}

#[tokio::test]
async fn the_document_is_valid_openapi() {
    let available = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install openapi-spec-validator (.ci/run does)"
        );
        eprintln!("skipped: pip install openapi-spec-validator to validate the document");
        return;
    }
    let app = TestServer::builder()
        .setting("admin-token", "t")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, serde_json::to_vec(&document(&app).await).unwrap()).unwrap();
    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "invalid OpenAPI document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_docs_page_and_its_assets_are_served_from_the_binary() {
    let app = TestServer::builder().start().await;
    let page = app.get("/docs/").await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        html.contains(&format!(
            "<title>syncasync {} API</title>",
            env!("CARGO_PKG_VERSION")
        )),
        "{html}"
    );
    // Every script and stylesheet the page loads comes from this server.
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.ends_with(".js") || s.ends_with(".css"))
        .collect();
    assert!(!assets.is_empty());
    for asset in assets {
        assert!(
            !asset.starts_with("http"),
            "{asset} is loaded from elsewhere"
        );
        let url = format!("/docs/{}", asset.trim_start_matches("./"));
        let response = app.get(&url).await;
        assert_eq!(response.status(), 200, "{url}");
        assert!(response.bytes().await.unwrap().len() > 100, "{url}");
    }
    // The page's configuration points at our document.
    let config = app
        .get("/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(config.contains("/openapi.json"), "{config}");
}

/// What a request may ask for beyond the original's fields is capped by the operator's
/// settings, read at start-up: the document states those caps, so that a client (or a
/// fuzzer) trusting it is not refused.
#[tokio::test]
async fn the_document_states_the_operators_caps_on_a_requests_controls() {
    let app = TestServer::builder()
        .setting("callback-max-retries", "2")
        .setting("callback-timeout-seconds", "1.5")
        .setting("max-schedule-delay-seconds", "600")
        .start()
        .await;
    let doc = document(&app).await;
    let fields = &doc["components"]["schemas"]["AsyncRequest"];
    let field =
        |name: &str| find_property(fields, name).unwrap_or_else(|| panic!("no {name} in {fields}"));
    assert_eq!(field("callback_max_retries")["maximum"], 2);
    assert_eq!(field("callback_timeout_seconds")["maximum"], 1.5);
    assert_eq!(field("delay_seconds")["maximum"], 600.0);
}

/// The schema of property `name` anywhere in `schema` (a flattened struct is an `allOf`).
fn find_property<'a>(schema: &'a Value, name: &str) -> Option<&'a Value> {
    if let Some(found) = schema.get("properties").and_then(|p| p.get(name)) {
        return Some(found);
    }
    match schema {
        Value::Object(map) => map.values().find_map(|v| find_property(v, name)),
        Value::Array(items) => items.iter().find_map(|v| find_property(v, name)),
        _ => None,
    }
}

/// What client generators and the docs page read: each operation has its own camelCase
/// `operationId` and a one-line summary beside its description, and the request bodies'
/// examples are bodies the service accepts (not one built from every field's example, which
/// would set `run_at` and `delay_seconds` together), their callbacks on loopback.
#[tokio::test]
async fn operations_are_named_and_summarised_and_bodies_have_working_examples() {
    let app = TestServer::builder()
        .setting("admin-token", "t")
        .setting("callback-allowed-hosts", "127.0.0.1")
        .start()
        .await;
    let doc = document(&app).await;
    let mut ids = BTreeSet::new();
    for (method, path) in operations(&doc) {
        let operation = &doc["paths"][&path][&method];
        let id = operation["operationId"].as_str().unwrap_or_default();
        assert!(
            id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && id.chars().all(|c| c.is_ascii_alphanumeric()),
            "{method} {path}: operationId {id:?}"
        );
        assert!(ids.insert(id.to_string()), "{id} twice");
        let summary = operation["summary"].as_str().unwrap_or_default();
        assert!(
            !summary.is_empty() && !summary.contains('\n') && summary.len() <= 80,
            "{method} {path}: summary {summary:?}"
        );
    }
    // The callback, as an OpenAPI webhook: its body and every header it carries.
    let callback = &doc["webhooks"]["callback"]["post"];
    assert_eq!(
        callback["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CallbackPayload",
        "{callback}"
    );
    let headers: BTreeSet<&str> = callback["parameters"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|p| p["in"] == "header")
                .filter_map(|p| p["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        headers,
        BTreeSet::from([
            "X-Attempt",
            "X-Request-ID",
            "webhook-id",
            "webhook-signature",
            "webhook-timestamp"
        ]),
        "{callback}"
    );
    let schemas = &doc["components"]["schemas"];
    for (path, schema) in [
        ("/sync", "SyncRequest"),
        ("/async", "AsyncRequest"),
        ("/async/batch", "BatchRequest"),
    ] {
        let example = &schemas[schema]["example"];
        assert!(example.is_object(), "{schema} has no example");
        let text = example.to_string();
        assert!(
            !text.contains("callback_url") || text.contains("\"http://127.0.0.1:8001/callback\""),
            "{schema}'s example sends its callback off this machine: {text}"
        );
        let (status, body) = read(app.post_json(path, example).await).await;
        assert_eq!(status, 200, "{path} refused its own example: {body}");
    }
}
