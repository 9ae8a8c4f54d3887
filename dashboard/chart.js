// A small line-and-area chart in SVG. The drawing stretches to its box (so it is sharp at any
// width) while the labels are HTML around it, so text never stretches with it. Hovering (or
// touching) shows the value and time of the nearest bucket; the time axis has five labels.

import { h, s, axisTime, dateTime } from "./ui.js";

const TICKS = 5;

const W = 600;
const H = 150;

/**
 * points: [{t: ms, v: number|null}] in time order (null = no data there, drawn as a gap).
 * opts: {id, title, subtitle, color (a CSS variable name), format(v), fixedMax}
 */
export function lineChart(points, opts) {
  const values = points.map((p) => p.v).filter((v) => v !== null && v !== undefined);
  const max = Math.max(0, ...values);
  const top = opts.fixedMax ?? niceCeil(max || 1);
  const n = points.length;
  const x = (i) => (n <= 1 ? W / 2 : (i / (n - 1)) * W);
  const y = (v) => H - (v / top) * (H - 4) - 2;

  const grid = [0.25, 0.5, 0.75, 1].map((f) =>
    s("line", { class: "grid", x1: 0, x2: W, y1: y(top * f), y2: y(top * f), "vector-effect": "non-scaling-stroke" }));

  // Segments between gaps; a lone point gets a short flat segment so it is visible.
  const segments = [];
  let current = [];
  points.forEach((p, i) => {
    if (p.v === null || p.v === undefined) {
      if (current.length) segments.push(current);
      current = [];
    } else {
      current.push([x(i), y(p.v)]);
    }
  });
  if (current.length) segments.push(current);
  const color = `var(${opts.color || "--chart-1"})`;
  const shapes = [];
  for (const seg of segments) {
    const pts = seg.length === 1 ? [[seg[0][0] - 2, seg[0][1]], [seg[0][0] + 2, seg[0][1]]] : seg;
    const line = pts.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join("");
    const area = `${line}L${pts[pts.length - 1][0].toFixed(1)},${H}L${pts[0][0].toFixed(1)},${H}Z`;
    shapes.push(s("path", { class: "area", d: area, fill: color }));
    shapes.push(s("path", { class: "line", d: line, stroke: color, "vector-effect": "non-scaling-stroke" }));
  }

  const latest = [...points].reverse().find((p) => p.v !== null && p.v !== undefined);
  const summary = `${opts.title}: ${latest ? `latest ${opts.format(latest.v)}` : "no data"}, ` +
    `highest ${values.length ? opts.format(Math.max(...values)) : "—"}`;
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": summary,
  }, s("title", {}, summary), grid, shapes);

  const span = n > 1 ? points[n - 1].t - points[0].t : 0;
  const ticks = n ? Array.from({ length: Math.min(TICKS, n) }, (_, k) =>
    points[Math.round((k / Math.max(1, Math.min(TICKS, n) - 1)) * (n - 1))]) : [];
  const rule = h("span", { class: "chart-rule", hidden: true, "aria-hidden": "true" });
  const tip = h("span", { class: "chart-tip", hidden: true, "aria-hidden": "true" });
  const frame = h("div", { class: "chart-frame" }, svg,
    h("span", { class: "ymax", "aria-hidden": "true" }, opts.format(top)), rule, tip);
  const show = (e) => {
    if (!n) return;
    const box = frame.getBoundingClientRect();
    const f = Math.min(1, Math.max(0, (e.clientX - box.left) / box.width));
    const i = n === 1 ? 0 : Math.round(f * (n - 1));
    const p = points[i];
    const left = (x(i) / W) * 100;
    rule.style.left = `${left}%`;
    tip.textContent = `${dateTime(p.t)} · ${p.v === null || p.v === undefined ? "no data" : opts.format(p.v)}`;
    tip.style.left = `${Math.min(72, Math.max(0, left - 14))}%`;
    rule.hidden = false;
    tip.hidden = false;
  };
  const hide = () => {
    rule.hidden = true;
    tip.hidden = true;
  };
  frame.addEventListener("pointermove", show);
  frame.addEventListener("pointerdown", show);
  frame.addEventListener("pointerleave", hide);
  return h("section", { class: "card chart", "data-chart": opts.id },
    h("h2", {}, opts.title),
    h("div", { class: "chart-sub" }, opts.subtitle),
    frame,
    h("div", { class: "chart-axis", "aria-hidden": "true" },
      ticks.map((p) => h("span", {}, axisTime(p.t, span)))));
}

/** 1, 2, 5 × 10^k at or above x. */
function niceCeil(x) {
  if (x <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}
