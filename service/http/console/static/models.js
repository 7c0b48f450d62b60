// Models: every model and version with its public manifest, and the held-out metrics
// against the naive baselines as a table and a bar chart.
import { catalogue, el, plotLayout, PLOT_CONFIG } from "./app.js";

function row(label, value) {
  return el("tr", {}, el("th", { scope: "row" }, label), el("td", {}, value));
}

function inputText(m) {
  const i = m.input;
  if (i.kind === "text") return `text, vocabulary of ${i.vocab_size} characters`;
  const units = i.units ? i.names.map((n, k) => `${n} (${i.units[k]})`) : i.names;
  return `${i.size} features: ${units.join(", ")}`;
}

function outputText(m) {
  const o = m.output;
  if (o.kind !== "regression") return `next-token distribution over ${o.vocab_size} tokens`;
  const units = o.units ? o.names.map((n, k) => `${n} (${o.units[k]})`) : o.names;
  return `${o.size} values: ${units.join(", ")}`;
}

// metrics {"rmse": .., "rmse_persistence.temp_max": ..} -> {series: {group: value}}
// where a series is the model (the headline metric) or a baseline, a group "all" or a feature.
function metricTable(m) {
  const head = m.headline_metric || Object.keys(m.metrics)[0];
  const series = new Map();
  const groups = [];
  for (const [key, value] of Object.entries(m.metrics)) {
    const [base, group = "all"] = key.split(".");
    const name = base === head ? "model" : base.startsWith(head + "_") ? base.slice(head.length + 1) : base;
    if (!series.has(name)) series.set(name, new Map());
    series.get(name).set(group, value);
    if (!groups.includes(group)) groups.push(group);
  }
  return { head, series, groups };
}

function metricsBlock(m, id) {
  const { head, series, groups } = metricTable(m);
  if (!series.size) return [el("p", {}, "No held-out metrics recorded.")];
  const names = [...series.keys()];
  const table = el(
    "table",
    {},
    el("caption", {}, `Held-out ${head} (lower is better)`),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, ""), ...names.map((n) => el("th", { scope: "col" }, n)))),
    el(
      "tbody",
      {},
      ...groups.map((g) =>
        el("tr", {}, el("th", { scope: "row" }, g), ...names.map((n) => {
          const v = series.get(n).get(g);
          return el("td", {}, v === undefined ? "" : v.toPrecision(4));
        })),
      ),
    ),
  );
  const chart = el("div", { class: "plot", id, role: "img", "aria-label": `${head} of the model and its baselines` });
  return [el("div", { class: "table-wrap" }, table), chart, () => {
    const data = names.map((n) => ({
      type: "bar", name: n, x: groups, y: groups.map((g) => series.get(n).get(g) ?? null),
    }));
    Plotly.newPlot(id, data, plotLayout({ barmode: "group", yaxis: { title: { text: head } } }), PLOT_CONFIG);
  }];
}

function versionCard(m) {
  const id = `metrics-${m.name}-${m.version}`;
  const t = m.training;
  const manifest = el(
    "table",
    { class: "manifest" },
    el("tbody", {},
      row("Task", m.task),
      row("Cell", `${m.cell.toUpperCase()}, ${m.layers} layer${m.layers > 1 ? "s" : ""}, hidden ${m.hidden_size}`),
      row("Input", inputText(m)),
      row("Output", outputText(m)),
      row("State", m.state.map((s) => `${s.name} [${s.shape.join(", ")}]`).join(", ")),
      row("Autoregressive", m.autoregressive ? "yes" : "no"),
      row("sha256", el("code", { class: "hash" }, m.sha256)),
      row("Training data", t ? `${t.dataset} (${t.package} ${t.package_version}, ${t.source}), ${t.rows} rows` : "not recorded"),
      row("Split", t ? t.split : ""),
      row("Parity", Object.entries(m.parity).filter(([, v]) => v !== null).map(([k, v]) => `${k} ${v.toExponential(1)}`).join(", ")),
      row("Created", m.created_at),
    ),
  );
  const [tableWrap, chart, draw] = metricsBlock(m, id);
  const card = el("article", { class: "panel model" },
    el("h3", {}, `${m.name} `, el("span", { class: "version" }, `version ${m.version}`)),
    el("p", {}, m.description || ""),
    el("div", { class: "table-wrap" }, manifest),
    tableWrap,
  );
  if (chart) card.append(chart);
  return { card, draw: typeof draw === "function" ? draw : null };
}

export async function show() {
  const models = await catalogue(true);
  const list = document.getElementById("models-list");
  const draws = [];
  list.replaceChildren(
    ...models.map((model) => {
      const section = el("section", { class: "model-group" }, el("h3", {}, model.name));
      for (const m of model.manifests) {
        const { card, draw } = versionCard(m);
        section.append(card);
        if (draw) draws.push(draw);
      }
      return section;
    }),
  );
  for (const draw of draws) draw();
}
