// The console shell: API key, HTTP and WebSocket helpers, page switching.
import * as overview from "./overview.js";
import * as models from "./models.js";
import * as forecast from "./forecast.js";
import * as text from "./text.js";
import * as sessions from "./sessions.js";

const KEY_STORAGE = "lstm-serve-key";
const PAGES = { overview, models, forecast, text, sessions };
let current = null;
let started = false;

// The service's root (a proxy may serve it under a prefix): the page is at <root>/ui.
export const ROOT = location.pathname.replace(/\/ui\/?$/, "");

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function headers(extra) {
  const h = { ...extra };
  const key = apiKey();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

// fetch() with the key; a JSON body when `body` is given. Throws ApiError on 4xx/5xx.
export async function request(method, path, body, options = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  if (options.signal) init.signal = options.signal;
  const response = await fetch(ROOT + path, init);
  if (response.status === 401) askForKey("The key was refused; enter a valid key.");
  if (!response.ok) {
    let problem = null;
    try { problem = await response.json(); } catch { /* not JSON */ }
    throw new ApiError(response.status, problem);
  }
  return response;
}

export async function api(method, path, body) {
  const response = await request(method, path, body);
  return response.status === 204 ? null : response.json();
}

// A WebSocket to `path`, with the key as the `bearer.<key>` subprotocol.
export function socket(path) {
  const url = new URL(ROOT + path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const key = apiKey();
  return key ? new WebSocket(url, ["bearer." + key]) : new WebSocket(url);
}

export function say(message, isError = false) {
  const status = document.getElementById("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

// Plotly defaults shared by every chart: sized by its container, no external links.
export const PLOT_CONFIG = { responsive: true, displaylogo: false, displayModeBar: false };
export function plotLayout(extra = {}) {
  return {
    margin: { l: 48, r: 12, t: 8, b: 36 },
    height: 240,
    legend: { orientation: "h", y: -0.2 },
    font: { size: 11 },
    ...extra,
  };
}

let modelsCache = null;
// Every model with each version's public manifest.
export async function catalogue(refresh = false) {
  if (modelsCache && !refresh) return modelsCache;
  const list = await api("GET", "/v1/models");
  const out = [];
  for (const m of list.models) {
    const versions = [];
    for (const v of m.versions) {
      versions.push(await api("GET", `/v1/models/${encodeURIComponent(m.name)}?version=${v}`));
    }
    out.push({ ...m, manifests: versions });
  }
  modelsCache = out;
  return out;
}

export function fillSelect(select, options) {
  const previous = select.value;
  select.replaceChildren(...options.map(([value, label]) => el("option", { value }, label)));
  if (options.some(([value]) => value === previous)) select.value = previous;
}

function askForKey(message) {
  const form = document.getElementById("key-form");
  document.getElementById("key-error").textContent = message || "";
  form.hidden = false;
  document.getElementById("main").hidden = true;
  document.getElementById("key-input").focus();
}

function show(name) {
  if (!PAGES[name]) name = "overview";
  if (current && current !== name) PAGES[current].hide?.();
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.dataset.page !== name;
  }
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  current = name;
  say("");
  Promise.resolve(PAGES[name].show()).catch((err) => say(String(err.message || err), true));
}

async function start() {
  // Probe: does this server want a key, and is the stored one good?
  const response = await fetch(ROOT + "/v1/models", { headers: headers({}) });
  if (response.status === 401) {
    askForKey(apiKey() ? "The stored key was refused." : "");
    return;
  }
  document.getElementById("key-form").hidden = true;
  document.getElementById("main").hidden = false;
  document.getElementById("key-forget").hidden = !apiKey();
  if (!started) {
    started = true;
    for (const page of Object.values(PAGES)) page.init?.();
    window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  }
  show(location.hash.slice(1) || "overview");
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, document.getElementById("key-input").value.trim());
  document.getElementById("key-input").value = "";
  start().catch((err) => say(String(err), true));
});
document.getElementById("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  location.reload();
});

start().catch((err) => say(String(err), true));
