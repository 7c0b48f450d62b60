// Overview: this replica's metrics (GET /v1/metrics) every second, as rates and quantiles
// over the last interval, plus readiness.
import { api, el, plotLayout, PLOT_CONFIG, say } from "./app.js";

const INTERVAL_MS = 1000;
const WINDOW = 180; // points kept per trace
let timer = null;
const previous = new Map(); // replica -> its last snapshot (rates per replica)
const traces = {}; // plot id -> Map(trace name -> index)

function family(snapshot, name) {
  return snapshot.metrics.find((f) => f.name === name) || { samples: [] };
}

function num(v) {
  return typeof v === "number" ? v : Number(v); // "+Inf" and the like come as text
}

// Cumulative histogram buckets summed over the samples `keep` selects, grouped by `groupBy`.
function histograms(fam, keep = () => true, groupBy = () => "all") {
  const groups = new Map();
  for (const s of fam.samples) {
    if (!keep(s.labels)) continue;
    const g = groupBy(s.labels);
    if (!groups.has(g)) groups.set(g, { buckets: new Map(), count: 0, sum: 0 });
    const h = groups.get(g);
    if (s.name.endsWith("_bucket")) {
      const le = num(s.labels.le);
      h.buckets.set(le, (h.buckets.get(le) || 0) + s.value);
    } else if (s.name.endsWith("_count")) h.count += s.value;
    else if (s.name.endsWith("_sum")) h.sum += s.value;
  }
  return groups;
}

// The q-quantile of the observations between two cumulative snapshots (linear in a bucket).
function quantile(now, before, q) {
  const bounds = [...now.buckets.keys()].sort((a, b) => a - b);
  const counts = bounds.map((b) => now.buckets.get(b) - ((before && before.buckets.get(b)) || 0));
  const total = counts[counts.length - 1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i] >= rank) {
      const upper = Number.isFinite(bounds[i]) ? bounds[i] : lower;
      const inBucket = counts[i] - below;
      return inBucket > 0 ? lower + ((upper - lower) * (rank - below)) / inBucket : upper;
    }
    lower = bounds[i];
    below = counts[i];
  }
  return lower;
}

function counterBy(fam, suffix, groupBy, keep = () => true) {
  const out = new Map();
  for (const s of fam.samples) {
    if (!s.name.endsWith(suffix) || !keep(s.labels)) continue;
    const g = groupBy(s.labels);
    out.set(g, (out.get(g) || 0) + s.value);
  }
  return out;
}

function newPlot(id, yTitle) {
  traces[id] = new Map();
  Plotly.newPlot(id, [], plotLayout({ xaxis: { type: "date", nticks: 5 }, yaxis: { title: { text: yTitle }, rangemode: "tozero" } }), PLOT_CONFIG);
}

// Append one point per named series; a series seen for the first time becomes a trace.
function append(id, time, values) {
  const known = traces[id];
  for (const name of values.keys()) {
    if (!known.has(name)) {
      known.set(name, known.size);
      Plotly.addTraces(id, { x: [], y: [], name, mode: "lines", type: "scatter", connectgaps: false });
      if (known.size === 1) Plotly.relayout(id, { "xaxis.autorange": true });
    }
  }
  const indices = [];
  const xs = [];
  const ys = [];
  for (const [name, index] of known) {
    indices.push(index);
    xs.push([time]);
    ys.push([values.has(name) ? values.get(name) : null]);
  }
  if (indices.length) {
    Plotly.extendTraces(id, { x: xs, y: ys }, indices, WINDOW);
  } else {
    // Nothing to draw yet (no errors, say): the time axis shows the last minute, not 2000.
    Plotly.relayout(id, { "xaxis.range": [new Date(time.getTime() - 60000), time] });
  }
}

function renderHealth(snapshot, sessionsActive) {
  const r = snapshot.ready;
  const exits = family(snapshot, "lstm_serve_model_process_exits").samples.find((s) => s.name.endsWith("_total"));
  const item = (label, ok, detail) =>
    el("div", { class: "badge " + (ok ? "ok" : "bad") }, el("strong", {}, label), " ", detail);
  document.getElementById("health").replaceChildren(
    item("Ready", r.status === "ready", r.status === "ready" ? "yes" : "no"),
    item("Models", r.models, r.models ? "loaded" : "none loaded"),
    item("Session store", r.session_store, r.session_store ? "answers" : "unreachable"),
    item(
      "Model process",
      true,
      snapshot.model_process ? `child processes, ${exits ? exits.value : 0} restarts` : "in-process threads",
    ),
    item("Sessions", true, String(sessionsActive)),
    item("Replica", true, snapshot.replica),
    item("Draining", !r.draining, r.draining ? "yes" : "no"),
  );
}

async function poll() {
  let snapshot;
  try {
    snapshot = await api("GET", "/v1/metrics");
  } catch (err) {
    say("metrics: " + err.message, true);
    return;
  }
  const time = new Date(snapshot.time * 1000);
  const req = family(snapshot, "lstm_serve_requests");
  const lat = family(snapshot, "lstm_serve_request_duration_seconds");
  const batch = family(snapshot, "lstm_serve_inference_batch_size");
  const queue = family(snapshot, "lstm_serve_inference_queue_wait_seconds");
  const active = family(snapshot, "lstm_serve_sessions_active").samples[0];
  const state = {
    replica: snapshot.replica,
    time: snapshot.time,
    byRoute: counterBy(req, "_total", (l) => l.route),
    errors: counterBy(req, "_total", (l) => l.status, (l) => Number(l.status) >= 400),
    latency: histograms(lat).get("all"),
    batch: histograms(batch, () => true, (l) => l.model),
    queue: histograms(queue).get("all"),
  };
  renderHealth(snapshot, active ? active.value : 0);
  append("plot-sessions", time, new Map([["active", active ? active.value : 0]]));
  const last = previous.get(state.replica);
  if (last) {
    const dt = state.time - last.time || 1;
    const rate = (now, before) =>
      new Map([...now].map(([k, v]) => [k, Math.max(0, (v - (before.get(k) || 0)) / dt)]));
    append("plot-rps", time, rate(state.byRoute, last.byRoute));
    append("plot-errors", time, rate(state.errors, last.errors));
    const ms = (v) => (v === null ? null : v * 1000);
    const latency = new Map();
    if (state.latency) {
      latency.set("p50", ms(quantile(state.latency, last.latency, 0.5)));
      latency.set("p99", ms(quantile(state.latency, last.latency, 0.99)));
    }
    append("plot-latency", time, latency);
    const queueWait = new Map();
    if (state.queue) {
      queueWait.set("p50", ms(quantile(state.queue, last.queue, 0.5)));
      queueWait.set("p99", ms(quantile(state.queue, last.queue, 0.99)));
    }
    append("plot-queue", time, queueWait);
    const meanBatch = new Map();
    for (const [model, h] of state.batch) {
      const before = last.batch.get(model);
      const count = h.count - (before ? before.count : 0);
      meanBatch.set(model, count > 0 ? (h.sum - (before ? before.sum : 0)) / count : null);
    }
    append("plot-batch", time, meanBatch);
  }
  previous.set(state.replica, state);
}

let drawn = false;
// Drawn on first show, when the page is visible (a plot drawn hidden gets a default width).
function draw() {
  drawn = true;
  for (const [id, y] of [
    ["plot-rps", "req/s"], ["plot-latency", "ms"], ["plot-batch", "sequences"],
    ["plot-queue", "ms"], ["plot-sessions", "sessions"], ["plot-errors", "errors/s"],
  ]) newPlot(id, y);
}

const PLOTS = ["plot-rps", "plot-latency", "plot-batch", "plot-queue", "plot-sessions", "plot-errors"];

export async function show() {
  if (!drawn) draw();
  else for (const id of PLOTS) Plotly.Plots.resize(id);
  if (timer === null) {
    await poll();
    timer = setInterval(poll, INTERVAL_MS);
  }
}

export function hide() {
  clearInterval(timer);
  timer = null;
  previous.clear(); // rates restart on return rather than spanning the hidden time
}
