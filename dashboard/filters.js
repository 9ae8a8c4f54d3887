// Global filters: list, create, edit, delete, with a row editor for the conditions.

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
  const rows = h("div", {});
  const addButton = h("button", { type: "button", class: "small" }, "Add condition");
  const conditions = h("fieldset", { "data-field": "conditions", tabindex: "-1" },
    h("legend", {}, "Conditions (all must hold)"),
    rows, addButton,
    h("p", { class: "hint" }, "Field is a dot path such as payload.pull_request.draft. Value: JSON (true, 5, [\"a\",\"b\"]) or plain text."),
    h("p", { class: "field-error", "data-error-for": "conditions", role: "alert" }));

  // Rows are renumbered after a removal so that error paths (conditions[2].value) still point
  // at the right row.
  function renumber() {
    [...rows.children].forEach((row, i) => {
      for (const el of row.querySelectorAll("[data-part]")) {
        const name = `conditions[${i}].${el.dataset.part}`;
        el.dataset.field = name;
        const box = el.closest(".field").querySelector(".field-error");
        if (box) box.dataset.errorFor = name;
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
  for (const c of filter.conditions) addRow(c);
  addButton.addEventListener("click", () => addRow().focus());

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
      conditions,
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
        conditions: [...rows.children].map((row) => ({
          field: row.querySelector("[data-cond=field]").value.trim(),
          operator: row.querySelector("[data-cond=operator]").value,
          value: parseValue(row.querySelector("[data-cond=value]").value),
          caseSensitive: row.querySelector("[data-cond=caseSensitive]").checked,
          negate: row.querySelector("[data-cond=negate]").checked,
        })),
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
