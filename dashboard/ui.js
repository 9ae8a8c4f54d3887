// Small DOM helpers shared by the views: an element builder, formatting, toasts, a confirm
// dialog and copying to the clipboard. Text always goes in as text nodes, never as HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

/**
 * `h("button", {class: "primary", onclick: f}, "Save")`. Attributes starting with `on` are
 * listeners; `true` sets a boolean attribute, `false`/`null`/`undefined` leave it out.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  applyAttrs(el, attrs);
  append(el, children);
  return el;
}

/** The same for SVG elements. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  applyAttrs(el, attrs);
  append(el, children);
  return el;
}

function applyAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v);
    } else if (k === "value" && "value" in el && el.namespaceURI !== SVG_NS) {
      el.value = v;
    } else if (k === "checked") {
      el.checked = Boolean(v);
    } else {
      el.setAttribute(k, v === true ? "" : String(v));
    }
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// ---- formatting ----

const pad = (n) => String(n).padStart(2, "0");

export function time(ms) {
  if (ms === null || ms === undefined) return "—";
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function dateTime(ms) {
  if (ms === null || ms === undefined) return "—";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time(ms)}`;
}

/** How long ago, in words: "just now", "12 s ago", "5 min ago", "3 h ago", "2 d ago". */
export function ago(ms, now = Date.now()) {
  if (ms === null || ms === undefined) return "—";
  const secs = Math.max(0, Math.round((now - ms) / 1000));
  if (secs < 5) return "just now";
  if (secs < 60) return `${secs} s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
  return `${Math.floor(secs / 86400)} d ago`;
}

/** Short label for a chart axis: time of day within two days, else the date. */
export function axisTime(ms, spanMs) {
  const d = new Date(ms);
  if (spanMs > 2 * 86400000) return `${d.getMonth() + 1}/${d.getDate()} ${pad(d.getHours())}:00`;
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function number(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function ms(n) {
  if (n === null || n === undefined) return "—";
  if (n >= 1000) return `${number(n / 1000, 2)} s`;
  return `${number(n, 2)} ms`;
}

export function percent(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  return `${number(x * 100, 1)} %`;
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}

export function statusBadge(status) {
  const kind = { delivered: "ok", dead: "bad", cancelled: "", superseded: "", scheduled: "warn", pending: "info", in_flight: "info" }[status] || "";
  return h("span", { class: `badge ${kind}` }, status);
}

/** What happened to an event, in the words the lists use (the API's `outcome`). */
export const OUTCOME_LABELS = {
  delivered: "delivered",
  retrying: "retrying",
  pending: "pending",
  dead: "dead",
  filtered: "filtered",
  unrouted: "no route",
  streamed: "streamed",
  superseded: "superseded",
  cancelled: "cancelled",
};

export function outcomeBadge(outcome) {
  if (!outcome) return h("span", { class: "badge", title: "Outcome not known yet" }, "…");
  const kind = { delivered: "ok", dead: "bad", retrying: "warn", pending: "info", filtered: "warn", streamed: "info" }[outcome] || "";
  return h("span", { class: `badge ${kind}`, "data-outcome": outcome }, OUTCOME_LABELS[outcome] || outcome);
}

/**
 * What the page asks before leaving the current view: a form with unsaved edits sets `guard`
 * (true = there is something to lose); the router and the browser's unload ask first.
 */
export const leaving = { guard: null };

// ---- feedback ----

export function toast(message, kind = "") {
  const box = document.getElementById("toasts");
  const t = h("div", { class: `toast ${kind}` }, message);
  box.append(t);
  setTimeout(() => t.remove(), kind === "bad" ? 7000 : 4000);
}

/** A modal yes/no question; resolves true when confirmed. Escape or Cancel answer false. */
export function confirmDialog(message, confirmLabel = "Delete") {
  return new Promise((resolve) => {
    const cancel = h("button", { type: "button", value: "cancel" }, "Cancel");
    const ok = h("button", { type: "button", class: "danger", value: "ok" }, confirmLabel);
    const dialog = h("dialog", { class: "confirm", "aria-labelledby": "confirm-text" },
      h("p", { id: "confirm-text" }, message),
      h("div", { class: "buttons" }, cancel, ok));
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    cancel.addEventListener("click", () => done(false));
    ok.addEventListener("click", () => done(true));
    dialog.addEventListener("cancel", (e) => {
      e.preventDefault();
      done(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

/** Copies text: the Clipboard API where the page may use it, else a hidden textarea. */
export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    // Permission refused: fall through to the older way.
  }
  const area = h("textarea", { readonly: true, "aria-hidden": "true", class: "visually-hidden" });
  area.value = text;
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

/** A "Copy" button for `text`, with feedback. */
export function copyButton(text, label = "Copy") {
  const b = h("button", { type: "button", class: "small" }, label);
  b.addEventListener("click", async () => {
    const ok = await copyText(typeof text === "function" ? text() : text);
    toast(ok ? "Copied to the clipboard" : "Copying failed: select the text and copy it", ok ? "" : "bad");
  });
  return b;
}

/** The heading row of a view. */
export function viewHead(title, ...actions) {
  return h("div", { class: "view-head" }, h("h1", {}, title), ...actions);
}

/** A table from column headers and rows of cells; `empty` is shown when there are no rows. */
export function table(headers, rows, empty, attrs = {}) {
  if (!rows.length) return h("div", { class: "table-wrap" }, h("p", { class: "empty" }, empty));
  // Each cell knows its column's name: on a phone the rows become stacked cards labelled so.
  const labels = headers.map((c) => (typeof c === "string" ? c : c.label));
  for (const row of rows) {
    [...row.children].forEach((cell, i) => {
      if (labels[i]) cell.dataset.label = labels[i];
    });
  }
  return h("div", { class: "table-wrap" },
    h("table", attrs,
      h("thead", {}, h("tr", {}, headers.map((c) =>
        typeof c === "string" ? h("th", { scope: "col" }, c) : h("th", { scope: "col", class: c.class }, c.label)))),
      h("tbody", {}, rows)));
}

/** Shows an error in a view's error box, or as a toast. */
export function showError(e, box) {
  const message = e && e.message ? e.message : String(e);
  if (box) box.textContent = message;
  else toast(message, "bad");
}
