// Logs page: drag across the histogram to narrow the range, and live tail. The page works
// without this script (bars are links, "load more" is a link).
"use strict";
(function () {
  const { el, jsonData, svcClass } = window.obsbox;
  const state = jsonData("logs-state");

  // ---- histogram drag-to-select ----
  const svg = document.getElementById("histogram");
  if (svg) {
    const NS = "http://www.w3.org/2000/svg";
    const t0 = Number(svg.dataset.t0), t1 = Number(svg.dataset.t1);
    const x0 = Number(svg.dataset.x0), x1 = Number(svg.dataset.x1);
    let start = null, sel = null, dragged = false;
    const toView = (clientX) => {
      const b = svg.getBoundingClientRect();
      return Math.min(x1, Math.max(x0, ((clientX - b.left) / b.width) * 1000));
    };
    const toTime = (vx) => t0 + ((vx - x0) / (x1 - x0)) * (t1 - t0);
    // datetime-local style UTC text, the format of the page's from/to
    const fmt = (ns) => new Date(ns / 1e6).toISOString().slice(0, 19);
    svg.addEventListener("mousedown", (e) => {
      if (e.button !== 0) return;
      e.preventDefault();
      start = toView(e.clientX);
      dragged = false;
      sel = document.createElementNS(NS, "rect");
      sel.setAttribute("class", "selection");
      sel.setAttribute("y", "8");
      sel.setAttribute("height", "92");
      sel.setAttribute("x", String(start));
      sel.setAttribute("width", "0");
      svg.appendChild(sel);
    });
    window.addEventListener("mousemove", (e) => {
      if (start === null) return;
      const x = toView(e.clientX);
      if (Math.abs(x - start) > 3) dragged = true;
      sel.setAttribute("x", String(Math.min(x, start)));
      sel.setAttribute("width", String(Math.abs(x - start)));
    });
    window.addEventListener("mouseup", (e) => {
      if (start === null) return;
      const x = toView(e.clientX);
      const a = Math.min(x, start), b = Math.max(x, start);
      start = null;
      sel.remove();
      if (!dragged) return; // a click: the bar's link handles it
      const from = Math.floor(toTime(a) / 1e9) * 1e9, to = Math.ceil(toTime(b) / 1e9) * 1e9;
      const params = new URLSearchParams(location.search);
      params.delete("range");
      params.delete("cursor");
      params.set("from", fmt(from));
      params.set("to", fmt(Math.max(to, from + 1e9)));
      location.assign("/logs?" + params.toString());
    });
    // after a drag, the click that follows must not open the bar under the pointer
    svg.addEventListener("click", (e) => {
      if (dragged) {
        e.preventDefault();
        dragged = false;
      }
    });
  }

  // ---- load more: append the next page in place (the link alone opens that page) ----
  const more = document.getElementById("load-more");
  if (more) {
    more.addEventListener("click", async (e) => {
      e.preventDefault();
      more.textContent = "Loading…";
      try {
        const r = await fetch(more.href, { headers: { Accept: "text/html" } });
        if (!r.ok) throw new Error("HTTP " + r.status);
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        const target = document.getElementById("log-list");
        for (const d of doc.querySelectorAll("#log-list details.log")) target.append(document.adoptNode(d));
        const next = doc.getElementById("load-more");
        if (next) {
          more.href = next.getAttribute("href");
          more.textContent = "Load more";
        } else {
          more.remove();
        }
      } catch (err) {
        more.textContent = "Load more (failed: " + err.message + ")";
      }
    });
  }

  // ---- live tail ----
  const button = document.getElementById("live");
  const status = document.getElementById("live-status");
  const list = document.getElementById("log-list");
  if (!state || !button || !list || !state.at_head) return;
  button.classList.remove("hidden");

  const MAX_ROWS = 2000;
  let newest = BigInt(state.newest_ns);
  const seenAtNewest = new Set();
  for (const d of list.querySelectorAll("details.log")) {
    if (BigInt(d.dataset.time) === newest) seenAtNewest.add(d.dataset.key || "");
  }
  let timer = null, busy = false;

  function anyText(v) {
    if (!v) return "";
    if ("stringValue" in v) return v.stringValue;
    if ("intValue" in v) return String(v.intValue);
    if ("doubleValue" in v) return String(v.doubleValue);
    if ("boolValue" in v) return String(v.boolValue);
    if ("bytesValue" in v) return String(v.bytesValue);
    if ("arrayValue" in v) return "[" + (v.arrayValue.values || []).map(anyText).join(", ") + "]";
    if ("kvlistValue" in v)
      return "{" + (v.kvlistValue.values || []).map((kv) => kv.key + ": " + anyText(kv.value)).join(", ") + "}";
    return "";
  }
  function sevClass(n, text) {
    if (n >= 1 && n <= 4) return "trace";
    if (n >= 5 && n <= 8) return "debug";
    if (n >= 9 && n <= 12) return "info";
    if (n >= 13 && n <= 16) return "warn";
    if (n >= 17 && n <= 20) return "error";
    if (n >= 21 && n <= 24) return "fatal";
    const t = (text || "").toLowerCase();
    if (t === "trace" || t === "debug" || t === "info" || t === "fatal") return t;
    if (t === "warn" || t === "warning") return "warn";
    if (t === "error" || t === "err") return "error";
    return "unset";
  }
  function displayTime(ns) {
    const ms = Number(ns / 1000000n);
    return new Date(ms).toISOString().replace("T", " ").replace("Z", "");
  }
  function kvTable(caption, pairs) {
    const t = el("table", { class: "kv" }, el("caption", {}, caption));
    if (pairs.length === 0) t.append(el("tr", {}, el("td", { class: "muted" }, "none")));
    for (const [k, v] of pairs) t.append(el("tr", {}, el("th", {}, k), el("td", {}, v)));
    return t;
  }
  const attrs = (list) => (list || []).map((kv) => [kv.key, anyText(kv.value)]);

  function row(log) {
    const r = log.record;
    const n = Number(r.severityNumber || 0);
    const cls = sevClass(n, r.severityText);
    const sevLabel = r.severityText || (cls === "unset" ? "–" : cls.toUpperCase());
    const body = anyText(r.body);
    const t = BigInt(log.timeUnixNano);
    const fields = [
      ["time", displayTime(BigInt(r.timeUnixNano || 0))],
      ["observed time", displayTime(BigInt(r.observedTimeUnixNano || 0))],
      ["severity number", String(n)],
      ["severity text", r.severityText || ""],
    ];
    if (log.traceId) fields.push(["trace id", log.traceId]);
    if (log.spanId) fields.push(["span id", log.spanId]);
    const detail = el("div", { class: "log-detail" });
    if (log.traceId) {
      const href = "/trace/" + log.traceId + (log.spanId ? "?span=" + log.spanId : "");
      detail.append(
        el("p", {}, el("a", { class: "trace-link", href }, "Open trace " + log.traceId + (log.spanId ? " at span " + log.spanId : ""))),
      );
    }
    detail.append(
      el("pre", { class: "log-full" }, body),
      el(
        "div",
        { class: "kv-columns" },
        kvTable("Record", fields),
        kvTable("Attributes", attrs(r.attributes)),
        kvTable("Resource", attrs(log.resource && log.resource.attributes)),
      ),
    );
    const d = el(
      "details",
      { class: "log new sev-row-" + cls, "data-time": t.toString() },
      el(
        "summary",
        {},
        el("span", { class: "log-time mono" }, displayTime(t)),
        el("span", { class: "sev sev-" + cls }, sevLabel),
        el("span", { class: "svc-tag " + svcClass(log.service) }, log.service),
        el("span", { class: "log-body" }, body),
      ),
      detail,
    );
    return d;
  }
  const keyOf = (log) => log.timeUnixNano + "|" + log.service + "|" + anyText(log.record.body);

  async function poll() {
    if (busy) return;
    busy = true;
    try {
      const p = new URLSearchParams();
      if (state.query) p.set("query", state.query);
      p.set("start", newest.toString());
      p.set("limit", "500");
      const r = await fetch("/api/v1/logs?" + p.toString(), { headers: { Accept: "application/json" } });
      if (!r.ok) {
        status.textContent = "live tail stopped: " + ((await r.json().catch(() => null)) || {}).error;
        stop();
        return;
      }
      const data = await r.json();
      const fresh = [];
      for (const log of data.logs) {
        const t = BigInt(log.timeUnixNano);
        if (t < newest || (t === newest && seenAtNewest.has(keyOf(log)))) continue;
        fresh.push(log);
      }
      if (fresh.length > 0) {
        const empty = list.querySelector(".empty");
        if (empty) empty.remove();
        // the API answers newest first: insert oldest first so the newest ends on top
        for (const log of fresh.reverse()) {
          const t = BigInt(log.timeUnixNano);
          if (t > newest) {
            newest = t;
            seenAtNewest.clear();
          }
          seenAtNewest.add(keyOf(log));
          list.prepend(row(log));
        }
        while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
      }
      status.textContent = "live · " + new Date().toISOString().slice(11, 19) + " UTC · " + fresh.length + " new";
    } catch (e) {
      status.textContent = "live tail: " + e.message;
    } finally {
      busy = false;
    }
  }
  function startTail() {
    button.setAttribute("aria-pressed", "true");
    button.textContent = "❚❚ Pause";
    poll();
    timer = setInterval(poll, 1000);
  }
  function stop() {
    clearInterval(timer);
    timer = null;
    button.setAttribute("aria-pressed", "false");
    button.textContent = "▶ Live tail";
  }
  button.addEventListener("click", () => (timer ? stop() : startTail()));
})();
