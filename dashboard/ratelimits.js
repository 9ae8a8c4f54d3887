// Inbound rate limits per source:identifier: list, create, edit (PUT replaces), delete.

import { get, put, del, withQuery } from "./api.js";
import { h, viewHead, table, toast, confirmDialog, showError, number, time, dateTime } from "./ui.js";
import { input, select, resourceForm, numberOf, textOf } from "./forms.js";

export function render(main, args) {
  if (args[0] === "new") return renderForm(main, null);
  if (args[0] === "edit") return renderForm(main, { source: args[1], identifier: args[2] });
  return renderList(main);
}

const key = (c) => `${encodeURIComponent(c.source)}/${encodeURIComponent(c.identifier)}`;

async function renderList(main) {
  const error = h("p", { class: "form-error", role: "alert" });
  const body = h("div", {}, h("p", { class: "empty" }, "Loading…"));
  const usage = h("section", { class: "usage", "data-testid": "rate-usage" });
  main.append(viewHead("Rate limits", h("a", { class: "button primary", href: "#/rate-limits/new" }, "New rate limit")), error, body, usage);
  get("/admin/rate-limits/usage").then(({ items }) => {
    usage.replaceChildren(
      h("h2", {}, "Hits per key"),
      h("p", { class: "hint" }, "Webhooks admitted and refused by each source:identifier on this node since it started, the most refused first."),
      table(["Source", "Identifier", { label: "Admitted", class: "num" }, { label: "Refused", class: "num" }, "Last refused", { label: "Last seen", class: "hide-narrow" }],
        items.map((k) => h("tr", { "data-key": `${k.source}:${k.identifier}`, class: k.limited ? "row-bad" : null },
          h("td", {}, k.source),
          h("td", { class: "mono" }, k.identifier),
          h("td", { class: "num" }, number(k.allowed)),
          h("td", { class: "num" }, k.limited ? h("span", { class: "badge bad" }, number(k.limited)) : "0"),
          h("td", { title: k.lastLimitedAt ? dateTime(k.lastLimitedAt) : "" }, k.lastLimitedAt ? time(k.lastLimitedAt) : "—"),
          h("td", { class: "hide-narrow", title: dateTime(k.lastAt) }, time(k.lastAt)))),
        "No webhook was checked against a rate limit since the router started."));
  }).catch((e) => showError(e, error));
  try {
    const { items } = await get("/admin/rate-limits");
    body.replaceChildren(table(
      ["Source", "Identifier", { label: "Limit", class: "num" }, { label: "Window", class: "num" }, "Strategy", { label: "Burst", class: "num hide-narrow" }, ""],
      items.map((c) => h("tr", { "data-id": `${c.source}:${c.identifier}` },
        h("td", {}, c.source),
        h("td", { class: "mono" }, c.identifier),
        h("td", { class: "num" }, number(c.limit)),
        h("td", { class: "num" }, `${number(c.window)} ms`),
        h("td", {}, c.strategy ?? (c.burst ? "token_bucket" : "sliding_window")),
        h("td", { class: "num hide-narrow" }, c.burst ? number(c.burst) : "—"),
        h("td", { class: "actions" },
          h("a", { class: "button small", href: `#/rate-limits/edit/${key(c)}` }, "Edit"),
          h("button", { type: "button", class: "small danger", onclick: () => remove(c, main) }, "Delete")))),
      "No rate limits of your own: every source:identifier gets the server's default."));
  } catch (e) {
    body.replaceChildren();
    showError(e, error);
  }
}

async function remove(c, main) {
  if (!(await confirmDialog(`Delete the rate limit for ${c.source}:${c.identifier}?`))) return;
  try {
    await del(withQuery("/admin/rate-limits", { source: c.source, identifier: c.identifier }));
    toast("Rate limit deleted");
    main.replaceChildren();
    renderList(main);
  } catch (e) {
    showError(e);
  }
}

async function renderForm(main, which) {
  main.append(viewHead(which ? `Edit rate limit ${which.source}:${which.identifier}` : "New rate limit"));
  let c = { identifier: "*" };
  if (which) {
    try {
      const { items } = await get("/admin/rate-limits");
      c = items.find((x) => x.source === which.source && x.identifier === which.identifier);
      if (!c) throw new Error("No such rate limit (it may have been deleted).");
    } catch (e) {
      main.append(h("p", { class: "form-error", role: "alert" }, e.message));
      return;
    }
  }
  const form = resourceForm({
    title: which ? "Edit rate limit" : "New rate limit",
    back: "#/rate-limits",
    saved: "Rate limit saved",
    fields: [
      h("div", { class: "row" },
        input("source", "Source", c.source, { required: true, readonly: Boolean(which) }, "A source name such as github."),
        input("identifier", "Identifier", c.identifier, { required: true, readonly: Boolean(which) }, "* applies to every identifier of the source.")),
      h("div", { class: "row three" },
        input("limit", "Limit", c.limit, { inputmode: "numeric" }, "Requests per window."),
        input("window", "Window (ms)", c.window ?? 60000, { inputmode: "numeric" }),
        input("burst", "Burst", c.burst, { inputmode: "numeric" }, "Token bucket only.")),
      select("strategy", "Strategy",
        [["", "default (sliding window)"], ["sliding_window", "sliding window"], ["fixed_window", "fixed window"], ["token_bucket", "token bucket"]],
        c.strategy ?? ""),
    ],
    collect: (f) => ({
      source: textOf(f, "source") ?? "",
      identifier: textOf(f, "identifier") ?? "",
      limit: numberOf(f, "limit"),
      window: numberOf(f, "window"),
      burst: numberOf(f, "burst"),
      strategy: f.elements.strategy.value || undefined,
    }),
    send: (body) => put("/admin/rate-limits", body),
  });
  main.append(form);
  form.querySelector(which ? "[name=limit]" : "[name=source]").focus();
}
