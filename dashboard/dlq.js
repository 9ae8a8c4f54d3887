// The dead-letter queue: deliveries that used up their attempts. Retry one, retry all (the
// API answers how many), delete; each row links to its event.

import { get, post, del, withQuery } from "./api.js";
import { h, viewHead, table, toast, confirmDialog, showError } from "./ui.js";
import { openEvent } from "./live.js";

const PAGE = 50;

/** `#/dlq` or `#/dlq/{agentId}` (the overview's links to an agent's dead letters). */
export function render(main, args = []) {
  let agentFilter = args[0] || "";
  const error = h("p", { class: "form-error", role: "alert" });
  const result = h("p", { class: "muted", role: "status", "data-testid": "dlq-result" });
  const agentSelect = h("select", { id: "dlq-agent" }, h("option", { value: "" }, "all agents"));
  const retryAll = h("button", { type: "button", class: "primary" }, "Retry all");
  const body = h("div", {}, h("p", { class: "empty" }, "Loading…"));
  const more = h("button", { type: "button", hidden: true }, "Load more");
  main.append(
    viewHead("Dead letters", retryAll),
    h("div", { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: "dlq-agent" }, "Agent"), agentSelect)),
    error, result, body, h("p", {}, more));

  let cursor = null;
  let rows = [];

  get("/admin/agents").then(({ items }) => {
    for (const a of items) agentSelect.append(h("option", { value: a.id, selected: a.id === agentFilter }, a.id));
  }).catch(() => {});

  async function load(append) {
    try {
      const page = await get(withQuery("/admin/dlq", { limit: PAGE, agentId: agentFilter, cursor: append ? cursor : "" }));
      error.textContent = "";
      rows = append ? rows.concat(page.items) : page.items;
      cursor = page.nextCursor;
      more.hidden = !cursor;
      window.dispatchEvent(new Event("er:dlq-changed"));
      draw();
    } catch (e) {
      showError(e, error);
    }
  }

  function draw() {
    retryAll.disabled = rows.length === 0;
    body.replaceChildren(table(
      ["Delivery", "Event", "Agent", { label: "Route", class: "hide-narrow" }, { label: "Attempts", class: "num" }, "Last error", ""],
      rows.map((d) => h("tr", { "data-id": d.id },
        h("td", { class: "mono" }, d.id.slice(-12)),
        h("td", {}, h("button", { type: "button", class: "small ghost mono", onclick: () => openEvent(d.eventId), "aria-label": `Open event ${d.eventId}` }, d.eventId.slice(-12))),
        h("td", {}, d.agentId),
        h("td", { class: "hide-narrow" }, d.routeId),
        h("td", { class: "num" }, String(d.attempts)),
        h("td", {}, d.lastError ?? ""),
        h("td", { class: "actions" },
          h("button", { type: "button", class: "small", onclick: (e) => retryOne(d, e.currentTarget) }, "Retry"),
          h("button", { type: "button", class: "small danger", onclick: () => remove(d) }, "Delete")))),
      agentFilter ? `No dead letters for ${agentFilter}.` : "The dead-letter queue is empty."));
  }

  async function retryOne(d, button) {
    button.disabled = true;
    try {
      const r = await post(`/admin/dlq/${encodeURIComponent(d.id)}/retry`);
      result.textContent = `Retried ${r.retried} delivery to ${d.agentId}.`;
      toast("Delivery retried");
      load(false);
    } catch (e) {
      button.disabled = false;
      showError(e, error);
    }
  }

  async function remove(d) {
    if (!(await confirmDialog(`Delete the dead letter ${d.id} (to ${d.agentId})? Its attempt log goes too.`))) return;
    try {
      await del(`/admin/dlq/${encodeURIComponent(d.id)}`);
      toast("Dead letter deleted");
      load(false);
    } catch (e) {
      showError(e, error);
    }
  }

  retryAll.addEventListener("click", async () => {
    const whom = agentFilter ? ` for ${agentFilter}` : "";
    if (!(await confirmDialog(`Retry every dead letter${whom}?`, "Retry all"))) return;
    retryAll.disabled = true;
    try {
      const r = await post("/admin/dlq/retry", agentFilter ? { agentId: agentFilter } : {});
      result.textContent = `Retried ${r.retried} ${r.retried === 1 ? "delivery" : "deliveries"}${whom}.`;
      toast(result.textContent);
      load(false);
    } catch (e) {
      showError(e, error);
      retryAll.disabled = false;
    }
  });
  agentSelect.addEventListener("change", () => {
    agentFilter = agentSelect.value;
    result.textContent = "";
    load(false);
  });
  more.addEventListener("click", () => load(true));
  load(false);
}
