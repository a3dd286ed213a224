// Inline SVG plots: estimates with their 68 % and 95 % intervals, class probabilities, and predicted
// against true for a batch. Each figure has a title and a description for screen readers; the
// numbers themselves are also given in tables beside the plots.

import { niceTicks } from "./colormaps.js";
import { num, percent, tick } from "./format.js";

const NS = "http://www.w3.org/2000/svg";
export const SERIES_COLOURS = ["#1f5fbf", "#c2410c"];  // network, refined (both >= 4.5:1 on white)
const TRUTH_COLOUR = "#111827";
let figures = 0;

function s(tag, attributes = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/** An <svg role="img"> with a <title> and <desc>. */
function figure(width, height, title, description) {
  const id = `plot-${++figures}`;
  return s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", class: "plot",
    "aria-labelledby": `${id}-title ${id}-desc` },
  s("title", { id: `${id}-title` }, title), s("desc", { id: `${id}-desc` }, description));
}

/** A map from values to pixels over [a, b] (log10 when `log`), padded by 6 % each side. */
function axis(values, a, b, log) {
  const finite = values.filter((v) => Number.isFinite(v) && (!log || v > 0));
  let low = Math.min(...finite), high = Math.max(...finite);
  if (log) { low = Math.log10(low); high = Math.log10(high); }
  if (!(high > low)) { const pad = Math.abs(low) * 0.05 || 0.05; low -= pad; high += pad; }
  const pad = (high - low) * 0.06;
  low -= pad; high += pad;
  const f = (v) => a + ((log ? Math.log10(v) : v) - low) / (high - low) * (b - a);
  const lo = log ? 10 ** low : low, hi = log ? 10 ** high : high;
  // a log axis ticks at 1, 2 and 5 times powers of ten (decades only when that gives too many);
  // a narrow one, where those are too few, takes round linear steps
  let ticks = niceTicks(lo, hi, 4);
  if (log) {
    const steps = [];
    for (let e = Math.floor(low); e <= Math.ceil(high); e++) steps.push(...[1, 2, 5].map((m) => m * 10 ** e));
    const inside = steps.filter((t) => t >= lo && t <= hi);
    const decade = (t) => Math.abs(Math.log10(t) - Math.round(Math.log10(t))) < 1e-9;
    if (inside.length >= 2) ticks = inside.length > 7 ? inside.filter(decade) : inside;
  }
  return { f, ticks: ticks.filter((t) => !log || t > 0) };
}

/** Horizontal axis with ticks at height y. */
function xAxis(map, x0, x1, y) {
  return s("g", { class: "axis" }, s("line", { x1: x0, x2: x1, y1: y, y2: y }),
    ...map.ticks.map((t) => s("g", {}, s("line", { x1: map.f(t), x2: map.f(t), y1: y, y2: y + 4 }),
      s("text", { x: map.f(t), y: y + 15, "text-anchor": "middle" }, tick(t)))));
}

/**
 * One row per parameter (rows: [{key, label, log}]) with each series' estimate, 68 % interval (thick)
 * and 95 % interval (thin); a diamond marks the true value when it is known.
 */
export function intervalsPlot(rows, series, truth = null) {
  const width = 640, left = 110, right = 44, rowHeight = 70, top = 34;
  const height = top + rows.length * rowHeight + 6;
  const svg = figure(width, height, "Estimates with 68 % and 95 % intervals",
    `${rows.map((r) => r.label).join(", ")}: ${series.map((x) => x.name).join(" and ")} estimates; thick bars 68 %, thin bars 95 %` +
    `${truth ? "; diamonds mark the true values" : ""}.`);
  const legend = s("g", { class: "legend" });
  let lx = left;
  for (const [k, { name }] of series.entries()) {
    legend.append(s("circle", { cx: lx + 5, cy: 12, r: 5, fill: SERIES_COLOURS[k] }),
      s("text", { x: lx + 14, y: 16 }, name));
    lx += 24 + 8 * name.length;
  }
  if (truth) {
    legend.append(s("path", { d: `M${lx + 5},6 l6,6 l-6,6 l-6,-6 z`, fill: TRUTH_COLOUR }), s("text", { x: lx + 16, y: 16 }, "true value"));
    lx += 100;
  }
  legend.append(s("text", { x: lx, y: 16, class: "muted" }, "thick: 68 %, thin: 95 %"));
  svg.append(legend);
  rows.forEach((row, r) => {
    const y0 = top + r * rowHeight;
    const values = [];
    for (const { result } of series) {
      const u = result.uncertainties || {};
      values.push(result.predictions[row.key], u[`${row.key}_p2_5`], u[`${row.key}_p97_5`]);
    }
    if (truth && truth[row.key] !== undefined) values.push(truth[row.key]);
    const map = axis(values, left, width - right, row.log);
    const g = s("g", {}, s("text", { x: 8, y: y0 + 24, class: "row-label" }, row.label));
    series.forEach(({ name, result }, k) => {
      const u = result.uncertainties || {};
      const y = y0 + 14 + k * 14, c = SERIES_COLOURS[k], v = result.predictions[row.key];
      const bar = (lo, hi, w) => (Number.isFinite(lo) && Number.isFinite(hi)
        ? s("line", { x1: map.f(lo), x2: map.f(hi), y1: y, y2: y, stroke: c, "stroke-width": w, "stroke-linecap": "butt" }) : null);
      g.append(s("g", {}, s("title", {}, `${name}: ${row.label} = ${num(v)} (68 %: ${num(u[`${row.key}_p16`])} to ` +
        `${num(u[`${row.key}_p84`])}; 95 %: ${num(u[`${row.key}_p2_5`])} to ${num(u[`${row.key}_p97_5`])})`),
      bar(u[`${row.key}_p2_5`], u[`${row.key}_p97_5`], 1.5), bar(u[`${row.key}_p16`], u[`${row.key}_p84`], 6),
      s("circle", { cx: map.f(v), cy: y, r: 4.5, fill: "#fff", stroke: c, "stroke-width": 2 })));
    });
    if (truth && Number.isFinite(truth[row.key])) {
      const x = map.f(truth[row.key]), y = y0 + 14 + (series.length - 1) * 7;
      g.append(s("path", { d: `M${x},${y - 9} l6,9 l-6,9 l-6,-9 z`, fill: TRUTH_COLOUR, opacity: 0.85 },
        s("title", {}, `true ${row.label} = ${num(truth[row.key])}`)));
    }
    g.append(xAxis(map, left, width - right, y0 + 14 + series.length * 14));
    svg.append(g);
  });
  return svg;
}

/** Horizontal bars of the class probabilities, the predicted class in bold. */
export function classBars(classification, predicted) {
  const names = Object.keys(classification);
  const width = 420, left = 60, barWidth = 260, rowHeight = 28;
  const svg = figure(width, names.length * rowHeight + 8, "Dark-matter scenario probabilities",
    names.map((n) => `${n} ${percent(classification[n])}`).join(", "));
  names.forEach((name, k) => {
    const p = classification[name], y = 4 + k * rowHeight;
    svg.append(s("g", { class: name === predicted ? "chosen" : "" },
      s("text", { x: 0, y: y + 16, class: "row-label" }, name),
      s("rect", { x: left, y: y + 3, width: barWidth, height: 16, class: "track" }),
      s("rect", { x: left, y: y + 3, width: Math.max(1, p * barWidth), height: 16, fill: SERIES_COLOURS[0] }),
      s("text", { x: left + barWidth + 8, y: y + 16 }, percent(p))));
  });
  return svg;
}

/**
 * Predicted against true (points: [{x, y, lo68, hi68, lo95, hi95}]) with the identity line; log
 * axes for a quantity spanning decades.
 */
export function predictedVsTrue(points, { label, log = false }) {
  const width = 560, height = 440, left = 92, right = 24, top = 16, bottom = 52;
  const svg = figure(width, height, `Predicted against true ${label}`,
    `${points.length} maps; vertical bars: 68 % (thick) and 95 % (thin) intervals; dashed line: predicted = true.`);
  const all = points.flatMap((p) => [p.x, p.y, p.lo95, p.hi95]);
  const mx = axis(all, left, width - right, log);
  const myRaw = axis(all, 0, 1, log);
  const my = { f: (v) => height - bottom - myRaw.f(v) * (height - top - bottom), ticks: myRaw.ticks };
  const finite = all.filter((v) => Number.isFinite(v) && (!log || v > 0));
  const a = Math.min(...finite), b = Math.max(...finite);
  svg.append(s("line", { x1: mx.f(a), y1: my.f(a), x2: mx.f(b), y2: my.f(b), class: "identity" }));
  svg.append(xAxis(mx, left, width - right, height - bottom));
  svg.append(s("g", { class: "axis" }, s("line", { x1: left, x2: left, y1: top, y2: height - bottom }),
    ...my.ticks.map((t) => s("g", {}, s("line", { x1: left - 4, x2: left, y1: my.f(t), y2: my.f(t) }),
      s("text", { x: left - 7, y: my.f(t) + 4, "text-anchor": "end" }, tick(t))))));
  svg.append(s("text", { x: (left + width - right) / 2, y: height - 12, "text-anchor": "middle" }, `true ${label}`),
    s("text", { x: 14, y: (top + height - bottom) / 2, "text-anchor": "middle",
      transform: `rotate(-90 14 ${(top + height - bottom) / 2})` }, `predicted ${label}`));
  const c = SERIES_COLOURS[0];
  for (const p of points) {
    const x = mx.f(p.x);
    const bar = (lo, hi, w) => (Number.isFinite(lo) && Number.isFinite(hi)
      ? s("line", { x1: x, x2: x, y1: my.f(lo), y2: my.f(hi), stroke: c, "stroke-width": w }) : null);
    svg.append(s("g", { class: "point" }, s("title", {}, `true ${num(p.x)}, predicted ${num(p.y)}`),
      bar(p.lo95, p.hi95, 1.5), bar(p.lo68, p.hi68, 5),
      s("circle", { cx: x, cy: my.f(p.y), r: 4, fill: "#fff", stroke: c, "stroke-width": 2 })));
  }
  return svg;
}
