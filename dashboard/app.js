// The dashboard's entry: sign-in and sign-out, and hash routing between the views
// (#/overview, #/live, #/events/{id}, #/dlq, #/agents, #/routes, #/filters, #/rate-limits).
// The admin key is sent once, to POST /dashboard/session; from then on an HttpOnly cookie
// that this script cannot read authenticates every call and the live stream.

import { get, post, request, whenSignedOut, ApiError } from "./api.js";
import { toast, leaving } from "./ui.js";
import * as overview from "./overview.js";
import * as live from "./live.js";
import * as eventPage from "./event.js";
import * as dlq from "./dlq.js";
import * as agents from "./agents.js";
import * as routes from "./routes.js";
import * as filters from "./filters.js";
import * as rateLimits from "./ratelimits.js";

const VIEWS = {
  overview: { module: overview, title: "Overview" },
  live: { module: live, title: "Live events" },
  events: { module: eventPage, title: "Event", nav: "live" },
  dlq: { module: dlq, title: "Dead letters" },
  agents: { module: agents, title: "Agents" },
  routes: { module: routes, title: "Routes" },
  filters: { module: filters, title: "Filters" },
  "rate-limits": { module: rateLimits, title: "Rate limits" },
};

const $ = (id) => document.getElementById(id);
let leaveView = null;
let signedIn = false;
let healthTimer = null;

/** How often the storage banner asks /health while signed in. */
const HEALTH_EVERY_MS = 10_000;

// /health answers 503 with `storage.reason` while the store cannot write (or refuses webhooks
// below the free-space floor): shown as a banner over every view until it answers 200 again.
async function checkHealth() {
  const banner = $("storage-banner");
  let health = null;
  try {
    const response = await fetch("/health", { cache: "no-store" });
    health = await response.json();
  } catch {
    return; // unreachable: the views say so themselves
  }
  const storage = health && health.storage;
  if (storage && storage.ok === false) {
    banner.textContent = `Storage unavailable: ${storage.reason || "the store cannot write"}. `
      + "Webhooks are answered 503 until it recovers (see Storage faults in the operations guide).";
    banner.hidden = false;
  } else {
    banner.hidden = true;
    banner.textContent = "";
  }
}

// The dead-letter count in the navigation, so failures show wherever the operator is.
async function checkDeadLetters() {
  let stats;
  try {
    stats = await get("/queue/stats");
  } catch {
    return;
  }
  const n = Number(stats && stats.deadLettered) || 0;
  const badge = $("dlq-count");
  badge.textContent = n.toLocaleString();
  badge.hidden = n === 0;
  $("nav-dlq").setAttribute("aria-label", n ? `Dead letters, ${n} waiting` : "Dead letters");
}

function watchHealth(on) {
  clearInterval(healthTimer);
  healthTimer = null;
  if (on) {
    checkHealth();
    checkDeadLetters();
    healthTimer = setInterval(() => {
      checkHealth();
      checkDeadLetters();
    }, HEALTH_EVERY_MS);
  }
}

function showSignIn(notice) {
  signedIn = false;
  watchHealth(false);
  stopView();
  $("shell").hidden = true;
  $("main").replaceChildren();
  for (const d of document.querySelectorAll("dialog")) d.remove();
  $("signin").hidden = false;
  const n = $("signin-notice");
  n.textContent = notice || "";
  n.hidden = !notice;
  $("signin-error").textContent = "";
  const key = $("admin-key");
  key.value = "";
  key.removeAttribute("aria-invalid");
  key.focus();
  document.title = "Sign in · event-router";
}

function showShell() {
  signedIn = true;
  $("signin").hidden = true;
  $("shell").hidden = false;
  watchHealth(true);
  route();
}

function stopView() {
  if (typeof leaveView === "function") leaveView();
  leaveView = null;
}

/** The address of the view shown, to go back to when leaving it is called off. */
let shownHash = location.hash;

function route() {
  if (!signedIn) return;
  if (leaving.guard && leaving.guard()
      && !window.confirm("This form has changes that are not saved. Leave it and lose them?")) {
    history.replaceState(null, "", shownHash || "#/overview");
    return;
  }
  leaving.guard = null;
  shownHash = location.hash;
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const name = parts[0] && VIEWS[parts[0]] ? parts[0] : "overview";
  const view = VIEWS[name];
  stopView();
  for (const d of document.querySelectorAll("dialog")) d.remove();
  const main = $("main");
  // Each visit renders into a fresh container: a slow answer for a view already left lands in
  // a detached element instead of in the next view.
  const container = document.createElement("div");
  container.className = `view view-${name}`;
  main.replaceChildren(container);
  main.dataset.view = name;
  for (const a of document.querySelectorAll("nav a[data-view]")) {
    if (a.dataset.view === (view.nav || name)) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${view.title} · event-router`;
  const result = view.module.render(container, parts.slice(1));
  // A view's render may be async; its clean-up (if any) is what it returns synchronously.
  leaveView = typeof result === "function" ? result : null;
  if (document.activeElement === document.body || !main.contains(document.activeElement)) {
    main.focus({ preventScroll: true });
  }
}

async function signIn(e) {
  e.preventDefault();
  const key = $("admin-key");
  const error = $("signin-error");
  const button = e.target.querySelector("button[type=submit]");
  error.textContent = "";
  key.removeAttribute("aria-invalid");
  if (!key.value) {
    error.textContent = "Enter the admin key.";
    key.setAttribute("aria-invalid", "true");
    key.focus();
    return;
  }
  button.disabled = true;
  try {
    await post("/dashboard/session", { adminKey: key.value });
    key.value = "";
    if (!location.hash) location.replace("#/overview");
    showShell();
  } catch (err) {
    error.textContent = err instanceof ApiError && err.status === 401
      ? "That is not the admin key."
      : err.message;
    key.setAttribute("aria-invalid", "true");
    key.select();
  } finally {
    button.disabled = false;
  }
}

async function signOut() {
  try {
    await request("DELETE", "/dashboard/session");
  } catch (err) {
    toast(err.message, "bad");
    return;
  }
  showSignIn("You are signed out.");
}

// A view that changed the dead-letter queue asks for the count at once.
window.addEventListener("er:dlq-changed", checkDeadLetters);

whenSignedOut((notice) => {
  if (signedIn) showSignIn(notice);
});
window.addEventListener("hashchange", route);
window.addEventListener("beforeunload", (e) => {
  if (leaving.guard && leaving.guard()) {
    e.preventDefault();
    e.returnValue = "";
  }
});
$("signin-form").addEventListener("submit", signIn);
$("signout").addEventListener("click", signOut);

(async () => {
  try {
    const s = await get("/dashboard/session");
    if (s.signedIn) showShell();
    else showSignIn();
  } catch (err) {
    showSignIn(err.message);
  }
})();
