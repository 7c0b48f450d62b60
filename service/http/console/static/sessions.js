// Sessions: the key's live sessions; fork, reset, export state, delete.
import { api, catalogue, el, fillSelect, say } from "./app.js";

let ticker = null;

function ttlLeft(expiresAt) {
  const seconds = Math.max(0, Math.round((Date.parse(expiresAt) - Date.now()) / 1000));
  const m = Math.floor(seconds / 60);
  return m ? `${m} min ${seconds % 60} s` : `${seconds} s`;
}

async function act(label, fn) {
  try {
    await fn();
    say(label);
  } catch (err) {
    say(String(err.message || err), true);
  }
  await refresh();
}

function actions(s) {
  const id = encodeURIComponent(s.id);
  const button = (text, onclick) =>
    el("button", { type: "button", "data-action": text.toLowerCase(), "aria-label": `${text} session ${s.id}`, onclick }, text);
  return el("div", { class: "actions" },
    button("Fork", () => act(`Forked ${s.id.slice(0, 8)}…`, () => api("POST", `/v1/sessions/${id}/fork`))),
    button("Reset", () => act(`Reset ${s.id.slice(0, 8)}…`, () => api("POST", `/v1/sessions/${id}/reset`))),
    button("Export", () => act(`Exported the state of ${s.id.slice(0, 8)}…`, async () => {
      const state = await api("GET", `/v1/sessions/${id}/state`);
      const pre = document.getElementById("ss-export");
      pre.textContent = JSON.stringify(state, null, 2);
      pre.hidden = false;
      const blob = new Blob([pre.textContent], { type: "application/json" });
      document.getElementById("ss-download")?.remove();
      const link = el("a", { id: "ss-download", href: URL.createObjectURL(blob), download: `session-${s.id}.json` }, "Download the state");
      pre.before(link);
    })),
    button("Delete", () => act(`Deleted ${s.id.slice(0, 8)}…`, () => api("DELETE", `/v1/sessions/${id}`))),
  );
}

export async function refresh() {
  const { sessions } = await api("GET", "/v1/sessions");
  sessions.sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id));
  const body = document.querySelector("#ss-table tbody");
  body.replaceChildren(...sessions.map((s) =>
    el("tr", { "data-id": s.id },
      el("td", {}, el("code", { title: s.id }, s.id.slice(0, 12) + "…")),
      el("td", {}, s.model), el("td", {}, String(s.version)), el("td", { class: "steps" }, String(s.steps)),
      el("td", { class: "ttl", "data-expires": s.expires_at }, ttlLeft(s.expires_at)),
      el("td", {}, actions(s)))));
  if (!sessions.length) body.append(el("tr", {}, el("td", { colspan: "6" }, "No live sessions for this key.")));
  document.getElementById("ss-table").dataset.count = String(sessions.length);
}

export function init() {
  document.getElementById("sessions-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const model = document.getElementById("ss-model").value;
    act(`Created a ${model} session`, () => api("POST", "/v1/sessions", { model }));
  });
  document.getElementById("ss-refresh").addEventListener("click", () => act("Refreshed", async () => {}));
}

export async function show() {
  const all = await catalogue();
  fillSelect(document.getElementById("ss-model"), all.filter((m) => m.manifests.some((v) => v.stateful)).map((m) => [m.name, m.name]));
  await refresh();
  clearInterval(ticker);
  ticker = setInterval(() => {
    for (const cell of document.querySelectorAll("#ss-table td.ttl")) cell.textContent = ttlLeft(cell.dataset.expires);
  }, 1000);
}

export function hide() {
  clearInterval(ticker);
}
