// Trace search: live autocomplete. The page works without this script.
"use strict";
(function () {
  const form = document.getElementById("search-form");
  if (!form) return;
  const { el } = window.obsbox;
  const service = document.getElementById("f-service");
  const opsList = document.getElementById("dl-operations");
  const filter = document.getElementById("f-filter");
  const filterList = document.getElementById("dl-filter");

  function rangeParams() {
    const p = new URLSearchParams();
    const from = form.elements.from.value, to = form.elements.to.value;
    if (from) {
      p.set("start", from + (from.length === 16 ? ":00Z" : "Z"));
      if (to) p.set("end", to + (to.length === 16 ? ":00Z" : "Z"));
    } else {
      p.set("lookback", form.elements.range.value);
    }
    return p;
  }

  async function getJson(path, params) {
    const r = await fetch(path + "?" + params.toString(), { headers: { Accept: "application/json" } });
    if (!r.ok) return null;
    return r.json();
  }

  function fill(list, values) {
    list.replaceChildren(...values.map((v) => el("option", { value: v })));
  }

  // Operations of the chosen service.
  let opsFor = null;
  async function refreshOperations() {
    const s = service.value.trim();
    if (s === opsFor) return;
    opsFor = s;
    const path = s ? "/api/v1/services/" + encodeURIComponent(s) + "/operations" : null;
    if (!path) return;
    const data = await getJson(path, rangeParams());
    if (data && opsFor === s) fill(opsList, [...new Set(data.operations.map((o) => o.name))].sort());
  }
  service.addEventListener("change", refreshOperations);
  service.addEventListener("blur", refreshOperations);

  // Filter expression: complete the word being typed as an attribute key, or, after
  // `key =` / `key !=`, as one of that key's frequent values.
  let keys = null;
  const valueCache = new Map();
  async function loadKeys() {
    if (keys) return keys;
    const resourceParams = rangeParams();
    resourceParams.set("scope", "resource");
    const [item, res] = await Promise.all([
      getJson("/api/v1/attributes", rangeParams()),
      getJson("/api/v1/attributes", resourceParams),
    ]);
    keys = [...((item && item.keys) || []), ...((res && res.keys) || []).map((k) => "resource." + k)];
    return keys;
  }
  async function loadValues(key) {
    if (valueCache.has(key)) return valueCache.get(key);
    const resource = key.startsWith("resource.");
    const p = rangeParams();
    if (resource) p.set("scope", "resource");
    const bare = resource ? key.slice("resource.".length) : key;
    const data = await getJson("/api/v1/attributes/" + encodeURIComponent(bare) + "/values", p);
    const values = data ? data.values.map((v) => v.value) : [];
    valueCache.set(key, values);
    return values;
  }
  function quote(v) {
    if (typeof v === "number" || typeof v === "boolean") return String(v);
    return '"' + String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"') + '"';
  }
  async function suggest() {
    const text = filter.value;
    const m = /^(.*?)([\w.\-\/]+)\s*(=|!=)\s*("[^"]*)?$/.exec(text);
    if (m) {
      const [, before, key, op] = m;
      const values = await loadValues(key);
      fill(filterList, values.slice(0, 50).map((v) => before + key + " " + op + " " + quote(v)));
      return;
    }
    const w = /^(.*?)([\w.\-\/]*)$/.exec(text);
    const before = w ? w[1] : text, word = w ? w[2] : "";
    const all = await loadKeys();
    const matching = all.filter((k) => k.startsWith(word)).slice(0, 50);
    fill(filterList, matching.map((k) => before + k + " = "));
  }
  let timer = null;
  filter.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(suggest, 150);
  });
  filter.addEventListener("focus", suggest, { once: true });
})();
