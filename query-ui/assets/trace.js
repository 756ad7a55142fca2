// The trace view's client side: virtualised waterfall, minimap with drag-to-zoom, span detail
// with inline logs, search, critical path, flame graph and statistics view.
//
// Data comes from /trace/{id}/data (see query-ui/src/ui/trace/model.rs for the layout: spans in
// depth-first order, so a subtree is the range pos .. pos + size). Untrusted text (names,
// attributes, log bodies) only ever reaches the DOM as text nodes (obsbox.el / textContent).
// State lives in the URL: span, view, q, from, to, collapsed.
"use strict";
(function () {
  const app = document.getElementById("trace-app");
  if (!app || !window.obsbox) return;
  const { el, fmtDuration, svcClass } = window.obsbox;
  document.body.classList.add("has-js");

  // Span row fields (SpanRow in model.rs).
  const F_ID = 0, F_DEPTH = 1, F_SIZE = 2, F_PARENT = 3, F_RES = 4, F_SCOPE = 5, F_NAME = 6, F_KIND = 7,
    F_START = 8, F_DUR = 9, F_SELF = 10, F_STATUS = 11, F_MSG = 12, F_CRIT = 13, F_ATTRS = 14, F_EVENTS = 15,
    F_LINKS = 16;
  const ROW_H = 22;
  const OVERSCAN = 12;
  const KINDS = ["unspecified", "internal", "server", "client", "producer", "consumer"];
  const MAX_URL_COLLAPSED = 200;

  const traceId = app.dataset.trace;
  const params = new URLSearchParams(location.search);
  const state = {
    view: ["waterfall", "flame", "stats"].includes(params.get("view")) ? params.get("view") : "waterfall",
    q: params.get("q") || "",
    from: clamp01(parseFloat(params.get("from") || "0")),
    to: clamp01(parseFloat(params.get("to") || "1")),
    selected: -1,
    crit: params.get("crit") !== "0",
  };
  if (!(state.to > state.from)) { state.from = 0; state.to = 1; }

  let data = null, spans = null, strings = null, n = 0, total = 1;
  let collapsed = null; // Uint8Array by position
  let visible = new Int32Array(0); // positions shown, in order
  let rowOf = null; // Int32Array position -> index in visible, -1 when hidden
  let matches = null; // Uint8Array by position, null when no search
  let matchCount = 0;
  let haystacks = null;
  let posById = null;

  // Position of a span id, -1 when not in the trace; the index is built on first use.
  function posOf(id) {
    if (!posById) {
      posById = new Map();
      for (let i = 0; i < n; i++) posById.set(spans[i][F_ID], i);
    }
    const p = posById.get(id);
    return p === undefined ? -1 : p;
  }

  function clamp01(x) { return isFinite(x) ? Math.min(1, Math.max(0, x)) : 0; }
  function str(i) { return strings[i] || ""; }
  function serviceOf(s) { return str(data.resources[s[F_RES]].service); }
  // Colour class per resource, computed once (svcClass hashes the name each time).
  let resClass = [];
  function classOf(s) { return resClass[s[F_RES]]; }

  // ---- loading ---------------------------------------------------------------------------
  performance.mark("trace-js-start");
  fetch("/trace/" + traceId + "/data", { credentials: "same-origin" })
    .then((r) => {
      if (!r.ok) throw new Error("loading the trace failed: HTTP " + r.status);
      return r.json();
    })
    .then((d) => {
      performance.mark("trace-data-parsed");
      init(d);
    })
    .catch((e) => {
      document.body.classList.remove("has-js");
      app.hidden = false;
      app.replaceChildren(el("div", { class: "problem" }, String(e.message || e)));
    });

  // ---- DOM skeleton ------------------------------------------------------------------------
  let ui = {};
  function buildSkeleton() {
    const tab = (view, label) => {
      const b = el("button", { type: "button", "data-view": view }, label);
      b.addEventListener("click", () => setView(view));
      return b;
    };
    ui.tabs = el("span", { class: "tabs" }, tab("waterfall", "Waterfall"), tab("flame", "Flame graph"), tab("stats", "Statistics"));
    ui.search = el("input", { class: "search", type: "search", placeholder: "Search spans: name, service, attribute, id", value: state.q });
    ui.count = el("span", { class: "count" });
    ui.prevMatch = el("button", { type: "button", title: "previous match" }, "↑");
    ui.nextMatch = el("button", { type: "button", title: "next match (Enter)" }, "↓");
    ui.expandAll = el("button", { type: "button" }, "Expand all");
    ui.collapseAll = el("button", { type: "button" }, "Collapse all");
    ui.resetZoom = el("button", { type: "button", title: "show the whole trace" }, "Reset zoom");
    ui.critBox = el("input", { type: "checkbox" });
    ui.critBox.checked = state.crit;
    ui.traceLogsBtn = el("button", { type: "button", class: "trace-logs-btn" }, "Trace logs");
    const toolbar = el("div", { class: "toolbar" }, ui.tabs, ui.search, ui.count, ui.prevMatch, ui.nextMatch,
      el("span", { class: "spacer" }), el("label", { class: "check" }, ui.critBox, "critical path"),
      ui.expandAll, ui.collapseAll, ui.resetZoom, ui.traceLogsBtn);

    ui.miniCanvas = el("canvas");
    ui.miniWindow = el("div", { class: "window" });
    ui.miniDrag = el("div", { class: "drag", hidden: "" });
    ui.minimap = el("div", { class: "minimap", title: "drag to zoom into a time range" }, ui.miniCanvas, ui.miniWindow, ui.miniDrag);

    ui.axis = el("div", { class: "axis", title: "drag to zoom" });
    ui.head = el("div", { class: "wf-head" }, el("div", { class: "name-col" }, "Service & operation"), ui.axis);
    ui.spacer = el("div", { class: "wf-spacer" });
    ui.grid = el("div", { class: "wf-grid" });
    ui.body = el("div", { class: "wf-body" }, ui.grid, ui.spacer);
    ui.wf = el("div", { class: "wf" }, ui.head, ui.body);
    ui.flame = el("div", { class: "flame", hidden: "" });
    ui.stats = document.getElementById("trace-stats");
    ui.views = el("div", { class: "views" }, ui.wf, ui.flame);
    if (ui.stats) ui.views.append(ui.stats);
    ui.detail = el("aside", { class: "detail", hidden: "" });
    ui.main = el("div", { class: "trace-main" }, ui.views, ui.detail);
    ui.traceLogs = el("section", { class: "trace-logs panel", hidden: "" });
    app.replaceChildren(toolbar, ui.minimap, ui.main, ui.traceLogs);
    app.hidden = false;
  }

  // ---- init --------------------------------------------------------------------------------
  function init(d) {
    data = d;
    spans = d.spans;
    strings = d.strings;
    n = spans.length;
    total = Math.max(1, d.durationNs);
    resClass = d.resources.map((r) => svcClass(str(r.service)));
    collapsed = new Uint8Array(n);
    rowOf = new Int32Array(n);
    const c = params.get("collapsed");
    if (c) for (const id of c.split(",")) { const p = posOf(id); if (p >= 0 && spans[p][F_SIZE] > 1) collapsed[p] = 1; }
    const sel = params.get("span");
    if (sel && posOf(sel) >= 0) state.selected = posOf(sel);

    buildSkeleton();
    wire();
    computeVisible();
    if (state.q) runSearch(false);
    setView(state.view, true);
    if (state.selected >= 0) {
      revealPos(state.selected);
      scrollToPos(state.selected, true);
      showDetail(state.selected);
    }
    requestAnimationFrame(() => {
      performance.mark("trace-ready");
      window.obsboxTrace = Object.assign(window.obsboxTrace || {}, { ready: performance.now(), spans: n });
      // The minimap is not needed for the first rows: draw it right after them.
      setTimeout(drawMinimap, 0);
    });
  }

  function wire() {
    ui.body.addEventListener("scroll", () => scheduleRender(), { passive: true });
    window.addEventListener("resize", () => { drawMinimap(); renderAll(); if (state.view === "flame") renderFlame(); });
    ui.body.addEventListener("click", onRowClick);
    let timer = 0;
    ui.search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { state.q = ui.search.value; runSearch(true); }, 150);
    });
    ui.search.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); clearTimeout(timer); if (state.q !== ui.search.value) { state.q = ui.search.value; runSearch(true); } gotoMatch(e.shiftKey ? -1 : 1); }
    });
    ui.nextMatch.addEventListener("click", () => gotoMatch(1));
    ui.prevMatch.addEventListener("click", () => gotoMatch(-1));
    ui.expandAll.addEventListener("click", () => { collapsed.fill(0); computeVisible(); renderAll(); saveUrl(); });
    ui.collapseAll.addEventListener("click", () => {
      for (let i = 0; i < n; i++) collapsed[i] = spans[i][F_SIZE] > 1 && spans[i][F_DEPTH] > 0 ? 1 : 0;
      computeVisible(); renderAll(); saveUrl();
    });
    ui.resetZoom.addEventListener("click", () => setZoom(0, 1));
    ui.critBox.addEventListener("change", () => { state.crit = ui.critBox.checked; applyCrit(); saveUrl(); });
    ui.traceLogsBtn.addEventListener("click", toggleTraceLogs);
    dragZoom(ui.minimap, ui.miniDrag, (a, b) => setZoom(a, b), false);
    dragZoom(ui.axis, null, (a, b) => setZoom(state.from + a * (state.to - state.from), state.from + b * (state.to - state.from)), true);
    applyCrit();
    document.addEventListener("keydown", onKey);
  }

  // Keys: ↓/j and ↑/k move the selection, ←/→ collapse/expand it, Esc closes the detail,
  // / focuses the search.
  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) {
      if (e.key === "Escape") t.blur();
      return;
    }
    if (e.key === "/") { e.preventDefault(); ui.search.focus(); return; }
    if (e.key === "Escape") { if (state.selected >= 0) select(-1); return; }
    if (state.view !== "waterfall") return;
    const k = state.selected >= 0 ? rowOf[state.selected] : -1;
    let next = -1;
    if (e.key === "ArrowDown" || e.key === "j") next = Math.min(visible.length - 1, k + 1);
    else if (e.key === "ArrowUp" || e.key === "k") next = Math.max(0, k - 1);
    else if ((e.key === "ArrowLeft" || e.key === "ArrowRight") && state.selected >= 0 && spans[state.selected][F_SIZE] > 1) {
      if ((e.key === "ArrowLeft") !== !!collapsed[state.selected]) toggle(state.selected);
      e.preventDefault();
      return;
    } else return;
    e.preventDefault();
    if (next < 0 || next >= visible.length) return;
    const pos = visible[next];
    scrollToPos(pos, false);
    renderRows(false);
    select(pos);
  }

  function applyCrit() { app.classList.toggle("show-crit", state.crit); }

  // ---- URL state ---------------------------------------------------------------------------
  function saveUrl() {
    const p = new URLSearchParams();
    if (state.selected >= 0) p.set("span", spans[state.selected][F_ID]);
    if (state.view !== "waterfall") p.set("view", state.view);
    if (state.q) p.set("q", state.q);
    if (state.from > 0 || state.to < 1) { p.set("from", state.from.toFixed(6)); p.set("to", state.to.toFixed(6)); }
    if (!state.crit) p.set("crit", "0");
    const ids = [];
    for (let i = 0; i < n && ids.length <= MAX_URL_COLLAPSED; i++) if (collapsed[i]) ids.push(spans[i][F_ID]);
    if (ids.length > 0 && ids.length <= MAX_URL_COLLAPSED) p.set("collapsed", ids.join(","));
    const qs = p.toString();
    const url = location.pathname + (qs ? "?" + qs : "") + location.hash;
    if (url !== location.pathname + location.search + location.hash) history.replaceState(null, "", url);
  }

  // ---- views -------------------------------------------------------------------------------
  function setView(view, initial) {
    state.view = view;
    for (const b of ui.tabs.children) b.classList.toggle("active", b.dataset.view === view);
    ui.wf.hidden = view !== "waterfall";
    ui.flame.hidden = view !== "flame";
    app.classList.toggle("view-stats", view === "stats");
    ui.minimap.hidden = view === "stats";
    if (view === "waterfall") renderAll();
    if (view === "flame") renderFlame();
    if (!initial) saveUrl();
  }

  // ---- visible rows ------------------------------------------------------------------------
  function computeVisible() {
    const out = new Int32Array(n);
    rowOf.fill(-1);
    let k = 0;
    for (let i = 0; i < n;) {
      rowOf[i] = k;
      out[k++] = i;
      i += collapsed[i] ? spans[i][F_SIZE] : 1;
    }
    visible = out.subarray(0, k);
    ui.spacer.style.height = k * ROW_H + "px";
  }

  function toggle(pos) {
    collapsed[pos] = collapsed[pos] ? 0 : 1;
    computeVisible();
    renderAll();
    saveUrl();
  }

  // Expands every collapsed ancestor of pos.
  function revealPos(pos) {
    let changed = false;
    for (let p = spans[pos][F_PARENT]; p >= 0; p = spans[p][F_PARENT]) {
      if (collapsed[p]) { collapsed[p] = 0; changed = true; }
    }
    if (changed) computeVisible();
    return changed;
  }

  function scrollToPos(pos, center) {
    const k = rowOf[pos];
    if (k < 0) return;
    const top = k * ROW_H, h = ui.body.clientHeight;
    if (center) ui.body.scrollTop = Math.max(0, top - h / 2);
    else if (top < ui.body.scrollTop) ui.body.scrollTop = top;
    else if (top + ROW_H > ui.body.scrollTop + h) ui.body.scrollTop = top + ROW_H - h;
  }

  // ---- rendering ---------------------------------------------------------------------------
  const rendered = new Map(); // position -> row element
  let frame = 0;
  function scheduleRender() {
    if (frame) return;
    frame = requestAnimationFrame(() => { frame = 0; renderRows(false); });
  }
  function renderAll() {
    if (state.view !== "waterfall" || !spans) return;
    renderAxis();
    renderRows(true);
  }

  function x(offset) { return (offset / total - state.from) / (state.to - state.from); }
  function pct(v) { return (v * 100).toFixed(4) + "%"; }

  function renderRows(force) {
    const top = ui.body.scrollTop, h = ui.body.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(visible.length, Math.ceil((top + h) / ROW_H) + OVERSCAN);
    const want = new Set();
    for (let k = first; k < last; k++) want.add(visible[k]);
    for (const [pos, row] of rendered) {
      if (force || !want.has(pos) || rowOf[pos] < 0) { row.remove(); rendered.delete(pos); }
    }
    const frag = document.createDocumentFragment();
    for (let k = first; k < last; k++) {
      const pos = visible[k];
      if (rendered.has(pos)) continue;
      const row = buildRow(pos);
      row.style.top = k * ROW_H + "px";
      rendered.set(pos, row);
      frag.append(row);
    }
    ui.body.append(frag);
  }

  function buildRow(pos) {
    const s = spans[pos];
    const service = serviceOf(s);
    const cls = ["row", classOf(s)];
    if (s[F_STATUS] === 2) cls.push("err");
    if (s[F_CRIT]) cls.push("crit");
    if (pos === state.selected) cls.push("selected");
    if (matches) cls.push(matches[pos] ? "match" : "dim");
    const row = el("div", { class: cls.join(" "), "data-pos": pos, "data-span": s[F_ID] });
    const name = el("div", { class: "name-cell" });
    name.style.paddingLeft = 4 + Math.min(s[F_DEPTH], 60) * 14 + "px";
    if (s[F_SIZE] > 1) {
      name.append(el("button", { type: "button", class: "tog", title: collapsed[pos] ? "expand" : "collapse", "aria-expanded": collapsed[pos] ? "false" : "true" }, collapsed[pos] ? "▶" : "▼"));
    } else {
      name.append(el("span", { class: "leaf" }));
    }
    name.append(el("span", { class: "svc-dot " + classOf(s) }), el("span", { class: "svc" }, service), el("span", { class: "op" }, str(s[F_NAME])));
    if (collapsed[pos]) name.append(el("span", { class: "kids" }, "+" + (s[F_SIZE] - 1)));
    const tl = el("div", { class: "tl-cell" });
    const a = x(s[F_START]), b = x(s[F_START] + s[F_DUR]);
    // Outside the zoomed range (a span that only touches its edge too, unless zero-length).
    const outside = b < 0 || a > 1 || (b > a && (b <= 0 || a >= 1));
    if (!outside) {
      const bar = el("div", { class: "bar" });
      const left = Math.max(0, a), right = Math.min(1, b);
      bar.style.left = pct(left);
      bar.style.width = pct(Math.max(0, right - left));
      tl.append(bar);
      for (const ev of s[F_EVENTS]) {
        const ex = x(ev[0]);
        if (ex < 0 || ex > 1) continue;
        const m = el("span", { class: "ev" + (str(ev[1]) === "exception" ? " exc" : ""), title: str(ev[1]) + " at " + fmtDuration(ev[0]) });
        m.style.left = pct(ex);
        tl.append(m);
      }
      const label = el("span", { class: "dur" }, fmtDuration(s[F_DUR]));
      if (right > 0.85) { label.style.right = pct(1 - left); label.style.marginRight = "4px"; }
      else { label.style.left = pct(right); label.style.marginLeft = "4px"; }
      tl.append(label);
    }
    row.append(name, tl);
    return row;
  }

  function niceStep(range, count) {
    const raw = range / count;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
    return 10 * p;
  }

  function renderAxis() {
    const a = state.from * total, b = state.to * total;
    const step = niceStep(Math.max(1, b - a), 6);
    const ticks = [], lines = [];
    for (let t = Math.ceil(a / step) * step; t <= b + 1e-9; t += step) {
      const fx = (t - a) / (b - a);
      const tick = el("span", { class: "tick" + (fx > 0.95 ? " end" : "") }, fmtDuration(Math.round(t)));
      tick.style.left = pct(fx);
      ticks.push(tick);
      const gl = el("div", { class: "gl" });
      gl.style.left = pct(fx);
      lines.push(gl);
    }
    const drag = el("div", { class: "drag", hidden: "" });
    ui.axis.replaceChildren(...ticks, drag);
    ui.axisDrag = drag;
    ui.grid.replaceChildren(...lines);
  }

  function onRowClick(e) {
    const row = e.target.closest(".row");
    if (!row) return;
    const pos = Number(row.dataset.pos);
    if (e.target.closest(".tog")) { e.stopPropagation(); toggle(pos); return; }
    // When the first click arrived (event time, same clock as performance.now()).
    if (window.obsboxTrace && !window.obsboxTrace.clickAt) window.obsboxTrace.clickAt = e.timeStamp;
    select(pos === state.selected ? -1 : pos);
  }

  function select(pos) {
    const old = state.selected;
    state.selected = pos;
    for (const p of [old, pos]) {
      const r = rendered.get(p);
      if (r) r.classList.toggle("selected", p === pos && pos >= 0);
    }
    const wasOpen = !ui.detail.hidden;
    if (pos >= 0) showDetail(pos); else ui.detail.hidden = true;
    if (state.view === "flame") {
      // The panel takes width from the graph: redraw to the new width when it opens or closes.
      if (wasOpen !== !ui.detail.hidden) renderFlame();
      for (const f of ui.flame.querySelectorAll(".fnode.selected")) f.classList.remove("selected");
      const f = ui.flame.querySelector('.fnode[data-pos="' + pos + '"]');
      if (f) f.classList.add("selected");
    }
    saveUrl();
  }

  // ---- zoom & minimap ----------------------------------------------------------------------
  function setZoom(a, b) {
    a = clamp01(a); b = clamp01(b);
    if (b - a < 1e-6) return;
    state.from = a; state.to = b;
    drawMinimapWindow();
    if (state.view === "waterfall") renderAll();
    if (state.view === "flame") renderFlame();
    saveUrl();
  }

  // Pointer drag on `target` selecting a fraction range of its width; `relative` for the axis.
  function dragZoom(target, overlay, done) {
    let x0 = null;
    target.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      x0 = e.clientX;
      target.setPointerCapture(e.pointerId);
      e.preventDefault();
    });
    target.addEventListener("pointermove", (e) => {
      if (x0 === null) return;
      const ov = overlay || ui.axisDrag;
      if (!ov) return;
      const r = target.getBoundingClientRect();
      const a = Math.min(x0, e.clientX) - r.left, b = Math.max(x0, e.clientX) - r.left;
      ov.hidden = false;
      ov.style.left = Math.max(0, a) + "px";
      ov.style.width = Math.max(0, Math.min(r.width, b) - Math.max(0, a)) + "px";
    });
    target.addEventListener("pointerup", (e) => {
      if (x0 === null) return;
      const r = target.getBoundingClientRect();
      const a = (Math.min(x0, e.clientX) - r.left) / r.width, b = (Math.max(x0, e.clientX) - r.left) / r.width;
      const wasDrag = Math.abs(e.clientX - x0) > 3;
      x0 = null;
      const ov = overlay || ui.axisDrag;
      if (ov) ov.hidden = true;
      if (wasDrag) done(clamp01(a), clamp01(b));
    });
  }

  let svcColours = null;
  function colourOf(cls) {
    if (!svcColours) svcColours = new Map();
    if (!svcColours.has(cls)) {
      const probe = el("span", { class: cls });
      document.body.append(probe);
      svcColours.set(cls, getComputedStyle(probe).getPropertyValue("--svc").trim() || "#888");
      probe.remove();
    }
    return svcColours.get(cls);
  }

  function drawMinimap() {
    if (!spans) return;
    const c = ui.miniCanvas, w = c.clientWidth || 800, h = c.clientHeight || 52, dpr = window.devicePixelRatio || 1;
    c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    // Group by colour to limit fillStyle switches.
    const byColour = new Map();
    for (let i = 0; i < n; i++) {
      const cls = classOf(spans[i]);
      let list = byColour.get(cls);
      if (!list) byColour.set(cls, (list = []));
      list.push(i);
    }
    const rowH = Math.max(h / Math.max(n, 1), 0.25);
    for (const [cls, list] of byColour) {
      g.fillStyle = colourOf(cls);
      for (const i of list) {
        const s = spans[i];
        g.fillRect((s[F_START] / total) * w, (i / n) * h, Math.max(1, (s[F_DUR] / total) * w), Math.max(rowH, 1));
      }
    }
    g.fillStyle = "#d0343a";
    for (let i = 0; i < n; i++) if (spans[i][F_STATUS] === 2) g.fillRect((spans[i][F_START] / total) * w, (i / n) * h, 2, 2);
    drawMinimapWindow();
  }

  function drawMinimapWindow() {
    const zoomed = state.from > 0 || state.to < 1;
    ui.miniWindow.hidden = !zoomed;
    ui.miniWindow.style.left = pct(state.from);
    ui.miniWindow.style.width = pct(state.to - state.from);
  }

  // ---- search ------------------------------------------------------------------------------
  function buildHaystacks() {
    haystacks = new Array(n);
    for (let i = 0; i < n; i++) {
      const s = spans[i];
      const parts = [str(s[F_NAME]), serviceOf(s), s[F_ID], str(s[F_MSG])];
      const attrs = s[F_ATTRS];
      for (let k = 0; k < attrs.length; k++) parts.push(str(attrs[k]));
      for (const ev of s[F_EVENTS]) parts.push(str(ev[1]));
      haystacks[i] = parts.join("\u0000").toLowerCase();
    }
  }

  function runSearch(save) {
    const q = state.q.trim().toLowerCase();
    if (!q) {
      matches = null; matchCount = 0; ui.count.textContent = "";
    } else {
      if (!haystacks) buildHaystacks();
      matches = new Uint8Array(n);
      matchCount = 0;
      for (let i = 0; i < n; i++) if (haystacks[i].includes(q)) { matches[i] = 1; matchCount++; }
      ui.count.textContent = matchCount + (matchCount === 1 ? " match" : " matches");
    }
    renderAll();
    if (state.view === "flame") renderFlame();
    if (save) saveUrl();
  }

  let matchCursor = -1;
  function gotoMatch(dir) {
    if (!matches || matchCount === 0) return;
    let p = matchCursor;
    for (let k = 0; k < n; k++) {
      p = (p + dir + n) % n;
      if (matches[p]) break;
    }
    matchCursor = p;
    revealPos(p);
    if (state.view !== "waterfall") setView("waterfall");
    scrollToPos(p, true);
    renderAll();
    select(p);
  }

  // ---- flame graph -------------------------------------------------------------------------
  const FLAME_H = 18;
  const FLAME_MAX_NODES = 6000;
  function renderFlame() {
    if (!spans) return;
    const w = ui.flame.clientWidth || 1000;
    // Candidates: spans at least a pixel wide in the zoomed range. Children lie inside their
    // parent, so a subtree too narrow to see is skipped whole.
    const cand = [];
    let skipped = 0;
    for (let i = 0; i < n;) {
      const s = spans[i];
      const a = x(s[F_START]), b = x(s[F_START] + s[F_DUR]);
      const px = (Math.min(1, b) - Math.max(0, a)) * w;
      if (b < 0 || a > 1 || px < 1) { skipped += s[F_SIZE]; i += s[F_SIZE]; continue; }
      cand.push(i);
      i++;
    }
    // Too many to draw: the widest first (whole levels before their thinnest details).
    let shown = cand;
    if (cand.length > FLAME_MAX_NODES) {
      const width = (i) => Math.min(1, x(spans[i][F_START] + spans[i][F_DUR])) - Math.max(0, x(spans[i][F_START]));
      shown = cand.slice().sort((p, q) => width(q) - width(p)).slice(0, FLAME_MAX_NODES);
      skipped += cand.length - FLAME_MAX_NODES;
    }
    const nodes = [];
    let maxDepth = 0;
    // By level, then left to right: a label is written only where the previous one on its
    // level has ended (concurrent siblings overlap).
    shown = shown.slice().sort((p, q) => spans[p][F_DEPTH] - spans[q][F_DEPTH] || spans[p][F_START] - spans[q][F_START]);
    const labelEnd = [];
    for (const i of shown) {
      const s = spans[i];
      const a = x(s[F_START]), b = x(s[F_START] + s[F_DUR]);
      const px = (Math.min(1, b) - Math.max(0, a)) * w;
      const service = serviceOf(s);
      const cls = ["fnode", classOf(s)];
      if (s[F_STATUS] === 2) cls.push("err");
      if (i === state.selected) cls.push("selected");
      if (matches && !matches[i]) cls.push("dim");
      const label = service + ": " + str(s[F_NAME]) + " (" + fmtDuration(s[F_DUR]) + ")";
      const left = Math.max(0, a) * w, d = s[F_DEPTH];
      const labelled = px > 60 && left >= (labelEnd[d] || 0);
      if (labelled) labelEnd[d] = left + px;
      const node = el("div", { class: cls.join(" "), "data-pos": i, title: label }, labelled ? label : "");
      node.style.left = left + "px";
      node.style.width = Math.max(1, px) + "px";
      node.style.top = 18 + s[F_DEPTH] * FLAME_H + "px";
      maxDepth = Math.max(maxDepth, s[F_DEPTH]);
      nodes.push(node);
    }
    const zoomed = state.to - state.from < 1;
    const note = el("div", { class: "note" }, nodes.length + " spans drawn" + (skipped ? ", " + skipped + " too narrow at this zoom (drag on the minimap to zoom in)" : "") + (zoomed ? " · zoomed" : ""));
    const filler = el("div");
    filler.style.height = 18 + (maxDepth + 1) * FLAME_H + "px";
    ui.flame.replaceChildren(note, filler, ...nodes);
  }
  document.addEventListener("click", (e) => {
    const f = e.target.closest && e.target.closest(".flame .fnode");
    if (f) select(Number(f.dataset.pos));
  });

  // ---- detail ------------------------------------------------------------------------------
  function kvTable(list) {
    const t = el("table", { class: "kv" });
    for (let k = 0; k + 1 < list.length; k += 2) t.append(el("tr", {}, el("th", {}, str(list[k])), el("td", {}, str(list[k + 1]))));
    return t;
  }

  function logsHref(spanId) {
    const q = "trace_id:" + traceId + (spanId ? " span_id:" + spanId : "");
    const start = BigInt(data.startNs), end = start + BigInt(total);
    const pad = 60000000000n; // logs may be written a little before or after their span
    return "/logs?" + new URLSearchParams({ query: q, from: String(start - pad), to: String(end + pad) }).toString();
  }

  function showDetail(pos) {
    performance.mark("trace-detail");
    if (!window.obsboxTrace || !window.obsboxTrace.detail) {
      window.obsboxTrace = Object.assign(window.obsboxTrace || {}, { detail: performance.now() });
    }
    const s = spans[pos];
    const service = serviceOf(s);
    const close = el("button", { type: "button", class: "close", title: "close" }, "×");
    close.addEventListener("click", () => select(-1));
    const facts = el("dl", { class: "span-facts" });
    const fact = (k, v) => facts.append(el("dt", {}, k), el("dd", {}, v));
    fact("Service", el("span", { class: "svc-tag " + svcClass(service) }, service));
    fact("Span id", el("code", {}, s[F_ID]));
    fact("Kind", KINDS[s[F_KIND]] || String(s[F_KIND]));
    const status = s[F_STATUS] === 2 ? el("span", { class: "status-err" }, "error") : (s[F_STATUS] === 1 ? "ok" : "unset");
    fact("Status", status);
    if (s[F_MSG]) fact("Message", str(s[F_MSG]));
    fact("Start", fmtDuration(s[F_START]));
    fact("Duration", fmtDuration(s[F_DUR]));
    fact("Self time", fmtDuration(s[F_SELF]));
    if (s[F_SIZE] > 1) fact("Descendants", String(s[F_SIZE] - 1));
    if (s[F_CRIT]) fact("Critical path", "yes");
    const parts = [el("h3", {}, close, str(s[F_NAME])), facts];
    const sec = (title, ...content) => parts.push(el("div", { class: "sec attrs-" + title.toLowerCase().replace(/\W+/g, "-") }, el("h4", {}, title), ...content));
    if (s[F_ATTRS].length) sec("Attributes", kvTable(s[F_ATTRS]));
    if (s[F_EVENTS].length) {
      const ul = el("ul", { class: "events" });
      for (const ev of s[F_EVENTS]) ul.append(el("li", {}, el("b", {}, str(ev[1])), " at " + fmtDuration(ev[0]), kvTable(ev[2])));
      sec("Events", ul);
    }
    if (s[F_LINKS].length) {
      const ul = el("ul", {});
      for (const l of s[F_LINKS]) {
        ul.append(el("li", {}, el("a", { class: "linked", href: "/trace/" + l[0] + "?span=" + l[1] }, l[0] + " / " + l[1]), kvTable(l[2])));
      }
      sec("Links", ul);
    }
    const warnings = data.warnings.filter((w) => w[0] === pos).map((w) => el("li", {}, w[1]));
    if (warnings.length) sec("Warnings", el("ul", {}, ...warnings));
    const res = data.resources[s[F_RES]];
    sec("Resource", kvTable(res.attrs));
    const sc = data.scopes[s[F_SCOPE]];
    sec("Scope", el("div", { class: "mono" }, str(sc.name) + (sc.version ? " " + str(sc.version) : "")), kvTable(sc.attrs));
    const logs = el("div", { class: "span-logs" }, el("span", { class: "muted" }, "loading…"));
    sec("Logs", el("a", { class: "to-logs", href: logsHref(s[F_ID]) }, "Open this span's logs in Logs →"), logs);
    ui.detail.replaceChildren(...parts);
    ui.detail.hidden = false;
    loadLogs(s[F_ID], logs);
  }

  function logItem(l) {
    const rec = l.record || {};
    const body = rec.body ? anyText(rec.body) : "";
    const sev = rec.severityText || (rec.severityNumber ? "SEV" + rec.severityNumber : "");
    const off = Number(BigInt(l.timeUnixNano) - BigInt(data.startNs));
    const spanId = rec.spanId || "";
    const meta = el("div", { class: "meta" }, el("span", {}, (off < 0 ? "−" : "+") + fmtDuration(Math.abs(off))),
      el("span", { class: "badge sev-" + sevClass(rec.severityNumber || 0) }, sev), el("span", {}, l.service));
    if (spanId && posOf(spanId) >= 0) {
      const a = el("a", { href: "?span=" + spanId, class: "log-span" }, "span " + spanId);
      a.addEventListener("click", (e) => { e.preventDefault(); const p = posOf(spanId); revealPos(p); if (state.view !== "flame") setView("waterfall"); scrollToPos(p, true); renderAll(); select(p); });
      meta.append(a);
    }
    meta.append(el("a", { href: logsHref(spanId), class: "to-logs" }, "in Logs"));
    return el("li", {}, meta, el("div", { class: "body" }, body));
  }

  function sevClass(n) { return n >= 21 ? "fatal" : n >= 17 ? "error" : n >= 13 ? "warn" : n >= 9 ? "info" : "debug"; }

  function anyText(v) {
    if (v === null || typeof v !== "object") return String(v ?? "");
    if ("stringValue" in v) return v.stringValue;
    if ("intValue" in v) return String(v.intValue);
    if ("doubleValue" in v) return String(v.doubleValue);
    if ("boolValue" in v) return String(v.boolValue);
    if ("bytesValue" in v) return v.bytesValue;
    if ("arrayValue" in v) return "[" + (v.arrayValue.values || []).map(anyText).join(", ") + "]";
    if ("kvlistValue" in v) return "{" + (v.kvlistValue.values || []).map((kv) => kv.key + ": " + anyText(kv.value)).join(", ") + "}";
    return JSON.stringify(v);
  }

  let logsRequest = 0;
  function loadLogs(spanId, target) {
    const mine = ++logsRequest;
    const q = new URLSearchParams({ limit: "200" });
    if (spanId) q.set("spanId", spanId);
    fetch("/api/v1/traces/" + traceId + "/logs?" + q.toString(), { credentials: "same-origin" })
      .then((r) => r.ok ? r.json() : r.json().then((j) => { throw new Error(j.error || "HTTP " + r.status); }))
      .then((j) => {
        if (spanId && mine !== logsRequest) return;
        const logs = (j.logs || []).slice().sort((a, b) => (BigInt(a.timeUnixNano) < BigInt(b.timeUnixNano) ? -1 : 1));
        if (logs.length === 0) { target.replaceChildren(el("span", { class: "muted" }, spanId ? "No logs for this span." : "No logs for this trace.")); return; }
        target.replaceChildren(el("ul", { class: "logs-list" }, ...logs.map(logItem)));
      })
      .catch((e) => target.replaceChildren(el("span", { class: "problem" }, "logs: " + (e.message || e))));
  }

  function toggleTraceLogs() {
    if (!ui.traceLogs.hidden) { ui.traceLogs.hidden = true; return; }
    const list = el("div", {}, el("span", { class: "muted" }, "loading…"));
    ui.traceLogs.replaceChildren(el("h3", {}, "Logs of this trace ", el("a", { href: logsHref(""), class: "to-logs" }, "open in Logs →")), list);
    ui.traceLogs.hidden = false;
    loadLogs("", list);
  }
})();
