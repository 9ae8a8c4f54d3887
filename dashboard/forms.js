// Form building and the API's validation errors: a 400 names the offending field (e.g.
// `transformation.expression`, `conditions[1].operator`, `targetAgents[0]`); the error is shown
// under the input whose `data-field` is the longest prefix of that path.

import { h, toast, leaving } from "./ui.js";

let uid = 0;

/** A labelled control with a hint and a place for its error. */
export function field(name, labelText, control, hint) {
  const id = control.id || `f-${++uid}`;
  control.id = id;
  control.dataset.field = name;
  const errorId = `${id}-error`;
  const hintId = hint ? `${id}-hint` : null;
  control.setAttribute("aria-describedby", [hintId, errorId].filter(Boolean).join(" "));
  return h("div", { class: "field" },
    h("label", { for: id }, labelText),
    control,
    hint ? h("p", { class: "hint", id: hintId }, hint) : null,
    h("p", { class: "field-error", id: errorId, "data-error-for": name, role: "alert" }));
}

export function input(name, labelText, value, attrs = {}, hint) {
  return field(name, labelText, h("input", { type: "text", name, value: value ?? "", autocomplete: "off", ...attrs }), hint);
}

export function textarea(name, labelText, value, attrs = {}, hint) {
  const t = h("textarea", { name, rows: 4, spellcheck: "false", ...attrs });
  t.value = value ?? "";
  return field(name, labelText, t, hint);
}

export function select(name, labelText, options, value, hint) {
  const s = h("select", { name },
    options.map((o) => {
      const [v, text] = Array.isArray(o) ? o : [o, o];
      return h("option", { value: v, selected: v === value }, text);
    }));
  return field(name, labelText, s, hint);
}

export function checkbox(name, labelText, checked) {
  const id = `f-${++uid}`;
  return h("div", { class: "field" },
    h("label", { class: "check", for: id },
      h("input", { type: "checkbox", id, name, checked: Boolean(checked), "data-field": name }), labelText),
    h("p", { class: "field-error", "data-error-for": name, role: "alert" }));
}

/** A number from an input: `undefined` when empty; throws a field error when not a number. */
export function numberOf(form, name, integer = true) {
  const raw = form.elements[name].value.trim();
  if (raw === "") return undefined;
  const n = Number(raw);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n))) {
    throw new LocalError(name, integer ? "must be a whole number" : "must be a number");
  }
  return n;
}

export function textOf(form, name) {
  const v = form.elements[name].value.trim();
  return v === "" ? undefined : v;
}

/** JSON from a textarea; `fallback` when empty; a field error when it does not parse. */
export function jsonOf(form, name, fallback) {
  const raw = form.elements[name].value.trim();
  if (raw === "") return fallback;
  try {
    return JSON.parse(raw);
  } catch (e) {
    throw new LocalError(name, `not valid JSON: ${e.message}`);
  }
}

/** A problem found before sending, shown like the API's own. */
export class LocalError extends Error {
  constructor(fieldName, message) {
    super(`${fieldName}: ${message}`);
    this.field = fieldName;
    this.status = 400;
  }
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  for (const el of form.querySelectorAll("[data-error-for]")) el.textContent = "";
  const top = form.querySelector(".form-error");
  if (top) top.textContent = "";
}

/** The input whose `data-field` is the longest prefix of `path`, or null. */
function fieldFor(form, path) {
  let best = null;
  if (!path) return best;
  for (const el of form.querySelectorAll("[data-field]")) {
    const d = el.dataset.field;
    const hit = path === d || path.startsWith(`${d}.`) || path.startsWith(`${d}[`);
    if (hit && (!best || d.length > best.dataset.field.length)) best = el;
  }
  return best;
}

/**
 * Shows every problem of an error next to the field it concerns (the API's `errors`, or the
 * error itself when it has none), the rest at the top of the form; focuses the first field.
 */
export function showFieldError(form, e) {
  clearErrors(form);
  const top = form.querySelector(".form-error");
  const problems = e && e.errors && e.errors.length
    ? e.errors.map((p) => ({ path: p.field, text: `${p.field}: ${p.error}` }))
    : [{ path: e && e.field, text: e.message }];
  const topLines = [];
  let first = null;
  for (const { path, text } of problems) {
    const best = fieldFor(form, path);
    const box = best && form.querySelector(`[data-error-for="${CSS.escape(best.dataset.field)}"]`);
    if (!best || !box) {
      topLines.push(text);
      continue;
    }
    const name = best.dataset.field;
    // This field, or a plain sub-field of it (transformation.expression): the message without
    // its "path: " prefix. Deeper inside (sourceFilters[0].conditions[1]): all of it.
    const plain = path === name || !path.slice(name.length).includes("[");
    const message = plain && text.startsWith(`${path}: `) ? text.slice(path.length + 2) : text;
    best.setAttribute("aria-invalid", "true");
    // Two problems of one field: both, one per line.
    box.textContent = box.textContent ? `${box.textContent}\n${message}` : message;
    if (!first) first = best;
  }
  if (topLines.length) {
    top.textContent = topLines.join("\n");
    top.scrollIntoView({ block: "nearest" });
  }
  if (problems.length > 1) {
    // Say how many, so that a screen reader user knows to look for more than one.
    const note = `${problems.length} problems to fix.`;
    top.textContent = top.textContent ? `${note}\n${top.textContent}` : note;
  }
  if (first) first.focus();
}

/**
 * The form shell: fields, a top error box, Save and Cancel. `collect(form)` builds the body
 * (throwing LocalError for what can be checked here); `send(body)` calls the API.
 */
export function resourceForm({ title, fields, collect, send, back, saved }) {
  const submit = h("button", { type: "submit", class: "primary" }, "Save");
  // Edits not saved yet: leaving the form (another view, closing the tab) asks first.
  let dirty = false;
  const cancel = h("a", { class: "button", href: back, onclick: () => { dirty = false; } }, "Cancel");
  const form = h("form", { class: "form card", novalidate: true, "aria-label": title },
    h("p", { class: "form-error", role: "alert" }),
    fields,
    h("div", { class: "form-actions" }, submit, cancel));
  form.addEventListener("input", () => { dirty = true; });
  form.addEventListener("change", () => { dirty = true; });
  leaving.guard = () => dirty && form.isConnected;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    submit.disabled = true;
    try {
      const body = collect(form);
      await send(body);
      dirty = false;
      toast(saved);
      location.hash = back;
    } catch (e) {
      showFieldError(form, e);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

/**
 * "Try it": runs what the form holds now (not saved) against a recent event
 * (POST /admin/rules/test) and shows the outcome. `build(form)` gives the body without the
 * event id, e.g. `{filter: …}` or `{transformation: …}`.
 */
export function ruleTester(build, hint) {
  const eventInput = h("input", { id: "tester-event", type: "text", autocomplete: "off", class: "mono", placeholder: "an event id" });
  const run = h("button", { type: "button" }, "Try it");
  const out = h("div", { class: "tester-result", role: "status", "aria-live": "polite", "data-testid": "tester-result" });
  // The newest event, to try on by default.
  import("./api.js").then(({ get }) => get("/admin/events?limit=1")).then((page) => {
    if (!eventInput.value && page.items.length) eventInput.value = page.items[0].id;
  }).catch(() => {});
  run.addEventListener("click", async () => {
    const form = run.form || run.closest("form");
    out.replaceChildren(h("p", { class: "muted" }, "Trying…"));
    try {
      const { post } = await import("./api.js");
      const body = { ...build(form), eventId: eventInput.value.trim() };
      const r = await post("/admin/rules/test", body);
      const parts = [];
      if ("kept" in r) {
        parts.push(h("p", { "data-kept": String(r.kept) }, r.kept
          ? (r.changed ? "The event passes, changed:" : "The event passes this filter unchanged.")
          : "This filter drops the event."));
      }
      if (r.error) parts.push(h("p", { class: "form-error" }, r.error));
      if (r.event && (!("kept" in r) || r.changed)) parts.push(h("pre", { class: "json", tabindex: "0" }, JSON.stringify(r.event, null, 2)));
      out.replaceChildren(...parts);
    } catch (e) {
      out.replaceChildren(h("p", { class: "form-error" }, e.field ? `${e.field}: ${e.message.replace(/^[^:]*: /, "")}` : e.message));
    }
  });
  return h("fieldset", { class: "tester" },
    h("legend", {}, "Try it on a recent event"),
    h("p", { class: "hint" }, hint),
    h("div", { class: "row" },
      h("div", { class: "field" }, h("label", { for: "tester-event" }, "Event id"), eventInput),
      h("div", { class: "field tester-run" }, run)),
    out);
}

