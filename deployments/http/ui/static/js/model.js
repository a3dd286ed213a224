// The Model tab: the served PINN's model card (GET /api/v1/models/card) as tables, with whatever
// evaluation plots come with it (GET /api/v1/models/card/plots). Plots are fetched with the API key
// and shown from blob: URLs, since an <img src> could not send the key.

import { api } from "./api.js";
import { el, num, percent } from "./format.js";

const COVERED = [["log10_M_vir", "M_vir"], ["log10_r_s", "r_s"], ["ellipticity", "e"], ["center_x_kpc", "x_c"],
  ["center_y_kpc", "y_c"]];

/** [label, block] of every held-out set and mode (the headline block when the card has no sets). */
function metricBlocks(metrics) {
  const sets = Object.entries(metrics.sets || {}).flatMap(([set, modes]) =>
    Object.entries(modes).map(([mode, block]) => [`${set.replace(/_/g, " ")}, ${mode}`, block]));
  return sets.length ? sets : [["held-out maps, network", metrics]];
}

function table(caption, head, rows) {
  return el("table", { class: "numbers" }, el("caption", {}, caption),
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows.map(([label, ...cells]) => el("tr", {}, el("th", { scope: "row" }, label),
      ...cells.map((c) => el("td", {}, c))))));
}

function accuracy(blocks) {
  return table("Accuracy on held-out maps (never seen in training)",
    ["set", "maps", "median |Δlog₁₀ M|", "median |Δr_s|/r_s", "median |Δe|", "median |Δcentre| (kpc)",
      "scenario accuracy", "smooth maps reported as none", "results inside the training domain"],
    blocks.map(([label, b]) => [label, String(b.n_maps ?? "–"), num(b.median_abs_dlog10_M), num(b.median_rel_err_rs),
      num(b.median_abs_de), b.median_abs_dcenter_kpc != null ? num(b.median_abs_dcenter_kpc) : "–",
      b.scenario_accuracy != null
        ? `${percent(b.scenario_accuracy)}${b.scenario_accuracy_stderr != null ? ` ± ${percent(b.scenario_accuracy_stderr)}` : ""}` : "–",
      b.none_rate_on_smooth != null ? percent(b.none_rate_on_smooth) : "–",
      b.inside_training_domain != null ? percent(b.inside_training_domain) : "–"]));
}

/** Where the model was trained, in its own terms (GET /api/v1/models' training_domain). */
function trainingDomain(domain) {
  if (!domain || !Object.keys(domain).length) return null;
  return el("section", {}, el("h3", {}, "Training domain"),
    el("p", {}, "The figures below hold for maps like the training maps; each result says whether it lies inside."),
    el("dl", { class: "facts" }, ...Object.entries(domain).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
}

function coverage(blocks) {
  const levels = [["coverage_68", "68 %"], ["coverage_95", "95 %"]];
  return table("Coverage: share of true values inside the intervals (calibrated: close to 68 % and 95 %)",
    ["set", ...levels.flatMap(([, level]) => COVERED.map(([, name]) => `${name}, ${level}`))],
    blocks.filter(([, b]) => b.coverage_68).map(([label, b]) => [label,
      ...levels.flatMap(([key]) => COVERED.map(([k]) => (b[key]?.[k] != null ? percent(b[key][k]) : "–")))]));
}

/** The calibration's mass bins in words (log10 M_vir edges -> "below 10^11.75, ..., above 10^13.25 M☉"). */
function massBins(edges) {
  const powers = edges.map((e) => `10^${e}`);
  return [`below ${powers[0]}`, ...powers.slice(1).map((p, i) => `${powers[i]}–${p}`), `above ${powers.at(-1)}`]
    .join(", ") + " M☉";
}

/** 68 % coverage by true-mass bin (a set can cover on average and not by mass). */
function coverageByMass(blocks, edges) {
  const rows = blocks.filter(([, b]) => b.coverage_68_by_true_mass);
  if (!rows.length || !edges) return null;
  return table(`68 % coverage by true halo mass (${massBins(edges)}; – where a set has none)`,
    ["set", ...COVERED.slice(0, 3).map(([, name]) => `${name}, by mass`)],
    rows.map(([label, b]) => [label, ...COVERED.slice(0, 3).map(([k]) =>
      b.coverage_68_by_true_mass[k].map((c) => (c != null ? percent(c) : "–")).join(" / "))]));
}

/** 68 % coverage by true scenario, on the sets with substructure (SIDM's cored hosts have k of their own). */
function coverageByScenario(blocks) {
  const rows = blocks.flatMap(([label, b]) => Object.entries(b.coverage_68_by_true_scenario || {})
    .map(([scenario, c]) => [label, scenario, ...COVERED.slice(0, 3).map(([k]) => percent(c[k]))]));
  if (!rows.length) return null;
  return table("68 % coverage by true scenario (a cored SIDM host's errors are about twice a CDM or WDM host's)",
    ["set", "scenario", ...COVERED.slice(0, 3).map(([, name]) => name)], rows);
}

function confusion(matrix, classes) {
  const totals = matrix.map((row) => row.reduce((a, b) => a + b, 0));
  return el("table", { class: "numbers confusion" },
    el("caption", {}, "Confusion matrix: rows are the true scenario, columns the predicted one (share of the row)"),
    el("thead", {}, el("tr", {}, el("td", {}), ...classes.map((c) => el("th", { scope: "col" }, `predicted ${c}`)))),
    el("tbody", {}, ...matrix.map((row, i) => el("tr", {}, el("th", { scope: "row" }, `true ${classes[i]}`),
      ...row.map((n, j) => el("td", { class: i === j ? "diagonal" : "" }, `${n} (${percent(n / (totals[i] || 1))})`))))));
}

async function plotFigure({ name, url }) {
  const blob = await api(url.replace(/^\//, ""), { accept: "image/png" });
  const title = name.replace(/\.png$/, "").replace(/_/g, " ");
  const image = el("img", { src: URL.createObjectURL(blob), alt: `Evaluation plot: ${title}` });
  const box = el("figure", { class: "card-plot" }, image, el("figcaption", {}, title));
  image.addEventListener("load", () => box.classList.toggle("wide", image.naturalWidth > 2 * image.naturalHeight));
  return box;
}

/** Wire the Model tab; returns load(), which fetches and shows the card once (until it succeeds). */
export function setupModel(panel, ctx) {
  const box = panel.querySelector("#model-card");
  let loaded = false;
  return async function load() {
    if (loaded) return;
    try {
      const [card, { plots }] = await Promise.all([api("api/v1/models/card"), api("api/v1/models/card/plots")]);
      const metrics = card.metrics || {};
      const blocks = metricBlocks(metrics);
      const info = await ctx.modelInfo();
      const classes = info?.class_names || ["CDM", "WDM", "SIDM"];
      const matrix = metrics.confusion_matrix || blocks.map(([, b]) => b.confusion_matrix).find(Boolean);
      const facts = [["weights SHA-256", el("code", {}, card.sha256 || "–")],
        ["trained by", el("code", {}, card.training_command || "–")],
        ["training time", card.training_seconds_this_run != null ? `${num(card.training_seconds_this_run / 60)} min` : "–"],
        ...(card.calibration_command ? [["calibration refit by", el("code", {}, card.calibration_command)]] : []),
        ["evaluated by", el("code", {}, card.evaluation_command || "–")],
        ["MC samples in evaluation", String(metrics.mc_samples ?? "–")]];
      box.replaceChildren(
        el("h2", {}, `${card.name || "PINN"} ${card.version || ""}`), el("p", {}, card.description || ""),
        el("dl", { class: "facts" }, ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
        trainingDomain(info?.training_domain), accuracy(blocks), coverage(blocks), coverageByMass(blocks, card.calibration?.mass_bin_edges),
        coverageByScenario(blocks), matrix ? confusion(matrix, classes) : null,
        el("div", { class: "card-plots" }, ...(await Promise.all(plots.map(plotFigure)))),
        el("details", {}, el("summary", {}, "The whole card (JSON)"), el("pre", {}, JSON.stringify(card, null, 2))));
      loaded = true;
    } catch (error) {
      box.replaceChildren(el("p", { class: "error", role: "alert" }, `The model card could not be shown: ${error.message}`));
    }
  };
}
