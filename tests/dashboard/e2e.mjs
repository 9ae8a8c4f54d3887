// End-to-end test of the dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core). Started by tests/it/dashboard.rs, which runs the real server and a test
// receiver and sets up the agents and routes; this script does what an operator would.
//
// Environment:
//   BASE_URL        the router, e.g. http://127.0.0.1:41234
//   ADMIN_KEY       its admin key
//   AGENT_KEY       its AGENT_API_KEY (a pull consumer polls with it)
//   GITHUB_SECRET   the github source's secret (to sign webhooks as GitHub does)
//   SCREENSHOT_DIR  where to write the screenshots (1280×800 and 390×844 of every view)
//   CHROMIUM        the browser (default /usr/bin/chromium)
//   FAULTED_URL     a second router whose store refuses webhooks (below its free-space floor)
// Set up by the Rust side: agent "ok-agent" (answers 200), agent "flaky-agent" (answers 500 with
// the body {"error":"database unavailable: connection refused"} three times, then 200) reached by
// route "issues-to-flaky" (github issues, maxAttempts 1).
//
// Prints one line per step; exits 0 when every step passed.

import { createHmac, randomUUID } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = must("BASE_URL");
const ADMIN_KEY = must("ADMIN_KEY");
const AGENT_KEY = must("AGENT_KEY");
const GITHUB_SECRET = must("GITHUB_SECRET");
const SHOTS = must("SCREENSHOT_DIR");
const FAULTED = must("FAULTED_URL");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const WIDE = { width: 1280, height: 800 };
const NARROW = { width: 390, height: 844 };

function must(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`e2e: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

let passed = 0;
async function step(name, fn) {
  const started = Date.now();
  try {
    await fn();
  } catch (e) {
    console.log(`not ok - ${name}: ${e && e.stack ? e.stack : e}`);
    throw e;
  }
  passed += 1;
  console.log(`ok - ${name} (${Date.now() - started} ms)`);
}

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

/** Polls `check` until it returns a truthy value. */
async function waitFor(what, check, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The admin API with the Bearer key (for the test's own checks, not the page's). */
async function admin(path) {
  const r = await fetch(BASE + path, { headers: { Authorization: `Bearer ${ADMIN_KEY}` } });
  assert(r.ok, `GET ${path}: ${r.status}`);
  return r.json();
}

/** A webhook signed exactly as GitHub signs it; the stored event's id. */
async function postGithub(event, payload) {
  const body = JSON.stringify(payload);
  const signature = "sha256=" + createHmac("sha256", GITHUB_SECRET).update(body).digest("hex");
  const r = await fetch(`${BASE}/webhook/github`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "x-github-event": event,
      "x-github-delivery": randomUUID(),
      "x-hub-signature-256": signature,
    },
    body,
  });
  const answer = await r.json();
  assert(r.status === 200 && answer.success, `webhook answered ${r.status} ${JSON.stringify(answer)}`);
  return answer.eventId;
}

/** A pull consumer's call (`GET /agents/{id}/deliveries?…`, `POST …/ack`) with AGENT_API_KEY. */
async function consumer(method, path, body) {
  const r = await fetch(BASE + path, {
    method,
    headers: { Authorization: `Bearer ${AGENT_KEY}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const answer = await r.json();
  assert(r.ok, `${method} ${path}: ${r.status} ${JSON.stringify(answer)}`);
  return answer;
}

async function deliveryOf(eventId, agentId) {
  const detail = await admin(`/admin/events/${eventId}`);
  return detail.deliveries.find((d) => d.agentId === agentId);
}

async function waitForStatus(eventId, agentId, status) {
  return waitFor(`${agentId}'s delivery of ${eventId} to be ${status}`, async () => {
    const d = await deliveryOf(eventId, agentId);
    return d && d.status === status ? d : null;
  });
}

async function shot(page, name) {
  // Toasts from earlier steps would cover the view.
  await page.evaluate(() => document.getElementById("toasts").replaceChildren());
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

async function signIn(page) {
  await page.goto(BASE + "/");
  await page.locator("#admin-key").fill(ADMIN_KEY);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#shell").waitFor({ state: "visible" });
}

/** Goes to a view and waits until it has drawn (its container has something besides "Loading…"). */
async function visit(page, hash, ready) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await page.locator(ready).first().waitFor({ state: "visible" });
}

mkdirSync(SHOTS, { recursive: true });
// launch() starts Chromium on a fresh, temporary --user-data-dir of its own and removes it on
// close (it refuses one given in args).
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
  ],
});

const pageErrors = [];
let exitCode = 0;
try {
  const context = await browser.newContext({ viewport: WIDE });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: BASE });
  context.setDefaultTimeout(10000);
  const page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    // The browser logs every 4xx answer ("Failed to load resource"); the refusals this test
    // provokes (wrong key, validation errors) are expected. Anything else is a fault.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) pageErrors.push(`console: ${m.text()}`);
  });

  await step("a visit without a session shows the sign-in form", async () => {
    await page.goto(BASE + "/");
    await page.locator("#signin-form").waitFor({ state: "visible" });
    assert(await page.locator("#shell").isHidden(), "the views are hidden");
    assert((await page.locator("#admin-key").getAttribute("type")) === "password", "one password field");
    await shot(page, "signin-1280");
  });

  await step("a wrong key is refused with a message", async () => {
    await page.locator("#admin-key").fill("not-the-key");
    await page.getByRole("button", { name: "Sign in" }).click();
    await waitFor("the error", async () => (await page.locator("#signin-error").textContent()).includes("not the admin key"));
    assert(await page.locator("#shell").isHidden(), "still signed out");
  });

  await step("signing in sets an HttpOnly, SameSite=Strict session cookie, not the key", async () => {
    await page.locator("#admin-key").fill(ADMIN_KEY);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.locator("#shell").waitFor({ state: "visible" });
    const cookies = await context.cookies(BASE);
    const c = cookies.find((x) => x.name === "er_session");
    assert(c, `a session cookie: ${JSON.stringify(cookies)}`);
    assert(c.httpOnly && c.sameSite === "Strict", `flags: ${JSON.stringify(c)}`);
    assert(!c.value.includes(ADMIN_KEY), "the cookie is not the key");
    assert(await page.evaluate(() => document.cookie === ""), "scripts cannot read the cookie");
  });

  await step("before any event, the overview guides: webhook URLs, disabled sources, test commands", async () => {
    await visit(page, "#/overview", "[data-testid=first-start]");
    const guide = page.getByTestId("first-start");
    const text = await guide.textContent();
    assert(text.includes(`${BASE}/webhook/github`), `the github URL: ${text}`);
    assert(/sources are disabled until their secret is set/.test(text), `the disabled sources: ${text}`);
    const commands = await guide.getByTestId("test-commands").textContent();
    assert(commands.includes("export GITHUB_WEBHOOK_SECRET=") && commands.includes(`event-router send github --event push --url ${BASE}`), commands);
    assert((await page.locator("[data-stat=p95] .value").textContent()) === "—", "no data shows —, not 0 ms");
    await shot(page, "first-start-1280");
  });

  await step("overview shows the four charts and refreshes", async () => {
    await visit(page, "#/overview", "[data-stat=queue-depth]");
    for (const id of ["events", "success", "p95", "queue"]) {
      assert(await page.locator(`[data-chart=${id}] svg`).count() === 1, `chart ${id}`);
    }
    await page.locator("input[name=window][value='24']").check({ force: true });
    await waitFor("the 24 h window", async () => (await page.locator("[data-stat=events-per-minute] .sub").textContent()).includes("24 hours"));
  });

  let pushId;
  await step("a signed webhook appears in the live view", async () => {
    await visit(page, "#/live", ".feed-list");
    await waitFor("the stream to open", async () => (await page.locator(".live-status").getAttribute("data-state")) === "live");
    const sent = Date.now();
    pushId = await postGithub("push", { ref: "refs/heads/main", sender: { login: "octocat" } });
    await page.locator(`.feed-row[data-id="${pushId}"]`).waitFor({ state: "visible", timeout: 15000 });
    const took = Date.now() - sent;
    const text = await page.locator(`.feed-row[data-id="${pushId}"]`).textContent();
    assert(text.includes("github") && text.includes("push"), `row shows source and type: ${text}`);
    console.log(`# event ${pushId} shown ${took} ms after it was posted`);
  });

  await step("the live view filters by source and type", async () => {
    const issuesId = await postGithub("ping", { zen: "Design for failure.", sender: { login: "octocat" } });
    await page.locator(`.feed-row[data-id="${issuesId}"]`).waitFor({ state: "visible", timeout: 15000 });
    await page.locator("#live-type").fill("push");
    await waitFor("the filter", async () => (await page.locator(`.feed-row[data-id="${issuesId}"]`).count()) === 0);
    assert(await page.locator(`.feed-row[data-id="${pushId}"]`).isVisible(), "push still shown");
    await page.locator("#live-source").fill("linear");
    await waitFor("the source filter", async () => (await page.locator(".feed-row").count()) === 0);
    await page.locator("#live-source").fill("");
    await page.locator("#live-type").fill("");
    await page.locator(`.feed-row[data-id="${issuesId}"]`).waitFor({ state: "visible" });
    await shot(page, "live-1280");
  });

  await step("new events do not move the rows being read; a pill counts them", async () => {
    for (let i = 0; i < 16; i++) await postGithub("ping", { zen: `zen ${i}`, sender: { login: "octocat" } });
    await waitFor("the rows", async () => (await page.locator(".feed-row").count()) >= 18);
    const list = page.locator(".feed-list");
    await list.evaluate((el) => { el.scrollTop = 150; });
    const reading = page.locator(".feed-row").nth(6);
    const id = await reading.getAttribute("data-id");
    const before = (await page.locator(`.feed-row[data-id="${id}"]`).boundingBox()).y;
    const newer = await postGithub("ping", { zen: "one more", sender: { login: "octocat" } });
    await page.locator(`.feed-row[data-id="${newer}"]`).waitFor({ state: "attached", timeout: 15000 });
    const pill = page.locator(".pill");
    await pill.waitFor({ state: "visible" });
    assert((await pill.textContent()).startsWith("1 new"), await pill.textContent());
    const after = (await page.locator(`.feed-row[data-id="${id}"]`).boundingBox()).y;
    assert(Math.abs(after - before) < 1, `the row moved from ${before} to ${after}`);
    await pill.click();
    await waitFor("the top", async () => (await list.evaluate((el) => el.scrollTop)) === 0);
    assert(await pill.isHidden(), "the pill goes once the top is shown");
    assert(await page.locator(`.feed-row[data-id="${newer}"]`).isVisible(), "the new event is in view");
  });

  await step("clicking an event opens its payload, deliveries and every attempt", async () => {
    await waitForStatus(pushId, "ok-agent", "delivered");
    await page.locator(`.feed-row[data-id="${pushId}"]`).click();
    const drawer = page.locator("dialog.drawer");
    await drawer.waitFor({ state: "visible" });
    await drawer.locator(`[data-event-id="${pushId}"]`).waitFor();
    const delivery = drawer.locator(".delivery[data-status=delivered]");
    await delivery.waitFor();
    assert((await delivery.textContent()).includes("ok-agent"), "the delivery's agent");
    assert(await delivery.locator("tr[data-attempt='1']").count() === 1, "attempt 1 is listed");
    assert((await delivery.locator("tr[data-attempt='1']").textContent()).includes("200"), "with its answer");
    assert((await drawer.getByTestId("payload").textContent()).includes("refs/heads/main"), "the payload");
    await shot(page, "event-1280");
    await page.keyboard.press("Escape");
    await drawer.waitFor({ state: "detached" });
  });

  const dead = [];
  await step("failing deliveries land in the dead-letter queue", async () => {
    for (let i = 0; i < 3; i++) {
      const id = await postGithub("issues", { action: "opened", issue: { number: i + 1 }, sender: { login: "octocat" } });
      const d = await waitForStatus(id, "flaky-agent", "dead");
      dead.push({ eventId: id, deliveryId: d.id });
    }
    await visit(page, "#/dlq", "table");
    for (const d of dead) await page.locator(`tr[data-id="${d.deliveryId}"]`).waitFor();
    await shot(page, "dlq-1280");
  });

  await step("the navigation shows the dead-letter count", async () => {
    await waitFor("the count", async () => (await page.locator("#dlq-count").textContent()) === "3", 20000);
    assert(await page.locator("#dlq-count").isVisible(), "the count is shown");
    assert((await page.locator("#nav-dlq").getAttribute("aria-label")) === "Dead letters, 3 waiting", "and announced");
  });

  await step("a failing agent's own answer is shown on its attempt, with what was sent", async () => {
    await visit(page, `#/events/${dead[0].eventId}`, ".delivery[data-status=dead]");
    const delivery = page.locator(".delivery[data-status=dead]");
    const attempt = delivery.locator("details.exchange[data-attempt-detail='1']");
    assert(await attempt.getAttribute("open") !== null, "the failed attempt's exchange is open");
    const body = await attempt.getByTestId("response-body").textContent();
    assert(body.includes("database unavailable: connection refused"), `the agent's words: ${body}`);
    const text = await attempt.textContent();
    assert(text.includes("x-agent-error: db down"), `the answer's headers: ${text}`);
    assert(text.includes("x-delivery-attempt: 1") && text.includes("webhook-signature: v1,"), `the request's headers: ${text}`);
    assert((await delivery.locator("tr[data-attempt='1']").textContent()).includes("first attempt"), "why it was made");
    await shot(page, "attempt-1280");
  });

  await step("the live view shows outcomes, searches payload text and ids, and filters by outcome", async () => {
    const needle = await postGithub("ping", { zen: "Needle-4711 in the haystack", sender: { login: "octocat" } });
    await visit(page, "#/live", ".feed-row");
    await waitFor("the push delivered", async () =>
      (await page.locator(`.feed-row[data-id="${pushId}"]`).getAttribute("data-outcome")) === "delivered");
    const label = await page.locator(`.feed-row[data-id="${pushId}"]`).getAttribute("aria-label");
    assert(label.includes("delivered") && label.includes("Open details"), `announced with its outcome: ${label}`);
    assert((await page.locator("#live-q").getAttribute("type")) === "search", "a search box");
    await page.locator("#live-q").fill("needle-4711 IN THE");
    await waitFor("the payload match alone", async () => {
      const ids = await page.locator(".feed-row").evaluateAll((rows) => rows.map((r) => r.dataset.id));
      return ids.length === 1 && ids[0] === needle;
    });
    await waitFor("how far it searched", async () => (await page.getByTestId("live-searched").textContent()).includes("Searched"));
    await page.locator("#live-q").fill("");
    await page.locator("#live-outcome").selectOption("dead");
    await waitFor("the dead ones", async () => {
      const ids = await page.locator(".feed-row").evaluateAll((rows) => rows.map((r) => r.dataset.id));
      return ids.length === 3 && dead.every((d) => ids.includes(d.eventId));
    });
    await shot(page, "live-search-1280");
    await page.locator("#live-outcome").selectOption("");
    await page.locator("#live-q").fill(dead[1].eventId);
    await page.locator("#live-q").press("Enter");
    const drawer = page.locator("dialog.drawer");
    await drawer.locator(`[data-event-id="${dead[1].eventId}"]`).waitFor();
    await page.keyboard.press("Escape");
    await drawer.waitFor({ state: "detached" });
    await page.locator("#live-q").fill("");
  });

  await step("dead letters are grouped by error, with full ids, time of death and the total", async () => {
    await visit(page, "#/dlq", "table");
    await waitFor("the total", async () => (await page.getByTestId("dlq-total").textContent()).includes("3 in all"));
    const group = page.getByTestId("dlq-groups").locator("li").first();
    assert((await group.getAttribute("data-count")) === "3", "one group of three");
    assert((await group.textContent()).includes("agent answered 500"), await group.textContent());
    const row = page.locator(`tr[data-id="${dead[0].deliveryId}"]`);
    const text = await row.textContent();
    assert(text.includes(dead[0].deliveryId) && text.includes(dead[0].eventId), `full ids: ${text}`);
    assert(/\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}/.test(text), `when it died: ${text}`);
    // Narrowed by source (GET /admin/dlq?source=): none from stripe, the three from github.
    await waitFor("the sources", async () => (await page.locator("#dlq-source option").count()) > 2);
    await page.getByLabel("Source", { exact: true }).selectOption("stripe");
    await waitFor("no stripe dead letters", async () => (await page.locator(`tr[data-id="${dead[0].deliveryId}"]`).count()) === 0);
    await page.getByLabel("Source", { exact: true }).selectOption("github");
    for (const d of dead) await page.locator(`tr[data-id="${d.deliveryId}"]`).waitFor();
    await page.getByLabel("Source", { exact: true }).selectOption("");
  });

  await step("a dead letter can be deleted from the page", async () => {
    await visit(page, "#/dlq", "table");
    const gone = dead[2];
    await page.locator(`tr[data-id="${gone.deliveryId}"]`).getByRole("button", { name: "Delete" }).click();
    await page.locator("dialog.confirm").getByRole("button", { name: "Delete" }).click();
    await page.locator(`tr[data-id="${gone.deliveryId}"]`).waitFor({ state: "detached" });
    const list = await admin("/admin/dlq");
    assert(!list.items.some((d) => d.id === gone.deliveryId), "deleted in the store");
  });

  await step("retrying a selection from the page delivers it, and the page follows it until it settles", async () => {
    const one = dead[0];
    await page.locator(`tr[data-id="${one.deliveryId}"]`).getByRole("checkbox").check();
    await page.getByRole("button", { name: "Retry selected (1)" }).click();
    await waitFor("the answer", async () => (await page.getByTestId("dlq-result").textContent()).includes("Retried 1"));
    await waitForStatus(one.eventId, "flaky-agent", "delivered");
    await waitFor("the follow-up", async () => (await page.getByTestId("dlq-follow").getAttribute("data-settled")) === "true");
    assert((await page.getByTestId("dlq-follow").textContent()).includes("1 delivered"), await page.getByTestId("dlq-follow").textContent());
  });

  await step("retry all answers how many it retried", async () => {
    await page.locator(`tr[data-id="${dead[1].deliveryId}"]`).waitFor();
    await page.getByRole("button", { name: "Retry all" }).click();
    await page.locator("dialog.confirm").getByRole("button", { name: "Retry all" }).click();
    await waitFor("the count", async () => (await page.getByTestId("dlq-result").textContent()).includes("Retried 1 delivery"));
    const d = await waitForStatus(dead[1].eventId, "flaky-agent", "delivered");
    assert(d.attemptLog.length === 2, `two attempts: ${JSON.stringify(d.attemptLog)}`);
  });

  await step("the event of a retried delivery shows both attempts", async () => {
    await visit(page, `#/events/${dead[1].eventId}`, ".delivery[data-status=delivered]");
    const rows = page.locator(".delivery tr[data-attempt]");
    assert(await rows.count() === 2, "two attempts");
    assert((await rows.nth(0).textContent()).includes("500"), "the first failed with 500");
    assert((await rows.nth(1).textContent()).includes("manual retry"), "the second was a manual retry");
    // Replayed from the page: a new delivery, its first attempt marked as a replay.
    await page.getByTestId("replay").click();
    await waitFor("the replayed delivery", async () => (await admin(`/admin/events/${dead[1].eventId}`)).deliveries.length === 2);
    await waitFor("its attempt shown", async () => {
      await page.evaluate(() => window.dispatchEvent(new HashChangeEvent("hashchange")));
      return (await page.locator(".delivery tr[data-attempt]").allTextContents()).some((t) => t.includes("replay"));
    });
  });

  await step("a route with three problems shows all three at once, each next to its field", async () => {
    await visit(page, "#/routes/new", "main form");
    await page.getByLabel("Id", { exact: true }).fill("bad id!");
    await page.getByLabel("Name", { exact: true }).fill("Made in the dashboard");
    await page.getByLabel("Transformation (jq)").fill(".payload | {title: ");
    await page.getByRole("button", { name: "Save" }).click();
    const boxes = ["id", "targetAgents", "transformation"].map((f) => page.locator(`[data-error-for="${f}"]`));
    await waitFor("the three errors", async () => {
      for (const b of boxes) if (!(await b.textContent())) return false;
      return true;
    });
    assert((await page.getByLabel("Id", { exact: true }).getAttribute("aria-invalid")) === "true", "the id is marked");
    assert(/jq/i.test(await boxes[2].textContent()), "the jq error under its field");
    assert((await page.locator("form .form-error").textContent()).includes("3 problems"), "the count at the top");
    await shot(page, "route-errors-1280");
  });

  await step("a route with an invalid jq program shows the error next to the field", async () => {
    await page.getByLabel("Id", { exact: true }).fill("ui-route");
    await page.getByRole("checkbox", { name: "ok-agent" }).check();
    await page.getByRole("button", { name: "Save" }).click();
    await waitFor("the other errors gone", async () => (await page.locator('[data-error-for="id"]').textContent()) === "");
    const error = page.locator('[data-error-for="transformation"]');
    await waitFor("the field's error", async () => (await error.textContent()).length > 0);
    const text = await error.textContent();
    assert(/jq/i.test(text), `a jq compile error: ${text}`);
    assert((await page.getByLabel("Transformation (jq)").getAttribute("aria-invalid")) === "true", "the field is marked");
    assert(await page.locator("form .form-error").textContent() === "", "not only at the top");
    await shot(page, "route-error-1280");
    await page.getByLabel("Transformation (jq)").fill(".payload |= {title: .title}");
    // Tried on the newest event before saving: the result shows.
    await waitFor("the newest event's id", async () => (await page.locator("#tester-event").inputValue()).length > 0);
    await page.getByLabel("Transformation (jq)").fill("{kind: .type}");
    await page.getByRole("button", { name: "Try it" }).click();
    await waitFor("the tester's result", async () => (await page.getByTestId("tester-result").textContent()).includes('"kind"'));
    await page.getByLabel("Transformation (jq)").fill(".payload |= {title: .title}");
    await page.getByRole("button", { name: "Save" }).click();
    await page.locator('tr[data-id="ui-route"]').waitFor();
    await shot(page, "routes-1280");
  });

  await step("a route's source filters are edited with the filters' row editor", async () => {
    await visit(page, "#/routes/ui-route/edit", "main form");
    await page.getByRole("button", { name: "Add source filter" }).click();
    const card = page.locator("fieldset.source-filter").first();
    await card.getByLabel("Source", { exact: true }).fill("github");
    await card.getByLabel("Event type").fill("push");
    await card.getByRole("button", { name: "Add condition" }).click();
    await card.getByLabel("Field", { exact: true }).fill("payload.ref");
    await card.getByLabel("Operator").selectOption("regex");
    await card.getByLabel("Value").fill("refs/(");
    await page.getByRole("button", { name: "Save" }).click();
    const error = page.locator('[data-error-for="sourceFilters[0].conditions[0].value"]');
    await waitFor("the condition's error", async () => (await error.textContent()).length > 0);
    assert((await card.getByLabel("Value").getAttribute("aria-invalid")) === "true", "the value is marked");
    await shot(page, "route-source-filter-1280");
    await card.getByLabel("Value").fill("^refs/heads/");
    await page.getByRole("button", { name: "Save" }).click();
    await page.locator('tr[data-id="ui-route"]').waitFor();
    let route = await admin("/admin/routes/ui-route");
    assert(route.sourceFilters.length === 1, JSON.stringify(route.sourceFilters));
    const [sf] = route.sourceFilters;
    assert(sf.source === "github" && sf.eventType === "push" && sf.action === "include", JSON.stringify(sf));
    const [c] = sf.conditions;
    assert(sf.conditions.length === 1 && c.field === "payload.ref" && c.operator === "regex" && c.value === "^refs/heads/", JSON.stringify(sf));
    // Read back into the same rows, edited and removed.
    await visit(page, "#/routes/ui-route/edit", "main form");
    const again = page.locator("fieldset.source-filter").first();
    assert((await again.getByLabel("Field", { exact: true }).inputValue()) === "payload.ref", "the condition is shown");
    assert((await again.getByLabel("Source", { exact: true }).inputValue()) === "github", "the source is shown");
    await again.getByLabel("Event type").fill("");
    await page.getByRole("button", { name: "Save" }).click();
    await page.locator('tr[data-id="ui-route"]').waitFor();
    route = await admin("/admin/routes/ui-route");
    assert(route.sourceFilters.length === 1 && route.sourceFilters[0].eventType == null, JSON.stringify(route.sourceFilters));
    assert(route.sourceFilters[0].id === sf.id, "its id is kept");
    await visit(page, "#/routes/ui-route/edit", "main form");
    await page.getByRole("button", { name: "Remove source filter 1" }).click();
    assert(await page.locator("fieldset.source-filter").count() === 0, "removed");
    await page.getByRole("button", { name: "Save" }).click();
    await page.locator('tr[data-id="ui-route"]').waitFor();
    assert((await admin("/admin/routes/ui-route")).sourceFilters.length === 0, "no source filter left");
  });

  await step("an agent is created and edited from the page, its secret revealed and copied", async () => {
    await visit(page, "#/agents/new", "main form");
    await page.getByLabel("Id", { exact: true }).fill("ui-agent");
    await page.getByLabel("Name", { exact: true }).fill("Made in the dashboard");
    await page.getByLabel("API key").fill("short");
    // Push is the default mode, and a push agent needs a URL: the server says so at the field.
    assert((await page.getByLabel("Delivery mode").inputValue()) === "push", "push by default");
    await page.getByRole("button", { name: "Save" }).click();
    const urlError = page.locator('[data-error-for="url"]');
    await waitFor("the url error", async () => (await urlError.textContent()).includes("needs a url"));
    await page.getByLabel("Delivery mode").selectOption("stream");
    assert(await page.getByLabel("URL", { exact: true }).isHidden(), "no URL for a stream-only agent");
    await page.getByRole("button", { name: "Save" }).click();
    const error = page.locator('[data-error-for="apiKey"]');
    await waitFor("the apiKey error", async () => (await error.textContent()).includes("16"));
    await page.getByLabel("API key").fill("");
    await page.getByRole("button", { name: "Save" }).click();
    const row = page.locator('tr[data-id="ui-agent"]');
    await row.waitFor();
    assert((await row.locator(".delivery-mode").textContent()) === "stream only", await row.locator(".delivery-mode").textContent());
    const agent = await admin("/admin/agents/ui-agent");
    assert(!(await row.textContent()).includes(agent.secret), "the secret is hidden at first");
    await row.getByRole("button", { name: "Reveal" }).click();
    assert((await row.locator("code").textContent()) === agent.secret, "revealed");
    await row.getByRole("button", { name: "Copy" }).click();
    await waitFor("the copy", async () => (await page.evaluate(() => navigator.clipboard.readText())) === agent.secret);
    await shot(page, "agents-1280");
    await row.getByRole("link", { name: "Edit" }).click();
    await page.getByLabel("Name", { exact: true }).fill("Renamed");
    await page.getByRole("button", { name: "Save" }).click();
    await waitFor("the new name", async () => (await page.locator('tr[data-id="ui-agent"]').textContent()).includes("Renamed"));
    assert((await admin("/admin/agents/ui-agent")).secret === agent.secret, "editing keeps the secret");
    await page.locator('tr[data-id="ui-agent"]').getByRole("button", { name: "Delete" }).click();
    await page.locator("dialog.confirm").getByRole("button", { name: "Delete" }).click();
    await page.locator('tr[data-id="ui-agent"]').waitFor({ state: "detached" });
  });

  await step("a pull agent is created from the page; a consumer's poll shows with its leases and last poll", async () => {
    await visit(page, "#/agents/new", "main form");
    await page.getByLabel("Id", { exact: true }).fill("ui-puller");
    await page.getByLabel("Name", { exact: true }).fill("Polled by workers");
    await page.getByLabel("Delivery mode").selectOption("pull");
    assert(await page.getByLabel("URL", { exact: true }).isHidden(), "a pull agent has no URL");
    const hint = await page.getByTestId("pull-hint").textContent();
    assert(hint.includes("GET /agents/ui-puller/deliveries"), `how consumers poll: ${hint}`);
    await shot(page, "agent-pull-form-1280");
    await page.getByRole("button", { name: "Save" }).click();
    const row = page.locator('tr[data-id="ui-puller"]');
    await row.waitFor();
    const stored = await admin("/admin/agents/ui-puller");
    assert(stored.mode === "pull" && stored.url == null, `stored as pull, without url: ${JSON.stringify(stored)}`);
    const mode = row.locator(".delivery-mode");
    assert((await mode.getAttribute("data-mode")) === "pull", "the mode is shown");
    assert((await mode.textContent()).includes("no consumer has polled"), await mode.textContent());
    // The test event is leased to its consumers: one polls once with AGENT_API_KEY.
    await row.getByRole("button", { name: "Send test event" }).click();
    await waitFor("the event page", async () => (await page.locator("main").getAttribute("data-view")) === "events");
    const polled = await consumer("GET", "/agents/ui-puller/deliveries?consumer=e2e-worker&max=10&waitMs=5000");
    assert(polled.items.length === 1 && polled.items[0].event.type === "agent.test", `one test delivery leased: ${JSON.stringify(polled)}`);
    await visit(page, "#/agents", 'tr[data-id="ui-puller"] [data-consumer="e2e-worker"]');
    const worker = page.locator('tr[data-id="ui-puller"] [data-consumer="e2e-worker"]');
    const text = await worker.textContent();
    assert(text.includes("e2e-worker") && text.includes("1 lease") && /polled (just now|\d+ s ago)/.test(text), `name, leases, last poll: ${text}`);
    await shot(page, "agents-pull-1280");
    // The overview's queue counts the lease.
    await visit(page, "#/overview", "[data-testid=leased]");
    assert((await page.getByTestId("leased").textContent()).includes("1 leased"), await page.getByTestId("leased").textContent());
    // Acked: the lease is gone, the consumer stays listed.
    const acked = await consumer("POST", "/agents/ui-puller/deliveries/ack", { ids: [polled.items[0].id] });
    assert(acked.acked.length === 1, JSON.stringify(acked));
    await visit(page, "#/agents", 'tr[data-id="ui-puller"] [data-consumer="e2e-worker"]');
    assert((await worker.textContent()).includes("0 leases"), await worker.textContent());
    // On a phone, the consumers fit too.
    const phone = await browser.newContext({ viewport: NARROW, isMobile: true, hasTouch: true });
    try {
      const p = await phone.newPage();
      p.on("pageerror", (e) => pageErrors.push(`pageerror (phone): ${e.message}`));
      await signIn(p);
      await visit(p, "#/agents", 'tr[data-id="ui-puller"] [data-consumer="e2e-worker"]');
      const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert(overflow <= 0, `the agents view scrolls sideways by ${overflow} px`);
      await p.locator('tr[data-id="ui-puller"]').scrollIntoViewIfNeeded();
      await shot(p, "agents-pull-390");
    } finally {
      await phone.close();
    }
  });

  await step("an open circuit breaker shows on the agents view and is reset from the page; a disabled agent is enabled", async () => {
    const id = await postGithub("deployment", { deployment: { id: 1 } });
    await waitFor("the breaker to open", async () => (await admin("/admin/agents/down-agent")).health.state === "open");
    // The list is drawn when the view is entered: enter it afresh.
    await visit(page, "#/dlq", "main");
    await visit(page, "#/agents", 'tr[data-id="down-agent"]');
    const health = page.locator('tr[data-id="down-agent"] .health');
    assert((await health.getAttribute("data-state")) === "open", "the open breaker is shown");
    assert((await health.getAttribute("title")).includes("500"), "with the agent's last error");
    await shot(page, "agents-health-1280");
    await page.locator('tr[data-id="down-agent"]').getByRole("button", { name: "Reset breaker" }).click();
    await waitForStatus(id, "down-agent", "delivered");
    await waitFor("the closed breaker", async () =>
      (await page.locator('tr[data-id="down-agent"] .health').getAttribute("data-state")) === "closed");
    await page.locator('tr[data-id="sleepy-agent"]').getByRole("button", { name: "Resume" }).click();
    await waitFor("the agent enabled", async () => (await admin("/admin/agents/sleepy-agent")).enabled === true);
    await waitFor("the row updated", async () =>
      (await page.locator('tr[data-id="sleepy-agent"]').getByRole("button", { name: "Resume" }).count()) === 0);
    // Paused again from the page: its deliveries wait.
    await page.locator('tr[data-id="sleepy-agent"]').getByRole("button", { name: "Pause" }).click();
    await waitFor("the agent paused", async () => (await admin("/admin/agents/sleepy-agent")).enabled === false);
    // At a glance: the flaky agent's success rate is low, with when it last failed.
    const flaky = page.locator('tr[data-id="flaky-agent"] .glance');
    assert((await flaky.getByTestId("success-rate").getAttribute("class")) === "badge bad", "a low success rate is flagged");
    assert(!(await flaky.textContent()).includes("last failed —"), `the last failure is known: ${await flaky.textContent()}`);
  });

  await step("send test event: the agent gets it, and its event shows the attempt", async () => {
    await visit(page, "#/agents", 'tr[data-id="ok-agent"]');
    await page.locator('tr[data-id="ok-agent"]').getByRole("button", { name: "Send test event" }).click();
    await waitFor("the event page", async () => (await page.locator("main").getAttribute("data-view")) === "events");
    // The page shows it as it is when loaded; reload until the attempt is in.
    await waitFor("the delivered test", async () => {
      await page.evaluate(() => window.dispatchEvent(new HashChangeEvent("hashchange")));
      return (await page.locator(".delivery[data-status=delivered]").count()) === 1;
    });
    assert((await page.locator(".event-detail").textContent()).includes("agent.test"), "the test event");
  });

  await step("a filter with a bad regex shows the error at its condition", async () => {
    await visit(page, "#/filters/new", "main form");
    await page.getByLabel("Id", { exact: true }).fill("ui-filter");
    await page.getByLabel("Name", { exact: true }).fill("No bots");
    await page.getByLabel("Action").selectOption("exclude");
    await page.getByRole("button", { name: "Add condition" }).click();
    await page.getByLabel("Field", { exact: true }).fill("payload.sender.login");
    await page.getByLabel("Operator").selectOption("regex");
    await page.getByLabel("Value").fill("bot(");
    await page.getByRole("button", { name: "Save" }).click();
    const error = page.locator('[data-error-for="conditions[0].value"]');
    await waitFor("the condition's error", async () => (await error.textContent()).length > 0);
    await page.getByLabel("Value").fill("\\[bot\\]$");
    await page.getByRole("button", { name: "Try it" }).click();
    await waitFor("the filter tried", async () => (await page.getByTestId("tester-result").locator("[data-kept]").count()) === 1);
    await page.getByRole("button", { name: "Save" }).click();
    await page.locator('tr[data-id="ui-filter"]').waitFor();
    await shot(page, "filters-1280");
  });

  await step("the live view names the filter that dropped a filtered event", async () => {
    const bot = await postGithub("push", { ref: "refs/heads/main", sender: { login: "renovate[bot]" } });
    await visit(page, "#/live", ".feed-row");
    const row = page.locator(`.feed-row[data-id="${bot}"]`);
    await waitFor("the filtered row", async () => (await row.getAttribute("data-outcome")) === "filtered");
    const why = row.getByTestId("why");
    assert((await why.textContent()).includes("by filter ui-filter"), await why.textContent());
    assert((await row.getAttribute("aria-label")).includes("ui-filter"), "announced with the filter");
  });

  await step("leaving a form with unsaved edits asks first", async () => {
    await visit(page, "#/filters/new", "main form");
    await page.getByLabel("Name", { exact: true }).fill("Half done");
    let asked = "";
    page.once("dialog", (d) => { asked = d.message(); d.dismiss(); });
    await page.evaluate(() => { location.hash = "#/overview"; });
    await waitFor("the question", async () => asked.length > 0);
    assert(asked.includes("not saved"), asked);
    assert((await page.locator("main").getAttribute("data-view")) === "filters", "still on the form");
    assert((await page.getByLabel("Name", { exact: true }).inputValue()) === "Half done", "the edit is kept");
    page.once("dialog", (d) => d.accept());
    await page.evaluate(() => { location.hash = "#/overview"; });
    await waitFor("the overview", async () => (await page.locator("main").getAttribute("data-view")) === "overview");
  });

  await step("a rate limit is created from the page, a bad value shown at its field", async () => {
    await visit(page, "#/rate-limits/new", "main form");
    await page.getByLabel("Source", { exact: true }).fill("github");
    await page.getByLabel("Identifier").fill("octocat");
    await page.getByLabel("Limit", { exact: true }).fill("0");
    await page.getByRole("button", { name: "Save" }).click();
    await waitFor("the limit's error", async () => (await page.locator('[data-error-for="limit"]').textContent()).length > 0);
    await page.getByLabel("Limit", { exact: true }).fill("600");
    await page.getByRole("button", { name: "Save" }).click();
    await page.locator('tr[data-id="github:octocat"]').waitFor();
    const usage = page.locator('[data-testid=rate-usage] tr[data-key="github:octocat"]');
    await usage.waitFor();
    assert(Number((await usage.locator("td").nth(2).textContent()).replace(/\D/g, "")) > 0, "octocat's admitted webhooks are counted");
    await shot(page, "rate-limits-1280");
  });

  await step("every view fits a phone (390×844)", async () => {
    const phone = await browser.newContext({ viewport: NARROW, isMobile: true, hasTouch: true });
    const p = await phone.newPage();
    p.on("pageerror", (e) => pageErrors.push(`pageerror (phone): ${e.message}`));
    await p.goto(BASE + "/");
    await p.locator("#signin-form").waitFor({ state: "visible" });
    await shot(p, "signin-390");
    await signIn(p);
    for (const [hash, ready, name] of [
      ["#/overview", "[data-chart=queue] svg", "overview"],
      ["#/live", ".feed-row", "live"],
      ["#/dlq", ".table-wrap", "dlq"],
      ["#/agents", "tr[data-id]", "agents"],
      ["#/routes", "tr[data-id]", "routes"],
      ["#/filters", "tr[data-id]", "filters"],
      ["#/rate-limits", "tr[data-id]", "rate-limits"],
      [`#/events/${pushId}`, ".delivery", "event"],
    ]) {
      await visit(p, hash, ready);
      const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert(overflow <= 0, `${name}: the page scrolls sideways by ${overflow} px`);
      await shot(p, `${name}-390`);
    }
    await phone.close();
  });

  await step("the overview lists refused webhooks, flags a low success rate, and drops the guide", async () => {
    const r = await fetch(`${BASE}/webhook/github`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-github-event": "push", "x-hub-signature-256": "sha256=00" },
      body: "{}",
    });
    assert(r.status === 401, `a bad signature is refused: ${r.status}`);
    await visit(page, "#/overview", "[data-testid=rejections] tr[data-code=invalid_signature]");
    assert(await page.getByTestId("first-start").count() === 0, "no guide once events arrived");
    const row = await page.locator("[data-testid=rejections] tr[data-code=invalid_signature]").first().textContent();
    assert(row.includes("github") && row.includes("401"), row);
    // Three of the flaky agent's deliveries died: its success rate is flagged, linked to its dead letters.
    const agent = page.locator('tr[data-agent="flaky-agent"]');
    await agent.waitFor();
    assert((await agent.getAttribute("class")) === "row-bad", "the low success rate is highlighted");
    // Hovering a chart shows the value under the pointer.
    const frame = page.locator("[data-chart=events] .chart-frame");
    const box = await frame.boundingBox();
    await page.mouse.move(box.x + box.width - 2, box.y + box.height / 2);
    const tip = await page.locator("[data-chart=events] .chart-tip").textContent();
    assert(/\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} · /.test(tip), `the hover value: ${tip}`);
    assert(await page.locator("[data-chart=events] .chart-axis span").count() >= 2, "time labels");
  });

  await step("the overview at 1280×800, light and dark", async () => {
    await visit(page, "#/overview", "[data-chart=queue] svg");
    await page.locator("input[name=window][value='1']").check({ force: true });
    await waitFor("the 1 h window", async () => (await page.locator("[data-stat=events-per-minute] .sub").textContent()).includes("last hour"));
    await shot(page, "overview-1280");
    const dark = await browser.newContext({ viewport: WIDE, colorScheme: "dark" });
    const p = await dark.newPage();
    await signIn(p);
    await visit(p, "#/overview", "[data-chart=queue] svg");
    await shot(p, "overview-dark-1280");
    await visit(p, "#/live", ".feed-row");
    await shot(p, "live-dark-1280");
    await dark.close();
  });

  await step("the keyboard reaches the views: tab to a link, Enter follows it", async () => {
    await page.locator('nav a[data-view="dlq"]').focus();
    await page.keyboard.press("Enter");
    await waitFor("the DLQ view", async () => (await page.locator("main").getAttribute("data-view")) === "dlq");
    assert((await page.locator('nav a[aria-current="page"]').textContent()).startsWith("Dead letters"), "the current view is marked");
  });

  await step("a storage fault shows a banner with its reason; a healthy router shows none", async () => {
    assert(await page.locator("#storage-banner").isHidden(), "the healthy router shows the banner");
    // Its own context: cookies do not tell ports apart, and this one must not sign the other out.
    const ctx = await browser.newContext({ viewport: WIDE });
    try {
      const p = await ctx.newPage();
      p.on("pageerror", (e) => pageErrors.push(`pageerror: ${e.message}`));
      await p.goto(FAULTED + "/");
      await p.locator("#admin-key").fill(ADMIN_KEY);
      await p.getByRole("button", { name: "Sign in" }).click();
      const banner = p.locator("#storage-banner");
      await banner.waitFor({ state: "visible" });
      const text = await banner.textContent();
      assert(text.includes("Storage unavailable") && text.includes("min_free_disk_mb"), text);
      assert((await banner.getAttribute("role")) === "alert", "the banner is announced");
      await p.evaluate(() => { location.hash = "#/agents"; });
      await p.locator(".view-agents").waitFor();
      assert(await banner.isVisible(), "the banner stays on other views");
      await shot(p, "storage-banner-1280");
    } finally {
      await ctx.close();
    }
  });

  await step("signing out ends the session: the page shows the sign-in form and the old cookie gets 401", async () => {
    const cookie = (await context.cookies(BASE)).find((c) => c.name === "er_session");
    const before = await fetch(`${BASE}/admin/agents`, { headers: { Cookie: `er_session=${cookie.value}` } });
    assert(before.status === 200, `the cookie works before: ${before.status}`);
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.locator("#signin-form").waitFor({ state: "visible" });
    assert(await page.locator("#shell").isHidden(), "the views are gone");
    const after = await fetch(`${BASE}/admin/agents`, { headers: { Cookie: `er_session=${cookie.value}` } });
    assert(after.status === 401, `the old cookie is refused: ${after.status}`);
    const stream = await fetch(`${BASE}/stream/sse?agentId=*`, { headers: { Cookie: `er_session=${cookie.value}` } });
    assert(stream.status === 401, `and opens no stream: ${stream.status}`);
    await page.reload();
    await page.locator("#signin-form").waitFor({ state: "visible" });
  });

  await step("the page raised no script error", async () => {
    assert(pageErrors.length === 0, pageErrors.join("\n"));
  });
} catch (e) {
  exitCode = 1;
} finally {
  await browser.close();
}
console.log(`e2e: ${passed} steps passed${exitCode ? ", a step failed" : ""}`);
process.exit(exitCode);
