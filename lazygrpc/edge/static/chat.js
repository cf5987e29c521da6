// lazygrpc's chat page: streams /v1/chat/completions through the edge (no build step).
// Intermediate events and the changed globals come as named SSE events (x-lazy-events);
// the session id and the globals go back with every request (lazy-session-id, baggage).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { sessionId: null, globals: {}, controller: null };

function setStatus(text) {
  $("status").textContent = text;
  $("status").dataset.state = text;
}

function add(parent, tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  parent.appendChild(el);
  return el;
}

function addUsage(total, added) {
  const out = { ...total };
  for (const [key, n] of Object.entries(added)) out[key] = (out[key] || 0) + n;
  return out;
}

// W3C baggage: the session's globals as lazy.<key>=<percent-encoded JSON>.
function baggageHeader() {
  return Object.entries(state.globals)
    .map(([k, v]) => `lazy.${encodeURIComponent(k)}=${encodeURIComponent(JSON.stringify(v))}`)
    .join(",");
}

function describe(value) {
  if (value && typeof value === "object" && Array.isArray(value.passages)) {
    return "retrieved: " + value.passages.map((p) => `${p.source} (${p.score})`).join("; ");
  }
  return typeof value === "string" ? value : JSON.stringify(value);
}

function showGlobals() {
  $("session").textContent = state.sessionId ? `session ${state.sessionId}` : "-";
  $("globals").textContent = JSON.stringify(state.globals, null, 2);
}

function showError(error) {
  $("chain").replaceChildren();
  $("error").textContent = `${error.status || error.type || "error"}: ${error.message}`;
  for (const hop of error.chain || []) {
    const where = hop.method ? `${hop.service}.${hop.method}` : hop.service;
    add($("chain"), "li", "hop", `${where} — ${hop.error_type}: ${hop.message}`);
  }
}

// One SSE message: its event name and its data.
function* messages(buffer) {
  for (const block of buffer) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (data.length) yield { event, data: data.join("\n") };
  }
}

function handle(msg, answer) {
  if (msg.data === "[DONE]") return;
  const value = JSON.parse(msg.data);
  if (msg.event === "intermediate") {
    const li = add($("events"), "li");
    add(li, "span", "source", `[${value.source}] `);
    add(li, "span", "value", describe(value.value));
  } else if (msg.event === "globals") {
    state.sessionId = value.session_id;
    // `usage` comes back as what this answer added: add it (docs/sessions.md).
    const { usage, ...changed } = value.globals;
    if (usage) state.globals.usage = addUsage(state.globals.usage || {}, usage);
    Object.assign(state.globals, changed);
    for (const key of value.deleted) delete state.globals[key];
    showGlobals();
  } else if (msg.event === "error") {
    showError(value.error);
    setStatus("error");
  } else if (value.choices && value.choices.length) {
    const delta = value.choices[0].delta || {};
    if (delta.content) answer.textContent += delta.content;
  }
}

async function ask(text) {
  $("events").replaceChildren();
  $("chain").replaceChildren();
  $("error").textContent = "";
  add($("transcript"), "div", "msg user", text);
  const answer = add($("transcript"), "div", "msg assistant", "");
  answer.id = "answer";
  document.querySelectorAll(".assistant").forEach((el) => { if (el !== answer) el.removeAttribute("id"); });
  const headers = { "content-type": "application/json", "x-lazy-events": "intermediate,globals" };
  if (state.sessionId) headers["lazy-session-id"] = state.sessionId;
  const bag = baggageHeader();
  if (bag) headers.baggage = bag;
  state.controller = new AbortController();
  $("stop").disabled = false;
  $("send").disabled = true;
  setStatus("streaming");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers,
      signal: state.controller.signal,
      body: JSON.stringify({
        model: $("model").value,
        messages: [{ role: "user", content: text }],
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    state.sessionId = response.headers.get("lazy-session-id") || state.sessionId;
    if (!response.ok) {
      showError((await response.json()).error);
      setStatus("error");
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      const blocks = pending.split("\n\n");
      pending = blocks.pop();
      for (const msg of messages(blocks)) handle(msg, answer);
    }
    if ($("status").dataset.state !== "error") setStatus("done");
  } catch (err) {
    if (err.name === "AbortError") setStatus("stopped");
    else { $("error").textContent = String(err); setStatus("error"); }
  } finally {
    state.controller = null;
    $("stop").disabled = true;
    $("send").disabled = false;
    showGlobals();
  }
}

async function loadModels() {
  const response = await fetch("/v1/models");
  const body = await response.json();
  if (!response.ok) { showError(body.error); return; }
  const select = $("model");
  for (const m of body.data) {
    const option = add(select, "option", null, `${m.id} (${m.lazygrpc.kind})`);
    option.value = m.id;
  }
  const preferred = body.data.find((m) => m.lazygrpc.kind === "module" && m.lazygrpc.streaming);
  if (preferred) select.value = preferred.id;
}

$("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (text && !state.controller) { $("prompt").value = ""; ask(text); }
});
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
showGlobals();
loadModels();
