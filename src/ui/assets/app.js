// The syncasync dashboard. Pages are shells rendered by the server; this fills them from
// the JSON API and keeps them live from /ui/api/stream.
//
// Everything that came from a request (ids, URLs, errors, receiver answers) is put in the
// page with textContent or as a text node, never parsed as HTML. Tokens live in this tab's
// sessionStorage and travel only as bearer headers.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const adminEnabled = body.dataset.admin === "1";
  const FINAL = new Set(["completed", "failed", "callback_success", "callback_failed", "cancelled"]);
  const QUEUED = new Set(["pending", "processing", "callback_pending"]);
  const WAITING_FOR = {
    schedule: "its schedule",
    breaker_open: "its destination's open circuit breaker",
    destination_full: "room at its destination (its most deliveries are in flight)",
    paused: "its destination to be resumed (an operator paused it)",
    rate_limit: "its destination's rate limit",
    retry_after: "the time its receiver asked for (Retry-After)",
    ordering_key: "the request before it with the same ordering key",
  };
  // The charts' history (the most the server keeps) and the range shown of it.
  const WINDOW_MS = 15 * 60 * 1000;
  let rangeMs = WINDOW_MS;

  // ---- tokens -------------------------------------------------------------------------
  const TOKEN_KEYS = { api: "syncasync.api_token", admin: "syncasync.admin_token" };

  function token(kind) {
    try {
      return window.sessionStorage.getItem(TOKEN_KEYS[kind]) || "";
    } catch (_) {
      return "";
    }
  }

  function setToken(kind, value) {
    try {
      if (value) window.sessionStorage.setItem(TOKEN_KEYS[kind], value);
      else window.sessionStorage.removeItem(TOKEN_KEYS[kind]);
    } catch (_) {
      // Storage disabled: tokens last until the page is left.
    }
  }

  function authHeaders(kind) {
    const t = token(kind);
    return t ? { Authorization: "Bearer " + t } : {};
  }

  function setupTokenForm() {
    const form = document.getElementById("token-form");
    if (!form) return;
    const api = document.getElementById("api-token");
    const admin = document.getElementById("admin-token");
    const details = document.getElementById("tokens");
    if ((api && !token("api")) || (admin && !token("admin"))) details.open = true;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (api && api.value) setToken("api", api.value);
      if (admin && admin.value) setToken("admin", admin.value);
      if (api) api.value = "";
      if (admin) admin.value = "";
      details.open = false;
      showMessage("");
      refreshAll();
      restartStream();
    });
    document.getElementById("token-clear").addEventListener("click", () => {
      setToken("api", "");
      setToken("admin", "");
      details.open = true;
    });
  }

  // ---- helpers --------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function showMessage(text) {
    const message = document.getElementById("message");
    message.textContent = text;
    message.hidden = !text;
  }

  class HttpError extends Error {
    constructor(status, text) {
      super(text);
      this.status = status;
    }
  }

  async function call(method, path, kind, body) {
    const headers = authHeaders(kind);
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      // A 422 names each refused field in `detail`: the first one's message says what to mend.
      const invalid = data && Array.isArray(data.detail) && data.detail[0] && data.detail[0].msg;
      let text = (data && data.error) || invalid || response.status + " " + response.statusText;
      if (response.status === 401) {
        text = kind === "admin"
          ? "The admin token is missing or wrong: enter it under Tokens."
          : "The API token is missing or wrong: enter it under Tokens.";
        const details = document.getElementById("tokens");
        if (details) details.open = true;
      }
      throw new HttpError(response.status, text);
    }
    return data;
  }

  function report(error) {
    showMessage(error && error.message ? error.message : String(error));
  }

  // The API writes times in UTC, without a zone by default (as the original did): read
  // them as UTC whatever the browser's zone, and show them as UTC, as the logs do.
  function parseTime(value) {
    const text = String(value);
    return new Date(/(Z|[+-]\d\d:\d\d)$/.test(text) ? text : text + "Z");
  }

  // Times are shown in UTC, as the API and the logs write them, or in the browser's own zone
  // (the switch in the header; remembered in this browser), always with the zone named.
  const ZONE_KEY = "syncasync.zone";
  let localTimes = false;
  try {
    localTimes = window.localStorage.getItem(ZONE_KEY) === "local";
  } catch (_) {}

  function time(value) {
    if (!value) return "—";
    const date = parseTime(value);
    if (isNaN(date)) return String(value);
    if (!localTimes) return date.toISOString().slice(0, 19).replace("T", " ") + " UTC";
    const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
    const zone = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" })
      .formatToParts(date).find((p) => p.type === "timeZoneName");
    return local.toISOString().slice(0, 19).replace("T", " ") + " " + (zone ? zone.value : "local");
  }

  // The charts' range: the last 5 or 15 minutes of the history the server keeps.
  function setupChartRange() {
    const select = document.getElementById("chart-range");
    if (!select) return;
    select.addEventListener("change", () => {
      rangeMs = Math.min(WINDOW_MS, Number(select.value) * 60000 || WINDOW_MS);
      renderCharts();
    });
  }

  function setupZoneSwitch() {
    const button = document.getElementById("zone");
    if (!button) return;
    const show = () => {
      button.textContent = localTimes ? "Times: local" : "Times: UTC";
      button.setAttribute("aria-pressed", localTimes ? "true" : "false");
    };
    show();
    button.addEventListener("click", () => {
      localTimes = !localTimes;
      try {
        window.localStorage.setItem(ZONE_KEY, localTimes ? "local" : "utc");
      } catch (_) {}
      show();
      if (page === "requests") {
        // Each row's time cell differs now: draw the rows again, Live or not.
        const tbody = document.querySelector("#list tbody");
        if (tbody) tbody.replaceChildren();
        loadList();
      } else refreshAll();
    });
  }

  // "in 42 s" / "3 min ago": how far a time is from now, for times that are about to come.
  function fromNow(value) {
    const ms = parseTime(value) - Date.now();
    if (isNaN(ms)) return "";
    const secs = Math.round(Math.abs(ms) / 1000);
    const span = secs < 120 ? secs + " s" : secs < 7200 ? Math.round(secs / 60) + " min" : Math.round(secs / 3600) + " h";
    return ms >= 0 ? "in " + span : span + " ago";
  }

  // When a queued request moves next, and what holds it, in words.
  function nextMove(r) {
    const what = r.status === "pending" ? "work" : "next delivery attempt";
    if (!r.next_attempt_at && r.waiting_for === "ordering_key") {
      return what + " after the request before it with the same ordering key ends";
    }
    if (!r.next_attempt_at) return QUEUED.has(r.status) ? "an attempt is under way" : null;
    const why = r.waiting_for ? " (waiting for " + (WAITING_FOR[r.waiting_for] || r.waiting_for) + ")" : "";
    if (r.waiting_for === "paused") return what + " held until its destination is resumed (an operator paused it)";
    const when = parseTime(r.next_attempt_at) > Date.now()
      ? fromNow(r.next_attempt_at) + ", " + time(r.next_attempt_at)
      : "due since " + time(r.next_attempt_at);
    return what + " " + when + why;
  }

  function statusBadge(status) {
    return el("span", { class: "badge status-" + status, text: status });
  }

  function requestLink(id) {
    return el("a", { href: "/ui/requests/" + encodeURIComponent(id), title: id }, el("code", { text: id }));
  }

  function hostOf(url) {
    if (!url) return "—";
    try {
      return new URL(url).host;
    } catch (_) {
      return url;
    }
  }

  function round(n) {
    if (n === null || n === undefined) return "—";
    if (n >= 100) return Math.round(n).toString();
    if (n >= 10) return n.toFixed(1);
    return n.toFixed(2).replace(/\.?0+$/, "") || "0";
  }

  // ---- live stream ------------------------------------------------------------------------
  // fetch + a stream reader instead of EventSource, which cannot send the bearer header.
  let streamControl = null;
  let retryTimer = null;
  const live = document.getElementById("live");

  function setLive(text, ok) {
    live.textContent = text;
    live.className = ok ? "on" : "off";
  }

  // When the last live update came: what the page shows is as of then once the service
  // stops answering.
  let updatedAt = Date.now();

  function showStale(down) {
    const banner = document.getElementById("stale");
    if (!banner) return;
    const wasDown = !banner.hidden;
    banner.hidden = !down;
    // Said once as it goes down: an alert whose text is set again is read out again.
    if (down && !wasDown) {
      const at = new Date(updatedAt).toISOString().slice(11, 19);
      banner.textContent = "The service is not answering: what this page shows is as of " + at +
        " UTC. Reconnecting every 2 s…";
    }
  }

  async function startStream() {
    if (streamControl || document.hidden) return;
    const control = new AbortController();
    streamControl = control;
    let answered = false;
    try {
      const response = await fetch("/ui/api/stream", {
        headers: authHeaders("api"),
        signal: control.signal,
        cache: "no-store",
      });
      if (!response.ok) throw new HttpError(response.status, "live updates: " + response.status);
      setLive("live", true);
      showStale(false);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const chunk = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          handleEvent(chunk);
        }
      }
    } catch (error) {
      if (error.name !== "AbortError" && error.status === 401) report(error);
      // An HTTP answer means the service is up (a token missing, an overload).
      answered = Boolean(error.status);
    }
    if (streamControl === control) {
      streamControl = null;
      setLive("reconnecting…", false);
      showStale(!answered);
      clearTimeout(retryTimer);
      retryTimer = setTimeout(startStream, 2000);
    }
  }

  function stopStream(label) {
    clearTimeout(retryTimer);
    const control = streamControl;
    streamControl = null;
    if (control) control.abort();
    setLive(label, false);
  }

  function restartStream() {
    stopStream("connecting…");
    startStream();
  }

  function handleEvent(chunk) {
    let name = "message";
    const data = [];
    for (const line of chunk.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (name !== "overview" || data.length === 0) return;
    updatedAt = Date.now();
    let update;
    try {
      update = JSON.parse(data.join("\n"));
    } catch (_) {
      return;
    }
    onUpdate(update);
  }

  // Pause while the tab is hidden: no stream, no database reads for nobody.
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      stopStream("paused");
      clearTimeout(listPutOff);
      listPutOff = null;
    } else {
      refreshAll();
      startStream();
    }
  });

  // ---- overview ---------------------------------------------------------------------------
  let points = [];

  function renderCounts(counts) {
    const box = document.getElementById("status-counts");
    if (!box) return;
    const list = el("dl", {});
    let total = 0;
    for (const { status, count } of counts) {
      total += count;
      const link = el("a", { href: "/ui/requests?status=" + encodeURIComponent(status) }, statusBadge(status));
      list.append(el("div", { class: "count" }, el("dt", {}, link), el("dd", { text: count.toLocaleString() })));
    }
    list.append(el("div", { class: "count total" }, el("dt", { text: "all" }), el("dd", { text: total.toLocaleString() })));
    box.replaceChildren(list);
  }

  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    return node;
  }

  // "18:21" (or "18:21:05" with seconds), in the zone times are shown in.
  function clock(ms, seconds) {
    const text = time(new Date(ms).toISOString());
    const at = text.indexOf(":");
    return at < 0 ? text : text.slice(at - 2, at + (seconds ? 6 : 3)) + text.slice(19);
  }

  // A value with its unit: "3.2 /s", "16,138 ms", "7".
  function withUnit(v, unit) {
    const whole = v !== null && v !== undefined && (v >= 1000 || Number.isInteger(v));
    const n = whole ? Math.round(v).toLocaleString() : round(v);
    return n + (unit ? " " + unit : "");
  }

  // The sample pointed at ({title, at}), kept across the redraw each new second brings.
  let hover = null;

  // The smallest 1, 2 or 5 times a power of ten at or above `v` (1 for nothing): the top of a
  // chart's scale, a number a reader takes in at a glance.
  function niceCeiling(v) {
    if (!(v > 0)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(v)));
    for (const step of [1, 2, 5, 10]) if (step * power >= v) return step * power;
    return 10 * power;
  }

  // A small line chart of `series` ([{name, values, cls}]) over `points`' times, shown from
  // the start of the range: its top and bottom values on the left, its first time and "now"
  // below, and a legend that reads the latest values, or those at the time pointed at. A
  // screen reader hears the title and, per series, its latest and highest values.
  function chart(title, unit, series, note) {
    const width = 300;
    const height = 80;
    const [start, span] = timeSpan();
    const shown = points.map((p) => p.at >= start);
    let max = 0;
    for (const s of series) s.values.forEach((v, i) => { if (shown[i] && v !== null && v > max) max = v; });
    const top = niceCeiling(max);
    const latest = (s) => (s.values.length ? s.values[s.values.length - 1] : null);
    const spoken = title + ", last " + Math.round(span / 60000) + " min: " + series.map((s) =>
      s.name + " now " + withUnit(latest(s), unit) + ", highest " +
      withUnit(Math.max(0, ...s.values.filter((v, i) => shown[i] && v !== null)), unit)).join("; ") + ".";
    const graphic = svg("svg", {
      viewBox: "0 0 " + width + " " + height,
      preserveAspectRatio: "none",
      role: "img",
      "aria-label": spoken,
      class: "chart",
    });
    graphic.append(svg("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "axis" }));
    for (const s of series) {
      let path = "";
      let pen = false;
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) {
          pen = false;
          return;
        }
        if (!shown[i]) return;
        const x = ((points[i].at - start) / span) * width;
        const y = height - (v / top) * (height - 4) - 1;
        path += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
        pen = true;
      });
      if (path) graphic.append(svg("path", { d: path, class: "line " + s.cls }));
    }
    const cursor = svg("line", { x1: 0, y1: 0, x2: 0, y2: height, class: "cursor", visibility: "hidden" });
    graphic.append(cursor);
    const legend = el("p", { class: "legend", "aria-hidden": "true" });
    const readOut = (i) => {
      const keys = series.map((s) => el("span", { class: "key " + s.cls },
        s.name + " " + withUnit(i === null ? latest(s) : s.values[i], unit)));
      legend.replaceChildren(...(i === null ? keys : [el("span", { class: "at", text: clock(points[i].at, true) }), ...keys]));
    };
    // The sample nearest a time: the legend reads it, a line marks it.
    const mark = (at) => {
      let best = null;
      points.forEach((p, i) => {
        if (shown[i] && (best === null || Math.abs(p.at - at) < Math.abs(points[best].at - at))) best = i;
      });
      if (best === null) return;
      const x = (((points[best].at - start) / span) * width).toFixed(1);
      cursor.setAttribute("x1", x);
      cursor.setAttribute("x2", x);
      cursor.setAttribute("visibility", "visible");
      readOut(best);
      hover = { title, at: points[best].at };
    };
    readOut(null);
    if (hover && hover.title === title) mark(hover.at);
    graphic.addEventListener("pointermove", (event) => {
      const box = graphic.getBoundingClientRect();
      mark(start + ((event.clientX - box.left) / Math.max(1, box.width)) * span);
    });
    graphic.addEventListener("pointerleave", () => {
      hover = null;
      cursor.setAttribute("visibility", "hidden");
      readOut(null);
    });
    const plot = el("div", { class: "plot" },
      graphic,
      el("span", { class: "y-top", "aria-hidden": "true", text: withUnit(top, unit) }),
      el("span", { class: "y-zero", "aria-hidden": "true", text: "0" }));
    const xAxis = el("p", { class: "x-axis", "aria-hidden": "true" },
      el("span", { text: clock(start, false) }), el("span", { text: "now" }));
    return el(
      "figure",
      { class: "chart-box" },
      el("figcaption", {}, title, el("span", { class: "max", text: "max " + withUnit(max, unit) })),
      plot,
      xAxis,
      legend,
      note ? el("p", { class: "hint", text: note }) : null,
    );
  }

  // The charts' time axis: the last 15 minutes, or since the oldest sample when this
  // instance has not been up that long (so a young history is not a sliver at the right).
  function timeSpan() {
    const now = Date.now();
    const start = points.length ? Math.max(now - rangeMs, Math.min(points[0].at, now - 60000)) : now - rangeMs;
    return [start, Math.max(1, now - start)];
  }

  function renderCharts() {
    const box = document.getElementById("charts");
    if (!box) return;
    const minutes = Math.round(timeSpan()[1] / 60000);
    const full = minutes >= Math.round(rangeMs / 60000);
    document.getElementById("charts-title").textContent = "Last " + Math.max(1, minutes) + " minute" +
      (minutes > 1 ? "s" : "") + (full ? "" : " (since this instance started)");
    const pick = (key) => points.map((p) => p[key]);
    const causes = new Set();
    for (const p of points) {
      for (const [cause, rate] of Object.entries(p.failures_per_s)) if (rate > 0) causes.add(cause);
    }
    const last = points[points.length - 1];
    const failureSeries = [...causes].sort().map((cause, i) => ({
      name: cause,
      values: points.map((p) => p.failures_per_s[cause] || 0),
      cls: "s" + (i % 4),
    }));
    const requestSeries = [
      { name: "sync", values: pick("sync_per_s"), cls: "s0" },
      { name: "async", values: pick("async_per_s"), cls: "s1" },
    ];
    if (points.some((p) => p.batch_calls_per_s > 0)) {
      requestSeries.push({ name: "batch calls", values: pick("batch_calls_per_s"), cls: "s3" });
    }
    box.replaceChildren(
      chart("Requests per second", "/s", requestSeries,
        requestSeries.length > 2 ? "A batch call (POST /async/batch) counts once, whatever it holds." : null),
      chart("Callbacks delivered per second", "/s", [
        { name: "delivered", values: pick("delivered_per_s"), cls: "s2" },
      ]),
      chart("Time to callback", "ms", [
        { name: "p50", values: pick("time_to_callback_p50_ms"), cls: "s0" },
        { name: "p99", values: pick("time_to_callback_p99_ms"), cls: "s3" },
      ], "From acceptance to delivered callback, over 10 s windows."),
      chart("Queue depth", "", [{ name: "queued", values: pick("queue_size"), cls: "s1" }],
        last ? "Capacity " + last.queue_capacity.toLocaleString() + " (" +
          round((100 * last.queue_size) / Math.max(1, last.queue_capacity)) + "% used)." : null),
      chart("Deliveries in flight", "", [{ name: "in flight", values: pick("in_flight"), cls: "s2" }],
        last ? "Of " + last.workers + " workers." : null),
      failureSeries.length
        ? chart("Failed delivery attempts per second, by cause", "/s", failureSeries)
        : el("figure", { class: "chart-box" }, el("figcaption", { text: "Failed delivery attempts" }),
          el("p", { class: "hint", text: "None in the last 15 minutes." })),
    );
  }

  async function loadOverview() {
    const data = await call("GET", "/ui/api/overview", "api");
    points = data.points;
    renderCounts(data.status_counts);
    renderCharts();
    loadAttention(data.status_counts);
  }

  // ---- what needs attention now -------------------------------------------------------------
  let attentionAt = 0;

  function attentionItem(text, href, linkText) {
    const item = el("li", {}, text);
    if (href) item.append(" ", el("a", { href }, linkText));
    return item;
  }

  // Open breakers, paused destinations, the destinations failing most (from GET
  // /destinations, with the admin token), requests whose callbacks failed for good, the
  // requests waiting longest and why, and this instance's failures by cause in the last
  // second; each with a link to the list or request it names.
  async function loadAttention(counts) {
    const box = document.getElementById("attention");
    if (!box) return;
    attentionAt = Date.now();
    const items = [];
    const failed = (counts || []).find((c) => c.status === "callback_failed");
    if (failed && failed.count > 0) {
      items.push(attentionItem(failed.count.toLocaleString() + " requests whose callbacks failed for good.",
        "/ui/requests?status=callback_failed", "List them (and redeliver)"));
    }
    const point = points.length ? points[points.length - 1] : null;
    const causes = point ? Object.entries(point.failures_per_s || {}).filter(([, n]) => n > 0) : [];
    if (causes.length) {
      items.push(attentionItem("Delivery attempts failing now: " +
        causes.map(([cause, n]) => cause.replace(/_/g, " ") + " " + round(n) + "/s").join(", ") + "."));
    }
    try {
      items.push(...await waitingLongest());
    } catch (error) {
      items.push(attentionItem("Waiting requests could not be read: " + error.message));
    }
    if (adminEnabled && token("admin")) {
      try {
        const data = await call("GET", "/destinations", "admin");
        const link = (d) => "/ui/requests?callback_host=" + encodeURIComponent(hostOf(d.destination));
        for (const d of data.destinations) {
          if (d.breaker !== "closed") {
            items.push(attentionItem(d.destination + ": breaker " + d.breaker.replace("_", "-") +
              (d.next_probe_at ? ", next probe " + time(d.next_probe_at) : "") + ".", link(d), "Its requests"));
          }
          if (d.paused) {
            items.push(attentionItem(d.destination + ": paused by an operator since " + time(d.paused_at) + ".",
              "/ui/destinations", "Resume it"));
          }
        }
        const failing = data.destinations.filter((d) => d.recent_failures > 0)
          .sort((a, b) => b.recent_failures - a.recent_failures).slice(0, 5);
        for (const d of failing) {
          items.push(attentionItem(d.destination + ": " + d.recent_failures + " failed and " +
            d.recent_successes + " delivered in 5 min.", link(d), "Its requests"));
        }
      } catch (error) {
        items.push(attentionItem("Destinations could not be read: " + error.message));
      }
    } else if (adminEnabled) {
      items.push(attentionItem("Enter the admin token (Tokens) to see open breakers, paused and failing destinations here."));
    }
    if (!items.length) items.push(el("li", { class: "hint", text: "Nothing needs attention now." }));
    box.replaceChildren(...items);
  }

  // The oldest requests whose work or delivery has been due for a minute or more (among the
  // 50 oldest of each status, GET /requests?order=oldest), with what holds them. One
  // scheduled for later, or with an attempt under way, is not waiting.
  const LONG_WAIT_MS = 60 * 1000;
  async function waitingLongest() {
    const items = [];
    for (const status of ["pending", "callback_pending"]) {
      const data = await call("GET", "/requests?status=" + status + "&order=oldest&limit=50", "api");
      const waiting = data.requests.filter((r) =>
        r.next_attempt_at && Date.now() - parseTime(r.next_attempt_at) >= LONG_WAIT_MS);
      for (const r of waiting.slice(0, 3)) {
        const line = "Request " + r.id.slice(0, 8) + "… accepted " + fromNow(r.created_at) +
          ", " + status.replace("_", " ") + ": " + nextMove(r) + ".";
        items.push(attentionItem(line, "/ui/requests/" + encodeURIComponent(r.id), "Open it"));
      }
    }
    return items;
  }

  // ---- requests list ---------------------------------------------------------------------
  const FILTERS = ["mode", "status", "created_from", "created_to", "callback_host", "last_status",
    "error_contains", "id_prefix", "order"];
  const PAGE_SIZE = 50;
  let listBusy = false;
  let listLoaded = false;
  // When the list was last read and how long that took: a live update waits twenty times as
  // long after it, so that a costly filter (a text search on a long history) open in a tab
  // takes at most a twentieth of the server's time.
  let listReadAt = 0;
  let listCostMs = 0;

  // The filter of the address bar, as the API's query (times as RFC 3339). An id prefix finds
  // requests by id: the API takes it alone, so the other filters are left out with it.
  function filterQuery() {
    const here = new URLSearchParams(window.location.search);
    const query = new URLSearchParams();
    const idPrefix = (here.get("id_prefix") || "").trim();
    if (idPrefix) {
      query.set("id_prefix", idPrefix);
      if (here.get("order") === "oldest") query.set("order", "oldest");
      return query;
    }
    for (const key of FILTERS) {
      const value = (here.get(key) || "").trim();
      if (!value) continue;
      // Times in the form are UTC, as everywhere on the dashboard; the API reads a time
      // without a zone as UTC.
      query.set(key, value);
    }
    return query;
  }

  function fillFilterForm() {
    const form = document.getElementById("filters");
    const here = new URLSearchParams(window.location.search);
    for (const key of FILTERS) {
      const field = form.elements.namedItem(key);
      if (field && here.has(key)) field.value = here.get(key);
    }
  }

  async function loadList() {
    if (listBusy) return;
    listBusy = true;
    try {
      const here = new URLSearchParams(window.location.search);
      const query = filterQuery();
      query.set("limit", String(PAGE_SIZE));
      // Each order pages with its own cursor: `before` newest first, `after` oldest first.
      const cursorName = query.get("order") === "oldest" ? "after" : "before";
      const cursor = here.get(cursorName);
      if (cursor) query.set(cursorName, cursor);
      const started = performance.now();
      const data = await call("GET", "/requests?" + query.toString(), "api");
      listCostMs = performance.now() - started;
      listReadAt = Date.now();
      const rows = data.requests;
      // Only what the operator sees can be acted on: a selected request gone from the page
      // (pushed off the live first page by newer ones) leaves the selection.
      const shown = new Map(data.requests.map((r) => [r.id, { status: r.status, mode: r.mode }]));
      for (const id of [...selected.keys()]) {
        if (shown.has(id)) selected.set(id, shown.get(id));
        else selected.delete(id);
      }
      updateRows(document.querySelector("#list tbody"), data.requests);
      listLoaded = true;
      renderSelection();
      document.getElementById("list-summary").textContent =
        data.total.toLocaleString() + " matching" + (cursor ? " (a later page)" : "") +
        (rows.length ? "" : "; none on this page");
      const older = document.getElementById("older");
      if (data.requests.length === PAGE_SIZE) {
        const next = new URLSearchParams(here);
        next.delete("before");
        next.delete("after");
        next.set(cursorName, data.requests[data.requests.length - 1].id);
        older.href = "/ui/requests?" + next.toString();
        older.hidden = false;
      } else older.hidden = true;
      const first = document.getElementById("first-page");
      const newest = new URLSearchParams(here);
      newest.delete("before");
      newest.delete("after");
      first.href = "/ui/requests" + (newest.toString() ? "?" + newest.toString() : "");
      first.hidden = !cursor;
      showMessage("");
    } catch (error) {
      if (error.status === 404) {
        report(new Error("The request this page started after no longer exists: start again from the newest page."));
        document.getElementById("first-page").hidden = false;
      } else report(error);
    } finally {
      listBusy = false;
    }
  }

  // Reads the list again once it has rested twenty times its last read's cost: now, or with
  // one read put off until then (a change in between is not lost, only later). A put-off
  // read is dropped if meanwhile the tab was hidden (showing it again reads everything) or
  // "Live" was turned off.
  let listPutOff = null;
  function loadListRested() {
    const wait = listReadAt + 20 * listCostMs - Date.now();
    if (wait <= 0) loadList();
    else if (!listPutOff) {
      listPutOff = setTimeout(() => {
        listPutOff = null;
        const follow = document.getElementById("follow-live");
        if (!document.hidden && (!follow || follow.checked)) loadList();
      }, wait);
    }
  }

  // The cells of a request's row; the first holds its checkbox.
  function listCells(r) {
    return [
      el("td", {}, el("input", {
        type: "checkbox", "data-select": r.id, "aria-label": "Select " + r.id,
        checked: selected.has(r.id) ? "" : null,
      })),
      el("td", {}, requestLink(r.id)),
      el("td", { text: r.mode }),
      el("td", {}, statusBadge(r.status)),
      el("td", { text: time(r.created_at) }),
      el("td", { text: hostOf(r.callback_url) }),
      el("td", { text: r.mode === "async" ? String(r.callback_attempts) : "—" }),
      el("td", { class: "error-cell", text: r.callback_last_error || r.error || "" }),
    ];
  }

  // Brings the table to `requests` in place: a row already shown keeps its elements, and of
  // its cells only those whose content changed are replaced, so that keyboard focus, a text
  // selection (an id being copied) and a screen reader's place survive each live update.
  function updateRows(tbody, requests) {
    const wanted = new Set(requests.map((r) => r.id));
    const existing = new Map();
    // Rows that leave go first, so that the rows below them are not moved (a moved element
    // loses focus and the text selected in it).
    for (const row of [...tbody.rows]) {
      if (wanted.has(row.dataset.id)) existing.set(row.dataset.id, row);
      else row.remove();
    }
    let cursor = tbody.firstElementChild;
    for (const r of requests) {
      let row = existing.get(r.id);
      const cells = listCells(r);
      if (row) {
        existing.delete(r.id);
        row.dataset.status = r.status;
        row.dataset.mode = r.mode;
        const box = row.cells[0] && row.cells[0].querySelector("input[data-select]");
        if (box) box.checked = selected.has(r.id);
        // The checkbox cell stays: its state is the selection's.
        for (let i = 1; i < cells.length; i++) {
          const old = row.cells[i];
          if (!old) row.append(cells[i]);
          else if (!old.isEqualNode(cells[i])) old.replaceWith(cells[i]);
        }
      } else {
        row = el("tr", { "data-id": r.id, "data-status": r.status, "data-mode": r.mode }, ...cells);
      }
      if (row === cursor) cursor = cursor.nextElementSibling;
      else tbody.insertBefore(row, cursor);
    }
  }

  // ---- selected requests: cancel, retry now, redeliver --------------------------------------
  const selected = new Map(); // id → its status and mode when last seen

  function seen(row) {
    return { status: row.dataset.status, mode: row.dataset.mode };
  }

  function renderSelection() {
    const box = document.getElementById("selection");
    if (!box) return;
    box.hidden = selected.size === 0;
    document.getElementById("selection-count").textContent =
      selected.size + " request" + (selected.size === 1 ? "" : "s") + " selected:";
    const boxes = [...document.querySelectorAll("#list input[data-select]")];
    const all = document.getElementById("select-page");
    all.checked = boxes.length > 0 && boxes.every((b) => b.checked);
    all.indeterminate = !all.checked && boxes.some((b) => b.checked);
  }

  const SELECTED_ACTIONS = {
    cancel: {
      kind: "api", done: "cancelled", ask: "Cancel",
      warn: " No work starts and no callback is sent after this (but for attempts already under way).",
      applies: (r) => r.mode === "async" && QUEUED.has(r.status),
    },
    retry: {
      kind: "admin", done: "made due now", ask: "Retry now",
      warn: " Each waiting request is tried at once.",
      applies: (r) => r.mode === "async" && QUEUED.has(r.status),
    },
    redeliver: {
      kind: "admin", done: "queued for redelivery", ask: "Redeliver",
      warn: " Each callback_failed request gets a fresh round of attempts.",
      applies: (r) => r.status === "callback_failed",
    },
  };

  function setupSelection() {
    const box = document.getElementById("selection");
    if (!box) return;
    const table = document.querySelector("#list tbody");
    table.addEventListener("change", (event) => {
      const input = event.target.closest("input[data-select]");
      if (!input) return;
      if (input.checked) selected.set(input.dataset.select, seen(input.closest("tr")));
      else selected.delete(input.dataset.select);
      renderSelection();
    });
    document.getElementById("select-page").addEventListener("change", (event) => {
      for (const input of document.querySelectorAll("#list input[data-select]")) {
        input.checked = event.target.checked;
        if (input.checked) selected.set(input.dataset.select, seen(input.closest("tr")));
        else selected.delete(input.dataset.select);
      }
      renderSelection();
    });
    document.getElementById("selection-clear").addEventListener("click", () => {
      selected.clear();
      for (const input of document.querySelectorAll("#list input[data-select]")) input.checked = false;
      renderSelection();
      document.getElementById("selection-result").textContent = "";
    });
    box.addEventListener("click", async (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      const action = SELECTED_ACTIONS[button.dataset.action];
      const n = selected.size;
      // Requests the action cannot apply to, as last seen, are skipped without a call.
      const skipped = new Map(); // reason → count
      const skip = (why) => skipped.set(why, (skipped.get(why) || 0) + 1);
      const ids = [];
      for (const [id, r] of selected) {
        if (action.applies(r)) ids.push(id);
        else skip(r.mode === "sync" ? "sync" : r.status);
      }
      if (!window.confirm(action.ask + " " + n + " selected request" + (n === 1 ? "" : "s") + "?" + action.warn)) return;
      const result = document.getElementById("selection-result");
      const buttons = [...box.querySelectorAll("button")];
      buttons.forEach((b) => { b.disabled = true; });
      // One call per request, a few at a time: each answers for itself (a request that
      // became final meanwhile is skipped with the reason, not an error for the rest).
      let done = 0;
      let next = 0;
      let refused = null; // a 401: every worker stops
      const worker = async () => {
        while (next < ids.length && !refused) {
          const id = ids[next++];
          result.textContent = action.ask + ": " + next + " of " + ids.length + "…";
          try {
            await call("POST", "/requests/" + encodeURIComponent(id) + "/" + button.dataset.action, action.kind);
            done++;
            selected.delete(id);
          } catch (error) {
            if (error.status === 401) {
              refused = error;
              return;
            }
            skip(error.message);
          }
        }
      };
      try {
        await Promise.all([worker(), worker(), worker(), worker()]);
        if (refused) throw refused;
        const reasons = [...skipped].map(([why, count]) => count + " skipped: " + why);
        result.textContent = done + " of " + n + " " + action.done + "." + (reasons.length ? " " + reasons.join("; ") : "");
      } catch (error) {
        result.textContent = error.message;
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
        renderSelection();
        loadList();
      }
    });
  }

  function setupBulk() {
    const check = document.getElementById("bulk-check");
    if (!check) return;
    const confirmBox = document.getElementById("bulk-confirm");
    const count = document.getElementById("bulk-count");
    const go = document.getElementById("bulk-go");
    const result = document.getElementById("bulk-result");
    const here = new URLSearchParams(window.location.search);
    const status = here.get("status");
    if ((here.get("id_prefix") || "").trim()) {
      check.disabled = true;
      result.textContent = "A search by id redelivers nothing in bulk; open the request to redeliver it.";
      return;
    }
    if (status && status !== "callback_failed") {
      check.disabled = true;
      result.textContent = "Only callback_failed requests can be redelivered; this filter shows " + status + ".";
      return;
    }
    // The list's filter without its status (the redelivery takes callback_failed) and its
    // order (a redelivery is not a page).
    const bulkQuery = () => {
      const query = filterQuery();
      query.delete("status");
      query.delete("order");
      return query;
    };
    check.addEventListener("click", async () => {
      result.textContent = "";
      try {
        const query = bulkQuery();
        query.set("dry_run", "true");
        const data = await call("POST", "/admin/redeliver?" + query.toString(), "admin");
        if (data.matched === 0) {
          result.textContent = "No callback_failed request matches this filter.";
          return;
        }
        count.textContent = data.matched.toLocaleString() + " callback_failed request" +
          (data.matched === 1 ? "" : "s") + " match this filter" +
          (data.matched > 1000 ? "; the first 1,000 will be redelivered now (run it again for the rest)." : ". Redeliver " + (data.matched === 1 ? "it" : "all of them") + "?");
        go.dataset.count = String(Math.min(data.matched, 1000));
        confirmBox.hidden = false;
        go.focus();
      } catch (error) {
        result.textContent = error.message;
      }
    });
    document.getElementById("bulk-cancel").addEventListener("click", () => {
      confirmBox.hidden = true;
      check.focus();
    });
    go.addEventListener("click", async () => {
      confirmBox.hidden = true;
      try {
        const query = bulkQuery();
        query.set("limit", go.dataset.count || "100");
        const data = await call("POST", "/admin/redeliver?" + query.toString(), "admin");
        result.textContent = "Redelivering " + data.redelivered.toLocaleString() + " request" +
          (data.redelivered === 1 ? "" : "s") + "." +
          (data.queue_full ? " The queue is full: the rest stay callback_failed." : "") +
          (data.remaining > 0 ? " " + data.remaining.toLocaleString() + " still match." : "");
        loadList();
      } catch (error) {
        result.textContent = error.message;
      }
    });
  }

  // ---- request detail ---------------------------------------------------------------------
  const requestId = body.dataset.requestId;
  let detailFinal = false;
  let detailBusy = false;
  // The status shown, and the last action's answer with the status it left: once the request
  // moves on (a redelivery failed again), the answer is shown as what it was, of its time.
  let shownStatus = null;
  let lastAction = null;

  function field(list, name, value, cls) {
    list.append(el("dt", { text: name }), el("dd", { class: cls }, value === null || value === undefined || value === "" ? "—" : value));
  }

  async function loadDetail() {
    if (detailBusy) return;
    detailBusy = true;
    try {
      const r = await call("GET", "/requests/" + encodeURIComponent(requestId), "api");
      detailFinal = FINAL.has(r.status);
      shownStatus = r.status;
      if (lastAction && lastAction.status !== r.status) {
        const at = new Date(lastAction.at).toISOString().slice(11, 19);
        lastAction.result.textContent = "At " + at + " UTC: " + lastAction.message.replace(/\.?$/, ".") +
          " Since then: " + r.status.replace(/_/g, " ") + ".";
        lastAction = null;
      }
      const record = document.getElementById("record");
      const list = document.createDocumentFragment();
      field(list, "Status", statusBadge(r.status));
      field(list, "Mode", r.mode);
      field(list, "Created", time(r.created_at));
      field(list, r.mode === "async" ? "Work finished" : "Completed", time(r.completed_at));
      if (r.mode === "async") field(list, r.status === "cancelled" ? "Cancelled" : "Delivery ended", time(r.delivered_at));
      if (r.mode === "async" && !FINAL.has(r.status)) field(list, "Next", nextMove(r));
      if (r.run_at) field(list, "Scheduled for", time(r.run_at));
      if (r.priority) field(list, "Priority", (r.priority > 0 ? "+" : "") + r.priority);
      if (r.callback_max_retries !== undefined) field(list, "Its retries", String(r.callback_max_retries));
      if (r.callback_timeout_seconds !== undefined) field(list, "Its timeout", round(r.callback_timeout_seconds) + " s");
      field(list, "Callback URL", r.callback_url, "wrap");
      field(list, "Callback attempts", r.mode === "async" ? String(r.callback_attempts) : null);
      if (r.callback_last_status !== undefined) {
        // A refusal links to every request refused the same way (the filter takes no success).
        const answer = "HTTP " + r.callback_last_status;
        field(list, "Last callback answer", r.callback_last_status >= 300 ? el("a", {
          href: "/ui/requests?last_status=" + r.callback_last_status,
          title: "Every request whose last callback got this answer",
        }, answer) : answer);
      }
      field(list, "Last callback error", r.callback_last_error, "wrap");
      if (r.error) field(list, "Error", r.error, "wrap");
      field(list, "Payload hash", r.payload_hash);
      record.replaceChildren(list);
      document.getElementById("result").textContent = r.result ? JSON.stringify(r.result, null, 2) : "—";
      renderAttempts(r.attempts || [], r);
      const actions = document.getElementById("actions");
      if (actions) actions.hidden = r.status !== "callback_failed";
      const control = document.getElementById("control");
      if (control) control.hidden = !(r.mode === "async" && QUEUED.has(r.status));
      const retry = document.getElementById("retry-control");
      if (retry) {
        retry.hidden = !(r.mode === "async" && r.next_attempt_at && parseTime(r.next_attempt_at) > Date.now());
        // For work waiting for its schedule the same call starts it now.
        document.getElementById("retry-now").textContent = r.waiting_for === "schedule" ? "Start now" : "Retry now";
      }
      showMessage("");
    } catch (error) {
      if (error.status === 404) detailFinal = true;
      report(error);
    } finally {
      detailBusy = false;
    }
  }

  // Each attempt's callback as sent (GET /ui/api/callback/{id}: the body byte for byte and
  // the attempt's headers), read when first opened; which are open survives a refresh.
  const openCallbacks = new Set();
  let callbackSent = null;

  async function callbackAsSent(r) {
    const attempts = (r.attempts || []).length;
    if (!callbackSent || callbackSent.attempts.length < attempts) {
      callbackSent = await call("GET", "/ui/api/callback/" + encodeURIComponent(r.id), "api");
    }
    return callbackSent;
  }

  function callbackDetails(a, r) {
    const pre = el("pre", { class: "answer", text: "Reading…" });
    const details = el("details", { class: "sent", "data-attempt": String(a.attempt) },
      el("summary", { text: "The callback as sent" }), pre);
    const fill = async () => {
      try {
        const sent = await callbackAsSent(r);
        const own = sent.attempts.find((x) => x.attempt === a.attempt);
        const lines = ["POST " + sent.url];
        for (const [name, value] of own ? own.headers : []) lines.push(name + ": " + value);
        lines.push("webhook-signature: v1,… (one per APP_CALLBACK_SIGNING_SECRET secret, when set; not kept)");
        pre.textContent = lines.join("\n") + "\n\n" + sent.body;
      } catch (error) {
        pre.textContent = "Could not be read: " + error.message;
      }
    };
    details.addEventListener("toggle", () => {
      if (details.open) {
        openCallbacks.add(a.attempt);
        fill();
      } else openCallbacks.delete(a.attempt);
    });
    if (openCallbacks.has(a.attempt)) details.open = true;
    return details;
  }

  function renderAttempts(attempts, r) {
    const box = document.getElementById("attempts");
    if (attempts.length === 0) {
      const next = r.mode === "async" && !FINAL.has(r.status) ? nextMove(r) : null;
      const text = next ? "No delivery attempt yet: " + next + "." : "No delivery attempt.";
      box.replaceChildren(el("p", { class: "hint", text }));
      return;
    }
    const items = attempts.map((a) => {
      const ok = a.status_code !== null && a.status_code >= 200 && a.status_code < 300;
      const head = el(
        "p",
        { class: "attempt-head" },
        el("strong", { text: "#" + a.attempt }),
        " ",
        el("span", { class: "badge " + (ok ? "status-callback_success" : "status-callback_failed"), text: a.status_code === null ? "no answer" : "HTTP " + a.status_code }),
        " ",
        time(a.started_at) + " · " + round(a.duration_ms) + " ms" + (a.instance ? " · instance " : ""),
        a.instance ? el("code", { text: a.instance }) : null,
      );
      const item = el("li", { class: "attempt" }, head);
      if (a.error) item.append(el("p", { class: "wrap error-text" }, "Error: ", a.error));
      if (a.note) item.append(el("p", { class: "wrap hint" }, a.note));
      // The answer as it came: its headers, a blank line, then the start of its body.
      const answerHeaders = a.response_headers || "";
      const answerBody = a.response_body || "";
      if (answerHeaders || answerBody) {
        item.append(
          el("p", { class: "hint", text: answerHeaders ? "Answer (headers, then the first 1 KiB of the body):" : "Answer (first 1 KiB):" }),
          el("pre", { class: "answer", text: answerHeaders + (answerHeaders && answerBody ? "\n\n" : "") + answerBody }),
        );
      }
      // Only an attempt that reached its receiver sent anything (a timeout may have, or may
      // not have connected).
      if (r.result && (a.status_code !== null || /^timeout/.test(a.error || ""))) {
        item.append(callbackDetails(a, r));
      }
      return item;
    });
    box.replaceChildren(el("ol", { class: "timeline" }, ...items));
  }

  // A button on the detail page that POSTs to /requests/{id}/<action> and reports the answer.
  function setupAction(buttonId, resultId, action, kind, confirmText) {
    const button = document.getElementById(buttonId);
    if (!button) return;
    button.addEventListener("click", async () => {
      const result = document.getElementById(resultId);
      if (confirmText && !window.confirm(confirmText)) return;
      button.disabled = true;
      try {
        const data = await call("POST", "/requests/" + encodeURIComponent(requestId) + "/" + action, kind);
        result.textContent = data.message;
        detailFinal = false;
        lastAction = null;
        await loadDetail();
        lastAction = { result, message: data.message, at: Date.now(), status: shownStatus };
      } catch (error) {
        result.textContent = error.message;
      } finally {
        button.disabled = false;
      }
    });
  }

  function setupRequestActions() {
    setupAction("cancel", "cancel-result", "cancel", "api",
      "Cancel this request? No work starts and no callback is sent after this (but for an attempt already under way).");
    setupAction("redeliver", "redeliver-result", "redeliver", "admin", null);
    setupAction("retry-now", "retry-result", "retry", "admin", null);
  }

  // ---- destinations -----------------------------------------------------------------------
  function destinationButton(action, destination, label) {
    return el("button", { type: "button", "data-action": action, "data-destination": destination, text: label });
  }

  // "20/s, burst 40", marked when it is the default rather than the destination's own.
  function rateText(d) {
    if (!d.rate_limit) return d.rate_limit_own ? "none (its own)" : "—";
    const rate = d.rate_limit.per_second.toLocaleString("en-US") + "/s, burst " + d.rate_limit.burst.toLocaleString("en-US");
    return d.rate_limit_own ? rate : rate + " (default)";
  }

  function heldText(held) {
    if (held === null || held === undefined) return "—";
    return held >= 10000 ? "10,000 or more" : held.toLocaleString("en-US");
  }

  async function loadDestinations() {
    const table = document.querySelector("#destinations tbody");
    if (!table) return;
    try {
      const data = await call("GET", "/destinations", "admin");
      // The rows are drawn again each update: a focused action button keeps its focus.
      const focused = document.activeElement;
      const refocus = focused && table.contains(focused) && focused.dataset.action
        ? [focused.dataset.action, focused.dataset.destination] : null;
      const rows = data.destinations.map((d) => {
        const actions = el("td", { class: "actions" },
          d.paused ? destinationButton("resume", d.destination, "Resume") : destinationButton("pause", d.destination, "Pause"));
        if (d.breaker !== "closed") actions.append(destinationButton("reset", d.destination, "Reset breaker"));
        actions.append(destinationButton("limit", d.destination, "Limit…"));
        return el(
          "tr",
          {},
          el("td", {}, el("a", { href: "/ui/requests?callback_host=" + encodeURIComponent(hostOf(d.destination)) }, d.destination)),
          el("td", {},
            el("span", { class: "badge breaker-" + d.breaker, text: d.breaker }),
            d.paused ? el("span", { class: "badge paused", title: "Paused since " + time(d.paused_at), text: "paused" }) : null,
            d.answered_slowly ? el("span", { class: "badge unhurried",
              title: "An answer in the last five minutes took over a quarter of APP_CALLBACK_SLOW_AFTER_SECONDS: it shares the unproven part of the workers",
              text: "slow answers" }) : null,
            d.retry_after_until ? el("span", { class: "badge held",
              title: "Its receiver answered 429 or 503 with Retry-After: no instance delivers to it before then",
              text: "Retry-After until " + time(d.retry_after_until) }) : null),
          el("td", { text: rateText(d) }),
          el("td", { text: heldText(d.held_jobs) }),
          el("td", { text: String(d.in_flight) }),
          el("td", { text: String(d.recent_successes) }),
          el("td", { text: String(d.recent_failures) }),
          el("td", { text: d.next_probe_at ? time(d.next_probe_at) : "—" }),
          actions,
        );
      });
      if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: "9", class: "hint", text: "No destination delivered to recently, and none paused or limited." })));
      table.replaceChildren(...rows);
      if (refocus) {
        const again = [...table.querySelectorAll("button[data-action]")].find(
          (b) => b.dataset.destination === refocus[1]);
        if (again) again.focus();
      }
    } catch (error) {
      report(error);
    }
  }

  const DESTINATION_DONE = { pause: "paused: its jobs wait until it is resumed", resume: "resumed", reset: "breaker reset" };

  // Sets (`set`, from the form's fields), takes off (`none`) or forgets (`default`) a
  // destination's own rate limit.
  async function limitDestination(how, destination) {
    const result = document.getElementById("destination-result");
    const path = "/destinations/" + encodeURIComponent(destination) + "/limits";
    try {
      let view;
      if (how === "default") {
        view = await call("DELETE", path, "admin");
      } else if (how === "none") {
        view = await call("PUT", path, "admin", { per_second: null });
      } else {
        const perSecond = document.getElementById("limit-per-second").value;
        const burst = document.getElementById("limit-burst").value;
        const body = { per_second: Number(perSecond) };
        if (burst !== "") body.burst = Number(burst);
        view = await call("PUT", path, "admin", body);
      }
      result.textContent = view.destination + ": " + (view.rate_limit
        ? "at most " + rateText(view) + ", on every instance."
        : view.rate_limit_own ? "no limit." : "no limit (the default).");
      await loadDestinations();
      return true;
    } catch (error) {
      result.textContent = error.message;
      return false;
    }
  }

  // The destination of a URL typed or pasted whole: its scheme, host and port only (the
  // path and query, which may hold a secret, never leave the page).
  function destinationOf(text) {
    try {
      const url = new URL(text);
      if (url.protocol === "http:" || url.protocol === "https:") return url.protocol + "//" + url.host;
    } catch (_) {
      // not a URL: refused below
    }
    return null;
  }

  async function controlDestination(action, destination) {
    const result = document.getElementById("destination-result");
    if (action === "pause" && !window.confirm("Pause " + destination + "? No job of it starts or is delivered, on any instance, until it is resumed.")) return false;
    try {
      const view = await call("POST", "/destinations/" + encodeURIComponent(destination) + "/" + action, "admin");
      result.textContent = view.destination + " " + DESTINATION_DONE[action] + ".";
      await loadDestinations();
      return true;
    } catch (error) {
      result.textContent = error.message;
      return false;
    }
  }

  function setupDestinations() {
    const table = document.querySelector("#destinations tbody");
    if (!table) return;
    table.addEventListener("click", async (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      if (button.dataset.action === "limit") {
        document.getElementById("limit-destination").value = button.dataset.destination;
        document.getElementById("limit-per-second").focus();
        return;
      }
      button.disabled = true;
      await controlDestination(button.dataset.action, button.dataset.destination);
      button.disabled = false;
    });
    const form = document.getElementById("pause-form");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = document.getElementById("pause-destination");
      const destination = destinationOf(input.value.trim());
      if (!destination) {
        document.getElementById("destination-result").textContent =
          "Give the destination as https://host:port (or a callback URL: only its scheme, host and port are sent).";
        return;
      }
      if (await controlDestination("pause", destination)) input.value = "";
    });
    const limits = document.getElementById("limit-form");
    const limit = async (how) => {
      const destination = destinationOf(document.getElementById("limit-destination").value.trim());
      if (!destination) {
        document.getElementById("destination-result").textContent =
          "Give the destination as https://host:port (or a callback URL: only its scheme, host and port are sent).";
        return;
      }
      await limitDestination(how, destination);
    };
    limits.addEventListener("submit", (event) => {
      event.preventDefault();
      limit("set");
    });
    for (const button of limits.querySelectorAll("button[type=button][data-limit]")) {
      button.addEventListener("click", () => limit(button.dataset.limit));
    }
  }

  // ---- wiring -------------------------------------------------------------------------------
  // The list, a request and the destinations are read again only when something may have
  // changed: this instance did work in the last second, the status counts (every
  // instance's) moved, or half a minute passed. An open, idle dashboard then reads nothing
  // and leaves no line a second in the access log.
  let lastCounts = null;
  let lastRead = 0;

  function somethingChanged(update) {
    const point = update.point || {};
    const failures = Object.values(point.failures_per_s || {}).reduce((a, b) => a + b, 0);
    const busy = (point.sync_per_s || 0) + (point.async_per_s || 0) + (point.batch_calls_per_s || 0) +
      (point.delivered_per_s || 0) + failures + (point.in_flight || 0) > 0;
    const counts = JSON.stringify(update.status_counts);
    const changed = busy || counts !== lastCounts || Date.now() - lastRead > 30000;
    lastCounts = counts;
    if (changed) lastRead = Date.now();
    return changed;
  }

  function refreshAll() {
    if (page === "overview") loadOverview().catch(report);
    else if (page === "requests") {
      // "Live" off holds the page, but for its first load.
      const follow = document.getElementById("follow-live");
      if (!follow || follow.checked || !listLoaded) loadList();
    }
    else if (page === "request") loadDetail();
    else if (page === "destinations" && adminEnabled) loadDestinations();
  }

  function onUpdate(update) {
    if (page === "overview") {
      renderCounts(update.status_counts);
      if (Date.now() - attentionAt > 5000) loadAttention(update.status_counts);
      if (update.point && (!points.length || update.point.at > points[points.length - 1].at)) {
        points.push(update.point);
        const start = Date.now() - WINDOW_MS;
        while (points.length && points[0].at < start) points.shift();
        renderCharts();
      }
    } else if (!somethingChanged(update)) {
      return;
    } else if (page === "requests") {
      // Only the first page (of either order) follows the stream, while "Live" is on; a later
      // page stays put while it is read.
      const follow = document.getElementById("follow-live");
      if (follow && !follow.checked) return;
      const here = new URLSearchParams(window.location.search);
      if (!here.get("before") && !here.get("after")) loadListRested();
    } else if (page === "request") {
      if (!detailFinal) loadDetail();
    } else if (page === "destinations" && adminEnabled) {
      loadDestinations();
    }
  }

  setupTokenForm();
  setupZoneSwitch();
  setupChartRange();
  if (page === "requests") {
    const follow = document.getElementById("follow-live");
    if (follow) follow.addEventListener("change", () => { if (follow.checked) loadList(); });
    fillFilterForm();
    setupBulk();
    setupSelection();
  }
  if (page === "request") setupRequestActions();
  if (page === "destinations" && adminEnabled) setupDestinations();
  refreshAll();
  startStream();
})();
