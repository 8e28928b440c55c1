//! The operator dashboard (`/ui`) driven in a real browser: headless Chromium through
//! chromedriver (WebDriver, with `fantoccini`), against the real service and a callback
//! receiver whose answers are hostile HTML. Any message the browser logs as an error (a
//! script error, a refused Content-Security-Policy, a failed load) fails the test.
//!
//! Without chromedriver the test is skipped with a note, unless `CI=true`, where it fails:
//! `.ci/run` installs Chromium and its driver. With `SYNCASYNC_SCREENSHOTS=1` it writes the
//! screenshots docs/operations.md shows to `docs/img/`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::helpers::{TestServer, read, sync_request, unused_port};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const ADMIN_TOKEN: &str = "dashboard-admin-token";
const WAIT: Duration = Duration::from_secs(20);

/// What the receiver answers while it refuses: markup that would run script if the
/// dashboard ever parsed it as HTML.
const HOSTILE_ANSWER: &str = "<script>window.__pwned = 'script'</script>\
    \"><img src=x onerror=\"window.__pwned = 'img'\">";

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    /// Also stops the browser chromedriver started, which a test that failed half-way never
    /// closed: it would outlive chromedriver, orphaned.
    fn drop(&mut self) {
        let driver = self.child.id();
        for browser in children_of(driver) {
            if let Ok(pid) = i32::try_from(browser) {
                // SAFETY: kill(2) on a process id read from /proc just now; no memory involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ids of the processes whose parent is `parent` (from /proc, Linux).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces, so read after its `)`.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

async fn start_driver() -> Option<Driver> {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        let reason = format!("{CHROMEDRIVER} or {CHROMIUM} is not installed");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{reason}: .ci/run installs them");
        }
        eprintln!("skipping the browser test: {reason} (apt-get install chromium chromium-driver)");
        return None;
    }
    let port = unused_port().await.port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        // A zone that is not UTC (and has no summer time), for the local-times switch.
        .env("TZ", "Asia/Kolkata")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(driver)
}

async fn open_browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"],
        }),
    );
    // Every console message, so that errors can be read back (see `BrowserLog`).
    capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// chromedriver's own command for the browser's console log (entries since the last read).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

/// Fails on any console message of level SEVERE (errors) logged so far.
async fn assert_no_console_errors(browser: &Client, during: &str) {
    let log = browser.issue_cmd(BrowserLog).await.expect("browser log");
    let errors: Vec<&Value> = log
        .as_array()
        .map(|entries| entries.iter().filter(|e| e["level"] == "SEVERE").collect())
        .unwrap_or_default();
    assert!(errors.is_empty(), "console errors {during}: {errors:#?}");
}

/// Runs `condition` (a JavaScript expression) in the page until it is truthy.
async fn eventually(browser: &Client, condition: &str, what: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    let script = format!("return ({condition}) || null;");
    loop {
        let value = browser.execute(&script, vec![]).await.expect("script runs");
        if !value.is_null() && value != json!(false) {
            return value;
        }
        if Instant::now() >= deadline {
            let page = browser
                .execute("return document.body.innerText;", vec![])
                .await
                .unwrap_or_default();
            panic!("timed out waiting for {what}: {condition}\nthe page reads:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A receiver that answers 500 with [`HOSTILE_ANSWER`] while `refusing`, else 200.
async fn start_receiver(refusing: Arc<AtomicBool>) -> SocketAddr {
    async fn answer(State(refusing): State<Arc<AtomicBool>>) -> (StatusCode, &'static str) {
        if refusing.load(Ordering::SeqCst) {
            (StatusCode::INTERNAL_SERVER_ERROR, HOSTILE_ANSWER)
        } else {
            (StatusCode::OK, "ok")
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let address = listener.local_addr().expect("address");
    let app = Router::new()
        .route("/hook", post(answer))
        .with_state(refusing);
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// `destination` as `GET /destinations` shows it.
async fn destination_view(app: &TestServer, destination: &str) -> Result<Value, String> {
    let views = read(
        app.client
            .get(app.url("/destinations"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .map_err(|e| e.to_string())?,
    )
    .await
    .1;
    views["destinations"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["destination"] == destination))
        .cloned()
        .ok_or_else(|| format!("{destination} not listed: {views}"))
}

async fn submit(app: &TestServer, callback: &str) -> String {
    let response = app
        .post_async(&json!({ "data": "<b>dashboard</b>", "callback_url": callback }))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["request_id"].as_str().expect("id").to_string()
}

/// Clicks an element of a region the page re-renders every second (the list): an element
/// found just before a refresh is stale by the time it is clicked, so look again.
async fn click_live(browser: &Client, selector: &str) -> Result<(), String> {
    let mut tries = 0;
    loop {
        let clicked = match browser.find(Locator::Css(selector)).await {
            Ok(element) => element.click().await.map(|_| ()),
            Err(err) => Err(err),
        };
        match clicked {
            Ok(()) => return Ok(()),
            Err(_) if tries < 10 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => return Err(format!("clicking {selector}: {err}")),
        }
    }
}

/// Focuses the id link of request `id`'s row in the list and selects its text (an id being
/// copied), remembering the row's element.
async fn focus_and_select(browser: &Client, id: &str) -> Result<(), fantoccini::error::CmdError> {
    browser
        .execute(
            "const row = document.querySelector('#list tr[data-id=\"' + arguments[0] + '\"]');\
             window.__row = row;\
             const link = row.querySelector('a');\
             link.focus();\
             window.getSelection().selectAllChildren(link);",
            vec![json!(id)],
        )
        .await
        .map(|_| ())
}

/// Whether the row [`focus_and_select`] chose is the same element still, its link in focus and
/// its id selected, after `what`.
async fn still_focused_and_selected(
    browser: &Client,
    id: &str,
    what: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let kept = browser
        .execute(
            "const row = document.querySelector('#list tr[data-id=\"' + arguments[0] + '\"]');\
             return [row === window.__row, document.activeElement === row.querySelector('a'),\
                     window.getSelection().toString()];",
            vec![json!(id)],
        )
        .await?;
    if kept != json!([true, true, id]) {
        return Err(format!("{what} lost the row, its focus or its selection: {kept}").into());
    }
    Ok(())
}

fn screenshots() -> bool {
    std::env::var("SYNCASYNC_SCREENSHOTS").is_ok_and(|v| v == "1")
}

async fn screenshot(browser: &Client, name: &str) {
    if screenshots() {
        let png = browser.screenshot().await.expect("screenshot");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img");
        std::fs::create_dir_all(&dir).expect("docs/img");
        std::fs::write(dir.join(name), png).expect("write screenshot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let Some(driver) = start_driver().await else {
        return;
    };
    let app = TestServer::builder()
        .setting("admin-token", ADMIN_TOKEN)
        .setting("callback-max-retries", "1")
        .start()
        .await;
    let refusing = Arc::new(AtomicBool::new(true));
    let receiver = start_receiver(Arc::clone(&refusing)).await;
    let hook = format!("http://{receiver}/hook");
    // Traffic before the page opens, for the charts and the counts.
    sync_request(&app, "warm-up").await;
    let browser = open_browser(&driver).await;
    let outcome = drive(&browser, &app, &hook, &refusing).await;
    // Close the browser before the server stops, so that the end of the live stream is not
    // reported as an error.
    let _ = browser.close().await;
    outcome.expect("the dashboard works");
}

/// Everything the issue asks of the dashboard, in the browser.
async fn drive(
    browser: &Client,
    app: &TestServer,
    hook: &str,
    refusing: &AtomicBool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // The overview: counts and charts, live.
    browser.goto(&app.url("/ui")).await?;
    eventually(
        browser,
        "document.querySelectorAll('#charts figure').length === 6",
        "the overview's charts",
    )
    .await;
    eventually(
        browser,
        "document.getElementById('live').textContent === 'live'",
        "the live stream",
    )
    .await;
    // The admin token, entered once in the page (session storage), never in an address.
    browser
        .execute(
            "document.getElementById('tokens').open = true;\
             document.getElementById('admin-token').value = arguments[0];",
            vec![json!(ADMIN_TOKEN)],
        )
        .await?;
    browser
        .find(Locator::Css("#token-form button[type=submit]"))
        .await?
        .click()
        .await?;

    assert_no_console_errors(browser, "on the overview").await;

    // Oldest first, chosen in the form: the oldest request heads the list and the choice
    // shows.
    sync_request(app, "oldest first").await;
    let oldest = app.get_json("/requests?order=oldest&limit=1").await["requests"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    browser.goto(&app.url("/ui/requests?order=oldest")).await?;
    eventually(
        browser,
        &format!(
            "document.querySelector('#list tbody tr') && \
             document.querySelector('#list tbody tr').dataset.id === '{oldest}' && \
             document.querySelector('#filters select[name=order]').value === 'oldest'"
        ),
        "the oldest request first, and the order shown",
    )
    .await;

    // A request submitted while the list is open appears without a reload.
    browser.goto(&app.url("/ui/requests")).await?;
    eventually(
        browser,
        "document.querySelectorAll('#list tbody tr').length >= 1",
        "the list",
    )
    .await;
    browser
        .execute("window.__sameDocument = true;", vec![])
        .await?;
    let failed = submit(app, hook).await;
    eventually(
        browser,
        &format!("document.querySelector('#list tr[data-id=\"{failed}\"]')"),
        "the new request in the list",
    )
    .await;
    eventually(
        browser,
        &format!(
            "window.__sameDocument && document.querySelector('#list tr[data-id=\"{failed}\"]')\
             .dataset.status === 'callback_failed'"
        ),
        "its status to change live to callback_failed",
    )
    .await;

    // A live update leaves the rows in place: the focused link keeps its focus, and text
    // selected in the list (an id being copied) stays selected.
    focus_and_select(browser, &failed).await?;
    // Sent to a receiver that accepts, so that the failed requests stay the two below.
    let accepting = start_receiver(Arc::new(AtomicBool::new(false))).await;
    let accepting = format!("http://{accepting}/hook");
    let newer = submit(app, &accepting).await;
    eventually(
        browser,
        &format!("document.querySelector('#list tr[data-id=\"{newer}\"]')"),
        "a newer request in the list",
    )
    .await;
    still_focused_and_selected(browser, &failed, "a live update").await?;

    // With "Live" off the page stays as it is; on again, it catches up.
    click_live(browser, "#follow-live").await?;
    let unseen = submit(app, &accepting).await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let shown = browser
        .execute(
            &format!("return Boolean(document.querySelector('#list tr[data-id=\"{unseen}\"]'));"),
            vec![],
        )
        .await?;
    if shown != json!(false) {
        return Err("the list updated with Live off".into());
    }
    click_live(browser, "#follow-live").await?;
    eventually(
        browser,
        &format!("document.querySelector('#list tr[data-id=\"{unseen}\"]')"),
        "the list to catch up once Live is on again",
    )
    .await;

    // Select two scheduled requests and one already final, cancel the selection (accepting
    // the confirmation): the two end cancelled, the final one is skipped with its reason, and
    // the selection survives the list's refreshes in between.
    let later = |n: u32| {
        let body =
            json!({"data": format!("later {n}"), "callback_url": hook, "delay_seconds": 600});
        async move {
            let (status, answer) = read(app.post_async(&body).await).await;
            assert_eq!(status, 200, "{answer}");
            answer["request_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    let (first, second) = (later(1).await, later(2).await);
    for id in [&first, &second, &failed] {
        eventually(
            browser,
            &format!("document.querySelector('#list tr[data-id=\"{id}\"]')"),
            "the scheduled requests in the list",
        )
        .await;
        click_live(browser, &format!("#list input[data-select=\"{id}\"]")).await?;
    }
    tokio::time::sleep(Duration::from_millis(2600)).await;
    eventually(
        browser,
        "document.getElementById('selection-count').textContent.startsWith('3 requests selected') && \
         document.querySelectorAll('#list input[data-select]:checked').length === 3",
        "three selected, still checked after a refresh",
    )
    .await;
    browser
        .execute("window.confirm = () => true;", vec![])
        .await?;
    browser
        .find(Locator::Css("#selected-cancel"))
        .await?
        .click()
        .await?;
    let said = eventually(
        browser,
        "document.getElementById('selection-result').textContent.startsWith('2 of 3 cancelled') && \
         document.getElementById('selection-result').textContent",
        "two of three cancelled",
    )
    .await;
    screenshot(browser, "dashboard-selection.png").await;
    if !said
        .as_str()
        .is_some_and(|s| s.contains("1 skipped: callback_failed"))
    {
        return Err(format!("the skipped request's reason is not given: {said}").into());
    }
    for id in [&first, &second] {
        let record = app.get_json(&format!("/requests/{id}")).await;
        if record["status"] != "cancelled" {
            return Err(format!("not cancelled from the selection: {record}").into());
        }
    }

    // Filter by status, the last answer's class and the error's text, with the form.
    browser
        .execute(
            "document.querySelector('#filters select[name=status]').value = 'callback_failed';\
             document.querySelector('#filters input[name=last_status]').value = '5xx';\
             document.querySelector('#filters input[name=error_contains]').value = 'http 500';",
            vec![],
        )
        .await?;
    browser
        .find(Locator::Css("#filters button[type=submit]"))
        .await?
        .click()
        .await?;
    eventually(
        browser,
        &format!(
            "location.search.includes('status=callback_failed') && \
             location.search.includes('last_status=5xx') && \
             location.search.includes('error_contains=http+500') && \
             document.querySelector('#list tr[data-id=\"{failed}\"]')"
        ),
        "the filtered list",
    )
    .await;
    let statuses = browser
        .execute(
            "return [...document.querySelectorAll('#list tbody tr')].map(r => r.dataset.status);",
            vec![],
        )
        .await?;
    if statuses != json!(["callback_failed"]) {
        return Err(format!("the status filter let through other statuses: {statuses}").into());
    }

    // A hidden tab stops the stream and with it every refresh; shown again, it resumes.
    browser
        .execute(
            "window.__fetches = 0;\
             const fetchNow = window.fetch;\
             window.fetch = (...args) => { window.__fetches++; return fetchNow(...args); };\
             window.__setHidden = (hidden) => {\
               Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });\
               document.dispatchEvent(new Event('visibilitychange'));\
             };\
             window.__setHidden(true);",
            vec![],
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let paused = browser
        .execute(
            "return [window.__fetches, document.getElementById('live').textContent];",
            vec![],
        )
        .await?;
    if paused != json!([0, "paused"]) {
        return Err(format!("a hidden tab kept fetching: {paused}").into());
    }
    browser
        .execute("window.__setHidden(false);", vec![])
        .await?;
    eventually(
        browser,
        "document.getElementById('live').textContent === 'live' && window.__fetches >= 2",
        "the stream and the refreshes to resume",
    )
    .await;

    // At a phone's width the page does not scroll sideways (the table scrolls in its box).
    browser.set_window_size(390, 844).await?;
    eventually(
        browser,
        "document.documentElement.scrollWidth <= window.innerWidth",
        "the list to fit a phone's width",
    )
    .await;
    browser.set_window_size(1280, 1000).await?;
    assert_no_console_errors(browser, "on the requests list").await;

    // The detail, from the list: the attempts, the receiver's answer shown as text.
    click_live(browser, &format!("#list tr[data-id=\"{failed}\"] a")).await?;
    eventually(
        browser,
        "document.querySelectorAll('#attempts li.attempt').length === 2",
        "two attempts (a first one and one retry)",
    )
    .await;
    let shown = browser
        .execute(
            "return {\
               answer: document.querySelector('#attempts pre.answer').textContent,\
               elements: document.querySelectorAll('#attempts script, #attempts img').length,\
               pwned: window.__pwned || null,\
             };",
            vec![],
        )
        .await?;
    // Its headers, a blank line, then its body.
    let answer = shown["answer"].as_str().unwrap_or_default();
    let headers_first = answer.split_once("\n\n").is_some_and(|(headers, body)| {
        headers.contains("content-type: ") && body == HOSTILE_ANSWER
    });
    if !headers_first || shown["elements"] != 0 || !shown["pwned"].is_null() {
        return Err(format!("the receiver's answer was not shown as plain text: {shown}").into());
    }
    // The last answer links to every request that got it.
    let last_answer = browser
        .execute(
            "const link = document.querySelector('#record a[href=\"/ui/requests?last_status=500\"]');\
             return link && link.textContent;",
            vec![],
        )
        .await?;
    if last_answer != json!("HTTP 500") {
        return Err(format!("the last answer is not shown with its link: {last_answer}").into());
    }
    // Each attempt's callback as sent: its headers and the body, read when opened.
    browser
        .execute(
            "document.querySelector('#attempts details.sent[data-attempt=\"2\"] summary').click();",
            vec![],
        )
        .await?;
    eventually(
        browser,
        &format!(
            "(() => {{ const pre = document.querySelector('#attempts details.sent[data-attempt=\"2\"] pre');\
             return pre && pre.textContent.includes('X-Attempt: 2') &&\
               pre.textContent.includes('webhook-id: {failed}') &&\
               pre.textContent.includes('\"request_id\":\"{failed}\"'); }})()"
        ),
        "the second attempt's callback as sent",
    )
    .await;
    screenshot(browser, "dashboard-request.png").await;

    // Redeliver it with the token, and watch its status change without a reload.
    refusing.store(false, Ordering::SeqCst);
    browser
        .find(Locator::Id("redeliver"))
        .await?
        .click()
        .await?;
    eventually(
        browser,
        "document.querySelector('#record .badge').textContent === 'callback_success'",
        "the redelivered request to succeed",
    )
    .await;
    eventually(
        browser,
        "document.querySelectorAll('#attempts li.attempt').length === 3",
        "the third attempt in the timeline",
    )
    .await;

    assert_no_console_errors(browser, "on the request's page").await;

    // Redeliver every failed request matching a filter, after seeing how many.
    refusing.store(true, Ordering::SeqCst);
    let more = [submit(app, hook).await, submit(app, hook).await];
    for id in &more {
        app.wait_for_status(id, "callback_failed", WAIT).await;
    }
    refusing.store(false, Ordering::SeqCst);
    browser
        .goto(&app.url("/ui/requests?status=callback_failed"))
        .await?;
    eventually(
        browser,
        "document.querySelectorAll('#list tbody tr').length === 2",
        "the two failed requests",
    )
    .await;
    browser
        .find(Locator::Id("bulk-check"))
        .await?
        .click()
        .await?;
    let count = eventually(
        browser,
        "!document.getElementById('bulk-confirm').hidden && \
         document.getElementById('bulk-count').textContent",
        "the count before confirming",
    )
    .await;
    if !count
        .as_str()
        .is_some_and(|c| c.starts_with("2 callback_failed requests"))
    {
        return Err(format!("the confirmation does not say how many: {count}").into());
    }
    browser.find(Locator::Id("bulk-go")).await?.click().await?;
    eventually(
        browser,
        "document.getElementById('bulk-result').textContent.startsWith('Redelivering 2 requests')",
        "the bulk redelivery's report",
    )
    .await;
    for id in &more {
        app.wait_for_status(id, "callback_success", WAIT).await;
    }
    eventually(
        browser,
        "document.querySelectorAll('#list tbody tr').length === 0",
        "the failed list to empty itself",
    )
    .await;

    // Back to the overview for its picture, with the traffic of this test on the charts.
    browser.goto(&app.url("/ui")).await?;
    eventually(
        browser,
        "document.querySelectorAll('#charts path.line').length >= 4",
        "lines on the charts",
    )
    .await;
    // The counts follow the database within a second or two (read at most once a second).
    eventually(
        browser,
        "[...document.querySelectorAll('#status-counts .count')]\
           .map(c => c.textContent).join(' ').includes('callback_success5')",
        "the status counts to show the five delivered requests",
    )
    .await;
    // The charts draw this instance's real counters (read from its metrics once a second),
    // not zeros.
    let deadline = Instant::now() + WAIT;
    loop {
        let overview = app.get_json("/ui/api/overview").await;
        let points = overview["points"].as_array().cloned().unwrap_or_default();
        let seen = |key: &str| {
            points
                .iter()
                .any(|p| p[key].as_f64().is_some_and(|v| v > 0.0))
        };
        let all_seen = [
            "sync_per_s",
            "async_per_s",
            "delivered_per_s",
            "time_to_callback_p50_ms",
        ]
        .into_iter()
        .all(seen)
            && points
                .iter()
                .any(|p| p["failures_per_s"]["http_error"].as_f64() > Some(0.0));
        if all_seen {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the history misses some counter: {overview}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if screenshots() {
        // Half a minute of mixed traffic, some of it refused, so that the picture has shapes.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 0u32;
        while Instant::now() < deadline {
            n += 1;
            refusing.store(n % 40 < 8, Ordering::SeqCst);
            sync_request(app, &format!("picture {n}")).await;
            if n.is_multiple_of(2) {
                submit(app, hook).await;
            }
            tokio::time::sleep(Duration::from_millis(60 + u64::from(n % 7) * 20)).await;
        }
        refusing.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // A chart tells a screen reader its latest and highest values, and pointing at it reads
    // the values at that time in its legend.
    let chart = browser
        .execute(
            "const svg = document.querySelector('#charts svg.chart');\
             const box = svg.getBoundingClientRect();\
             svg.dispatchEvent(new PointerEvent('pointermove', {bubbles: true,\
               clientX: box.left + box.width * 0.9, clientY: box.top + box.height / 2}));\
             const legend = svg.closest('figure').querySelector('.legend');\
             return [svg.getAttribute('aria-label'), legend.querySelector('.at') ? legend.textContent : null];",
            vec![],
        )
        .await?;
    let label = chart[0].as_str().unwrap_or_default();
    if !(label.starts_with("Requests per second")
        && label.contains("now")
        && label.contains("highest"))
    {
        return Err(format!("the chart's spoken summary: {chart}").into());
    }
    if !chart[1]
        .as_str()
        .is_some_and(|read| read.contains("UTC") && read.contains("sync"))
    {
        return Err(format!("pointing at a chart did not read its values: {chart}").into());
    }
    // The charts are drawn again with each second's sample: the reading stays.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let kept = browser
        .execute(
            "const legend = document.querySelector('#charts figure .legend');\
             return legend.querySelector('.at') ? legend.textContent : null;",
            vec![],
        )
        .await?;
    if kept.is_null() {
        return Err("the chart's reading went away when it was drawn again".into());
    }
    browser
        .execute(
            "document.querySelector('#charts svg.chart').dispatchEvent(new PointerEvent('pointerleave'));",
            vec![],
        )
        .await?;
    screenshot(browser, "dashboard-overview.png").await;
    // The destinations view, with the admin token.
    browser.goto(&app.url("/ui/destinations")).await?;
    eventually(
        browser,
        "document.querySelector('#destinations tbody td a')",
        "the receiver among the destinations",
    )
    .await;
    // Pause it from its row (accepting the confirmation): the API says it is paused, the
    // row says so and offers Resume; a request to it waits, saying why.
    browser
        .execute("window.confirm = () => true;", vec![])
        .await?;
    click_live(browser, "#destinations button[data-action='pause']").await?;
    eventually(
        browser,
        "[...document.querySelectorAll('#destinations .badge.paused')].length === 1 && \
         document.querySelector(\"#destinations button[data-action='resume']\")",
        "the paused badge and the Resume button",
    )
    .await;
    let views = read(
        app.client
            .get(app.url("/destinations"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?,
    )
    .await
    .1;
    let destination = format!(
        "http://{}",
        hook.trim_start_matches("http://").trim_end_matches("/hook")
    );
    let paused = views["destinations"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|d| d["destination"] == destination.as_str())
        })
        .cloned()
        .unwrap_or_default();
    if paused["paused"] != true {
        return Err(format!("the click did not pause {destination}: {views}").into());
    }
    let held = submit(app, hook).await;
    // The overview says what needs attention: the paused destination, with a way to it.
    browser.goto(&app.url("/ui")).await?;
    eventually(
        browser,
        &format!(
            "[...document.querySelectorAll('#attention li')].some(li => \
             li.textContent.includes('{destination}: paused') && \
             li.querySelector('a[href=\"/ui/destinations\"]'))"
        ),
        "the paused destination among what needs attention",
    )
    .await;
    // And, with the browser's clock two minutes ahead, the request held by the pause among
    // those waiting longest, saying why, with a link to it.
    browser
        .execute(
            "const real = Date.now; Date.now = () => real.call(Date) + 120000;",
            vec![],
        )
        .await?;
    eventually(
        browser,
        &format!(
            "[...document.querySelectorAll('#attention li')].some(li => \
             li.textContent.includes('Request {}') && \
             li.textContent.includes('an operator paused it') && \
             li.querySelector('a[href=\"/ui/requests/{held}\"]'))",
            &held[..8]
        ),
        "the held request among those waiting longest",
    )
    .await;
    screenshot(browser, "dashboard-attention.png").await;
    browser
        .goto(&app.url(&format!("/ui/requests/{held}")))
        .await?;
    eventually(
        browser,
        "document.body.textContent.includes('an operator paused it')",
        "the detail page saying the request waits for its paused destination",
    )
    .await;
    screenshot(browser, "dashboard-request-paused.png").await;
    browser.goto(&app.url("/ui/destinations")).await?;
    click_live(browser, "#destinations button[data-action='resume']").await?;
    app.wait_for_status(&held, "callback_success", WAIT).await;

    // Limit it from its row: "Limit…" names it in the limit form; the limit is stored (the
    // API says so), the row shows it and, with jobs queued behind it, how many wait.
    click_live(browser, "#destinations button[data-action='limit']").await?;
    let named = browser
        .execute(
            "return document.getElementById('limit-destination').value;",
            vec![],
        )
        .await?;
    if named != json!(destination) {
        return Err(format!("Limit… named {named} in the form, not {destination}").into());
    }
    browser
        .execute(
            "document.getElementById('limit-per-second').value = '0.2';\
             document.getElementById('limit-burst').value = '1';",
            vec![],
        )
        .await?;
    click_live(browser, "#limit-form button[data-limit='set']").await?;
    eventually(
        browser,
        "document.getElementById('destination-result').textContent.includes('at most 0.2/s, burst 1')",
        "the limit confirmed",
    )
    .await;
    let view = destination_view(app, &destination).await?;
    if view["rate_limit"] != json!({"per_second": 0.2, "burst": 1})
        || view["rate_limit_own"] != true
    {
        return Err(format!("the form did not store the limit: {view}").into());
    }
    let mut limited = Vec::new();
    for _ in 0..6 {
        limited.push(submit(app, hook).await);
    }
    eventually(
        browser,
        "[...document.querySelectorAll('#destinations tbody tr')].some(tr => \
         tr.textContent.includes('0.2/s, burst 1') && /^[1-9]/.test(tr.cells[3].textContent))",
        "the limit and the jobs held behind it in the row",
    )
    .await;
    screenshot(browser, "dashboard-destinations.png").await;
    // "Use the default" forgets it: the jobs go, and the row shows no limit.
    click_live(browser, "#limit-form button[data-limit='default']").await?;
    eventually(
        browser,
        "document.getElementById('destination-result').textContent.includes('no limit (the default)')",
        "the default restored",
    )
    .await;
    for id in &limited {
        app.wait_for_status(id, "callback_success", WAIT).await;
    }
    let view = destination_view(app, &destination).await?;
    if view["rate_limit"] != Value::Null || view["rate_limit_own"] != false {
        return Err(format!("the limit was not forgotten: {view}").into());
    }

    // Times in UTC by default, as the API writes them; the header's switch shows them in the
    // browser's zone (here UTC+5:30), named.
    browser
        .goto(&app.url(&format!("/ui/requests/{held}")))
        .await?;
    eventually(
        browser,
        "document.getElementById('record').textContent.includes(' UTC')",
        "the record's times in UTC",
    )
    .await;
    click_live(browser, "#zone").await?;
    eventually(
        browser,
        "document.getElementById('record').textContent.includes('GMT+5:30') && \
         document.getElementById('zone').getAttribute('aria-pressed') === 'true'",
        "the record's times in the browser's zone",
    )
    .await;
    click_live(browser, "#zone").await?;

    // At a phone's width (390 px) no page scrolls sideways; the keyboard's first stop is a
    // link past the navigation to the page's content.
    let (width, height) = browser.get_window_size().await?;
    browser.set_window_size(390, 844).await?;
    for page in [
        "/ui".to_string(),
        "/ui/requests".to_string(),
        format!("/ui/requests/{held}"),
        "/ui/destinations".to_string(),
    ] {
        browser.goto(&app.url(&page)).await?;
        eventually(
            browser,
            "document.getElementById('live').textContent === 'live'",
            "the page to load",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sideways = browser
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                vec![],
            )
            .await?;
        if sideways.as_i64().unwrap_or(1) > 0 {
            return Err(format!("{page} scrolls sideways by {sideways} px at 390 px").into());
        }
        if page == "/ui/requests" {
            screenshot(browser, "dashboard-phone.png").await;
        }
    }
    let first_stop = browser
        .execute(
            "const skip = document.querySelector('a.skip');\
             return [skip === document.body.querySelector('a'), skip.getAttribute('href')];",
            vec![],
        )
        .await?;
    if first_stop != json!([true, "#main"]) {
        return Err(format!("no skip link first: {first_stop}").into());
    }
    browser.set_window_size(width as u32, height as u32).await?;
    assert_no_console_errors(browser, "while using the dashboard").await;
    Ok(())
}

/// The pages without a browser: shells with no data, a strict CSP on everything under
/// `/ui`, actions only with an admin token, the live endpoints behind the API token.
#[tokio::test]
async fn pages_are_data_free_shells_under_a_strict_policy() {
    let app = TestServer::builder()
        .setting("api-token", "api-secret")
        .start()
        .await;
    let hostile = "%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    for path in [
        "/ui".to_string(),
        "/ui/requests".into(),
        format!("/ui/requests/{hostile}"),
        "/ui/destinations".into(),
    ] {
        let response = app.get(&path).await;
        assert_eq!(response.status(), 200, "{path}");
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        let html = response.text().await.unwrap();
        // No inline script or style: the policy would refuse them.
        assert_eq!(html.matches("<script").count(), 1, "{path}: {html}");
        assert!(html.contains("<script src=\"/ui/assets/app."), "{path}");
        assert!(!html.contains("style="), "{path}");
        // Without an admin token, no action is offered.
        assert!(!html.contains("id=\"redeliver\"") && !html.contains("id=\"bulk-check\""));
        assert!(html.contains("data-api-token=\"1\""), "{path}");
        assert!(!html.contains("<script>alert"), "{path}: {html}");
    }
    // The page names its assets; they are served from the binary, cached for good.
    let html = app.get("/ui").await.text().await.unwrap();
    let script = html
        .split("<script src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let response = app.get(&script).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(!response.text().await.unwrap().contains("innerHTML"));
    assert_eq!(app.get("/ui/assets/app.0000.js").await.status(), 404);
    // The data endpoints need the API token, as the API does.
    for path in [
        "/ui/api/overview",
        "/ui/api/stream",
        "/ui/api/callback/01a23d48-43b7-768c-8491-9cd3ebcc17ba",
        "/requests",
    ] {
        assert_eq!(app.get(path).await.status(), 401, "{path}");
    }
    let overview: Value = app
        .client
        .get(app.url("/ui/api/overview"))
        .bearer_auth("api-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        overview["status_counts"].as_array().unwrap().len(),
        syncasync::model::Status::ALL.len()
    );
    app.stop().await;
}

/// On PostgreSQL, the live stream of one instance shows what another instance did: its
/// status counts are read from the shared database at every update. And an open stream
/// does not hold the instance's shutdown.
#[tokio::test]
async fn the_stream_shows_other_instances_changes_on_postgres() {
    let Some(admin) = crate::helpers::postgres_admin_url() else {
        eprintln!("skipped: needs SYNCASYNC_TEST_POSTGRES_URL (a shared database)");
        return;
    };
    let url = crate::helpers::create_postgres_database(&admin).await;
    let watched = TestServer::builder().database_url(&url).start().await;
    let other = TestServer::builder().database_url(&url).start().await;
    let mut stream = watched
        .client
        .get(watched.url("/ui/api/stream"))
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    sync_request(&other, "done elsewhere").await;
    let deadline = Instant::now() + WAIT;
    let mut seen = String::new();
    loop {
        let chunk = tokio::time::timeout(WAIT, stream.chunk())
            .await
            .expect("an update within the wait")
            .expect("stream readable")
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains(r#"{"status":"completed","count":1}"#) {
            break;
        }
        assert!(Instant::now() < deadline, "no update showed it: {seen}");
    }
    other.stop().await;
    // An open stream ends at shutdown rather than holding it for the grace period (5 s).
    let stopping = Instant::now();
    watched.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopping.elapsed()
    );
    drop(stream);
}

/// A row that leaves the list above the one in focus (its request cancelled elsewhere) takes
/// neither the focus nor the text selected with it: the rows below are not redrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_leaving_above_the_focus_leaves_focus_and_selection_alone() {
    let Some(driver) = start_driver().await else {
        return;
    };
    let app = TestServer::builder().start().await;
    let mut scheduled = Vec::new();
    for n in 0..3 {
        let (status, body) = crate::helpers::read(
            app.post_async(&json!({
                "data": format!("scheduled {n}"),
                "callback_url": "http://127.0.0.1:9/hook",
                "delay_seconds": 30,
            }))
            .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        scheduled.push(body["request_id"].as_str().expect("id").to_string());
        // Each its own creation millisecond, so that the order below is theirs.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let browser = open_browser(&driver).await;
    let outcome = async {
        browser
            .goto(&app.url("/ui/requests?status=pending"))
            .await?;
        eventually(
            &browser,
            "document.querySelectorAll('#list tbody tr').length === 3",
            "the three scheduled requests",
        )
        .await;
        // Newest first: the oldest is the bottom row, the middle one leaves.
        let (bottom, middle) = (&scheduled[0], &scheduled[1]);
        focus_and_select(&browser, bottom).await?;
        let (status, body) = crate::helpers::read(
            app.client
                .post(app.url(&format!("/requests/{middle}/cancel")))
                .send()
                .await?,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        eventually(
            &browser,
            &format!(
                "!document.querySelector('#list tr[data-id=\"{middle}\"]') && \
                 document.querySelectorAll('#list tbody tr').length === 2"
            ),
            "the cancelled request to leave the list",
        )
        .await;
        still_focused_and_selected(&browser, bottom, "a row leaving above it").await?;
        assert_no_console_errors(&browser, "as a row left the list").await;
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    let _ = browser.close().await;
    outcome.expect("focus and selection survive a row leaving above them");
}
