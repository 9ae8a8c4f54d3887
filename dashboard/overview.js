// Overview: events per minute, delivery success rate, p95 processing time and queue depth over
// 1 h, 24 h or 7 d, from /analytics/metrics (its timeline) and /queue/stats; refreshes itself.
// A low success rate is highlighted, each agent and source links to its failures, and the
// webhooks refused lately are listed (/admin/rejections). With nothing received yet, a guide
// shows where to point each provider (/admin/sources) and how to send a test webhook.

import { get, withQuery } from "./api.js";
import { h, viewHead, number, percent, ms, table, time, dateTime, showError, copyButton } from "./ui.js";
import { lineChart } from "./chart.js";

/** Below this share of successful deliveries a success rate is shown as a problem. */
const LOW_SUCCESS = 0.95;
const REJECTIONS_SHOWN = 10;

const WINDOWS = [
  { hours: 1, label: "1 h" },
  { hours: 24, label: "24 h" },
  { hours: 168, label: "7 d" },
];
const REFRESH_MS = 10000;
let chosenHours = 1;

export function render(main) {
  const updated = h("span", { class: "updated", "aria-live": "off" });
  const picker = h("div", { class: "segmented", role: "radiogroup", "aria-label": "Time window" },
    WINDOWS.map((w) => h("label", {},
      h("input", {
        type: "radio", name: "window", value: w.hours, checked: w.hours === chosenHours,
        onchange: () => {
          chosenHours = w.hours;
          refresh();
        },
      }),
      h("span", {}, w.label))));
  const error = h("p", { class: "form-error", role: "alert" });
  const body = h("div", { "aria-busy": "true" }, h("p", { class: "empty" }, "Loading…"));
  main.append(viewHead("Overview", updated, picker), error, body);

  let stopped = false;
  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    if (stopped) return;
    // A tab in the background does not poll; it catches up when shown again.
    if (document.hidden) {
      document.addEventListener("visibilitychange", refresh, { once: true });
      return;
    }
    const hours = chosenHours;
    try {
      const [analytics, queue, rejections, newest] = await Promise.all([
        get(withQuery("/analytics/metrics", { hours })),
        get("/queue/stats"),
        get("/admin/rejections"),
        get(withQuery("/admin/events", { limit: 1 })),
      ]);
      // The guide needs the sources only while nothing was ever received.
      const sources = newest.items.length ? null : await get("/admin/sources");
      if (stopped || hours !== chosenHours) return;
      error.textContent = "";
      body.replaceChildren(...(sources ? [guide(sources.items)] : []),
        ...content(analytics, queue), refusals(rejections.items));
      body.setAttribute("aria-busy", "false");
      updated.textContent = `Updated ${time(Date.now())}`;
      // The navigation's count follows the same figure.
      window.dispatchEvent(new Event("er:dlq-changed"));
    } catch (e) {
      if (!stopped) showError(e, error);
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }
  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function content(a, q) {
  const m = a.metrics;
  const d = m.deliveries;
  const timeline = a.timeline || [];
  const bucketMin = timeline.length > 1 ? (timeline[1].start - timeline[0].start) / 60000 : 1;
  const windowMin = a.hours * 60;
  const attempts = d.succeeded + d.failed;
  // Leased to pull consumers is unfinished too (the chart's depth counts it).
  const leased = q.leased || 0;
  const depthNow = q.pending + q.inFlight + q.scheduled + leased;
  // Leases and acks are shown once pull agents are in use.
  const pulling = leased > 0 || q.acked > 0;

  // Per delivery: of the deliveries that finished in the window, the share delivered (a
  // delivery retried until it succeeded counts once, as a success); per attempt as the second
  // figure.
  const finished = d.succeeded + d.deadLettered;
  const perDelivery = finished ? d.succeeded / finished : null;
  const perAttempt = attempts ? d.succeeded / attempts : null;
  const low = perDelivery !== null && perDelivery < LOW_SUCCESS;
  const noEvents = !m.totalEvents;
  const stats = h("div", { class: "stats" },
    stat("Events / min", number(m.totalEvents / windowMin, 2), `${number(m.totalEvents)} events in ${label(a.hours)}`, "events-per-minute"),
    stat("Success rate", perDelivery === null ? "—" : percent(perDelivery),
      [perDelivery === null ? "no delivery finished" : `${number(d.succeeded)} of ${number(finished)} deliveries`,
        ` · per attempt ${perAttempt === null ? "—" : percent(perAttempt)}`,
        low ? [" · ", h("a", { href: "#/dlq" }, "see the dead letters")] : null],
      "success-rate", low ? "bad" : ""),
    stat("p95 processing", noEvents ? "—" : ms(m.p95ProcessingTime),
      noEvents ? "no events in the window" : `p99 ${ms(m.p99ProcessingTime)} · avg ${ms(m.averageProcessingTime)}`, "p95"),
    stat("Queue depth", number(depthNow),
      [`${number(q.pending)} pending · ${number(q.inFlight)} in flight · ${number(q.scheduled)} scheduled · `,
        pulling ? h("span", { "data-testid": "leased", title: "Leased to pull consumers now; acked by them since the node started" },
          `${number(leased)} leased (${number(q.acked)} acked) · `) : null,
        h("a", { href: "#/dlq" }, `${number(q.deadLettered)} dead`)],
      "queue-depth"));

  const charts = h("div", { class: "charts" },
    lineChart(timeline.map((p) => ({ t: p.start, v: p.events / bucketMin })), {
      id: "events", title: "Events per minute", subtitle: `per ${bucketLabel(bucketMin)}, averaged`,
      color: "--chart-1", format: (v) => number(v, 2),
    }),
    lineChart(timeline.map((p) => {
      const n = p.delivered + p.failed;
      return { t: p.start, v: n ? (p.delivered / n) * 100 : null };
    }), {
      id: "success", title: "Success rate", subtitle: "per attempt, per bucket (gaps: no attempts)",
      color: "--chart-2", format: (v) => `${number(v, 1)} %`, fixedMax: 100,
    }),
    lineChart(timeline.map((p) => ({ t: p.start, v: p.events ? p.p95ProcessingTime : null })), {
      id: "p95", title: "p95 processing time", subtitle: "request received → 2xx sent (gaps: no events)",
      color: "--chart-3", format: ms,
    }),
    lineChart(timeline.map((p) => ({ t: p.start, v: p.queueDepth ?? null })), {
      id: "queue", title: "Queue depth", subtitle: "unfinished deliveries, average per bucket",
      color: "--chart-4", format: (v) => number(v, 1),
    }));

  const sources = Object.entries(a.bySource || {});
  const agents = Object.entries(a.byAgent || {});
  const agentRate = (f) => {
    const n = f.succeeded + f.failed;
    return n ? f.succeeded / n : null;
  };
  const tables = h("div", { class: "tables" },
    h("section", { class: "card" }, h("h2", {}, "By source"),
      table(["Source", { label: "Events", class: "num" }, { label: "Filtered", class: "num" }, { label: "Rejected", class: "num" }, { label: "p95", class: "num" }],
        sources.map(([name, f]) => h("tr", { "data-source": name },
          h("td", {}, h("a", { href: `#/live/${encodeURIComponent(name)}`, title: `Events from ${name}` }, name)),
          h("td", { class: "num" }, number(f.totalEvents)), h("td", { class: "num" }, number(f.filteredEvents)),
          h("td", { class: "num" }, f.rejectedRequests ? h("a", { href: "#rejections", title: "Rejected requests, below" }, number(f.rejectedRequests)) : "0"),
          h("td", { class: "num" }, f.totalEvents ? ms(f.p95ProcessingTime) : "—"))),
        "No events in this window.")),
    h("section", { class: "card" }, h("h2", {}, "By agent"),
      table(["Agent", { label: "Success", class: "num" }, { label: "Attempts", class: "num" }, { label: "Failed", class: "num" }, { label: "Dead", class: "num" }],
        agents.map(([name, f]) => {
          const rate = agentRate(f);
          const bad = rate !== null && rate < LOW_SUCCESS;
          return h("tr", { "data-agent": name, class: bad ? "row-bad" : null },
            h("td", {}, name),
            h("td", { class: "num" }, rate === null ? "—" : h("span", { class: bad ? "badge bad" : "" }, percent(rate))),
            h("td", { class: "num" }, number(f.attempted)),
            h("td", { class: "num" }, number(f.failed)),
            h("td", { class: "num" }, f.deadLettered
              ? h("a", { href: `#/dlq/${encodeURIComponent(name)}`, title: `Dead letters of ${name}` }, number(f.deadLettered))
              : "0"));
        }),
        "No delivery attempts in this window.")));
  return [stats, charts, tables];
}

/** The webhooks refused lately (this node's newest 200), the newest few shown. */
function refusals(items) {
  const shown = items.slice(0, REJECTIONS_SHOWN);
  return h("section", { class: "card rejections", id: "rejections", "data-testid": "rejections" },
    h("h2", {}, `Rejected requests${items.length ? ` (latest ${shown.length} of ${items.length})` : ""}`),
    table(["Time", "Source", { label: "Status", class: "num" }, "Reason", { label: "From", class: "hide-narrow" }],
      shown.map((r) => h("tr", { "data-code": r.code },
        h("td", { title: dateTime(r.at) }, time(r.at)),
        h("td", {}, r.source),
        h("td", { class: "num" }, String(r.status)),
        h("td", {}, r.reason),
        h("td", { class: "hide-narrow mono" }, r.clientIp))),
      "No webhook was refused since the router started."));
}

/** First start: where to point each provider, what is disabled, and how to send a test. */
function guide(sources) {
  const base = location.origin;
  const enabled = sources.filter((s) => s.enabled);
  const disabled = sources.filter((s) => !s.enabled);
  const sample = enabled.find((s) => s.name === "github") || enabled[0];
  const commands = sample
    ? [`export ${sample.secretEnv[0] || "SECRET"}='<the secret the router was started with>'`,
      `event-router send ${sample.name}${sample.name === "github" ? " --event push" : ""} --url ${base}`]
    : null;
  const shownDisabled = disabled.slice(0, 12);
  return h("section", { class: "card guide", "data-testid": "first-start" },
    h("h2", {}, "Nothing received yet: connect a provider"),
    enabled.length
      ? [h("p", {}, "Give the provider the webhook URL of its source (and the same secret the router has):"),
        table(["Source", "Webhook URL", ""],
          enabled.map((s) => h("tr", { "data-source": s.name },
            h("td", {}, s.name),
            h("td", { class: "mono" }, base + s.webhookPath),
            h("td", { class: "actions" }, copyButton(base + s.webhookPath, "Copy URL")))),
          "")]
      : h("p", { class: "notice" }, "No source is enabled: every source needs its secret in the environment."),
    disabled.length
      ? h("details", {},
        h("summary", {}, `${disabled.length} sources are disabled until their secret is set`),
        h("ul", { class: "disabled-sources" }, shownDisabled.map((s) => h("li", {},
          h("strong", {}, s.name), ` — set ${s.secretEnv.join(" or ") || "its secret"} and restart`)),
        disabled.length > shownDisabled.length ? h("li", {}, `… and ${disabled.length - shownDisabled.length} more`) : null))
      : null,
    commands
      ? [h("p", {}, `Send a signed test webhook to ${sample.name} from a shell (the event appears in Live events):`),
        h("pre", { class: "json", tabindex: "0", "data-testid": "test-commands" }, commands.join("\n")),
        copyButton(commands.join("\n"), "Copy commands")]
      : null);
}

function stat(labelText, value, sub, id, kind = "") {
  return h("section", { class: `card stat ${kind}`, "data-stat": id },
    h("div", { class: "label" }, labelText),
    h("div", { class: "value" }, value),
    h("div", { class: "sub" }, sub));
}

function label(hours) {
  return hours === 168 ? "7 days" : hours === 1 ? "the last hour" : `${hours} hours`;
}

function bucketLabel(minutes) {
  return minutes >= 60 ? `${minutes / 60} h` : `${minutes} min`;
}
