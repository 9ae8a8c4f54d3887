// Live events: recent history from /admin/events, then every new processed event from the SSE
// firehose (/stream/sse?agentId=*, authenticated by the session cookie). Rows have a fixed
// height; a new row goes on top, and when the reader has scrolled down the list is moved by
// exactly that height so what they read stays put, and a pill counts what arrived above.

import { get, withQuery, checkSession } from "./api.js";
import { h, viewHead, time, showError } from "./ui.js";
import { loadInto } from "./event.js";

const MAX_ROWS = 500;
const HISTORY = 100;

export function render(main) {
  let events = [];               // newest first
  const ids = new Set();
  let paused = false;
  let held = [];                 // arrived while paused, newest first
  let unseenAbove = 0;           // arrived while scrolled down
  let filter = { source: "", type: "" };
  let stopped = false;
  let stream = null;
  let retry = null;

  const status = h("span", { class: "live-status", "data-state": "connecting", role: "status" }, "Connecting…");
  const pauseButton = h("button", { type: "button", "aria-pressed": "false" }, "Pause");
  const sources = h("datalist", { id: "live-sources" });
  const types = h("datalist", { id: "live-types" });
  const sourceInput = h("input", { id: "live-source", type: "search", list: "live-sources", placeholder: "any", autocomplete: "off" });
  const typeInput = h("input", { id: "live-type", type: "search", list: "live-types", placeholder: "any", autocomplete: "off" });
  const error = h("p", { class: "form-error", role: "alert" });
  const list = h("div", { class: "feed-list", role: "list", "aria-label": "Events, newest first", tabindex: "-1" });
  const pill = h("button", { type: "button", class: "pill", hidden: true });
  const count = h("span", { class: "muted" });

  main.append(
    viewHead("Live events", status, pauseButton),
    h("div", { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: "live-source" }, "Source"), sourceInput),
      h("div", { class: "field" }, h("label", { for: "live-type" }, "Type"), typeInput),
      sources, types, count),
    error,
    h("div", { class: "feed", "data-testid": "feed" },
      h("div", { class: "feed-head", "aria-hidden": "true" },
        h("span", {}, "Time"), h("span", {}, "Source"), h("span", {}, "Type"),
        h("span", { class: "c-action" }, "Action"), h("span", { class: "c-id" }, "Id"), h("span", {}, "Status")),
      pill, list));

  const matches = (ev) =>
    (!filter.source || ev.source === filter.source) && (!filter.type || ev.type === filter.type);

  function row(ev, fresh) {
    return h("button", {
      type: "button", role: "listitem", class: fresh ? "feed-row fresh" : "feed-row", "data-id": ev.id,
      "aria-label": `${ev.source} ${ev.type} event ${ev.id} at ${time(ev.timestamp)}`,
      onclick: () => openEvent(ev.id),
    },
    h("span", { class: "muted" }, time(ev.timestamp)),
    h("span", {}, ev.source),
    h("span", {}, ev.type),
    h("span", { class: "c-action muted" }, ev.action ?? ""),
    h("span", { class: "c-id mono" }, ev.id),
    h("span", {}, ev.filtered ? h("span", { class: "badge warn" }, "filtered") : h("span", { class: "badge ok" }, "processed")));
  }

  function redraw() {
    const shown = events.filter(matches);
    list.replaceChildren(...(shown.length
      ? shown.map((ev) => row(ev, false))
      : [h("p", { class: "empty", role: "listitem" }, "No events yet. New ones appear here as they arrive.")]));
    list.scrollTop = 0;
    unseenAbove = 0;
    updatePill();
    count.textContent = `${shown.length} shown`;
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
    if (events.length > MAX_ROWS) {
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
  async function loadHistory() {
    const seq = ++loadSeq;
    try {
      const page = await get(withQuery("/admin/events", { limit: HISTORY, source: filter.source, type: filter.type }));
      if (stopped || seq !== loadSeq) return;
      error.textContent = "";
      for (const ev of page.items) remember(ev);
      const byId = new Map(events.map((ev) => [ev.id, ev]));
      for (const ev of page.items) if (!byId.has(ev.id)) byId.set(ev.id, ev);
      events = [...byId.values()].sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0)).slice(0, MAX_ROWS);
      redraw();
    } catch (e) {
      if (!stopped) showError(e, error);
    }
  }

  let debounce = null;
  const onFilter = () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      filter = { source: sourceInput.value.trim(), type: typeInput.value.trim() };
      redraw();
      loadHistory();
    }, 250);
  };
  sourceInput.addEventListener("input", onFilter);
  typeInput.addEventListener("input", onFilter);

  // The stream first, so nothing that arrives while the history loads is missed.
  connect();
  loadHistory();

  return () => {
    stopped = true;
    clearTimeout(retry);
    clearTimeout(debounce);
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
