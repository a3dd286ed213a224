// The Batch tab: a sweep of one host parameter (the others fixed) submitted to /api/v1/batch as
// synthetic items, followed to the end with a live progress bar, then predicted against true with
// intervals, a results table and a CSV download.

import { api } from "./api.js";
import { csv, download } from "./files.js";
import { Form } from "./form.js";
import { el, num, percent } from "./format.js";
import { followRoundProfile, mapSpec } from "./generate.js";
import { predictedVsTrue } from "./plots.js";
import { fieldSchema } from "./schema.js";

const MAX_STEPS = 50;  // a page limit, to keep a sweep quick to follow; the API allows batch.max_items
const POLL_MS = 500;
// swept field -> its key in result.truth and in predictions/uncertainties, label, default sweep
const SWEEPS = {
  mass: { truth: "M_vir", key: "M_vir", label: "M_vir (M☉)", from: 5e11, to: 5e13, spacing: "log" },
  scale_radius: { truth: "scale_radius", key: "r_s", label: "r_s (kpc)", from: 100, to: 400, spacing: "linear" },
  ellipticity: { truth: "ellipticity", key: "ellipticity", label: "e", from: 0, to: 0.4, spacing: "linear" },
};
const FIXED = ["profile_type", "mass", "scale_radius", "ellipticity", "position_angle", "scenario", "noise_sigma",
  "grid_size", "fov_kpc", "z_lens", "z_source"];
const PARAMETERS = ["M_vir", "r_s", "ellipticity"];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** `steps` values from `from` to `to`, evenly spaced (geometrically when `log`). */
export function sweepValues(from, to, steps, log) {
  return Array.from({ length: steps }, (_, k) => {
    const t = steps === 1 ? 0 : k / (steps - 1);
    return log ? from * (to / from) ** t : from + t * (to - from);
  });
}

/** Flat CSV rows of batch items: truth, every estimate with its intervals, class probabilities. */
function csvOf(items) {
  const classes = Object.keys(items.find((i) => i.result)?.result.classification || {});
  const header = ["index", "job_id", "status", "error", "true_M_vir", "true_scale_radius", "true_ellipticity",
    "true_position_angle", ...PARAMETERS.flatMap((p) => [`pred_${p}`, `${p}_p16`, `${p}_p84`, `${p}_p2_5`, `${p}_p97_5`]),
    "pred_position_angle", "position_angle_std", "predicted_class", ...classes.map((c) => `p_${c}`), "entropy",
    "mutual_information", "inside_training_domain", "outside_training_domain", "symmetrized", "seed"];
  const rows = items.map((item) => {
    const r = item.result || {}, t = r.truth || {}, p = r.predictions || {}, u = r.uncertainties || {};
    return [item.index, item.job_id, item.status, item.error, t.M_vir, t.scale_radius, t.ellipticity, t.position_angle,
      ...PARAMETERS.flatMap((k) => [p[k], u[`${k}_p16`], u[`${k}_p84`], u[`${k}_p2_5`], u[`${k}_p97_5`]]),
      p.position_angle, u.position_angle_std, r.predicted_class, ...classes.map((c) => r.classification?.[c]),
      r.entropy, r.mutual_information, r.training_domain?.inside,
      Object.keys(r.training_domain?.outside || {}).join(" "), r.symmetrized, r.seed];
  });
  return csv(header, rows);
}

function resultsTable(items, sweep) {
  const k = sweep.key;
  const range = (u, lo, hi) => (u ? `${num(u[`${k}_${lo}`])} to ${num(u[`${k}_${hi}`])}` : "–");
  return el("table", { class: "numbers" }, el("caption", {}, `Results: ${sweep.label}`),
    el("thead", {}, el("tr", {}, ...["#", "true", "predicted", "68 %", "95 %", "scenario", "training domain", "status"]
      .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...items.map((item) => {
      const r = item.result;
      return el("tr", {}, el("th", { scope: "row" }, String(item.index)), el("td", {}, num(r?.truth?.[sweep.truth])),
        el("td", {}, num(r?.predictions?.[k])), el("td", {}, range(r?.uncertainties, "p16", "p84")),
        el("td", {}, range(r?.uncertainties, "p2_5", "p97_5")),
        el("td", {}, r ? `${r.predicted_class} (${percent(r.classification[r.predicted_class])})` : "–"),
        el("td", {}, !r?.training_domain ? "–" : r.training_domain.inside ? "inside"
          : `outside: ${Object.keys(r.training_domain.outside).join(", ")}`),
        el("td", {}, item.error ? `${item.status}: ${item.error}` : item.status));
    })));
}

/** Wire the Batch tab. `ctx`: {openapi}. */
export function setupBatch(panel, ctx) {
  const form = new Form(panel.querySelector("form"), "batch", ctx.openapi, "SyntheticRequest");
  const number = { type: "number" };
  form.build({
    sweep: { label: "Swept parameter", choices: Object.entries(SWEEPS).map(([name, s]) => [name, s.label]), schema: { type: "string" }, value: "mass" },
    sweep_from: { label: "From", schema: number, value: SWEEPS.mass.from },
    sweep_to: { label: "To", schema: number, value: SWEEPS.mass.to },
    steps: { label: "Maps", schema: { type: "integer", min: 2, max: MAX_STEPS }, value: 6, hint: "points in the sweep" },
    spacing: { label: "Spacing", choices: [["log", "logarithmic"], ["linear", "linear"]], schema: { type: "string" }, value: "log" },
    profile_type: { value: "Elliptical NFW" }, ellipticity: { value: 0.2 }, position_angle: { value: 30 },
    mc_samples: { model: "BatchRequest" }, seed: { model: "BatchRequest", hint: "base seed: map k uses seed + k; blank: drawn" },
    symmetrize: { model: "BatchRequest" },
  });
  const swept = () => form.value("sweep");
  const updateRound = followRoundProfile(form, swept);
  form.control("sweep").addEventListener("change", () => {
    const name = swept(), sweep = SWEEPS[name], bounds = fieldSchema(ctx.openapi, "SyntheticRequest", name);
    form.set("sweep_from", sweep.from);
    form.set("sweep_to", sweep.to);
    form.set("spacing", sweep.spacing);
    for (const end of ["sweep_from", "sweep_to"]) {
      const control = form.control(end);
      Object.assign(control, { min: bounds.min ?? "", max: bounds.max ?? "" });
      document.getElementById(`${control.id}-hint`).textContent = `${sweep.label}: ${num(bounds.min)} to ${num(bounds.max)}`;
    }
    for (const fixed of Object.keys(SWEEPS)) form.control(fixed).disabled = fixed === name;
    updateRound();
  });
  form.control("sweep").dispatchEvent(new Event("change"));

  const results = panel.querySelector("#batch-results");
  const bar = panel.querySelector("#batch-progress");
  const text = panel.querySelector("#batch-progress-text");
  const csvButton = panel.querySelector("#batch-csv");
  let following = null;  // the batch id being followed; a new submission stops the old loop
  let finished = null;   // {items, sweep} of the last completed batch

  form.element.addEventListener("submit", async (event) => {
    event.preventDefault();
    form.clearErrors();
    const v = form.values();
    const sweep = SWEEPS[v.sweep];
    if (!Number.isInteger(v.steps) || v.steps < 2 || v.steps > MAX_STEPS) {
      form.fieldError("steps", `Give a whole number of maps from 2 to ${MAX_STEPS}.`);
      return form.control("steps").focus();
    }
    const log = v.spacing === "log";
    for (const end of ["sweep_from", "sweep_to"]) {
      if (v[end] === null || (log && v[end] <= 0)) {
        form.fieldError(end, log ? "A logarithmic sweep needs a number above 0." : "Give a number.");
        return form.control(end).focus();
      }
    }
    const values = sweepValues(v.sweep_from, v.sweep_to, v.steps, log);
    const fixed = Object.fromEntries(FIXED.map((name) => [name, v[name]]));
    // the swept value is always sent (a round NFW with an ellipticity sweep is the API's to refuse)
    const body = { synthetic: values.map((x) => ({ ...mapSpec(fixed), [v.sweep]: x })), mc_samples: v.mc_samples, seed: v.seed,
      symmetrize: v.symmetrize };
    form.busy(true);
    try {
      const submitted = await api("api/v1/batch", { method: "POST", json: body });
      results.hidden = false;
      panel.querySelector("#batch-plot").replaceChildren();
      panel.querySelector("#batch-table").replaceChildren();
      csvButton.disabled = true;
      following = submitted.batch_id;
      progress({ progress: 0, completed: 0, failed: 0, total: submitted.total, status: "queued" });
      await follow(submitted.batch_id, sweep);
    } catch (error) {
      // a sweep item's error names its field; the swept one is shown at the end of the range it lies nearer
      form.showError(error, (loc) => {
        const name = [...loc].reverse().find((p) => typeof p === "string" && p !== "body" && p !== "synthetic");
        if (name !== v.sweep) return name;
        const index = loc.find((p) => Number.isInteger(p)) ?? 0;
        return index < values.length / 2 ? "sweep_from" : "sweep_to";
      });
    } finally {
      form.busy(false);
    }
  });

  function progress(status) {
    bar.value = status.progress;
    const done = status.completed + status.failed;
    const message = status.status === "completed" || status.status === "failed"
      ? `Batch ${status.status}: ${status.completed} of ${status.total} maps done${status.failed ? `, ${status.failed} failed` : ""} (${Math.round(status.progress)} %).`
      : `${done} of ${status.total} maps done (${Math.round(status.progress)} %)${status.failed ? `, ${status.failed} failed` : ""}.`;
    if (text.textContent !== message) text.textContent = message;  // aria-live: speak changes only
  }

  /** Poll the batch's status until it ends; transient failures (no answer, 429, 503) are retried. */
  async function follow(batchId, sweep) {
    let misses = 0;
    while (following === batchId) {
      let status;
      try {
        status = await api(`api/v1/batch/${batchId}/status`);
        misses = 0;
      } catch (error) {
        if (![0, 429, 503].includes(error.status) || ++misses > 5) throw error;
        await sleep(4 * POLL_MS);
        continue;
      }
      progress(status);
      if (status.status === "completed" || status.status === "failed") return finish(status, sweep);
      await sleep(POLL_MS);
    }
  }

  function finish(status, sweep) {
    if (status.error) text.textContent += ` ${status.error}`;
    const items = [...status.results].sort((a, b) => a.index - b.index);
    finished = { items, sweep };
    const points = items.filter((i) => i.result?.truth).map(({ result: r }) => {
      const u = r.uncertainties || {};
      return { x: r.truth[sweep.truth], y: r.predictions[sweep.key], lo68: u[`${sweep.key}_p16`],
        hi68: u[`${sweep.key}_p84`], lo95: u[`${sweep.key}_p2_5`], hi95: u[`${sweep.key}_p97_5`] };
    });
    panel.querySelector("#batch-plot").replaceChildren(
      ...(points.length ? [predictedVsTrue(points, { label: sweep.label, log: sweep.key === "M_vir" })] : []));
    panel.querySelector("#batch-table").replaceChildren(resultsTable(items, sweep));
    csvButton.disabled = false;
  }

  csvButton.addEventListener("click", () => {
    if (finished) download(new Blob([csvOf(finished.items)], { type: "text/csv" }), "lensing-sweep.csv");
  });
}
