// Routes: list, create, edit, delete. Target agents are picked from the existing agents; the
// route's own source filters are edited with the global filters' row editor; the
// transformation is a jq program, checked by the server (a compile error is shown under it).

import { get, post, put, del } from "./api.js";
import { h, viewHead, table, toast, confirmDialog, showError } from "./ui.js";
import { input, textarea, select, checkbox, resourceForm, numberOf, textOf, ruleTester } from "./forms.js";
import { sourceFilterEditor } from "./filters.js";

export function render(main, args) {
  if (args[0] === "new") return renderForm(main, null);
  if (args[1] === "edit") return renderForm(main, args[0]);
  return renderList(main);
}

async function renderList(main) {
  const error = h("p", { class: "form-error", role: "alert" });
  const body = h("div", {}, h("p", { class: "empty" }, "Loading…"));
  main.append(viewHead("Routes", h("a", { class: "button primary", href: "#/routes/new" }, "New route")), error, body);
  try {
    const { items } = await get("/admin/routes");
    items.sort((a, b) => b.priority - a.priority || a.id.localeCompare(b.id));
    body.replaceChildren(table(
      ["Id", "Name", "Targets", { label: "Priority", class: "num" }, { label: "Source filters", class: "hide-narrow" }, { label: "Retries", class: "hide-narrow" }, "Enabled", ""],
      items.map((r) => h("tr", { "data-id": r.id },
        h("td", { class: "mono" }, r.id),
        h("td", {}, h("span", {}, r.name, r.transformation ? [" ", h("span", { class: "badge info", title: "has a jq transformation" }, "jq")] : null)),
        h("td", {}, r.targetAgents.join(", ")),
        h("td", { class: "num" }, String(r.priority)),
        h("td", { class: "hide-narrow" }, r.sourceFilters.length ? r.sourceFilters.map(describeFilter).join("; ") : h("span", { class: "muted" }, "every event")),
        h("td", { class: "hide-narrow" }, r.retryPolicy
          ? `${r.retryPolicy.maxAttempts} × ${r.retryPolicy.backoffStrategy}`
          : h("span", { class: "muted" }, "default")),
        h("td", {}, r.enabled ? h("span", { class: "badge ok" }, "yes") : h("span", { class: "badge" }, "no")),
        h("td", { class: "actions" },
          h("a", { class: "button small", href: `#/routes/${encodeURIComponent(r.id)}/edit` }, "Edit"),
          h("button", { type: "button", class: "small danger", onclick: () => remove(r.id, main) }, "Delete")))),
      "No routes yet. A route sends matching events to agents."));
  } catch (e) {
    body.replaceChildren();
    showError(e, error);
  }
}

function describeFilter(f) {
  const scope = [f.source, f.eventType].filter(Boolean).join(" / ") || "any";
  const n = (f.conditions || []).length;
  return `${f.action} ${scope}${n ? ` (${n} condition${n > 1 ? "s" : ""})` : ""}`;
}

async function remove(id, main) {
  if (!(await confirmDialog(`Delete route "${id}"?`))) return;
  try {
    await del(`/admin/routes/${encodeURIComponent(id)}`);
    toast(`Route "${id}" deleted`);
    main.replaceChildren();
    renderList(main);
  } catch (e) {
    showError(e);
  }
}

async function renderForm(main, id) {
  main.append(viewHead(id ? `Edit route ${id}` : "New route"));
  let route = { sourceFilters: [], targetAgents: [], priority: 0, enabled: true };
  let agents = [];
  try {
    const [agentList, existing] = await Promise.all([
      get("/admin/agents"),
      id ? get(`/admin/routes/${encodeURIComponent(id)}`) : Promise.resolve(null),
    ]);
    agents = agentList.items.map((a) => a.id);
    if (existing) route = existing;
  } catch (e) {
    main.append(h("p", { class: "form-error", role: "alert" }, e.message));
    return;
  }
  // Targets that no longer exist are still listed, so that saving reports them.
  const targetIds = [...new Set([...agents, ...route.targetAgents])];
  const policy = route.retryPolicy;
  const policyFields = h("div", { hidden: !policy },
    h("div", { class: "row" },
      input("retryPolicy.maxAttempts", "Max attempts", policy?.maxAttempts ?? 5, { inputmode: "numeric" }, "Total attempts, the first included."),
      select("retryPolicy.backoffStrategy", "Backoff", ["exponential", "linear", "fixed"], policy?.backoffStrategy ?? "exponential")),
    h("div", { class: "row" },
      input("retryPolicy.baseDelay", "Base delay (ms)", policy?.baseDelay ?? 1000, { inputmode: "numeric" }),
      input("retryPolicy.maxDelay", "Max delay (ms)", policy?.maxDelay ?? 300000, { inputmode: "numeric" })),
    checkbox("retryPolicy.jitter", "Jitter", policy?.jitter ?? false));
  const customPolicy = checkbox("customPolicy", "Own retry policy (otherwise the server's default)", Boolean(policy));
  customPolicy.querySelector("input").addEventListener("change", (e) => {
    policyFields.hidden = !e.target.checked;
  });

  const sourceFilters = sourceFilterEditor(route.sourceFilters);
  const form = resourceForm({
    title: id ? "Edit route" : "New route",
    back: "#/routes",
    saved: id ? "Route saved" : "Route created",
    fields: [
      h("div", { class: "row" },
        input("id", "Id", route.id, { required: true, readonly: Boolean(id) }, id ? "The id cannot change." : "Letters, digits and _ . : -"),
        input("name", "Name", route.name, { required: true })),
      input("description", "Description", route.description),
      h("fieldset", { "data-field": "targetAgents", tabindex: "-1", "aria-describedby": "targets-error" },
        h("legend", {}, "Target agents"),
        targetIds.length
          ? h("div", { class: "checks" }, targetIds.map((a) => h("label", { class: "check" },
            h("input", { type: "checkbox", name: "targetAgents", value: a, checked: route.targetAgents.includes(a) }), a)))
          : h("p", { class: "muted" }, "No agents yet: create one first."),
        h("p", { class: "field-error", id: "targets-error", "data-error-for": "targetAgents", role: "alert" })),
      sourceFilters.element,
      textarea("transformation", "Transformation (jq)", route.transformation?.expression ?? "", { rows: 3, placeholder: ".payload |= {title: .title}" },
        "A jq program run on the event; it must yield one object. Leave empty for none."),
      ruleTester((f) => ({ transformation: { type: "jq", expression: f.elements.transformation.value.trim() || "." } }),
        "Runs the transformation as written (not saved) on the event, and shows what the agents would receive."),
      h("div", { class: "row three" },
        input("priority", "Priority", route.priority ?? 0, { inputmode: "numeric" }, "Larger is delivered first."),
        h("div", {}), h("div", {})),
      customPolicy,
      policyFields,
      checkbox("enabled", "Enabled", route.enabled ?? true),
    ],
    collect: (f) => {
      const expression = f.elements.transformation.value.trim();
      const body = {
        id: textOf(f, "id") ?? "",
        name: textOf(f, "name") ?? "",
        description: textOf(f, "description"),
        targetAgents: [...f.querySelectorAll("input[name=targetAgents]:checked")].map((c) => c.value),
        sourceFilters: sourceFilters.collect(),
        transformation: expression ? { type: "jq", expression } : undefined,
        priority: numberOf(f, "priority") ?? 0,
        enabled: f.elements.enabled.checked,
      };
      if (f.elements.customPolicy.checked) {
        body.retryPolicy = {
          maxAttempts: numberOf(f, "retryPolicy.maxAttempts"),
          backoffStrategy: f.elements["retryPolicy.backoffStrategy"].value,
          baseDelay: numberOf(f, "retryPolicy.baseDelay"),
          maxDelay: numberOf(f, "retryPolicy.maxDelay"),
          jitter: f.elements["retryPolicy.jitter"].checked,
        };
      }
      return body;
    },
    send: (body) => (id ? put(`/admin/routes/${encodeURIComponent(id)}`, body) : post("/admin/routes", body)),
  });
  main.append(form);
  form.querySelector(id ? "[name=name]" : "[name=id]").focus();
}
