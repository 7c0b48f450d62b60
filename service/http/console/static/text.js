// Text playground: generate with "stream": true and show the server-sent events character
// by character; then each step's top tokens, from one predict over the whole text.
import { api, catalogue, el, fillSelect, request, say } from "./app.js";

let steps = []; // per generated character: {token, p, top}
let running = false;

function numberOrNull(id) {
  const v = document.getElementById(id).value.trim();
  return v === "" ? null : Number(v);
}

// Calls onEvent(name, data) for each server-sent event of `response`.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

function showStep(i) {
  const box = document.getElementById("tx-step");
  const s = steps[i];
  if (!s) return;
  const shown = (t) => (t === "\n" ? "⏎" : t === " " ? "␠" : t);
  const rows = (s.top || []).map((t) =>
    el("tr", { class: t.token === s.token ? "chosen" : "" },
      el("td", {}, el("code", {}, shown(t.token))), el("td", {}, (t.p * 100).toFixed(1) + "%")));
  box.replaceChildren(
    el("p", {}, `Step ${i}: `, el("code", {}, shown(s.token)), ` sampled with p = ${(s.p * 100).toFixed(1)}%`),
    s.top ? el("table", { class: "top" }, el("caption", {}, "Model's top tokens at this step"),
      el("tbody", {}, ...rows)) : el("p", {}, "top tokens: after the stream ends"),
  );
  for (const node of document.querySelectorAll("#tx-output .tok.active")) node.classList.remove("active");
  document.querySelector(`#tx-output .tok[data-step="${i}"]`)?.classList.add("active");
}

async function run(event) {
  event.preventDefault();
  if (running) return;
  const model = document.getElementById("tx-model").value;
  const prompt = document.getElementById("tx-prompt").value;
  const body = {
    context: prompt,
    steps: numberOrNull("tx-steps") ?? 1,
    temperature: numberOrNull("tx-temperature") ?? 1,
    top_k: numberOrNull("tx-topk"),
    seed: numberOrNull("tx-seed"),
    stream: true,
  };
  const out = document.getElementById("tx-output");
  out.replaceChildren(el("span", { class: "prompt" }, prompt));
  out.dataset.state = "streaming";
  steps = [];
  running = true;
  document.getElementById("tx-run").setAttribute("aria-disabled", "true");
  try {
    const response = await request("POST", `/v1/models/${encodeURIComponent(model)}/generate`, body);
    let generated = "";
    await readEvents(response, (name, data) => {
      if (name === "step") {
        const i = steps.length;
        steps.push({ token: data.output.token, p: data.output.p, top: null });
        generated += data.output.token;
        out.append(el("span", { class: "tok", "data-step": String(i), title: `p = ${data.output.p.toFixed(3)}` }, data.output.token));
        showStep(i);
      } else if (name === "error") {
        throw new Error(data.detail || data.title);
      }
    });
    // The distribution each step was drawn from (before temperature and top-k):
    // position k of a predict over prompt + generated text is the next-token distribution.
    const promptLength = Array.from(prompt).length;
    if (steps.length) {
      const whole = prompt + generated;
      const prediction = await api("POST", `/v1/models/${encodeURIComponent(model)}/predict`, { text: whole, return: "all" });
      steps.forEach((s, i) => { s.top = prediction.outputs[promptLength + i - 1]?.top || null; });
    }
    out.dataset.state = "done";
    say(`${steps.length} characters generated.`);
    if (steps.length) showStep(steps.length - 1);
  } finally {
    running = false;
    document.getElementById("tx-run").removeAttribute("aria-disabled");
    if (out.dataset.state === "streaming") out.dataset.state = "failed";
  }
}

// The generated characters only (the prompt excluded).
export function generatedText() {
  return steps.map((s) => s.token).join("");
}

export function init() {
  document.getElementById("text-form").addEventListener("submit", (event) =>
    run(event).catch((err) => say(String(err.message || err), true)));
  const out = document.getElementById("tx-output");
  const pick = (event) => {
    const tok = event.target.closest && event.target.closest(".tok");
    if (tok) showStep(Number(tok.dataset.step));
  };
  out.addEventListener("mouseover", pick);
  out.addEventListener("click", pick);
  // Keyboard: arrow keys move through the steps while the output has focus.
  out.addEventListener("keydown", (event) => {
    const active = document.querySelector("#tx-output .tok.active");
    let i = active ? Number(active.dataset.step) : steps.length - 1;
    if (event.key === "ArrowLeft") i -= 1;
    else if (event.key === "ArrowRight") i += 1;
    else return;
    event.preventDefault();
    if (i >= 0 && i < steps.length) showStep(i);
  });
}

export async function show() {
  const all = await catalogue();
  const options = [];
  for (const model of all.filter((m) => m.task === "language_model")) {
    options.push([model.name, model.name]);
  }
  fillSelect(document.getElementById("tx-model"), options);
}
