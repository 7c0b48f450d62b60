// Forecast playground: stream real held-out days (or pasted CSV rows) through a session's
// WebSocket one day per frame, drawing each one-step-ahead prediction against the actual
// value as it arrives; then a generate roll-out from the last day.
import { api, catalogue, el, fillSelect, plotLayout, PLOT_CONFIG, say, socket } from "./app.js";

let models = [];
let sample = null; // {names, times, values} of the selected model version
let running = false;

function current() {
  const [name, version] = document.getElementById("fc-model").value.split("@");
  const model = models.find((m) => m.name === name);
  return model && model.manifests.find((m) => String(m.version) === version);
}

async function loadSample() {
  const m = current();
  sample = null;
  const start = document.getElementById("fc-start");
  if (!m) return;
  if (m.sample) {
    sample = await api("GET", `/v1/models/${encodeURIComponent(m.name)}/sample?version=${m.version}`);
    fillSelect(start, sample.times.slice(0, -2).map((t, i) => [String(i), t]));
  } else {
    fillSelect(start, []);
  }
}

// Rows of the model's features from CSV text: a header naming the features (any order,
// other columns ignored; a date column labels the rows), or bare rows of the features.
export function parseCsv(textValue, names) {
  const lines = textValue.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  if (!lines.length) throw new Error("the CSV is empty");
  const cells = lines.map((l) => l.split(/[,;\t]/).map((c) => c.trim()));
  let columns = names.map((_, i) => i);
  let dateColumn = -1;
  if (cells[0].some((c) => c !== "" && Number.isNaN(Number(c)))) {
    const header = cells.shift().map((c) => c.toLowerCase());
    columns = names.map((n) => header.indexOf(n.toLowerCase()));
    const missing = names.filter((_, i) => columns[i] < 0);
    if (missing.length) throw new Error(`the header lacks ${missing.join(", ")}`);
    dateColumn = header.findIndex((c) => c === "date" || c === "time" || c === "day");
  }
  const values = cells.map((row, r) => columns.map((c) => {
    const v = Number(row[c]);
    if (row[c] === undefined || row[c] === "" || !Number.isFinite(v)) {
      throw new Error(`row ${r + 1}: ${names[columns.indexOf(c)]} is not a number`);
    }
    return v;
  }));
  const times = cells.map((row, r) => (dateColumn >= 0 ? row[dateColumn] : String(r)));
  return { names, times, values };
}

function plotsFor(names) {
  const box = document.getElementById("fc-plots");
  box.replaceChildren(...names.map((n, i) =>
    el("figure", {}, el("figcaption", {}, n), el("div", { class: "plot", id: `fc-plot-${i}` }))));
  const dates = sampleIsDated();
  names.forEach((n, i) => {
    const trace = (name, extra = {}) => ({ x: [], y: [], name, type: "scatter", mode: "lines+markers", ...extra });
    Plotly.newPlot(`fc-plot-${i}`, [
      trace("actual"),
      trace("predicted (one day ahead)"),
      trace("roll-out", { line: { dash: "dot" } }),
      trace("actual after", { line: { dash: "dash" }, marker: { size: 4 } }),
    ], plotLayout({ xaxis: dates ? { type: "date" } : {}, yaxis: { title: { text: n } } }), PLOT_CONFIG);
  });
}

let source = null;
function sampleIsDated() {
  return source && source.times.length && /^\d{4}-\d\d-\d\d/.test(source.times[0]);
}

function extend(index, trace, x, y) {
  Plotly.extendTraces(`fc-plot-${index}`, { x: [[x]], y: [[y]] }, [trace]);
}

// Sends each row as its own frame and resolves with the replies in order.
function stream(sessionId, rows, onReply) {
  return new Promise((resolve, reject) => {
    const ws = socket(`/v1/sessions/${sessionId}/stream`);
    let next = 0;
    const sendNext = () => ws.send(JSON.stringify({ inputs: [rows[next]], offset: next }));
    ws.onopen = () => sendNext();
    ws.onmessage = (event) => {
      const reply = JSON.parse(event.data);
      if (reply.error) {
        ws.close();
        reject(new Error(reply.error.detail || reply.error.title));
        return;
      }
      onReply(next, reply.outputs[0]);
      next += 1;
      if (next < rows.length) sendNext();
      else {
        ws.close(1000);
        resolve();
      }
    };
    ws.onclose = (event) => {
      if (next < rows.length) reject(new Error(`the stream closed (${event.code} ${event.reason})`));
    };
  });
}

async function run(event) {
  event.preventDefault();
  if (running) return;
  const m = current();
  if (!m) return;
  const days = Number(document.getElementById("fc-days").value);
  const rollout = Number(document.getElementById("fc-rollout").value);
  const names = m.input.names;
  let start = 0;
  if (document.getElementById("fc-source").value === "csv") {
    source = parseCsv(document.getElementById("fc-csv").value, names);
  } else {
    if (!sample) throw new Error(`${m.name} version ${m.version} ships no held-out days`);
    source = { ...sample, values: sample.values.map((row) => names.map((n) => row[sample.names.indexOf(n)])) };
    start = Number(document.getElementById("fc-start").value);
  }
  const rows = source.values.slice(start, start + days);
  const times = source.times.slice(start, start + days + 1 + rollout);
  if (!rows.length) throw new Error("no rows to stream");
  const label = (i) => (i < times.length ? times[i] : (sampleIsDated() ? addDays(times[times.length - 1], i - times.length + 1) : String(start + i)));
  running = true;
  document.getElementById("fc-run").setAttribute("aria-disabled", "true");
  plotsFor(names);
  const session = await api("POST", "/v1/sessions", { model: m.name, version: m.version, ttl_seconds: 600 });
  const errors = names.map(() => ({ model: 0, persistence: 0, n: 0 }));
  let lastPrediction = null;
  try {
    await stream(session.id, rows, (i, output) => {
      names.forEach((_, f) => {
        extend(f, 0, label(i), rows[i][f]);
        extend(f, 1, label(i + 1), output[f]);
        if (i > 0) {
          errors[f].model += (lastPrediction[f] - rows[i][f]) ** 2;
          errors[f].persistence += (rows[i - 1][f] - rows[i][f]) ** 2;
          errors[f].n += 1;
        }
      });
      lastPrediction = output;
    });
    const generated = await api("POST", `/v1/sessions/${session.id}/generate`, { steps: rollout });
    generated.outputs.forEach((output, k) => {
      names.forEach((_, f) => extend(f, 2, label(rows.length + 1 + k), output[f]));
    });
    const after = source.values.slice(start + rows.length, start + rows.length + 1 + rollout);
    after.forEach((row, k) => names.forEach((_, f) => extend(f, 3, label(rows.length + k), row[f])));
    const rmse = errors.map((e, f) => e.n ? `${names[f]} ${Math.sqrt(e.model / e.n).toFixed(2)} vs persistence ${Math.sqrt(e.persistence / e.n).toFixed(2)}` : "");
    document.getElementById("fc-summary").textContent =
      `Streamed ${rows.length} days through session ${session.id.slice(0, 8)}…, then a ${rollout}-day roll-out. ` +
      (errors[0].n ? `One-day-ahead RMSE over the streamed days: ${rmse.join("; ")}.` : "");
    say("");
  } finally {
    running = false;
    document.getElementById("fc-run").removeAttribute("aria-disabled");
  }
}

function addDays(isoDay, n) {
  const d = new Date(isoDay + "T00:00:00Z");
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}

export function init() {
  document.getElementById("forecast-form").addEventListener("submit", (event) =>
    run(event).catch((err) => say(String(err.message || err), true)));
  document.getElementById("fc-model").addEventListener("change", () =>
    loadSample().catch((err) => say(String(err.message || err), true)));
  document.getElementById("fc-source").addEventListener("change", (event) => {
    const csv = event.target.value === "csv";
    document.getElementById("fc-csv-label").hidden = !csv;
    document.getElementById("fc-start").disabled = csv;
  });
}

export async function show() {
  const all = await catalogue();
  models = all.filter((m) => m.task === "regression");
  const options = [];
  for (const model of models) {
    for (const m of model.manifests) {
      if (m.stateful && m.autoregressive) options.push([`${m.name}@${m.version}`, `${m.name} v${m.version}`]);
    }
  }
  const select = document.getElementById("fc-model");
  const before = select.value;
  fillSelect(select, options);
  if (select.value !== before || !sample) await loadSample();
  const names = current() ? current().input.names : [];
  const csv = document.getElementById("fc-csv");
  if ((!csv.value || select.value !== before) && sample) {
    csv.value = [["date", ...names].join(","), ...sample.times.slice(0, 10).map((t, i) => [t, ...names.map((n) => sample.values[i][sample.names.indexOf(n)])].join(","))].join("\n");
  }
}
