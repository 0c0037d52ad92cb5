// Strait's dashboard: the service graph (/api/graph), the trace list and one trace's
// waterfall (/api/traces), the proxies' sync status. Plain JS, no build step. Data goes into
// the page through textContent and attributes only.
"use strict";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const params = new URLSearchParams(location.hash.slice(1));
const token = params.get("token") || sessionStorage.getItem("strait-token") || "";
if (params.get("token")) sessionStorage.setItem("strait-token", params.get("token"));
let selectedTrace = params.get("trace") || "";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === "string" || typeof c === "number" ? String(c) : c);
  }
  return e;
}

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) {
    throw new Error("the control plane wants its API token: this page is not on loopback. Open the URL `strait dashboard` prints (it carries the token).");
  }
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function banner(message) {
  const b = $("banner");
  b.hidden = !message;
  b.textContent = message || "";
}

// ---------- formatting ----------
function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1) return ms.toFixed(2) + " ms";
  if (ms < 10) return ms.toFixed(1) + " ms";
  if (ms < 1000) return Math.round(ms) + " ms";
  return (ms / 1000).toFixed(2) + " s";
}
function fmtRate(r) {
  if (r === null || r === undefined) return null;
  if (r === 0) return "0 rps";
  if (r < 0.1) return r.toFixed(2) + " rps";
  if (r < 10) return r.toFixed(1) + " rps";
  return Math.round(r) + " rps";
}
function pct(x) {
  if (x === 0) return "0%";
  if (x < 0.001) return "<0.1%";
  return (x * 100).toFixed(x < 0.1 ? 1 : 0) + "%";
}
function health(e) {
  const rate = e.rps ? (e.error_rps || 0) / e.rps : (e.requests ? e.errors / e.requests : 0);
  return rate === 0 ? "ok" : rate < 0.05 ? "warn" : "bad";
}
const PALETTE = ["#2563eb", "#7c3aed", "#db2777", "#ea580c", "#16a34a", "#0891b2", "#ca8a04", "#9333ea", "#dc2626", "#0e7490"];
// A colour per name, distinct for the first ten names (in sorted order).
function colours(names) {
  const sorted = [...new Set(names)].sort();
  const map = new Map(sorted.map((n, i) => [n, PALETTE[i % PALETTE.length]]));
  return (n) => map.get(n) || "#64748b";
}
function time(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

// ---------- graph ----------
const NODE_W = 214, NODE_H = 54, COL_GAP = 136, ROW_GAP = 34, PAD = 20;

// Columns by depth from the roots (nodes nothing calls: the ingress gateway, clients), the
// longest path, so that a call always goes left to right; rows ordered by their callers'
// rows to keep edges from crossing.
function layout(nodes, edges) {
  const ids = nodes.map((n) => n.id);
  const incoming = new Map(ids.map((i) => [i, []]));
  const outgoing = new Map(ids.map((i) => [i, []]));
  edges = edges.filter((e) => e.src !== e.dst && incoming.has(e.dst) && outgoing.has(e.src));
  for (const e of edges) {
    outgoing.get(e.src).push(e.dst);
    incoming.get(e.dst).push(e.src);
  }
  const depth = new Map();
  const active = ids.filter((i) => incoming.get(i).length || outgoing.get(i).length);
  for (const i of active) depth.set(i, 0);
  // Longest path, bounded by the node count (cycles stop growing there).
  for (let round = 0; round < active.length; round++) {
    let changed = false;
    for (const e of edges) {
      const d = depth.get(e.src) + 1;
      if (d > depth.get(e.dst) && d < active.length) { depth.set(e.dst, d); changed = true; }
    }
    if (!changed) break;
  }
  const maxDepth = Math.max(0, ...[...depth.values()]);
  const idle = ids.filter((i) => !depth.has(i));
  const columns = [];
  for (const [i, d] of depth) (columns[d] = columns[d] || []).push(i);
  // Nodes without traffic: beside an active version of the same app, else in the shortest
  // column, below the rest.
  const byIdAll = new Map(nodes.map((n) => [n.id, n]));
  for (const i of idle) {
    const app = byIdAll.get(i).app;
    const sibling = app && app !== "unknown" ? [...depth.keys()].find((a) => byIdAll.get(a).app === app) : undefined;
    let c = sibling !== undefined ? depth.get(sibling) : -1;
    if (c < 0) {
      c = 0;
      for (let k = 0; k < columns.length; k++) if ((columns[k] || []).length < (columns[c] || []).length) c = k;
    }
    (columns[c] = columns[c] || []).push(i);
  }
  const row = new Map();
  const byId = new Map(nodes.map((n) => [n.id, n]));
  columns.forEach((col, c) => {
    if (!col) return;
    const key = (i) => {
      const callers = incoming.get(i).filter((s) => row.has(s));
      const bary = callers.length ? callers.reduce((a, s) => a + row.get(s), 0) / callers.length : 0;
      const n = byId.get(i);
      const gw = n.kind === "gateway" ? -1 : depth.has(i) ? 0 : 1;
      return [gw, bary, n.name];
    };
    col.sort((a, b) => {
      const ka = key(a), kb = key(b);
      for (let k = 0; k < 3; k++) { if (ka[k] < kb[k]) return -1; if (ka[k] > kb[k]) return 1; }
      return 0;
    });
    col.forEach((i, r) => row.set(i, r));
  });
  const tallest = Math.max(1, ...columns.filter(Boolean).map((c) => c.length));
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * ROW_GAP;
  const pos = new Map();
  columns.forEach((col, c) => {
    if (!col) return;
    const colH = col.length * NODE_H + (col.length - 1) * ROW_GAP;
    const top = (height - colH) / 2;
    col.forEach((i, r) => pos.set(i, { x: PAD + c * (NODE_W + COL_GAP), y: top + r * (NODE_H + ROW_GAP), idle: !depth.has(i) }));
  });
  const width = PAD * 2 + columns.length * NODE_W + Math.max(0, columns.length - 1) * COL_GAP;
  return { pos, width, height };
}

// An edge's label: its rate and error rate; its p99 and whether it is mutual TLS.
function edgeLabel(e) {
  const rate = fmtRate(e.rps);
  const errRate = e.rps ? (e.error_rps || 0) / e.rps : (e.requests ? e.errors / e.requests : 0);
  const first = (rate !== null ? rate : e.requests + " req") + " · ";
  const second = "p99 " + fmtMs(e.p99_ms);
  return { first, err: pct(errRate) + " err", second, mtls: e.mtls };
}

function renderGraph(g) {
  const svg = $("graph");
  svg.replaceChildren();
  const nodes = g.nodes;
  const idOf = (name, ns) => ns + "/" + name;
  const edges = g.edges.map((e) => ({ ...e, src: idOf(e.source, e.source_namespace), dst: idOf(e.destination, e.destination_namespace) }));
  $("graph-empty").hidden = edges.length > 0 || nodes.length > 0;
  if (!nodes.length) { svg.setAttribute("width", 10); svg.setAttribute("height", 380); return; }
  const { pos, width, height } = layout(nodes, edges);
  const wrapW = svg.parentElement.clientWidth || width;
  const w = Math.max(width, wrapW - 2), h = Math.max(height, 380);
  const dx = (w - width) / 2, dy = (h - height) / 2;
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const defs = el("svg:defs");
  for (const c of ["ok", "warn", "bad"]) {
    const colourOf = { ok: "#16a34a", warn: "#d97706", bad: "#dc2626" }[c];
    defs.append(el("svg:marker", { id: "arrow-" + c, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 10, markerHeight: 10, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" },
      el("svg:path", { d: "M0,0 L10,5 L0,10 z", fill: colourOf })));
  }
  svg.append(defs);
  const edgeLayer = el("svg:g"), labelLayer = el("svg:g"), nodeLayer = el("svg:g");
  const colour = colours(nodes.map((n) => n.app || n.name));
  svg.append(edgeLayer, nodeLayer, labelLayer);
  const maxRps = Math.max(0.001, ...edges.map((e) => e.rps || 0));
  for (const e of edges) {
    const a = pos.get(e.src), b = pos.get(e.dst);
    if (!a || !b) continue;
    const h2 = health(e);
    const x1 = a.x + dx + NODE_W, y1 = a.y + dy + NODE_H / 2;
    const x2 = b.x + dx, y2 = b.y + dy + NODE_H / 2;
    let d;
    if (x2 > x1) {
      const mx = (x1 + x2) / 2;
      d = `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2 - 2},${y2}`;
    } else {
      // A call back to the left (a cycle): an arc under the nodes.
      const low = Math.max(y1, y2) + NODE_H;
      d = `M${a.x + dx + NODE_W / 2},${a.y + dy + NODE_H} C${a.x + dx + NODE_W / 2},${low + 40} ${b.x + dx + NODE_W / 2},${low + 40} ${b.x + dx + NODE_W / 2},${b.y + dy + NODE_H + 2}`;
    }
    const widthPx = 1.6 + 3.4 * Math.sqrt((e.rps || 0) / maxRps);
    const g1 = el("svg:g", {
      class: "edge " + h2, "data-source": e.source, "data-destination": e.destination,
      "data-requests": e.requests, "data-errors": e.errors, "data-mtls": e.mtls,
    });
    g1.append(el("svg:path", { d, "stroke-width": widthPx.toFixed(2), "marker-end": `url(#arrow-${h2})` }));
    if (e.rps) g1.append(el("svg:path", { d, class: "flow", "stroke-width": Math.max(1, widthPx - 1.4).toFixed(2) }));
    g1.append(el("svg:title", {}, `${e.source} → ${e.destination} (${e.destination_service || "?"})\n` +
      `${e.requests} requests, ${e.errors} 5xx; p50 ${fmtMs(e.p50_ms)}, p99 ${fmtMs(e.p99_ms)}; ` +
      `${e.mtls ? "mutual TLS" : "not mutual TLS (or not known: reported by the source)"}; reported by the ${e.reporter}`));
    edgeLayer.append(g1);
    // The label, on the curve's middle.
    const l = edgeLabel(e);
    const lx = x2 > x1 ? (x1 + x2) / 2 : (a.x + b.x) / 2 + dx + NODE_W / 2;
    const ly = x2 > x1 ? (y1 + y2) / 2 : Math.max(y1, y2) + NODE_H + 30;
    const line1 = l.first.length + l.err.length;
    const line2 = l.second.length + (l.mtls ? 7 : 0);
    const tw = Math.max(line1, line2) * 6.2 + 14;
    const errClass = health(e) === "ok" ? null : "err";
    labelLayer.append(el("svg:g", { class: "edge-label", "data-source": e.source, "data-destination": e.destination },
      el("svg:rect", { x: lx - tw / 2, y: ly - 16, width: tw, height: 32, rx: 7 }),
      el("svg:text", { x: lx, y: ly - 3, "text-anchor": "middle" }, l.first, el("svg:tspan", { class: errClass }, l.err)),
      el("svg:text", { x: lx, y: ly + 11, "text-anchor": "middle" }, l.mtls ? el("svg:tspan", { class: "lock" }, "mTLS · ") : null, l.second)));
  }
  for (const n of nodes) {
    const p = pos.get(n.id);
    if (!p) continue;
    const x = p.x + dx, y = p.y + dy;
    const cls = "node " + n.kind + (p.idle ? " idle" : "");
    const g1 = el("svg:g", { class: cls, transform: `translate(${x},${y})`, "data-node": n.id, "data-workload": n.name, "data-namespace": n.namespace });
    g1.append(el("svg:rect", { class: "box", width: NODE_W, height: NODE_H, rx: 10 }));
    const badge = { gateway: "GW", service: "SVC", unknown: "?", workload: "W" }[n.kind] || "W";
    const badgeColour = n.kind === "gateway" ? "#0e7490" : n.kind === "service" ? "#64748b" : n.kind === "unknown" ? "#94a3b8" : colour(n.app || n.name);
    g1.append(el("svg:rect", { x: 10, y: 14, width: 26, height: 26, rx: n.kind === "workload" ? 13 : 6, fill: badgeColour }));
    g1.append(el("svg:text", { class: "badge", x: 23, y: 31, "text-anchor": "middle" }, badge));
    const name = n.name.length > 21 ? n.name.slice(0, 20) + "…" : n.name;
    g1.append(el("svg:text", { class: "name", x: 46, y: 24 }, name));
    const meta = [n.app && n.app !== "unknown" ? n.app : null, n.version && n.version !== "unknown" ? n.version : null, n.namespace].filter(Boolean).join(" · ");
    g1.append(el("svg:text", { class: "meta", x: 46, y: 40 }, meta.length > 28 ? meta.slice(0, 27) + "…" : meta));
    if (n.proxy) {
      const fill = n.proxy.synced ? "#16a34a" : "#d97706";
      g1.append(el("svg:circle", { class: "sync", cx: NODE_W - 9, cy: 9, r: 4.5, fill }));
    }
    g1.append(el("svg:title", {}, `${n.namespace}/${n.name}` + (n.proxy ? `\nproxy ${n.proxy.id}: ${n.proxy.synced ? "SYNCED" : "not synced: " + n.proxy.not_synced.join(", ")}` : "\nno proxy connected")));
    nodeLayer.append(g1);
  }
}

function renderProxies(nodes) {
  const body = $("proxies").tBodies[0];
  body.replaceChildren();
  const withProxy = nodes.filter((n) => n.proxy).sort((a, b) => a.proxy.id.localeCompare(b.proxy.id));
  for (const n of withProxy) {
    const p = n.proxy;
    const sync = p.synced ? el("span", { class: "pill ok" }, "SYNCED") : el("span", { class: "pill warn" }, p.not_synced.join(", ") || "waiting");
    body.append(el("tr", { "data-proxy": p.id }, el("td", {}, el("code", {}, p.id)), el("td", {}, n.name), el("td", {}, n.namespace), el("td", {}, p.role), el("td", {}, sync)));
  }
  if (!withProxy.length) body.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No proxy is connected.")));
}

async function refreshGraph() {
  const g = await api("/api/graph");
  renderGraph(g);
  renderProxies(g.nodes);
  const failures = g.scrape.failures.length;
  $("graph-meta").textContent = `${g.nodes.length} workloads · ${g.edges.length} edges · ${g.scrape.targets} proxies scraped` +
    (failures ? ` · ${failures} unreachable` : "") + (g.window_seconds ? ` · rates over ${g.window_seconds.toFixed(0)} s` : "");
}

// ---------- traces ----------
let traceList = [];
let lastList = null;
// The trace the URL names (#trace=ID): listed first even when it is older than the newest.
let pinned = null;

function renderTraceList(data) {
  lastList = data;
  traceList = data.traces;
  if (pinned && !traceList.some((t) => t.trace_id === pinned.trace_id)) traceList = [pinned, ...traceList];
  const body = $("traces").tBodies[0];
  body.replaceChildren();
  const longest = Math.max(0.001, ...traceList.map((t) => t.duration_ms));
  for (const t of traceList) {
    const bar = el("span", { class: "durbar" }, el("i", { style: `width:${Math.max(2, 100 * t.duration_ms / longest).toFixed(1)}%` }));
    const row = el("tr", { class: "trace" + (t.trace_id === selectedTrace ? " selected" : ""), "data-trace-id": t.trace_id, "data-span-count": t.span_count },
      el("td", { class: "muted" }, time(t.start_unix_ms)),
      el("td", { class: "root", title: t.root_name }, el("span", { class: "svc" }, t.root_service), el("span", { class: "op" }, t.root_name)),
      el("td", { class: "dur" }, bar, fmtMs(t.duration_ms)),
      el("td", {}, String(t.span_count)),
      el("td", {}, t.error ? el("span", { class: "pill err" }, "error") : ""));
    row.addEventListener("click", () => selectTrace(t.trace_id));
    body.append(row);
  }
  if (!traceList.length) body.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No traces yet. The control plane keeps the traces the proxies export to it (strait demo sets that up).")));
  const s = data.store;
  $("trace-store").textContent = `${s.traces} traces, ${s.spans} spans kept` + (s.dropped_spans ? ` (${s.dropped_spans} older spans dropped)` : "");
  const select = $("trace-service");
  const current = select.value;
  const services = new Set([...select.options].map((o) => o.value));
  for (const t of traceList) for (const svc of t.services) {
    if (!services.has(svc)) { services.add(svc); select.append(el("option", { value: svc }, svc)); }
  }
  select.value = current;
}

async function refreshTraces() {
  const q = new URLSearchParams({ limit: "60" });
  if ($("trace-service").value) q.set("service", $("trace-service").value);
  if ($("trace-errors").checked) q.set("error", "true");
  renderTraceList(await api("/api/traces?" + q));
  if (selectedTrace && !$("waterfall").dataset.trace) await showTrace(selectedTrace);
}

function setHash() {
  const p = new URLSearchParams();
  if (params.get("token")) p.set("token", params.get("token"));
  if (selectedTrace) p.set("trace", selectedTrace);
  history.replaceState(null, "", "#" + p.toString());
}

async function selectTrace(id) {
  selectedTrace = id;
  setHash();
  for (const r of $("traces").tBodies[0].rows) r.classList.toggle("selected", r.dataset.traceId === id);
  await showTrace(id);
}

// Spans in tree order: each after its parent, siblings by start time.
function ordered(spans) {
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const children = new Map();
  const roots = [];
  for (const s of spans) {
    if (s.parent_span_id && byId.has(s.parent_span_id)) {
      if (!children.has(s.parent_span_id)) children.set(s.parent_span_id, []);
      children.get(s.parent_span_id).push(s);
    } else roots.push(s);
  }
  const out = [];
  const walk = (s, depth) => {
    out.push([s, depth]);
    for (const c of (children.get(s.span_id) || []).sort((a, b) => a.start_unix_nano - b.start_unix_nano)) walk(c, depth + 1);
  };
  for (const r of roots.sort((a, b) => a.start_unix_nano - b.start_unix_nano)) walk(r, 0);
  return out;
}

async function showTrace(id) {
  const box = $("waterfall");
  let data;
  try {
    data = await api("/api/traces/" + encodeURIComponent(id));
  } catch (e) {
    box.replaceChildren(el("div", { class: "muted pad" }, "Trace " + id + " is not in the store (yet): " + e.message));
    delete box.dataset.trace;
    return;
  }
  box.dataset.trace = id;
  if (!pinned || pinned.trace_id !== id) {
    pinned = data.trace;
    if (lastList) renderTraceList(lastList);
  }
  const spans = data.spans;
  const colour = colours(spans.map((s) => s.service));
  const t0 = Math.min(...spans.map((s) => s.start_unix_nano));
  const t1 = Math.max(...spans.map((s) => s.end_unix_nano));
  const total = Math.max(1, t1 - t0);
  $("waterfall-title").textContent = "Trace " + id.slice(0, 16) + "…";
  $("waterfall-meta").textContent = `${data.trace.root_service} · ${fmtMs(data.trace.duration_ms)} · ${spans.length} spans · ${data.trace.services.length} services`;
  const ticks = el("div", { class: "scale" });
  for (let i = 0; i <= 4; i++) {
    ticks.append(el("span", { style: `left:${i * 25}%` }, fmtMs(total / 1e6 * i / 4)));
  }
  const rows = [el("div", { class: "ticks" }, el("div", {}, "service · operation"), ticks)];
  for (const [s, depth] of ordered(spans)) {
    const left = 100 * (s.start_unix_nano - t0) / total;
    const width = 100 * (s.end_unix_nano - s.start_unix_nano) / total;
    const dur = (s.end_unix_nano - s.start_unix_nano) / 1e6;
    const status = (s.attributes.find(([k]) => k === "http.status_code") || [])[1];
    const who = el("div", { class: "who", style: `padding-left:${depth * 14}px`, title: s.name },
      el("span", { class: "svc", style: `color:${colour(s.service)}` }, s.service), " ",
      el("span", { class: "op" }, s.name), el("span", { class: "kind" }, s.kind));
    // The duration beside the bar, or inside it when the bar reaches the right edge.
    const inside = left + width > 72 && width > 22;
    const before = left + width > 72 && !inside;
    const labelPos = inside ? `right:calc(${(100 - left - width).toFixed(2)}% + 6px)`
      : before ? `right:calc(${(100 - left).toFixed(2)}% + 6px)`
      : `left:calc(${(left + width).toFixed(2)}% + 6px)`;
    const track = el("div", { class: "track" },
      el("div", { class: "bar" + (s.error ? " error" : ""), style: `left:${left.toFixed(2)}%;width:${Math.max(width, 0.2).toFixed(2)}%;background:${colour(s.service)}` }),
      el("span", { class: "dur" + (inside ? " inside" : ""), style: labelPos }, fmtMs(dur) + (status ? " · " + status : "")));
    const title = s.attributes.map(([k, v]) => `${k}: ${v}`).join("\n");
    rows.push(el("div", { class: "span-row", "data-service": s.service, "data-kind": s.kind, "data-span-id": s.span_id, title }, who, track));
  }
  box.replaceChildren(...rows);
}

// ---------- loop ----------
async function tick() {
  const started = Date.now();
  try {
    await Promise.all([refreshGraph(), refreshTraces()]);
    banner("");
    $("status").replaceChildren(el("span", { class: "dot" }), "live · updated " + new Date().toLocaleTimeString([], { hour12: false }));
  } catch (e) {
    banner(e.message);
    $("status").textContent = "not updated";
  }
  document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  setTimeout(tick, Math.max(500, REFRESH_MS - (Date.now() - started)));
}

$("trace-service").addEventListener("change", refreshTraces);
$("trace-errors").addEventListener("change", refreshTraces);
window.addEventListener("resize", () => refreshGraph().catch(() => {}));
tick();
