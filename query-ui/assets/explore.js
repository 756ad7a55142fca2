// Hover values on the metrics explorer's chart (/explore): a vertical cursor line, a dot per
// series and a tooltip listing each series' value at the nearest step. The chart itself is
// server-rendered; this only reads the JSON block `explore-data`. DOM built with textContent.
"use strict";
(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";

  function fmtValue(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    let x = v;
    let suffix = "";
    if (a >= 1e12) { x = v / 1e12; suffix = "T"; }
    else if (a >= 1e9) { x = v / 1e9; suffix = "G"; }
    else if (a >= 1e6) { x = v / 1e6; suffix = "M"; }
    else if (a >= 1e4) { x = v / 1e3; suffix = "k"; }
    else if (a !== 0 && a < 1e-5) return v.toExponential(2);
    else if (a !== 0 && a < 0.01) { x = v * 1e3; suffix = "m"; }
    const digits = Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : 2;
    return String(Number(x.toFixed(digits))) + suffix;
  }

  function fmtTime(ms) {
    return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  // The point of `points` ([t, v] in time order) nearest to `t`, or null.
  function nearest(points, t) {
    let lo = 0;
    let hi = points.length - 1;
    if (hi < 0) return null;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (points[mid][0] < t) lo = mid + 1; else hi = mid;
    }
    let best = points[lo];
    if (lo > 0 && Math.abs(points[lo - 1][0] - t) < Math.abs(best[0] - t)) best = points[lo - 1];
    return best;
  }

  function init() {
    const data = window.obsbox.jsonData("explore-data");
    const svg = document.getElementById("explore-chart");
    if (!data || !svg || data.series.length === 0) return;
    const plot = svg.parentNode;
    const span = Math.max(1, data.end - data.start);
    const step = data.series.reduce((s, x) => (x.points.length > 1 ? Math.min(s, x.points[1][0] - x.points[0][0]) : s), span);

    const cursor = document.createElementNS(SVG_NS, "line");
    cursor.setAttribute("class", "cursor");
    cursor.setAttribute("y1", "12");
    cursor.setAttribute("y2", "292");
    cursor.setAttribute("visibility", "hidden");
    svg.appendChild(cursor);
    const tip = document.createElement("div");
    tip.className = "explore-tooltip";
    tip.hidden = true;
    plot.appendChild(tip);

    function hide() {
      cursor.setAttribute("visibility", "hidden");
      tip.hidden = true;
    }

    function show(ev) {
      const rect = svg.getBoundingClientRect();
      const scale = rect.width / data.width;
      const x = (ev.clientX - rect.left) / scale;
      if (x < data.left || x > data.right) { hide(); return; }
      const t = data.start + ((x - data.left) / (data.right - data.left)) * span;
      const rows = [];
      let at = null;
      for (const s of data.series) {
        const p = nearest(s.points, t);
        if (!p || Math.abs(p[0] - t) > step) continue;
        if (at === null || Math.abs(p[0] - t) < Math.abs(at - t)) at = p[0];
        rows.push({ s, v: p[1] });
      }
      if (rows.length === 0) { hide(); return; }
      const cx = data.left + ((at - data.start) / span) * (data.right - data.left);
      cursor.setAttribute("x1", String(cx));
      cursor.setAttribute("x2", String(cx));
      cursor.setAttribute("visibility", "visible");
      rows.sort((a, b) => (b.v ?? -Infinity) - (a.v ?? -Infinity));
      tip.replaceChildren();
      const head = document.createElement("div");
      head.className = "time";
      head.textContent = fmtTime(at);
      tip.appendChild(head);
      for (const r of rows.slice(0, 20)) {
        const row = document.createElement("div");
        row.className = "row";
        const name = document.createElement("span");
        const dot = document.createElement("span");
        dot.className = "svc-dot " + r.s.class;
        name.appendChild(dot);
        name.appendChild(document.createTextNode(r.s.name));
        const val = document.createElement("span");
        val.className = "val";
        val.textContent = fmtValue(r.v) + (data.unit ? " " + data.unit : "");
        row.appendChild(name);
        row.appendChild(val);
        tip.appendChild(row);
      }
      if (rows.length > 20) {
        const more = document.createElement("div");
        more.className = "muted";
        more.textContent = "+" + (rows.length - 20) + " more";
        tip.appendChild(more);
      }
      tip.hidden = false;
      const px = cx * scale;
      const left = px + 12 + tip.offsetWidth > plot.clientWidth ? px - 12 - tip.offsetWidth : px + 12;
      tip.style.left = Math.max(0, left) + "px";
      tip.style.top = "8px";
    }

    svg.addEventListener("mousemove", show);
    svg.addEventListener("mouseleave", hide);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
