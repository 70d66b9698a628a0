// Grok's page: a chat over POST /v1/chat/completions (streamed as server-sent events), the
// cited posts as cards, and a trends panel polling GET /v1/trends. No framework, no CDN.
// Every text that comes from a post is set with textContent, never parsed as HTML.
"use strict";

const KEY_STORE = "grok.apiKey";
const TRENDS_EVERY_MS = 5000;
const WINDOW_STORE = "grok.trendsWindow";

const $ = (id) => document.getElementById(id);
const state = { key: localStorage.getItem(KEY_STORE) || "", messages: [], busy: false, timer: 0 };

function headers() {
  return { "X-API-Key": state.key, "Content-Type": "application/json" };
}

async function errorText(res) {
  try {
    const body = await res.json();
    const d = body.detail;
    return typeof d === "string" ? d : JSON.stringify(d);
  } catch {
    return res.statusText || "request failed";
  }
}

function showError(text) {
  const el = $("error");
  el.textContent = text;
  el.hidden = !text;
}

// --- API key -------------------------------------------------------------------------------

// `gigafactory demo --serve` prints a link with `#key=K&window=1m`: store both, then drop the
// fragment from the address bar.
function settingsFromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("key")) {
    state.key = params.get("key");
    localStorage.setItem(KEY_STORE, state.key);
  }
  if (params.has("window")) localStorage.setItem(WINDOW_STORE, params.get("window"));
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
}

function showKey() {
  const saved = Boolean(state.key);
  $("key-form").hidden = saved;
  $("key-status").hidden = !saved;
  if (saved) {
    loadModels();
    refreshTrends();
  } else {
    $("key-input").focus();
  }
}

function keyRefused(text) {
  localStorage.removeItem(KEY_STORE);
  state.key = "";
  showKey();
  showError(`The API key was refused: ${text}`);
}

async function loadModels() {
  const sel = $("model");
  try {
    const res = await fetch("/v1/models", { headers: headers() });
    if (res.status === 401) return keyRefused(await errorText(res));
    if (!res.ok) throw new Error(await errorText(res));
    const body = await res.json();
    sel.replaceChildren(
      ...body.data.map((m) => {
        const o = document.createElement("option");
        o.value = o.textContent = m.id;
        return o;
      }),
    );
  } catch (err) {
    sel.replaceChildren();
    showError(`Cannot list models: ${err.message}`);
  }
}

// --- trends --------------------------------------------------------------------------------

async function refreshTrends() {
  clearTimeout(state.timer);
  if (!state.key) return;
  const status = $("trends-status");
  try {
    const win = encodeURIComponent($("trends-window").value);
    const url = `/v1/trends?window=${win}&limit=10&min_count=3`;
    const res = await fetch(url, { headers: headers() });
    if (res.status === 401) return keyRefused(await errorText(res));
    if (!res.ok) throw new Error(await errorText(res));
    const body = await res.json();
    renderTrends(body.trends);
    status.textContent = body.trends.length
      ? `updated ${new Date().toLocaleTimeString()}`
      : "No trends yet: the stream is quiet.";
  } catch (err) {
    status.textContent = `Trends unavailable: ${err.message}`;
  }
  state.timer = setTimeout(refreshTrends, TRENDS_EVERY_MS);
}

function renderTrends(trends) {
  const items = trends.map((t) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "trend";
    b.dataset.term = t.term;
    const term = document.createElement("span");
    term.className = "trend-term";
    term.textContent = t.term;
    const n = document.createElement("span");
    n.className = "trend-count";
    n.textContent = `${t.count.toLocaleString()} posts · ×${t.ratio}`;
    b.append(term, n);
    b.setAttribute("aria-label", `Ask about ${t.term}: ${t.count} posts, ${t.ratio} times usual`);
    // a trend is a new topic: asked on its own, not as a follow-up of the conversation
    const q = `What is happening with ${t.term} right now?`;
    b.addEventListener("click", () => ask(q, { fresh: true }));
    li.append(b);
    return li;
  });
  $("trends").replaceChildren(...items);
}

// --- chat ----------------------------------------------------------------------------------

// Split a stream of bytes into server-sent events; call onData with each `data:` payload.
async function readEvents(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    buf += decoder.decode(value || new Uint8Array(), { stream: !done });
    const events = buf.split(/\r?\n\r?\n/);
    buf = done ? "" : events.pop();
    for (const ev of events) {
      const data = ev
        .split(/\r?\n/)
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data && onData(data) === false) return;
    }
    if (done) return;
  }
}

function addMessage(role, text) {
  $("empty")?.remove();
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const who = document.createElement("p");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Grok";
  const body = document.createElement("p");
  body.className = role === "user" ? "question-text" : "answer-text";
  body.textContent = text;
  div.append(who, body);
  $("log").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function ago(date) {
  const s = Math.max(0, (Date.now() - date.getTime()) / 1000);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return date.toLocaleString();
}

function safeUrl(url) {
  try {
    const u = new URL(url, location.href);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : "";
  } catch {
    return "";
  }
}

// The answer text with its [n] markers as links to the cards below it.
function renderAnswer(el, text, cites, prefix) {
  const known = new Set(cites.map((_, i) => i + 1));
  const parts = text.split(/(\[\d+\])/);
  el.replaceChildren(
    ...parts.map((p) => {
      const m = /^\[(\d+)\]$/.exec(p);
      if (!m || !known.has(Number(m[1]))) return document.createTextNode(p);
      const a = document.createElement("a");
      a.href = `#${prefix}-${m[1]}`;
      a.className = "marker";
      a.textContent = p;
      return a;
    }),
  );
}

function renderCitations(msg, cites, prefix) {
  if (!cites.length) return;
  const list = document.createElement("ol");
  list.className = "cites";
  list.setAttribute("aria-label", "cited posts");
  const tpl = $("cite-template");
  cites.forEach((c, i) => {
    const li = tpl.content.firstElementChild.cloneNode(true);
    li.id = `${prefix}-${i + 1}`;
    li.querySelector(".cite-n").textContent = `[${i + 1}]`;
    li.querySelector(".cite-author").textContent = `@${c.author}`;
    const time = li.querySelector(".cite-time");
    const created = new Date(c.created_at);
    time.dateTime = c.created_at;
    time.title = created.toISOString();
    time.textContent = ago(created);
    li.querySelector(".cite-text").textContent = c.text;
    const link = li.querySelector(".cite-link");
    const href = safeUrl(c.url || "");
    if (href) link.href = href;
    else link.remove();
    list.append(li);
  });
  msg.append(list);
}

let answers = 0;

// Ask `question` (with the earlier turns, unless `fresh`) and stream the answer into the log.
async function ask(question, { fresh = false } = {}) {
  question = question.trim();
  if (!question || state.busy) return;
  if (!state.key) {
    showError("Enter an API key first.");
    $("key-input").focus();
    return;
  }
  showError("");
  state.busy = true;
  $("ask").disabled = true;
  $("question").value = "";
  addMessage("user", question);
  const msg = addMessage("assistant", "");
  msg.setAttribute("aria-busy", "true");
  const textEl = msg.querySelector(".answer-text");
  const prefix = `a${++answers}`;
  let text = "";
  let cites = [];
  const earlier = fresh ? [] : state.messages;
  const messages = [...earlier, { role: "user", content: question }];
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ model: $("model").value || undefined, messages, stream: true }),
    });
    if (res.status === 401) return keyRefused(await errorText(res));
    if (!res.ok) throw new Error(`${res.status}: ${await errorText(res)}`);
    await readEvents(res.body, (data) => {
      if (data === "[DONE]") return false;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || "the answer failed");
      const piece = chunk.choices?.[0]?.delta?.content;
      if (piece) {
        text += piece;
        textEl.textContent = text;
        msg.dataset.chunks = String(Number(msg.dataset.chunks || 0) + 1);
      }
      if (Array.isArray(chunk.citations)) cites = chunk.citations;
      return true;
    });
    renderAnswer(textEl, text, cites, prefix);
    renderCitations(msg, cites, prefix);
    state.messages = [...messages, { role: "assistant", content: text }];
  } catch (err) {
    msg.classList.add("failed");
    textEl.textContent = text || "No answer.";
    showError(`Grok could not answer: ${err.message}`);
  } finally {
    msg.removeAttribute("aria-busy");
    msg.scrollIntoView({ block: "end" });
    state.busy = false;
    $("ask").disabled = false;
    $("question").focus();
  }
}

// --- wiring --------------------------------------------------------------------------------

function init() {
  settingsFromHash();
  const win = $("trends-window");
  const saved = localStorage.getItem(WINDOW_STORE);
  if (saved && [...win.options].some((o) => o.value === saved)) win.value = saved;
  win.addEventListener("change", () => {
    localStorage.setItem(WINDOW_STORE, win.value);
    refreshTrends();
  });
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("key-input").value.trim();
    $("key-input").value = "";
    if (!state.key) return;
    localStorage.setItem(KEY_STORE, state.key);
    showError("");
    showKey();
    $("question").focus();
  });
  $("key-change").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    state.key = "";
    clearTimeout(state.timer);
    showKey();
  });
  $("ask-form").addEventListener("submit", (e) => {
    e.preventDefault();
    ask($("question").value);
  });
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      ask($("question").value);
    }
  });
  $("new-chat").addEventListener("click", () => {
    state.messages = [];
    $("log").replaceChildren();
    showError("");
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refreshTrends();
  });
  showKey();
}

document.addEventListener("DOMContentLoaded", init);
