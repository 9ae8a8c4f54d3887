// Global filters: list, create, edit, delete, with a row editor for the conditions. The same
// editor (`conditionEditor`, `sourceFilterEditor`) edits a route's own source filters.

import { get, post, put, del } from "./api.js";
import { h, viewHead, table, toast, confirmDialog, showError } from "./ui.js";
import { input, textarea, select, checkbox, resourceForm, numberOf, textOf, ruleTester } from "./forms.js";

const OPERATORS = ["equals", "contains", "regex", "exists", "gt", "lt", "in"];

export function render(main, args) {
  if (args[0] === "new") return renderForm(main, null);
  if (args[1] === "edit") return renderForm(main, args[0]);
  return renderList(main);
}

async function renderList(main) {
  const error = h("p", { class: "form-error", role: "alert" });
  const body = h("div", {}, h("p", { class: "empty" }, "Loading…"));
  main.append(viewHead("Filters", h("a", { class: "button primary", href: "#/filters/new" }, "New filter")), error, body);
  try {
    const { items } = await get("/admin/filters");
    items.sort((a, b) => b.priority - a.priority || a.id.localeCompare(b.id));
    body.replaceChildren(table(
      ["Id", "Name", "Action", "Scope", { label: "Conditions", class: "num hide-narrow" }, { label: "Priority", class: "num" }, "Enabled", ""],
      items.map((f) => h("tr", { "data-id": f.id },
        h("td", { class: "mono" }, f.id),
        h("td", {}, f.name),
        h("td", {}, h("span", { class: `badge ${f.action === "exclude" ? "warn" : "info"}` }, f.action)),
        h("td", {}, [f.source, f.eventType].filter(Boolean).join(" / ") || h("span", { class: "muted" }, "any")),
        h("td", { class: "num hide-narrow" }, String(f.conditions.length)),
        h("td", { class: "num" }, String(f.priority)),
        h("td", {}, f.enabled ? h("span", { class: "badge ok" }, "yes") : h("span", { class: "badge" }, "no")),
        h("td", { class: "actions" },
          h("a", { class: "button small", href: `#/filters/${encodeURIComponent(f.id)}/edit` }, "Edit"),
          h("button", { type: "button", class: "small danger", onclick: () => remove(f.id, main) }, "Delete")))),
      "No filters. Without filters every event is processed."));
  } catch (e) {
    body.replaceChildren();
    showError(e, error);
  }
}

async function remove(id, main) {
  if (!(await confirmDialog(`Delete filter "${id}"?`))) return;
  try {
    await del(`/admin/filters/${encodeURIComponent(id)}`);
    toast(`Filter "${id}" deleted`);
    main.replaceChildren();
    renderList(main);
  } catch (e) {
    showError(e);
  }
}

/** A condition's value as typed: JSON when it parses (true, 5, ["a"]), else a string. */
function parseValue(text) {
  const t = text.trim();
  if (t === "") return "";
  try {
    return JSON.parse(t);
  } catch {
    return text;
  }
}

function showValue(v) {
  return typeof v === "string" ? v : JSON.stringify(v);
}

async function renderForm(main, id) {
  main.append(viewHead(id ? `Edit filter ${id}` : "New filter"));
  let filter = { conditions: [], action: "include", priority: 0, enabled: true };
  if (id) {
    try {
      filter = await get(`/admin/filters/${encodeURIComponent(id)}`);
    } catch (e) {
      main.append(h("p", { class: "form-error", role: "alert" }, e.message));
      return;
    }
  }
  const conditions = conditionEditor("", filter.conditions);
  const transformation = textarea("transformation", "Transformation (jq)", filter.transformation?.expression ?? "", { rows: 3 },
    "Only for action transform: a jq program run on the event; it must yield one object.");
  let collectFilter = null;
  const tester = ruleTester((f) => ({ filter: collectFilter(f) }),
    "Runs this filter as written (not saved) on the event: whether it keeps it, and what a transform makes of it.");
  const form = resourceForm({
    title: id ? "Edit filter" : "New filter",
    back: "#/filters",
    saved: id ? "Filter saved" : "Filter created",
    fields: [
      h("div", { class: "row" },
        input("id", "Id", filter.id, { required: true, readonly: Boolean(id) }, id ? "The id cannot change." : "Letters, digits and _ . : -"),
        input("name", "Name", filter.name, { required: true })),
      input("description", "Description", filter.description),
      h("div", { class: "row three" },
        select("action", "Action", ["include", "exclude", "transform"], filter.action),
        input("source", "Source", filter.source, { placeholder: "any" }),
        input("eventType", "Event type", filter.eventType, { placeholder: "any" })),
      conditions.element,
      transformation,
      h("div", { class: "row three" },
        input("priority", "Priority", filter.priority ?? 0, { inputmode: "numeric" }, "Larger runs first."),
        h("div", {}), h("div", {})),
      checkbox("enabled", "Enabled", filter.enabled ?? true),
      tester,
    ],
    collect: collectFilter = (f) => {
      const expression = f.elements.transformation.value.trim();
      return {
        id: textOf(f, "id") ?? "",
        name: textOf(f, "name") ?? "",
        description: textOf(f, "description"),
        action: f.elements.action.value,
        source: textOf(f, "source"),
        eventType: textOf(f, "eventType"),
        conditions: conditions.collect(),
        transformation: expression ? { type: "jq", expression } : undefined,
        priority: numberOf(f, "priority") ?? 0,
        enabled: f.elements.enabled.checked,
      };
    },
    send: (body) => (id ? put(`/admin/filters/${encodeURIComponent(id)}`, body) : post("/admin/filters", body)),
  });
  main.append(form);
  form.querySelector(id ? "[name=name]" : "[name=id]").focus();
}

/**
 * The row editor of a filter's conditions: one row (field, operator, value, case, not) per
 * condition, added and removed in place. `prefix` is the filter's path in the body ("" for a
 * global filter, `sourceFilters[1].` in a route), so that the API's error paths
 * (`conditions[2].value`) point at the right input; `setPrefix` moves it after a removal.
 */
export function conditionEditor(prefix, initial = []) {
  const rows = h("div", {});
  const addButton = h("button", { type: "button", class: "small" }, "Add condition");
  const box = h("p", { class: "field-error", "data-error-for": `${prefix}conditions`, role: "alert" });
  const element = h("fieldset", { "data-field": `${prefix}conditions`, tabindex: "-1" },
    h("legend", {}, "Conditions (all must hold)"),
    rows, addButton,
    h("p", { class: "hint" }, "Field is a dot path such as payload.pull_request.draft. Value: JSON (true, 5, [\"a\",\"b\"]) or plain text."),
    box);

  // Rows are renumbered after a removal so that error paths (conditions[2].value) still point
  // at the right row.
  function renumber() {
    element.dataset.field = `${prefix}conditions`;
    box.dataset.errorFor = `${prefix}conditions`;
    [...rows.children].forEach((row, i) => {
      for (const el of row.querySelectorAll("[data-part]")) {
        const name = `${prefix}conditions[${i}].${el.dataset.part}`;
        el.dataset.field = name;
        const errorBox = el.closest(".field").querySelector(".field-error");
        if (errorBox) errorBox.dataset.errorFor = name;
      }
    });
  }
  function addRow(c = { field: "", operator: "equals", value: "", caseSensitive: true, negate: false }) {
    const part = (name, control, labelText) => {
      control.dataset.part = name;
      control.id = `cond-${Math.random().toString(36).slice(2)}`;
      return h("div", { class: "field" },
        h("label", { for: control.id }, labelText), control,
        h("p", { class: "field-error", role: "alert" }));
    };
    const fieldInput = h("input", { type: "text", value: c.field, autocomplete: "off", "data-cond": "field" });
    const op = h("select", { "data-cond": "operator" }, OPERATORS.map((o) => h("option", { value: o, selected: o === c.operator }, o)));
    const value = h("input", { type: "text", value: showValue(c.value), autocomplete: "off", "data-cond": "value" });
    const caseBox = h("input", { type: "checkbox", checked: c.caseSensitive !== false, "data-cond": "caseSensitive" });
    const negate = h("input", { type: "checkbox", checked: Boolean(c.negate), "data-cond": "negate" });
    const removeButton = h("button", { type: "button", class: "small ghost", "aria-label": "Remove this condition" }, "✕");
    const row = h("div", { class: "cond" },
      part("field", fieldInput, "Field"), part("operator", op, "Operator"), part("value", value, "Value"),
      h("label", { class: "check" }, caseBox, "Case"), h("label", { class: "check" }, negate, "Not"),
      removeButton);
    removeButton.addEventListener("click", () => {
      row.remove();
      renumber();
      addButton.focus();
    });
    rows.append(row);
    renumber();
    return fieldInput;
  }
  for (const c of initial || []) addRow(c);
  addButton.addEventListener("click", () => addRow().focus());
  return {
    element,
    setPrefix(p) {
      prefix = p;
      renumber();
    },
    collect: () => [...rows.children].map((row) => ({
      field: row.querySelector("[data-cond=field]").value.trim(),
      operator: row.querySelector("[data-cond=operator]").value,
      value: parseValue(row.querySelector("[data-cond=value]").value),
      caseSensitive: row.querySelector("[data-cond=caseSensitive]").checked,
      negate: row.querySelector("[data-cond=negate]").checked,
    })),
  };
}

/**
 * A route's source filters, each edited as a global filter is (action, source, event type,
 * priority, enabled and the condition rows), added and removed in place. What the editor does
 * not show (id, name, description, a transform's jq program) is kept as it was.
 */
export function sourceFilterEditor(initial = []) {
  const list = h("div", { class: "source-filters" });
  const addButton = h("button", { type: "button", class: "small" }, "Add source filter");
  const element = h("fieldset", { "data-field": "sourceFilters", tabindex: "-1" },
    h("legend", {}, "Source filters"),
    h("p", { class: "hint" }, "None: every processed event. Otherwise an event must pass them as it passes the global filters."),
    list, addButton,
    h("p", { class: "field-error", "data-error-for": "sourceFilters", role: "alert" }));
  const editors = [];
  let uid = 0;

  function renumber() {
    editors.forEach((ed, i) => ed.setIndex(i));
  }
  function add(f = { action: "include", conditions: [], priority: 0, enabled: true }) {
    const n = ++uid;
    const kept = { ...f };
    const labelled = (part, labelText, control) => {
      control.id = `sf-${n}-${part}`;
      control.dataset.sfPart = part;
      return h("div", { class: "field" },
        h("label", { for: control.id }, labelText), control,
        h("p", { class: "field-error", role: "alert" }));
    };
    const action = h("select", {}, ["include", "exclude", "transform"].map((a) => h("option", { value: a, selected: a === (f.action || "include") }, a)));
    const source = h("input", { type: "text", value: f.source ?? "", autocomplete: "off", placeholder: "any" });
    const eventType = h("input", { type: "text", value: f.eventType ?? "", autocomplete: "off", placeholder: "any" });
    const priority = h("input", { type: "text", value: String(f.priority ?? 0), autocomplete: "off", inputmode: "numeric" });
    const enabled = h("input", { type: "checkbox", checked: f.enabled !== false });
    const conditions = conditionEditor("", f.conditions || []);
    const title = h("legend", {});
    const removeButton = h("button", { type: "button", class: "small ghost" }, "Remove");
    const card = h("fieldset", { class: "source-filter", tabindex: "-1" },
      title,
      h("div", { class: "row three" },
        labelled("action", "Action", action), labelled("source", "Source", source), labelled("eventType", "Event type", eventType)),
      h("div", { class: "row three" },
        labelled("priority", "Priority", priority),
        h("label", { class: "check" }, enabled, "Enabled"), h("div", {}, removeButton)),
      conditions.element,
      h("p", { class: "field-error", role: "alert", "data-sf-box": "" }));
    const editor = {
      card,
      setIndex(i) {
        const prefix = `sourceFilters[${i}]`;
        title.textContent = `Source filter ${i + 1}`;
        removeButton.setAttribute("aria-label", `Remove source filter ${i + 1}`);
        card.dataset.field = prefix;
        card.querySelector("[data-sf-box]").dataset.errorFor = prefix;
        for (const el of card.querySelectorAll("[data-sf-part]")) {
          const name = `${prefix}.${el.dataset.sfPart}`;
          el.dataset.field = name;
          el.closest(".field").querySelector(".field-error").dataset.errorFor = name;
        }
        conditions.setPrefix(`${prefix}.`);
      },
      collect() {
        const raw = priority.value.trim();
        return {
          ...kept,
          action: action.value,
          source: source.value.trim() || undefined,
          eventType: eventType.value.trim() || undefined,
          // Not a number: sent as typed, for the server to say so at this field.
          priority: raw === "" ? 0 : Number.isFinite(Number(raw)) ? Number(raw) : raw,
          enabled: enabled.checked,
          conditions: conditions.collect(),
        };
      },
    };
    removeButton.addEventListener("click", () => {
      editors.splice(editors.indexOf(editor), 1);
      card.remove();
      renumber();
      addButton.focus();
    });
    editors.push(editor);
    list.append(card);
    renumber();
    return action;
  }
  for (const f of initial || []) add(f);
  addButton.addEventListener("click", () => add().focus());
  return { element, collect: () => editors.map((e) => e.collect()) };
}

