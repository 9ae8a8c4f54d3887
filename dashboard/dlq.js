// The dead-letter queue: deliveries that used up their attempts. Each shows when it died, its
// full ids (copyable), agent, route and last error; dead letters are grouped by error, narrowed
// by agent, source and time, selected and retried or deleted together (retry all: the API answers how
// many). After a retry the page follows the retried deliveries until they settle.

import { get, post, del, withQuery } from "./api.js";
import { h, viewHead, table, toast, confirmDialog, showError, copyButton, time, dateTime, number } from "./ui.js";
import { openEvent } from "./live.js";

const PAGE = 50;
/** How long and how often retried deliveries are followed. */
const FOLLOW_FOR_MS = 60000;
const FOLLOW_EVERY_MS = 1500;
const SINCE = [
  ["", "Any time"],
  ["3600000", "Last hour"],
  ["86400000", "Last 24 hours"],
  ["604800000", "Last 7 days"],
];

/** When a dead letter died: the end of its last attempt (or its last error's time unknown). */
function diedAt(d) {
  const log = d.attemptLog || [];
  const last = log[log.length - 1];
  return last ? last.startedAt + (last.durationMs || 0) : null;
}

/** `#/dlq` or `#/dlq/{agentId}` (the overview's links to an agent's dead letters). */
export function render(main, args = []) {
  let agentFilter = args[0] || "";
  let sourceFilter = "";
  let sinceFilter = "";
  let stopped = false;
  const selected = new Set();
  const error = h("p", { class: "form-error", role: "alert" });
  const result = h("p", { class: "muted", role: "status", "data-testid": "dlq-result" });
  const follow = h("p", { class: "muted", role: "status", "aria-live": "polite", "data-testid": "dlq-follow" });
  const total = h("span", { class: "muted", "data-testid": "dlq-total" });
  const agentSelect = h("select", { id: "dlq-agent" }, h("option", { value: "" }, "all agents"));
  const sourceSelect = h("select", { id: "dlq-source" }, h("option", { value: "" }, "all sources"));
  const sinceSelect = h("select", { id: "dlq-since" }, SINCE.map(([v, label]) => h("option", { value: v }, label)));
  const retryAll = h("button", { type: "button", class: "primary" }, "Retry all");
  const retrySelected = h("button", { type: "button", disabled: true }, "Retry selected");
  const deleteSelected = h("button", { type: "button", class: "danger", disabled: true }, "Delete selected");
  const groups = h("div", { class: "dlq-groups", "data-testid": "dlq-groups" });
  const body = h("div", {}, h("p", { class: "empty" }, "Loading…"));
  const more = h("button", { type: "button", hidden: true }, "Load more");
  main.append(
    viewHead("Dead letters", total, retryAll),
    h("div", { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: "dlq-agent" }, "Agent"), agentSelect),
      h("div", { class: "field" }, h("label", { for: "dlq-source" }, "Source"), sourceSelect),
      h("div", { class: "field" }, h("label", { for: "dlq-since" }, "Died"), sinceSelect),
      retrySelected, deleteSelected),
    error, result, follow, groups, body, h("p", {}, more));

  let cursor = null;
  let rows = [];

  get("/admin/agents").then(({ items }) => {
    for (const a of items) agentSelect.append(h("option", { value: a.id, selected: a.id === agentFilter }, a.id));
  }).catch(() => {});
  get("/admin/sources").then(({ items }) => {
    for (const s of items) sourceSelect.append(h("option", { value: s.name }, s.name));
  }).catch(() => {});

  async function loadTotal() {
    try {
      const stats = await get("/queue/stats");
      total.textContent = `${number(stats.deadLettered)} in all`;
    } catch {
      total.textContent = "";
    }
  }

  async function load(append) {
    try {
      const page = await get(withQuery("/admin/dlq", { limit: PAGE, agentId: agentFilter, source: sourceFilter, cursor: append ? cursor : "" }));
      if (stopped) return;
      error.textContent = "";
      rows = append ? rows.concat(page.items) : page.items;
      cursor = page.nextCursor;
      more.hidden = !cursor;
      for (const id of [...selected]) if (!rows.some((d) => d.id === id)) selected.delete(id);
      window.dispatchEvent(new Event("er:dlq-changed"));
      loadTotal();
      draw();
    } catch (e) {
      showError(e, error);
    }
  }

  const visible = () => {
    if (!sinceFilter) return rows;
    const from = Date.now() - Number(sinceFilter);
    return rows.filter((d) => (diedAt(d) ?? 0) >= from);
  };

  function updateSelection() {
    const n = selected.size;
    retrySelected.disabled = n === 0;
    deleteSelected.disabled = n === 0;
    retrySelected.textContent = n ? `Retry selected (${n})` : "Retry selected";
    deleteSelected.textContent = n ? `Delete selected (${n})` : "Delete selected";
  }

  function drawGroups(shown) {
    const byError = new Map();
    for (const d of shown) {
      const key = d.lastError || "(no error recorded)";
      if (!byError.has(key)) byError.set(key, []);
      byError.get(key).push(d);
    }
    if (byError.size < 1 || !shown.length) {
      groups.replaceChildren();
      return;
    }
    const sorted = [...byError.entries()].sort((a, b) => b[1].length - a[1].length);
    groups.replaceChildren(
      h("h2", {}, "By error"),
      h("ul", {}, sorted.map(([err, list]) => h("li", { "data-count": list.length },
        h("span", { class: "badge bad" }, String(list.length)), " ", h("span", { class: "err" }, err), " ",
        h("button", {
          type: "button", class: "small",
          onclick: () => {
            for (const d of list) selected.add(d.id);
            draw();
          },
        }, "Select these")))));
  }

  function draw() {
    const shown = visible();
    retryAll.disabled = rows.length === 0;
    drawGroups(shown);
    const all = h("input", {
      type: "checkbox", "aria-label": "Select every dead letter shown",
      checked: shown.length > 0 && shown.every((d) => selected.has(d.id)),
      onchange: (e) => {
        for (const d of shown) {
          if (e.currentTarget.checked) selected.add(d.id);
          else selected.delete(d.id);
        }
        draw();
      },
    });
    body.replaceChildren(table(
      [{ label: "", class: "select" }, "Died", "Delivery", "Event", "Agent", { label: "Route", class: "hide-narrow" }, { label: "Attempts", class: "num" }, "Last error", ""],
      shown.map((d) => {
        const died = diedAt(d);
        return h("tr", { "data-id": d.id },
          h("td", { class: "select" }, h("input", {
            type: "checkbox", "aria-label": `Select the dead letter ${d.id}`, checked: selected.has(d.id),
            onchange: (e) => {
              if (e.currentTarget.checked) selected.add(d.id);
              else selected.delete(d.id);
              updateSelection();
            },
          })),
          h("td", { title: died ? dateTime(died) : "" }, died ? dateTime(died) : "—"),
          h("td", {}, h("span", { class: "mono id" }, d.id), " ", copyButton(d.id, "Copy")),
          h("td", {},
            h("button", { type: "button", class: "small ghost mono id", onclick: () => openEvent(d.eventId), "aria-label": `Open event ${d.eventId}` }, d.eventId),
            " ", copyButton(d.eventId, "Copy")),
          h("td", {}, d.agentId),
          h("td", { class: "hide-narrow" }, d.routeId),
          h("td", { class: "num" }, String(d.attempts)),
          h("td", {}, d.lastError ?? ""),
          h("td", { class: "actions" },
            h("button", { type: "button", class: "small", onclick: (e) => retryOne(d, e.currentTarget) }, "Retry"),
            h("button", { type: "button", class: "small danger", onclick: () => remove(d) }, "Delete")));
      }),
      agentFilter ? `No dead letters for ${agentFilter}.` : "The dead-letter queue is empty."));
    const head = body.querySelector("thead th.select");
    if (head) head.append(all);
    updateSelection();
  }

  /** Follows retried deliveries (by their events) until each is delivered or dead again. */
  let following = 0;
  async function followUp(list) {
    if (!list.length) return;
    const run = ++following;
    const until = Date.now() + FOLLOW_FOR_MS;
    const byEvent = new Map();
    for (const d of list) byEvent.set(d.eventId, (byEvent.get(d.eventId) || []).concat(d.id));
    for (;;) {
      if (stopped || run !== following) return;
      const status = new Map();
      await Promise.all([...byEvent.entries()].map(async ([eventId, ids]) => {
        try {
          const detail = await get(`/admin/events/${encodeURIComponent(eventId)}`);
          for (const d of detail.deliveries) if (ids.includes(d.id)) status.set(d.id, d.status);
        } catch {
          // Gone (deleted, erased): counted as settled below.
        }
      }));
      const counts = { delivered: 0, dead: 0, waiting: 0 };
      for (const d of list) {
        const s = status.get(d.id);
        if (s === "delivered") counts.delivered += 1;
        else if (s === "dead" || s === "cancelled" || s === undefined) counts.dead += 1;
        else counts.waiting += 1;
      }
      const settled = counts.waiting === 0;
      follow.textContent = `${settled ? "Settled" : "Following"} ${list.length} retried: ${counts.delivered} delivered, `
        + `${counts.dead} dead again${settled ? "" : `, ${counts.waiting} still trying`}.`;
      follow.dataset.settled = String(settled);
      if (settled || Date.now() > until) {
        if (counts.dead) load(false);
        return;
      }
      await new Promise((r) => setTimeout(r, FOLLOW_EVERY_MS));
    }
  }

  async function retryList(list) {
    let retried = 0;
    const done = [];
    for (const d of list) {
      try {
        const r = await post(`/admin/dlq/${encodeURIComponent(d.id)}/retry`);
        retried += r.retried;
        done.push(d);
      } catch (e) {
        showError(e, error);
      }
    }
    return { retried, done };
  }

  async function retryOne(d, button) {
    button.disabled = true;
    const { retried, done } = await retryList([d]);
    if (retried) {
      result.textContent = `Retried ${retried} delivery to ${d.agentId}.`;
      toast("Delivery retried");
      selected.delete(d.id);
      followUp(done);
      load(false);
    } else {
      button.disabled = false;
    }
  }

  retrySelected.addEventListener("click", async () => {
    const list = rows.filter((d) => selected.has(d.id));
    retrySelected.disabled = true;
    const { retried, done } = await retryList(list);
    result.textContent = `Retried ${retried} ${retried === 1 ? "delivery" : "deliveries"} of ${list.length} selected.`;
    for (const d of done) selected.delete(d.id);
    followUp(done);
    load(false);
  });

  deleteSelected.addEventListener("click", async () => {
    const list = rows.filter((d) => selected.has(d.id));
    if (!(await confirmDialog(`Delete ${list.length} dead ${list.length === 1 ? "letter" : "letters"}? Their attempt logs go too.`))) return;
    let deleted = 0;
    for (const d of list) {
      try {
        await del(`/admin/dlq/${encodeURIComponent(d.id)}`);
        deleted += 1;
        selected.delete(d.id);
      } catch (e) {
        showError(e, error);
      }
    }
    result.textContent = `Deleted ${deleted} ${deleted === 1 ? "dead letter" : "dead letters"}.`;
    load(false);
  });

  async function remove(d) {
    if (!(await confirmDialog(`Delete the dead letter ${d.id} (to ${d.agentId})? Its attempt log goes too.`))) return;
    try {
      await del(`/admin/dlq/${encodeURIComponent(d.id)}`);
      toast("Dead letter deleted");
      selected.delete(d.id);
      load(false);
    } catch (e) {
      showError(e, error);
    }
  }

  retryAll.addEventListener("click", async () => {
    const whom = [agentFilter && ` for ${agentFilter}`, sourceFilter && ` from ${sourceFilter}`].filter(Boolean).join("");
    if (!(await confirmDialog(`Retry every dead letter${whom}?`, "Retry all"))) return;
    retryAll.disabled = true;
    // The ones listed are followed; the API answers only how many it retried.
    const listed = rows.slice();
    try {
      const narrow = {};
      if (agentFilter) narrow.agentId = agentFilter;
      if (sourceFilter) narrow.source = sourceFilter;
      const r = await post("/admin/dlq/retry", narrow);
      result.textContent = `Retried ${r.retried} ${r.retried === 1 ? "delivery" : "deliveries"}${whom}.`;
      toast(result.textContent);
      selected.clear();
      followUp(listed);
      load(false);
    } catch (e) {
      showError(e, error);
      retryAll.disabled = false;
    }
  });
  agentSelect.addEventListener("change", () => {
    agentFilter = agentSelect.value;
    result.textContent = "";
    selected.clear();
    load(false);
  });
  sourceSelect.addEventListener("change", () => {
    sourceFilter = sourceSelect.value;
    result.textContent = "";
    selected.clear();
    load(false);
  });
  sinceSelect.addEventListener("change", () => {
    sinceFilter = sinceSelect.value;
    draw();
  });
  more.addEventListener("click", () => load(true));
  load(false);
  return () => {
    stopped = true;
  };
}
