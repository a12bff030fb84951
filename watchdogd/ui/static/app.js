// The operator page of watchdogd: reads the API with the tab's token, follows GET /v1/events,
// and sends the operators' votes. Data is only ever written into the page as text.
"use strict";

const TOKEN_KEY = "watchdogd.token";
const RANK = { viewer: 0, deployer: 1, operator: 2, admin: 3 };
const OPEN_STATES = new Set(["pending", "awaiting_approval"]);
const REFRESH_MS = 15000; // rule values between state changes come from a periodic re-read
const RETRY_MS = 2000;

const page = {
  token: null,
  who: null,
  deployments: [],
  rollbacks: [],
  audit: [],
  abort: null,
  lastEventId: null,
  refreshTimer: null,
  voting: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "cls") node.className = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + page.token, Accept: "application/json" };
  const init = { method, headers, cache: "no-store", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : { code: "http_" + response.status, message: response.statusText };
    if (response.status === 401) signOut("The token was refused: " + error.message);
    throw new ApiError(response.status, error.code, error.message);
  }
  return data;
}

function mayVote() {
  return page.who !== null && RANK[page.who.role] >= RANK.operator;
}

function time(text) {
  if (!text) return "";
  const at = new Date(text);
  return at.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function number(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  return Math.abs(value) >= 1000 || value === Math.trunc(value) ? String(value) : value.toPrecision(4);
}

function countdown(executeAt) {
  const left = Math.round((new Date(executeAt).getTime() - Date.now()) / 1000);
  if (left <= 0) return "executing now";
  const m = Math.floor(left / 60);
  const s = left % 60;
  return "executes in " + (m > 0 ? m + "m " : "") + s + "s";
}

function say(text, isError) {
  const node = $("message");
  node.textContent = text;
  node.className = isError ? "message error" : "message";
}

// --- rendering ---------------------------------------------------------------------------------

function reasonLine(reason) {
  const parts = [];
  if (reason.rule) parts.push(el("strong", { text: reason.rule }), " ");
  parts.push(reason.reason || "");
  if (reason.rule && reason.value !== undefined) {
    parts.push(" ", el("span", { cls: "value", text: "value " + number(reason.value) }));
    if (reason.threshold !== null && reason.threshold !== undefined) {
      parts.push(el("span", { cls: "value", text: " threshold " + number(reason.threshold) }));
    }
  }
  if (reason.operator) parts.push(" ", el("span", { cls: "actor", text: "by " + reason.operator }));
  return el("li", {}, parts);
}

function proposalCard(rollback) {
  const buttons = [];
  if (mayVote()) {
    buttons.push(
      el("button", { type: "button", cls: "veto danger", data: { rollback: rollback.id }, on: { click: () => openVeto(rollback.id) }, text: "Veto" }),
      el("button", { type: "button", cls: "approve", data: { rollback: rollback.id }, on: { click: () => openApprove(rollback.id) }, text: "Approve" }),
      el("button", { type: "button", cls: "ack", data: { rollback: rollback.id }, on: { click: () => ack(rollback.id) }, text: "Ack" }),
    );
  }
  const when = rollback.state === "pending"
    ? el("span", { cls: "countdown", data: { executeAt: rollback.execute_at }, text: countdown(rollback.execute_at) })
    : el("span", { cls: "countdown", text: "waiting for an operator's approval" });
  return el(
    "article",
    { cls: "proposal", data: { rollback: rollback.id, state: rollback.state } },
    el("h3", {}, rollback.service, " ", el("code", { text: rollback.id }), " ", el("span", { cls: "badge " + rollback.state, text: rollback.state })),
    el("p", {}, when, " · deployment ", el("code", { text: rollback.deployment_id }), " · proposed " + time(rollback.proposed_at)),
    el("ul", { cls: "reasons" }, rollback.reasons.map(reasonLine)),
    rollback.steps.length ? el("p", { cls: "plan", text: "plan: " + rollback.steps.map((s) => s.name).join(" → ") }) : null,
    buttons.length ? el("div", { cls: "actions" }, buttons) : null,
  );
}

function ruleRow(rule) {
  return el(
    "tr",
    { cls: "rule", data: { rule: rule.name, state: rule.state } },
    el("td", { text: rule.name }),
    el("td", {}, el("span", { cls: "badge " + rule.state, text: rule.state })),
    el("td", { cls: "num", text: number(rule.value) }),
    el("td", { text: time(rule.since) }),
    el("td", { text: rule.reason || "" }),
  );
}

function deploymentCard(deployment) {
  const rules = deployment.rules.length
    ? el("table", { cls: "rules" },
        el("thead", {}, el("tr", {}, ["rule", "state", "value", "since", "why"].map((h) => el("th", { text: h })))),
        el("tbody", {}, deployment.rules.map(ruleRow)))
    : el("p", { cls: "empty", text: "No rules." });
  return el(
    "article",
    { cls: "deployment", data: { deployment: deployment.id, state: deployment.state } },
    el("h3", {}, deployment.service, " ", el("code", { text: deployment.image || "(no image)" }), " ", el("span", { cls: "badge " + deployment.state, text: deployment.state })),
    el("p", { text: "id " + deployment.id + " · started " + time(deployment.started_at) + " · window ends " + time(deployment.window_ends_at) + (deployment.previous_image ? " · previous " + deployment.previous_image : "") }),
    rules,
  );
}

function rollbackRow(rollback) {
  const steps = rollback.steps.map((s) => s.name + ": " + s.state + (s.error ? " (" + s.error + ")" : "")).join(", ");
  return el(
    "tr",
    { data: { rollback: rollback.id, state: rollback.state } },
    el("td", {}, el("code", { text: rollback.id })),
    el("td", { text: rollback.service }),
    el("td", {}, el("span", { cls: "badge " + rollback.state, text: rollback.state })),
    el("td", { text: time(rollback.proposed_at) }),
    el("td", { text: time(rollback.finished_at) }),
    el("td", { text: rollback.reasons.map((r) => (r.rule ? r.rule + ": " : "") + r.reason).join("; ") }),
    el("td", { text: steps + (rollback.error ? " — " + rollback.error : "") }),
  );
}

function replace(id, nodes, emptyText) {
  const box = $(id);
  box.replaceChildren(...(nodes.length ? nodes : [el("p", { cls: "empty", text: emptyText })]));
}

function render() {
  const open = page.rollbacks.filter((r) => OPEN_STATES.has(r.state));
  replace("proposals", open.map(proposalCard), "None.");
  const shown = page.deployments.filter((d) => d.state === "watching").concat(
    page.deployments.filter((d) => d.state !== "watching").slice(0, 10));
  replace("deployments", shown.map(deploymentCard), "None.");
  const done = page.rollbacks.filter((r) => !OPEN_STATES.has(r.state)).slice(0, 20);
  replace("rollbacks", done.length
    ? [el("table", {},
        el("thead", {}, el("tr", {}, ["id", "service", "state", "proposed", "finished", "reasons", "steps"].map((h) => el("th", { text: h })))),
        el("tbody", {}, done.map(rollbackRow)))]
    : [], "None.");
  $("audit").tBodies[0].replaceChildren(...page.audit.map((e) => el(
    "tr", { data: { action: e.action } },
    el("td", { text: time(e.at) }),
    el("td", { text: e.actor }),
    el("td", { text: e.action }),
    el("td", {}, el("code", { text: e.deployment_id || "" })),
    el("td", {}, el("code", { text: e.rollback_id || "" })),
    el("td", { text: e.detail && Object.keys(e.detail).length ? JSON.stringify(e.detail) : "" }),
  )));
}

function tick() {
  for (const node of document.querySelectorAll("[data-execute-at]")) {
    node.textContent = countdown(node.dataset.executeAt);
  }
}

// --- reading ------------------------------------------------------------------------------------

async function refresh() {
  if (!page.token) return;
  try {
    const [deployments, rollbacks, audit] = await Promise.all([
      api("GET", "/v1/deployments"),
      api("GET", "/v1/rollbacks"),
      api("GET", "/v1/audit?limit=50"),
    ]);
    page.deployments = deployments.items;
    page.rollbacks = rollbacks.items;
    page.audit = audit.items;
    render();
  } catch (error) {
    if (page.token) say("Could not read the API: " + error.message, true);
  }
}

function refreshSoon() {
  clearTimeout(page.refreshTimer);
  page.refreshTimer = setTimeout(refresh, 200);
}

function onRuleState(data) {
  const deployment = page.deployments.find((d) => d.id === data.deployment_id);
  const rule = deployment && deployment.rules.find((r) => r.name === data.rule);
  if (!rule) return refreshSoon();
  rule.state = data.to || data.state || rule.state;
  if (data.value !== undefined) rule.value = data.value;
  if (typeof data.at === "number") rule.since = new Date(data.at * 1000).toISOString();
  if (data.reason !== undefined) rule.reason = data.reason;
  render();
}

function onFrame(text) {
  let kind = "message";
  const data = [];
  for (const line of text.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") kind = value;
    else if (field === "data") data.push(value);
    else if (field === "id") page.lastEventId = value;
  }
  if (!data.length && kind === "message") return;
  let body = {};
  try {
    body = data.length ? JSON.parse(data.join("\n")) : {};
  } catch (_) {
    return;
  }
  if (kind === "rule_state") onRuleState(body);
  else refreshSoon(); // proposals, votes, steps, outcomes, deployments, reset: re-read the state
}

function setStream(text, live) {
  const node = $("stream");
  node.textContent = text;
  node.className = live ? "stream live" : "stream";
}

async function follow() {
  while (page.token) {
    const abort = new AbortController();
    page.abort = abort;
    try {
      const headers = { Authorization: "Bearer " + page.token, Accept: "text/event-stream" };
      if (page.lastEventId) headers["Last-Event-ID"] = page.lastEventId;
      const response = await fetch("/v1/events", { headers, signal: abort.signal, cache: "no-store" });
      if (response.status === 401) {
        signOut("The token was refused by the event stream.");
        return;
      }
      if (!response.ok) throw new Error("event stream answered " + response.status);
      setStream("live", true);
      refreshSoon(); // what happened while the stream was down
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          onFrame(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (_) {
      if (abort.signal.aborted) return;
    }
    if (!page.token) return;
    setStream("reconnecting", false);
    await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
  }
}

// --- votes --------------------------------------------------------------------------------------

async function vote(id, action, body) {
  try {
    const answer = await api("POST", "/v1/rollbacks/" + encodeURIComponent(id) + "/" + action, body);
    say(action + " " + id + ": " + answer.state);
  } catch (error) {
    say(action + " " + id + " refused: " + error.message, true);
  }
  await refresh();
}

function openVeto(id) {
  page.voting = id;
  $("veto-id").textContent = id;
  $("veto-reason").value = "";
  $("veto-mute").value = "";
  $("veto-dialog").showModal();
  $("veto-reason").focus();
}

function openApprove(id) {
  page.voting = id;
  $("approve-id").textContent = id;
  $("approve-dialog").showModal();
}

function ack(id) {
  return vote(id, "ack", {});
}

// --- signing in and out -------------------------------------------------------------------------

async function signIn(token) {
  page.token = token;
  try {
    page.who = await api("GET", "/v1/whoami");
  } catch (error) {
    page.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(error.status === 401 ? "Unknown token." : "Could not sign in: " + error.message);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login").hidden = true;
  $("board").hidden = false;
  $("signout").hidden = false;
  $("who").textContent = page.who.name + " (" + page.who.role + ")";
  document.body.dataset.role = page.who.role;
  await refresh();
  follow();
}

function showLogin(error) {
  $("board").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  $("who").textContent = "";
  $("login-error").textContent = error || "";
  setStream("offline", false);
  $("token").focus();
}

function signOut(why) {
  page.token = null;
  page.who = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (page.abort) page.abort.abort();
  delete document.body.dataset.role;
  showLogin(why);
}

function wire() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (token) signIn(token);
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("veto-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const reason = $("veto-reason").value.trim();
    if (!reason) return;
    const body = { reason };
    if ($("veto-mute").value) body.mute_for = $("veto-mute").value;
    $("veto-dialog").close();
    vote(page.voting, "veto", body);
  });
  $("veto-cancel").addEventListener("click", () => $("veto-dialog").close());
  $("approve-form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("approve-dialog").close();
    vote(page.voting, "approve", {});
  });
  $("approve-cancel").addEventListener("click", () => $("approve-dialog").close());
  setInterval(tick, 1000);
  setInterval(() => { if (page.token) refresh(); }, REFRESH_MS);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else showLogin("");
}

document.addEventListener("DOMContentLoaded", wire);
