// Agents: list (each agent's delivery mode: push to a URL, pull by polling consumers, or stream
// only; a push agent's health, a pull agent's consumers, and the signing secret, revealed on
// demand and copyable), create, edit, delete; reset a circuit breaker, enable a disabled agent.

import { get, post, put, del } from "./api.js";
import { h, viewHead, table, toast, confirmDialog, copyButton, showError, number, percent, time, dateTime, ago } from "./ui.js";
import { input, textarea, checkbox, select, resourceForm, numberOf, textOf, LocalError } from "./forms.js";

/** Consumers listed per pull agent; the others are summed up in one line. */
const CONSUMERS_SHOWN = 5;

export function render(main, args) {
  if (args[0] === "new") return renderForm(main, null);
  if (args[1] === "edit") return renderForm(main, args[0]);
  return renderList(main);
}

async function renderList(main) {
  const error = h("p", { class: "form-error", role: "alert" });
  const body = h("div", {}, h("p", { class: "empty" }, "Loading…"));
  main.append(viewHead("Agents", h("a", { class: "button primary", href: "#/agents/new" }, "New agent")), error, body);
  try {
    // The agents, and at a glance how each is doing: the last 24 hours' figures and when it
    // last succeeded and failed (activity and figures are best-effort: the list shows without).
    const [{ items }, metrics, activity] = await Promise.all([
      get("/admin/agents"),
      get("/analytics/metrics?hours=24").catch(() => null),
      get("/admin/agent-activity").catch(() => null),
    ]);
    const byAgent = (metrics && metrics.byAgent) || {};
    const seen = (activity && activity.agents) || {};
    body.replaceChildren(table(
      ["Id", "Name", "Delivery", { label: "Concurrency", class: "num hide-narrow" }, "State", "Last 24 h", "Health", "Signing secret", ""],
      items.map((a) => h("tr", { "data-id": a.id },
        h("td", { class: "mono" }, a.id),
        h("td", {}, a.name),
        h("td", { class: "delivery-mode", "data-mode": modeOf(a) }, deliveryCell(a)),
        h("td", { class: "num hide-narrow" }, number(a.maxConcurrency)),
        h("td", {}, a.enabled
          ? [h("span", { class: "badge ok" }, "active"), " ",
            h("button", { type: "button", class: "small", onclick: () => setEnabled(a, false, main), title: "Hold its deliveries until resumed" }, "Pause")]
          : [h("span", { class: "badge warn" }, "paused"), " ",
            h("button", { type: "button", class: "small", onclick: () => setEnabled(a, true, main) }, "Resume")]),
        h("td", { class: "activity" }, activityCell(a, byAgent[a.id], seen[a.id])),
        h("td", {}, healthCell(a, main)),
        h("td", {}, secretCell(a)),
        h("td", { class: "actions" },
          modeOf(a) !== "stream" ? h("button", { type: "button", class: "small", onclick: (e) => sendTest(a, e.currentTarget) }, "Send test event") : null,
          h("a", { class: "button small", href: `#/agents/${encodeURIComponent(a.id)}/edit` }, "Edit"),
          h("button", { type: "button", class: "small danger", onclick: () => remove(a.id, main) }, "Delete")))),
      "No agents yet. Create one to deliver events to it."));
  } catch (e) {
    body.replaceChildren();
    showError(e, error);
  }
}

/** How the agent gets its deliveries: "push" (posted to its url), "pull" (leased to polling
 * consumers) or "stream" (only its streams, no stored deliveries). */
function modeOf(agent) {
  if (agent.mode === "pull") return "pull";
  return agent.url ? "push" : "stream";
}

/** Push: the URL. Pull: its consumers (name, leases held, last poll). Stream only: says so. */
function deliveryCell(agent) {
  const mode = modeOf(agent);
  if (mode === "push") return h("div", { class: "push-target" }, h("span", { class: "badge" }, "push"), " ", h("span", { class: "mono" }, agent.url));
  if (mode === "stream") return h("span", { class: "muted" }, "stream only");
  // The most recent pollers first; a long list (the router keeps up to 256) is cut short.
  const consumers = [...(agent.consumers || [])].sort((x, y) => y.lastPollAt - x.lastPollAt);
  const shown = consumers.slice(0, CONSUMERS_SHOWN);
  const rest = consumers.slice(CONSUMERS_SHOWN);
  const leases = (n) => `${number(n)} ${n === 1 ? "lease" : "leases"}`;
  return h("div", { class: "consumers", "data-testid": "consumers" },
    h("span", { class: "badge info" }, "pull"), " ",
    consumers.length
      ? h("ul", { "aria-label": `Consumers of ${agent.id}` },
        shown.map((c) => h("li", { "data-consumer": c.name },
          h("span", { class: "mono" }, c.name), " ",
          h("span", { "data-testid": "leases" }, leases(c.leases)),
          h("span", { class: "muted", title: dateTime(c.lastPollAt) }, ` · polled ${ago(c.lastPollAt)}`))),
        rest.length
          ? h("li", { class: "muted" }, `… and ${number(rest.length)} more, holding ${leases(rest.reduce((n, c) => n + c.leases, 0))}`)
          : null)
      : h("span", { class: "muted" }, "no consumer has polled"));
}

/** A push agent's circuit breaker: its state, why, and a reset when it is not closed. */
function healthCell(agent, main) {
  const health = agent.health;
  if (!health) return h("span", { class: "muted" }, "—");
  const kind = { closed: "ok", open: "bad", half_open: "warn" }[health.state] || "";
  const label = { closed: "closed", open: "open", half_open: "probing" }[health.state] || health.state;
  const detail = health.state === "closed"
    ? (health.consecutiveFailures ? `${health.consecutiveFailures} failed in a row` : "")
    : `${health.consecutiveFailures} failed in a row${health.nextProbeAt ? `, next try ${new Date(health.nextProbeAt).toLocaleTimeString()}` : ""}`;
  return h("span", { class: "health", "data-state": health.state, title: health.lastError || "" },
    h("span", { class: `badge ${kind}` }, label),
    detail ? h("span", { class: "muted" }, ` ${detail}`) : null,
    health.state !== "closed"
      ? [" ", h("button", { type: "button", class: "small", onclick: () => resetHealth(agent.id, main) }, "Reset breaker")]
      : null);
}

async function resetHealth(id, main) {
  try {
    await post(`/admin/agents/${encodeURIComponent(id)}/health/reset`);
    toast(`Breaker of "${id}" closed`);
    main.replaceChildren();
    renderList(main);
  } catch (e) {
    showError(e);
  }
}

/** Sends one test event straight to the agent, then shows how its delivery went. */
async function sendTest(agent, button) {
  button.disabled = true;
  try {
    const { eventId, deliveryId } = await post(`/admin/agents/${encodeURIComponent(agent.id)}/test`);
    toast(`Test event sent to "${agent.id}"`);
    // Its outcome: the event's page shows the attempt and what the agent answered.
    location.hash = `#/events/${encodeURIComponent(eventId)}`;
    button.dataset.deliveryId = deliveryId;
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

/** Success rate, last success, last failure (with the breaker's last error) and dead letters. */
function activityCell(agent, figures, seen) {
  if (modeOf(agent) === "stream") return h("span", { class: "muted" }, "—");
  const f = figures || { succeeded: 0, failed: 0, deadLettered: 0 };
  const n = f.succeeded + f.failed;
  const rate = n ? f.succeeded / n : null;
  const low = rate !== null && rate < 0.95;
  const lastError = agent.health && agent.health.lastError;
  return h("div", { class: "glance" },
    h("div", {}, h("span", { class: low ? "badge bad" : "", "data-testid": "success-rate" }, rate === null ? "—" : percent(rate)),
      h("span", { class: "muted" }, ` of ${number(n)} attempts`)),
    h("div", { class: "muted" }, "last ok ",
      h("span", { title: seen && seen.lastSuccessAt ? dateTime(seen.lastSuccessAt) : "" }, seen && seen.lastSuccessAt ? time(seen.lastSuccessAt) : "—")),
    h("div", { class: "muted" }, "last failed ",
      h("span", { title: lastError || "" }, seen && seen.lastFailureAt ? time(seen.lastFailureAt) : "—"),
      lastError ? h("span", { class: "reason" }, `: ${lastError}`) : null),
    f.deadLettered
      ? h("div", {}, h("a", { href: `#/dlq/${encodeURIComponent(agent.id)}` }, `${number(f.deadLettered)} dead`))
      : null);
}

async function setEnabled(agent, enabled, main) {
  try {
    const { health, consumers, ...stored } = agent;
    await put(`/admin/agents/${encodeURIComponent(agent.id)}`, { ...stored, enabled });
    toast(enabled ? `Agent "${agent.id}" resumed` : `Agent "${agent.id}" paused: its deliveries wait`);
    main.replaceChildren();
    renderList(main);
  } catch (e) {
    showError(e);
  }
}

/** The secret hidden until asked for; Copy works either way. */
function secretCell(agent) {
  if (!agent.secret) return h("span", { class: "muted" }, "—");
  const shown = h("code", { "data-secret": "" }, "whsec_••••••••");
  const reveal = h("button", { type: "button", class: "small", "aria-pressed": "false" }, "Reveal");
  reveal.addEventListener("click", () => {
    const on = reveal.getAttribute("aria-pressed") !== "true";
    shown.textContent = on ? agent.secret : "whsec_••••••••";
    reveal.textContent = on ? "Hide" : "Reveal";
    reveal.setAttribute("aria-pressed", String(on));
  });
  return h("span", { class: "secret" }, shown, reveal, copyButton(agent.secret));
}

async function remove(id, main) {
  if (!(await confirmDialog(`Delete agent "${id}"? Routes that target it must be changed first.`))) return;
  try {
    await del(`/admin/agents/${encodeURIComponent(id)}`);
    toast(`Agent "${id}" deleted`);
    main.replaceChildren();
    renderList(main);
  } catch (e) {
    showError(e);
  }
}

async function renderForm(main, id) {
  main.append(viewHead(id ? `Edit agent ${id}` : "New agent"));
  let agent = {};
  if (id) {
    try {
      agent = await get(`/admin/agents/${encodeURIComponent(id)}`);
    } catch (e) {
      main.append(h("p", { class: "form-error", role: "alert" }, e.message));
      return;
    }
  }
  const headers = Object.entries(agent.headers || {}).map(([k, v]) => `${k}: ${v}`).join("\n");
  // A new agent is pushed to by default; a stored one keeps its mode.
  const mode = id ? modeOf(agent) : "push";
  const urlField = input("url", "URL", agent.url, { type: "url", placeholder: "https://agent.example.com/events" }, "Where deliveries are posted (signed, retried).");
  const pullPath = h("code", { "data-testid": "pull-path" });
  const pullHint = h("p", { class: "hint mode-hint", "data-testid": "pull-hint" },
    "Consumers poll ", pullPath, " with the agent's API key (or AGENT_API_KEY), then ack each delivery; unacked leases are retried.");
  const streamHint = h("p", { class: "hint mode-hint" }, "No stored deliveries: the agent only watches its streams (/stream/sse, /stream/ws).");
  const form = resourceForm({
    title: id ? "Edit agent" : "New agent",
    back: "#/agents",
    saved: id ? "Agent saved" : "Agent created",
    fields: [
      h("div", { class: "row" },
        input("id", "Id", agent.id, { required: true, readonly: Boolean(id) }, id ? "The id cannot change." : "Letters, digits and _ . : -"),
        input("name", "Name", agent.name, { required: true })),
      input("description", "Description", agent.description),
      h("div", { class: "row" },
        select("mode", "Delivery mode", [["push", "Push: posted to a URL"], ["pull", "Pull: consumers poll"], ["stream", "Stream only"]], mode),
        h("div", { class: "mode-detail" }, urlField, pullHint, streamHint)),
      h("div", { class: "row" },
        input("secret", "Signing secret", "", { placeholder: id ? "unchanged" : "generated", autocomplete: "off" },
          id ? "Leave empty to keep the current secret." : "whsec_… (Standard Webhooks). Leave empty to generate one."),
        input("apiKey", "API key", "", { type: "password", autocomplete: "new-password", placeholder: id ? "unchanged" : "none" },
          "The agent's own stream key, at least 16 characters. Write-only.")),
      textarea("headers", "Extra headers", headers, { rows: 3, placeholder: "X-Team: platform" }, "One per line, as Name: value."),
      h("div", { class: "row three" },
        input("timeoutMs", "Timeout (ms)", agent.timeoutMs ?? 10000, { inputmode: "numeric" }),
        input("maxConcurrency", "Max concurrency", agent.maxConcurrency ?? 16, { inputmode: "numeric" }),
        h("div", {})),
      h("fieldset", { "data-field": "rateLimit" },
        h("legend", {}, "Pacing (optional)"),
        h("div", { class: "row" },
          input("rateLimit.limit", "Deliveries", agent.rateLimit?.limit, { inputmode: "numeric" }),
          input("rateLimit.window", "per window (ms)", agent.rateLimit?.window, { inputmode: "numeric" })),
        h("p", { class: "field-error", "data-error-for": "rateLimit", role: "alert" })),
      checkbox("enabled", "Enabled", agent.enabled ?? true),
    ],
    collect: (f) => {
      const body = {
        id: textOf(f, "id") ?? "",
        name: textOf(f, "name") ?? "",
        description: textOf(f, "description"),
        secret: textOf(f, "secret"),
        apiKey: textOf(f, "apiKey"),
        headers: parseHeaders(f.elements.headers.value),
        timeoutMs: numberOf(f, "timeoutMs"),
        maxConcurrency: numberOf(f, "maxConcurrency"),
        enabled: f.elements.enabled.checked,
      };
      // Push: the url (the server says at its field when it is missing). Pull: no url. Stream
      // only: neither a url nor a mode.
      const chosen = f.elements.mode.value;
      if (chosen === "push") Object.assign(body, { url: textOf(f, "url"), mode: "push" });
      if (chosen === "pull") body.mode = "pull";
      const limit = numberOf(f, "rateLimit.limit");
      const window = numberOf(f, "rateLimit.window");
      if (limit !== undefined || window !== undefined) body.rateLimit = { limit, window };
      // Settings this form does not edit are kept as they are.
      if (agent.circuitBreaker) body.circuitBreaker = agent.circuitBreaker;
      return body;
    },
    send: (body) => (id ? put(`/admin/agents/${encodeURIComponent(id)}`, body) : post("/admin/agents", body)),
  });
  // Only what the chosen mode uses is shown; the poll path names the agent's id as typed.
  const showMode = () => {
    const chosen = form.elements.mode.value;
    urlField.hidden = chosen !== "push";
    form.elements.url.disabled = chosen !== "push";
    pullHint.hidden = chosen !== "pull";
    streamHint.hidden = chosen !== "stream";
    const typed = form.elements.id.value.trim();
    pullPath.textContent = `GET /agents/${typed ? encodeURIComponent(typed) : "{id}"}/deliveries?consumer=NAME`;
  };
  form.elements.mode.addEventListener("change", showMode);
  form.elements.id.addEventListener("input", showMode);
  showMode();
  main.append(form);
  form.querySelector(id ? "[name=name]" : "[name=id]").focus();
}

/** "Name: value" lines into an object. */
function parseHeaders(text) {
  const out = {};
  for (const [i, line] of text.split("\n").entries()) {
    if (!line.trim()) continue;
    const at = line.indexOf(":");
    if (at <= 0) throw new LocalError("headers", `line ${i + 1}: expected Name: value`);
    out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return out;
}
