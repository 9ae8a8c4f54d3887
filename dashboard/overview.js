// Overview: events per minute, delivery success rate, p95 processing time and queue depth over
// 1 h, 24 h or 7 d, from /analytics/metrics (its timeline) and /queue/stats; refreshes itself.

import { get, withQuery } from "./api.js";
import { h, viewHead, number, percent, ms, table, time, showError } from "./ui.js";
import { lineChart } from "./chart.js";

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
      const [analytics, queue] = await Promise.all([
        get(withQuery("/analytics/metrics", { hours })),
        get("/queue/stats"),
      ]);
      if (stopped || hours !== chosenHours) return;
      error.textContent = "";
      body.replaceChildren(...content(analytics, queue));
      body.setAttribute("aria-busy", "false");
      updated.textContent = `Updated ${time(Date.now())}`;
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
  const depthNow = q.pending + q.inFlight + q.scheduled;

  const stats = h("div", { class: "stats" },
    stat("Events / min", number(m.totalEvents / windowMin, 2), `${number(m.totalEvents)} events in ${label(a.hours)}`, "events-per-minute"),
    stat("Success rate", attempts ? percent(d.succeeded / attempts) : "—",
      `${number(d.succeeded)} of ${number(attempts)} delivery attempts`, "success-rate"),
    stat("p95 processing", ms(m.p95ProcessingTime), `p99 ${ms(m.p99ProcessingTime)} · avg ${ms(m.averageProcessingTime)}`, "p95"),
    stat("Queue depth", number(depthNow),
      `${number(q.pending)} pending · ${number(q.inFlight)} in flight · ${number(q.scheduled)} scheduled · ${number(q.deadLettered)} dead`,
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
      id: "success", title: "Success rate", subtitle: "delivery attempts that succeeded (gaps: no attempts)",
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
  const tables = h("div", { class: "tables" },
    h("section", { class: "card" }, h("h2", {}, "By source"),
      table(["Source", { label: "Events", class: "num" }, { label: "Filtered", class: "num" }, { label: "Rejected", class: "num" }, { label: "p95", class: "num" }],
        sources.map(([name, f]) => h("tr", {},
          h("td", {}, name), h("td", { class: "num" }, number(f.totalEvents)), h("td", { class: "num" }, number(f.filteredEvents)),
          h("td", { class: "num" }, number(f.rejectedRequests)), h("td", { class: "num" }, ms(f.p95ProcessingTime)))),
        "No events in this window.")),
    h("section", { class: "card" }, h("h2", {}, "By agent"),
      table(["Agent", { label: "Attempts", class: "num" }, { label: "Succeeded", class: "num" }, { label: "Failed", class: "num" }, { label: "Dead", class: "num" }],
        agents.map(([name, f]) => h("tr", {},
          h("td", {}, name), h("td", { class: "num" }, number(f.attempted)), h("td", { class: "num" }, number(f.succeeded)),
          h("td", { class: "num" }, number(f.failed)), h("td", { class: "num" }, number(f.deadLettered)))),
        "No delivery attempts in this window.")));
  return [stats, charts, tables];
}

function stat(labelText, value, sub, id) {
  return h("section", { class: "card stat", "data-stat": id },
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
