// One archived event: its fields, payload, deliveries and every attempt (GET /admin/events/{id}).
// Shown in the live view's side panel, and on its own at #/events/{id}.

import { get, post } from "./api.js";
import { h, viewHead, dateTime, json, statusBadge, copyButton, table, toast, showError } from "./ui.js";

/** Loads and renders the event into `box`; `onChange` runs after a retry from here. */
export async function loadInto(box, id) {
  box.replaceChildren(h("p", { class: "empty" }, "Loading…"));
  try {
    const detail = await get(`/admin/events/${encodeURIComponent(id)}`);
    box.replaceChildren(renderDetail(detail, () => loadInto(box, id)));
  } catch (e) {
    box.replaceChildren(h("p", { class: "form-error", role: "alert" }, e.message));
  }
}

export function renderDetail(detail, reload) {
  const ev = detail.event;
  const deliveries = detail.deliveries || [];
  return h("div", { class: "event-detail", "data-event-id": ev.id },
    h("dl", { class: "kv" },
      h("dt", {}, "Id"), h("dd", {}, h("span", { class: "mono" }, ev.id), " ", copyButton(ev.id)),
      h("dt", {}, "Source"), h("dd", {}, ev.source),
      h("dt", {}, "Type"), h("dd", {}, ev.type),
      h("dt", {}, "Action"), h("dd", {}, ev.action ?? "—"),
      h("dt", {}, "Received"), h("dd", {}, dateTime(ev.timestamp)),
      h("dt", {}, "Delivery id"), h("dd", { class: "mono" }, ev.deliveryId ?? "—"),
      h("dt", {}, "Status"), h("dd", {}, detail.erasedAt
        ? h("span", { class: "badge bad" }, `erased ${dateTime(detail.erasedAt)}`)
        : detail.filtered
          ? h("span", { class: "badge warn" }, "filtered out")
          : h("span", { class: "badge ok" }, "processed"))),
    explanation(detail),
    detail.erasedAt ? null : h("p", {}, h("button", {
      type: "button", class: "small", "data-testid": "replay",
      onclick: async (e) => {
        const button = e.currentTarget;
        button.disabled = true;
        try {
          const r = await post(`/admin/events/${encodeURIComponent(ev.id)}/replay`);
          toast(r.routed
            ? `Replayed: ${r.deliveries.length} new ${r.deliveries.length === 1 ? "delivery" : "deliveries"}`
            : "Replayed: no route takes it now");
          reload();
        } catch (err) {
          showError(err);
          button.disabled = false;
        }
      },
    }, "Replay"), " ", h("span", { class: "hint" }, "Routes it again under the current rules, with new deliveries.")),
    h("h3", {}, `Deliveries (${deliveries.length})`),
    deliveries.length
      ? deliveries.map((d) => delivery(d, reload, ev))
      : h("p", { class: "muted" }, detail.filtered
        ? "Filtered out: no deliveries."
        : "No push deliveries (no route matched, or only stream agents received it)."),
    h("h3", {}, "Payload"),
    detail.erasedAt
      ? h("p", { class: "muted" }, "Erased: the payload, headers and delivery bodies were removed; this tombstone keeps the id, source, type and time.")
      : [h("pre", { class: "json", tabindex: "0", "aria-label": "Payload", "data-testid": "payload" }, json(ev.payload)),
        h("details", {},
          h("summary", {}, "Metadata"),
          h("pre", { class: "json", tabindex: "0" }, json(ev.metadata)))]);
}

/** Why the event went nowhere (the API's `explanation`, under the rules as they are now). */
function explanation(detail) {
  const why = detail.explanation;
  if (!why) return null;
  const link = (kind, id) => h("a", { href: `#/${kind}/${encodeURIComponent(id)}/edit`, class: "mono" }, id);
  let text;
  if (why.excludedBy) {
    text = ["Filtered out by the exclude filter ", link("filters", why.excludedBy), "."];
  } else if (why.unmatchedIncludes && why.unmatchedIncludes.length) {
    text = ["Filtered out: no include filter for its source and type matched (checked: ",
      why.unmatchedIncludes.map((id, i) => [i ? ", " : "", link("filters", id)]), ")."];
  } else if (detail.filtered) {
    text = "Filtered out when it arrived; under the current filters it would pass (they changed since).";
  } else if (why.routesChecked && why.routesChecked.length) {
    const matched = why.routesChecked.filter((r) => r.matched);
    text = matched.length
      ? ["Routes that match it now: ", matched.map((r, i) => [i ? ", " : "", link("routes", r.id)]),
        " (the rules changed since it arrived, its deliveries were deleted from the dead-letter queue, or it went only to stream agents). Replay it to deliver it now."]
      : ["No route matched. Routes checked: ",
        why.routesChecked.map((r, i) => [i ? ", " : "", link("routes", r.id)]), "."];
  } else {
    text = "No enabled route covers its source.";
  }
  return h("p", { class: "explanation notice", "data-testid": "explanation" }, text);
}

const TRIGGERS = {
  initial: "first attempt",
  scheduled: "scheduled retry",
  manual_retry: "manual retry",
  replay: "replay",
};

/** Text as JSON, indented, when it is JSON; else as it is. */
function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function headerText(headers) {
  return Object.entries(headers).map(([k, v]) => `${k}: ${v}`).join("\n");
}

/** One attempt's exchange: what was sent, and what the agent answered. */
function exchange(a, open) {
  const parts = [];
  if (a.responseBody !== null && a.responseBody !== undefined) {
    const cut = new TextEncoder().encode(a.responseBody).length >= 4096;
    parts.push(h("h5", {}, cut ? "Response body (first 4 KiB)" : "Response body"),
      h("pre", { class: "json", tabindex: "0", "data-testid": "response-body" }, pretty(a.responseBody)));
  } else if (a.statusCode) {
    parts.push(h("p", { class: "muted" }, "The agent answered with an empty body."));
  }
  if (a.responseHeaders) {
    parts.push(h("h5", {}, "Response headers"),
      h("pre", { class: "json", tabindex: "0" }, headerText(a.responseHeaders)));
  } else {
    parts.push(h("p", { class: "muted" }, a.error ? `No answer: ${a.error}` : "No answer recorded."));
  }
  if (a.requestHeaders) {
    parts.push(h("h5", {}, "Request headers sent"),
      h("pre", { class: "json", tabindex: "0" }, headerText(a.requestHeaders)));
  }
  const summary = `Attempt ${a.attempt}: ${a.statusCode ?? "no answer"}${a.error ? ` — ${a.error}` : ""}`;
  return h("details", { class: "exchange", "data-attempt-detail": a.attempt, open },
    h("summary", {}, summary), parts);
}

function delivery(d, reload, ev) {
  const retry = d.status === "dead"
    ? h("button", {
      type: "button", class: "small",
      onclick: async (e) => {
        const button = e.currentTarget;
        button.disabled = true;
        try {
          await post(`/admin/dlq/${encodeURIComponent(d.id)}/retry`);
          toast("Delivery retried");
          window.dispatchEvent(new Event("er:dlq-changed"));
          reload();
        } catch (err) {
          showError(err);
          button.disabled = false;
        }
      },
    }, "Retry")
    : null;
  const log = d.attemptLog || [];
  return h("section", { class: "delivery", "data-delivery-id": d.id, "data-status": d.status },
    h("div", { class: "delivery-head" },
      h("strong", {}, `→ ${d.agentId}`),
      statusBadge(d.status), retry),
    h("dl", { class: "kv" },
      h("dt", {}, "Route"), h("dd", {}, d.routeId),
      h("dt", {}, "Delivery id"), h("dd", { class: "mono" }, d.id),
      h("dt", {}, "Attempts"), h("dd", {}, String(d.attempts)),
      d.nextAttemptAt && !["delivered", "dead", "cancelled", "superseded"].includes(d.status)
        ? [h("dt", {}, "Next attempt"), h("dd", {}, dateTime(d.nextAttemptAt))] : null,
      d.orderingKey ? [h("dt", {}, "Ordering key"), h("dd", { class: "mono" }, d.orderingKey)] : null,
      d.coalesceKey ? [h("dt", {}, "Coalescing key"), h("dd", { class: "mono" }, d.coalesceKey)] : null,
      d.supersededBy ? [h("dt", {}, "Superseded by"), h("dd", { class: "mono" }, d.supersededBy)] : null,
      d.supersededCount ? [h("dt", {}, "Superseded"), h("dd", {}, `${d.supersededCount} earlier deliveries`)] : null,
      d.lastError ? [h("dt", {}, "Last error"), h("dd", {}, d.lastError)] : null),
    h("h4", { class: "visually-hidden" }, "Attempts"),
    table(["#", "Why", "Started", { label: "Took", class: "num" }, "Answer", "Error"],
      log.map((a) => h("tr", { "data-attempt": a.attempt },
        h("td", {}, String(a.attempt)),
        h("td", {}, a.trigger ? TRIGGERS[a.trigger] || a.trigger : "—"),
        h("td", {}, dateTime(a.startedAt)),
        h("td", { class: "num" }, `${a.durationMs} ms`),
        h("td", {}, a.statusCode ? String(a.statusCode) : "—"),
        h("td", {}, a.error ?? ""))),
      "No attempt yet.", { "aria-label": `Attempts of the delivery to ${d.agentId}` }),
    // The last attempt's exchange is open when it failed: the agent's own words first.
    log.map((a, i) => exchange(a, i === log.length - 1 && Boolean(a.error))),
    h("details", { class: "exchange" },
      h("summary", {}, d.requestBody ? "Body sent (transformed by the route)" : "Body sent (the event)"),
      h("pre", { class: "json", tabindex: "0" }, d.requestBody ? pretty(d.requestBody) : json(ev))));
}

/** #/events/{id}: the event on a page of its own. */
export function render(main, args) {
  const id = args[0] || "";
  const box = h("div", {});
  main.append(viewHead("Event", h("a", { class: "button", href: "#/live" }, "← Live events")), box);
  loadInto(box, id);
}
