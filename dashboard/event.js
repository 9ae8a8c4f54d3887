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
    h("h3", {}, `Deliveries (${deliveries.length})`),
    deliveries.length
      ? deliveries.map((d) => delivery(d, reload))
      : h("p", { class: "muted" }, detail.filtered
        ? "Filtered out: no deliveries."
        : "No push deliveries (no route matched, or only stream agents received it)."),
    h("h3", {}, "Payload"),
    detail.erasedAt
      ? h("p", { class: "muted" }, "Erased: the payload, headers and delivery bodies were removed; this tombstone keeps the id, source, type and time.")
      : [h("pre", { class: "json", tabindex: "0", "aria-label": "Payload" }, json(ev.payload)),
        h("details", {},
          h("summary", {}, "Metadata"),
          h("pre", { class: "json", tabindex: "0" }, json(ev.metadata)))]);
}

function delivery(d, reload) {
  const retry = d.status === "dead"
    ? h("button", {
      type: "button", class: "small",
      onclick: async (e) => {
        const button = e.currentTarget;
        button.disabled = true;
        try {
          await post(`/admin/dlq/${encodeURIComponent(d.id)}/retry`);
          toast("Delivery retried");
          reload();
        } catch (err) {
          showError(err);
          button.disabled = false;
        }
      },
    }, "Retry")
    : null;
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
    table(["#", "Started", { label: "Took", class: "num" }, "Answer", "Error"],
      (d.attemptLog || []).map((a) => h("tr", { "data-attempt": a.attempt },
        h("td", {}, String(a.attempt)),
        h("td", {}, dateTime(a.startedAt)),
        h("td", { class: "num" }, `${a.durationMs} ms`),
        h("td", {}, a.statusCode ? String(a.statusCode) : "—"),
        h("td", {}, a.error ?? ""))),
      "No attempt yet.", { "aria-label": `Attempts of the delivery to ${d.agentId}` }));
}

/** #/events/{id}: the event on a page of its own. */
export function render(main, args) {
  const id = args[0] || "";
  const box = h("div", {});
  main.append(viewHead("Event", h("a", { class: "button", href: "#/live" }, "← Live events")), box);
  loadInto(box, id);
}
