// Live events: recent history from /admin/events, then every new processed event from the SSE
// firehose (/stream/sse?agentId=*, authenticated by the session cookie). Rows have a fixed
// height; a new row goes on top, and when the reader has scrolled down the list is moved by
// exactly that height so what they read stays put, and a pill counts what arrived above.
// Each row shows the event's outcome (delivered, retrying, dead, filtered, no route…), kept
// current while it is unsettled. A search box, an outcome choice and a time range narrow the
// list through the API's `q`, `outcome`, `since` and `until`; "Load older" pages back.

import { get, withQuery, checkSession } from "./api.js";
import { h, viewHead, time, dateTime, showError, outcomeBadge, OUTCOME_LABELS } from "./ui.js";
import { loadInto } from "./event.js";

const MAX_ROWS = 500;
/** How many rows "Load older" may add past the live window. */
const MAX_HISTORY_ROWS = 2000;
const HISTORY = 100;
/** How often unsettled outcomes (pending, retrying, not known yet) are asked again. */
const OUTCOME_EVERY_MS = 4000;
const UNSETTLED = new Set([undefined, "pending", "retrying"]);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const RANGES = [
  ["", "Any time"],
  ["3600000", "Last hour"],
  ["86400000", "Last 24 hours"],
  ["604800000", "Last 7 days"],
  ["custom", "Custom…"],
];

/** `#/live` or `#/live/{source}` (the overview's links to a source's events). */
export function render(main, args = []) {
  let events = [];               // newest first
  const ids = new Set();
  let paused = false;
  let held = [];                 // arrived while paused, newest first
  let unseenAbove = 0;           // arrived while scrolled down
  let filter = { source: args[0] || "", type: "", q: "", outcome: "", since: null, until: null };
  let stopped = false;
  let stream = null;
  let retry = null;
  let nextCursor = null;
  let outcomeTimer = null;

  const status = h("span", { class: "live-status", "data-state": "connecting", role: "status" }, "Connecting…");
  const pauseButton = h("button", { type: "button", "aria-pressed": "false" }, "Pause");
  const sources = h("datalist", { id: "live-sources" });
  const types = h("datalist", { id: "live-types" });
  const searchInput = h("input", {
    id: "live-q", type: "search", placeholder: "Event id, or text in the payload", autocomplete: "off",
    "aria-describedby": "live-q-hint",
  });
  const sourceInput = h("input", { id: "live-source", type: "search", list: "live-sources", placeholder: "any", autocomplete: "off", value: filter.source });
  const typeInput = h("input", { id: "live-type", type: "search", list: "live-types", placeholder: "any", autocomplete: "off" });
  const outcomeSelect = h("select", { id: "live-outcome" },
    h("option", { value: "" }, "Any"),
    Object.entries(OUTCOME_LABELS).map(([v, label]) => h("option", { value: v }, label)));
  const rangeSelect = h("select", { id: "live-range" }, RANGES.map(([v, label]) => h("option", { value: v }, label)));
  const sinceInput = h("input", { id: "live-since", type: "datetime-local", step: "1" });
  const untilInput = h("input", { id: "live-until", type: "datetime-local", step: "1" });
  const custom = h("div", { class: "toolbar custom-range", hidden: true },
    h("div", { class: "field" }, h("label", { for: "live-since" }, "From"), sinceInput),
    h("div", { class: "field" }, h("label", { for: "live-until" }, "Until"), untilInput));
  const error = h("p", { class: "form-error", role: "alert" });
  const list = h("div", { class: "feed-list", role: "list", "aria-label": "Events, newest first", tabindex: "-1" });
  const pill = h("button", { type: "button", class: "pill", hidden: true });
  const count = h("span", { class: "muted", role: "status" });
  const olderButton = h("button", { type: "button", hidden: true }, "Load older");
  const searched = h("span", { class: "muted", "data-testid": "live-searched" });

  main.append(
    viewHead("Live events", status, pauseButton),
    h("div", { class: "toolbar" },
      h("div", { class: "field grow" }, h("label", { for: "live-q" }, "Search"), searchInput,
        h("p", { id: "live-q-hint", class: "hint" }, "An id opens the event; other text finds events whose id, source, type or payload contains it (any case).")),
      h("div", { class: "field" }, h("label", { for: "live-source" }, "Source"), sourceInput),
      h("div", { class: "field" }, h("label", { for: "live-type" }, "Type"), typeInput),
      h("div", { class: "field" }, h("label", { for: "live-outcome" }, "Outcome"), outcomeSelect),
      h("div", { class: "field" }, h("label", { for: "live-range" }, "Time"), rangeSelect),
      sources, types, count),
    custom,
    error,
    h("div", { class: "feed", "data-testid": "feed" },
      h("div", { class: "feed-head", "aria-hidden": "true" },
        h("span", {}, "Time"), h("span", {}, "Source"), h("span", {}, "Type"),
        h("span", { class: "c-action" }, "Action"), h("span", { class: "c-id" }, "Id"), h("span", {}, "Outcome")),
      pill, list),
    h("div", { class: "feed-foot" }, olderButton, searched));

  /** Whether a live arrival belongs in the list as filtered now (the server decides history). */
  const matches = (ev) =>
    (!filter.source || ev.source === filter.source) && (!filter.type || ev.type === filter.type)
    && (!filter.q || JSON.stringify(ev).toLowerCase().includes(filter.q.toLowerCase()))
    && (!filter.outcome || (ev.outcome !== undefined && filter.outcome === ev.outcome))
    && (filter.since === null || ev.timestamp >= filter.since)
    && (filter.until === null || ev.timestamp < filter.until);

  function rowLabel(ev) {
    const outcome = ev.outcome ? OUTCOME_LABELS[ev.outcome] || ev.outcome : "outcome not known yet";
    const why = whyText(ev);
    return `${ev.source} ${ev.type} event at ${time(ev.timestamp)}, ${outcome}${why ? ` (${why})` : ""}. Open details`;
  }

  function row(ev, fresh) {
    return h("button", {
      type: "button", role: "listitem", class: fresh ? "feed-row fresh" : "feed-row", "data-id": ev.id,
      "data-outcome": ev.outcome || "",
      "aria-label": rowLabel(ev),
      title: dateTime(ev.timestamp),
      onclick: () => openEvent(ev.id),
    },
    h("span", { class: "muted" }, time(ev.timestamp)),
    h("span", {}, ev.source),
    h("span", {}, ev.type),
    h("span", { class: "c-action muted" }, ev.action ?? ""),
    h("span", { class: "c-id mono" }, ev.id),
    h("span", { class: "c-outcome" }, outcomeBadge(ev.outcome), whyNote(ev)));
  }

  /** The reason next to a filtered or unrouted row's badge (the API's `explanation`). */
  function whyNote(ev) {
    const text = whyText(ev);
    return text ? h("span", { class: "c-why muted", "data-testid": "why", title: text }, ` ${text}`) : null;
  }

  function emptyText() {
    const narrowed = filter.q || filter.outcome || filter.since !== null || filter.until !== null;
    if (!narrowed) return "No events yet. New ones appear here as they arrive.";
    return nextCursor ? "None found in the events searched so far: Load older searches further back." : "No event matches.";
  }

  function redraw() {
    const shown = events.filter(matches);
    list.replaceChildren(...(shown.length
      ? shown.map((ev) => row(ev, false))
      : [h("p", { class: "empty", role: "listitem" }, emptyText())]));
    list.scrollTop = 0;
    unseenAbove = 0;
    updatePill();
    count.textContent = `${shown.length} shown`;
  }

  /** Puts fresh outcomes on the rows already drawn, without moving anything. */
  function applyOutcomes(items) {
    const known = new Map(items.map((ev) => [ev.id, ev.outcome]));
    const explanations = new Map(items.map((ev) => [ev.id, ev.explanation]));
    for (const ev of events) {
      const o = known.get(ev.id);
      if (o === undefined || o === ev.outcome) continue;
      ev.outcome = o;
      ev.explanation = explanations.get(ev.id) ?? null;
      const r = list.querySelector(`.feed-row[data-id="${ev.id}"]`);
      if (!r) continue;
      r.dataset.outcome = o;
      r.setAttribute("aria-label", rowLabel(ev));
      r.querySelector(".c-outcome").replaceChildren(outcomeBadge(o), whyNote(ev) ?? "");
    }
  }

  async function refreshOutcomes() {
    if (stopped || document.hidden) return;
    const unsettled = events.slice(0, HISTORY).filter((ev) => UNSETTLED.has(ev.outcome));
    if (!unsettled.length) return;
    const oldest = Math.min(...unsettled.map((ev) => ev.timestamp));
    try {
      const page = await get(withQuery("/admin/events", {
        limit: HISTORY, since: oldest, source: filter.source, type: filter.type,
      }));
      if (!stopped) applyOutcomes(page.items);
    } catch {
      // The next round tries again; errors show with the history.
    }
  }

  function remember(ev) {
    if (ids.has(ev.id)) return false;
    ids.add(ev.id);
    addOption(sources, ev.source);
    addOption(types, ev.type);
    return true;
  }

  function addOption(datalist, value) {
    if (!value || [...datalist.options].some((o) => o.value === value)) return;
    datalist.append(h("option", { value }));
  }

  /** A live event: on top, keeping what the reader looks at where it is. */
  function arrive(ev) {
    if (!remember(ev)) return;
    if (paused) {
      held.unshift(ev);
      updatePill();
      return;
    }
    events.unshift(ev);
    if (events.length > MAX_ROWS && !nextCursorLoaded) {
      for (const old of events.splice(MAX_ROWS)) ids.delete(old.id);
    }
    if (!matches(ev)) return;
    const empty = list.querySelector(".empty");
    if (empty) empty.remove();
    const scrolled = list.scrollTop > 0;
    const r = row(ev, !scrolled);
    list.prepend(r);
    while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
    if (scrolled) {
      list.scrollTop += r.getBoundingClientRect().height;
      unseenAbove += 1;
      updatePill();
    }
    count.textContent = `${list.querySelectorAll(".feed-row").length} shown`;
  }

  function updatePill() {
    const n = paused ? held.filter(matches).length : unseenAbove;
    pill.hidden = n === 0;
    pill.textContent = paused ? `${n} new — resume` : `${n} new ↑`;
  }

  pill.addEventListener("click", () => {
    if (paused) togglePause();
    list.scrollTo({ top: 0 });
    unseenAbove = 0;
    updatePill();
    list.focus();
  });
  list.addEventListener("scroll", () => {
    if (list.scrollTop === 0 && unseenAbove) {
      unseenAbove = 0;
      updatePill();
    }
  }, { passive: true });

  function togglePause() {
    paused = !paused;
    pauseButton.textContent = paused ? "Resume" : "Pause";
    pauseButton.setAttribute("aria-pressed", String(paused));
    setStatus(paused ? "paused" : stream && stream.readyState === EventSource.OPEN ? "live" : "connecting");
    if (!paused && held.length) {
      events = held.concat(events).slice(0, MAX_ROWS);
      held = [];
      redraw();
    }
    updatePill();
  }
  pauseButton.addEventListener("click", togglePause);

  function setStatus(state) {
    status.dataset.state = state;
    status.textContent = { live: "Live", paused: "Paused", connecting: "Connecting…", error: "Reconnecting…" }[state];
  }

  function connect() {
    if (stopped) return;
    stream = new EventSource("/stream/sse?agentId=*");
    stream.onopen = () => {
      if (!paused) setStatus("live");
    };
    stream.onmessage = (m) => {
      let msg;
      try {
        msg = JSON.parse(m.data);
      } catch {
        return;
      }
      if (msg.type === "event" && msg.data) arrive(msg.data);
    };
    stream.onerror = async () => {
      setStatus("error");
      if (stream.readyState !== EventSource.CLOSED) return; // the browser reconnects by itself
      stream.close();
      // Closed for good: the session may have ended (401), or the server is gone.
      const signedIn = await checkSession();
      if (signedIn && !stopped) retry = setTimeout(connect, 3000);
    };
  }

  let loadSeq = 0;
  let nextCursorLoaded = false;
  const query = (cursor) => withQuery("/admin/events", {
    limit: HISTORY, source: filter.source, type: filter.type, q: filter.q, outcome: filter.outcome,
    since: filter.since, until: filter.until, cursor,
  });

  function showPaging(page) {
    nextCursor = page.nextCursor;
    olderButton.hidden = !nextCursor;
    searched.textContent = page.scanned !== undefined
      ? `Searched ${page.scanned.toLocaleString()} events${nextCursor ? "; Load older searches further back" : ""}.`
      : "";
  }

  async function loadHistory() {
    const seq = ++loadSeq;
    nextCursorLoaded = false;
    try {
      const page = await get(query());
      if (stopped || seq !== loadSeq) return;
      error.textContent = "";
      for (const ev of page.items) remember(ev);
      const byId = new Map(events.filter(matches).map((ev) => [ev.id, ev]));
      for (const ev of page.items) byId.set(ev.id, ev);
      events = [...byId.values()].sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0)).slice(0, MAX_ROWS);
      showPaging(page);
      redraw();
    } catch (e) {
      if (!stopped) showError(e, error);
    }
  }

  olderButton.addEventListener("click", async () => {
    if (!nextCursor) return;
    const seq = loadSeq;
    olderButton.disabled = true;
    try {
      const page = await get(query(nextCursor));
      if (stopped || seq !== loadSeq) return;
      nextCursorLoaded = true;
      const fresh = page.items.filter((ev) => remember(ev));
      events = events.concat(fresh).slice(0, MAX_HISTORY_ROWS);
      const empty = list.querySelector(".empty");
      if (empty && fresh.length) empty.remove();
      list.append(...fresh.filter(matches).map((ev) => row(ev, false)));
      showPaging(page);
      if (!list.querySelector(".feed-row")) redraw();
      count.textContent = `${list.querySelectorAll(".feed-row").length} shown`;
    } catch (e) {
      showError(e, error);
    } finally {
      olderButton.disabled = false;
    }
  });

  function localMs(input) {
    if (!input.value) return null;
    const t = new Date(input.value).getTime();
    return Number.isNaN(t) ? null : t;
  }

  function readFilter() {
    const range = rangeSelect.value;
    custom.hidden = range !== "custom";
    let since = null;
    let until = null;
    if (range === "custom") {
      since = localMs(sinceInput);
      until = localMs(untilInput);
    } else if (range) {
      since = Date.now() - Number(range);
    }
    return {
      source: sourceInput.value.trim(), type: typeInput.value.trim(), q: searchInput.value.trim(),
      outcome: outcomeSelect.value, since, until,
    };
  }

  let debounce = null;
  const onFilter = () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      filter = readFilter();
      redraw();
      loadHistory();
    }, 250);
  };
  for (const input of [searchInput, sourceInput, typeInput, sinceInput, untilInput]) {
    input.addEventListener("input", onFilter);
  }
  outcomeSelect.addEventListener("change", onFilter);
  rangeSelect.addEventListener("change", onFilter);
  // Enter on a whole event id opens that event.
  searchInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && UUID.test(searchInput.value.trim())) {
      e.preventDefault();
      openEvent(searchInput.value.trim());
    }
  });

  // The stream first, so nothing that arrives while the history loads is missed.
  connect();
  loadHistory();
  outcomeTimer = setInterval(() => {
    refreshOutcomes();
    // A sign-out in another tab ends the session at once; the stream would notice only at its
    // next heartbeat. Asking every few seconds shows the sign-in form promptly.
    if (!document.hidden) checkSession();
  }, OUTCOME_EVERY_MS);

  return () => {
    stopped = true;
    clearTimeout(retry);
    clearTimeout(debounce);
    clearInterval(outcomeTimer);
    if (stream) stream.close();
  };
}

/** The event's details in a side panel (a modal dialog: Escape closes it). */
export function openEvent(id) {
  const body = h("div", { class: "drawer-body" });
  const close = h("button", { type: "button", class: "ghost", "aria-label": "Close" }, "✕ Close");
  const dialog = h("dialog", { class: "drawer", "aria-labelledby": "drawer-title" },
    h("div", { class: "drawer-head" },
      h("h2", { id: "drawer-title" }, "Event"),
      h("a", { class: "button small", href: `#/events/${encodeURIComponent(id)}` }, "Open as page"),
      close),
    body);
  close.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => dialog.remove());
  // Following the page link closes the panel first.
  dialog.querySelector("a").addEventListener("click", () => dialog.close());
  document.body.append(dialog);
  dialog.showModal();
  close.focus();
  loadInto(body, id);
}

/**
 * Why a filtered or unrouted event went nowhere, in a few words: the exclude filter that dropped
 * it, the include filters none of which matched, or the routes checked (the API's
 * `explanation` of the list row, under the rules as they are now). Empty for the others.
 */
export function whyText(ev) {
  const why = ev.explanation;
  if (!why || !(ev.outcome === "filtered" || ev.outcome === "unrouted")) return "";
  const more = why.omitted ? ` and ${why.omitted} more` : "";
  if (why.excludedBy) return `by filter ${why.excludedBy}`;
  if (why.unmatchedIncludes && why.unmatchedIncludes.length) {
    return `no include filter matched: ${why.unmatchedIncludes.join(", ")}${more}`;
  }
  if (ev.outcome === "filtered") return "by a filter since changed";
  const checked = why.routesChecked || [];
  if (!checked.length) return "no enabled route for its source";
  const matched = checked.filter((r) => r.matched);
  if (matched.length) return `routes match it now: ${matched.map((r) => r.id).join(", ")}`;
  return `routes checked: ${checked.map((r) => r.id).join(", ")}${more}`;
}

