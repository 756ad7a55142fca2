// Helpers shared by every page. Loaded first, with `defer`; exposes `window.obsbox`.
"use strict";
(function () {
  const SERVICE_COLOURS = 20;

  // Same as svc_class in query-ui/src/ui/mod.rs: FNV-1a 32 over UTF-8 bytes, modulo 20.
  function svcClass(name) {
    const bytes = new TextEncoder().encode(name);
    let h = 0x811c9dc5;
    for (const b of bytes) {
      h ^= b;
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    return "sc" + (h % SERVICE_COLOURS);
  }

  // Parses the JSON of a <script type="application/json" id=...> block; null when absent.
  function jsonData(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  // Formats a duration in nanoseconds as 1.23s / 45.6ms / 789µs.
  function fmtDuration(ns) {
    if (ns >= 1e9) return (ns / 1e9).toFixed(ns >= 1e10 ? 1 : 2) + "s";
    if (ns >= 1e6) return (ns / 1e6).toFixed(ns >= 1e7 ? 1 : 2) + "ms";
    if (ns >= 1e3) return (ns / 1e3).toFixed(ns >= 1e4 ? 1 : 2) + "µs";
    return ns + "ns";
  }

  // Element builder: el("td", {class: "num"}, "text", child...). Text is set as text, never as HTML.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  window.obsbox = { svcClass, jsonData, fmtDuration, el };
})();
