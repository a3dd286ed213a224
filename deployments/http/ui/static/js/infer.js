// The Infer tab: a map (an uploaded FITS or .npy file, or the generated one) through /api/v1/inference:
// estimates with 68 % and 95 % intervals, class probabilities and entropy, a refined estimate on
// request, and the residual map (input minus the map rendered from the estimate).

import { api } from "./api.js";
import { parseFits, parseNpy } from "./files.js";
import { Form } from "./form.js";
import { el, num, percent } from "./format.js";
import { MapView } from "./mapview.js";
import { classBars, intervalsPlot } from "./plots.js";
import { fieldSchema } from "./schema.js";

const NPY = "application/x-npy", FITS = "application/fits";
const ESTIMATES = [  // what the PINN reports with percentiles; keys of predictions and uncertainties
  { key: "M_vir", label: "M_vir (M☉)", log: true },
  { key: "r_s", label: "r_s (kpc)" },
  { key: "ellipticity", label: "e" },
  { key: "center_x_kpc", label: "centre x (kpc)" },
  { key: "center_y_kpc", label: "centre y (kpc)" },
];
const GEOMETRY = ["fov_kpc", "z_lens", "z_source"];

/** Geometry and truth that a FITS header written by this service carries (lensing/io.py cards). */
function fromCards(cards) {
  const geometry = { fov_kpc: cards.FOVKPC, z_lens: cards.Z_LENS, z_source: cards.Z_SOURCE };
  const arcsecPerKpc = cards.PIXASEC && cards.PIXKPC ? cards.PIXASEC / cards.PIXKPC : null;
  const truth = cards.M_VIR ? { M_vir: cards.M_VIR, r_s: cards.R_S, ellipticity: cards.ELLIP,
    center_x_kpc: cards.CENX_KPC ?? 0, center_y_kpc: cards.CENY_KPC ?? 0 } : null;
  return { geometry, arcsecPerKpc, truth };
}

const share = (p) => (p < 0.001 ? "under 0.1 %" : percent(p));
const clamp = (v, s) => Math.min(s.max ?? Infinity, Math.max(s.min ?? -Infinity, v));

/**
 * The residual: input minus the map /api/v1/synthetic renders from `estimate` (an elliptical NFW host
 * with the estimated M_vir, r_s, e and angle, clamped into the API's box) on the input's grid and
 * geometry. /synthetic draws only its own grid sizes; for other sizes the answer is {reason}. This is
 * the one place to change when the API gains a server-side "render the estimate" option.
 */
export async function residualMap(openapi, kappa, geometry, estimate) {
  const n = kappa.length;
  const sizes = fieldSchema(openapi, "SyntheticRequest", "grid_size").enum || [];
  if (!sizes.includes(n)) {
    return { reason: `No residual: the input is ${n} × ${n} pixels, and the service renders maps of ` +
      `${sizes.join(", ")} pixels a side only.` };
  }
  const bound = (name) => fieldSchema(openapi, "SyntheticRequest", name);
  const spec = {
    profile_type: "Elliptical NFW", grid_size: n, ...geometry,
    mass: clamp(estimate.M_vir, bound("mass")), scale_radius: clamp(estimate.r_s, bound("scale_radius")),
    ellipticity: clamp(estimate.ellipticity, bound("ellipticity")),
    position_angle: clamp(estimate.position_angle ?? 0, bound("position_angle")),
    // the synthetic centre must lie within half the field of view
    center_x_kpc: clamp(estimate.center_x_kpc ?? 0, { min: -geometry.fov_kpc / 2, max: geometry.fov_kpc / 2 }),
    center_y_kpc: clamp(estimate.center_y_kpc ?? 0, { min: -geometry.fov_kpc / 2, max: geometry.fov_kpc / 2 }),
  };
  const model = (await api("api/v1/synthetic", { method: "POST", json: spec })).convergence_map;
  const residual = kappa.map((row, i) => row.map((v, j) => v - model[i][j]));
  const rms = (m) => Math.sqrt(m.flat().reduce((a, v) => a + v * v, 0) / (n * n));
  return { residual, rms: rms(residual), inputRms: rms(kappa) };
}

function estimatesTable(series, truth) {
  const interval = (u, key, lo, hi) => (u ? `${num(u[`${key}_${lo}`])} to ${num(u[`${key}_${hi}`])}` : "–");
  const head = el("tr", {}, el("th", { scope: "col" }, "parameter"),
    ...series.flatMap(({ name }) => [el("th", { scope: "col" }, `${name}`), el("th", { scope: "col" }, "68 %"), el("th", { scope: "col" }, "95 %")]),
    truth ? el("th", { scope: "col" }, "true") : null);
  const rows = ESTIMATES.map(({ key, label }) => el("tr", {}, el("th", { scope: "row" }, label),
    ...series.flatMap(({ result }) => [el("td", {}, num(result.predictions[key])),
      el("td", {}, interval(result.uncertainties, key, "p16", "p84")),
      el("td", {}, interval(result.uncertainties, key, "p2_5", "p97_5"))]),
    truth ? el("td", {}, num(truth[key])) : null));
  const angle = el("tr", {}, el("th", { scope: "row" }, "position angle (°)"),
    ...series.flatMap(({ result }) => [el("td", {}, num(result.predictions.position_angle)),
      el("td", { colspan: 2 }, result.uncertainties?.position_angle_std != null
        ? `± ${num(result.uncertainties.position_angle_std)} (1σ)` : "–")]),
    truth ? el("td", {}, "") : null);
  return el("table", { class: "numbers" }, el("caption", {}, "Estimates and intervals"),
    el("thead", {}, head), el("tbody", {}, ...rows, angle));
}

/** A note when the map or its estimate lies outside the model's training domain (none inside it). */
function domainWarning(domain) {
  if (!domain || domain.inside) return [];
  return [el("p", { class: "warning", id: "infer-domain" },
    el("strong", {}, "Outside the model's training domain: "),
    Object.entries(domain.outside).map(([name, why]) => `${name} ${why}`).join("; ") +
    ". Here the network extrapolates and its intervals are not calibrated.")];
}

/** Wire the Infer tab (`ctx`: {openapi, inputSize()}); returns use(map), for a map from the Generate tab. */
export function setupInfer(panel, ctx) {
  const form = new Form(panel.querySelector("form"), "infer", ctx.openapi, "InferenceRequest");
  form.build();
  const file = panel.querySelector("#infer-file");
  form.adopt("convergence_map", file, panel.querySelector("#infer-file-error"));
  const source = panel.querySelector("#infer-source");
  const results = panel.querySelector("#infer-results");
  const inputView = new MapView(panel.querySelector("#infer-input-map"), { title: "Input κ" });
  const residualView = new MapView(panel.querySelector("#infer-residual-map"), { title: "Residual: input − rendered estimate", diverging: true });
  const residualBox = panel.querySelector("#infer-residual-map");
  const residualNote = panel.querySelector("#infer-residual-note");
  const refineButton = panel.querySelector("#infer-refine");
  const refineStatus = panel.querySelector("#infer-refine-status");
  const useGenerated = panel.querySelector("#infer-use-generated");
  let input = null;     // {label, kappa (or null when the page cannot read the file), bytes, type, truth, arcsecPerKpc}
  let generated = null;
  let run = null;       // {options, series: [{name, result}]}

  function choose(chosen) {
    input = chosen;
    run = null;
    results.hidden = true;
    source.textContent = `Input: ${chosen.label}.`;
    for (const name of GEOMETRY) if (chosen.geometry?.[name] != null) form.set(name, chosen.geometry[name]);
    form.clearErrors();
  }

  file.addEventListener("change", async () => {
    const chosen = file.files[0];
    if (!chosen) return;
    const bytes = await chosen.arrayBuffer();
    const type = /\.npy$/i.test(chosen.name) ? NPY : FITS;
    let kappa = null, header = { geometry: {}, arcsecPerKpc: null, truth: null }, unreadable = "";
    try {
      if (type === NPY) {
        kappa = parseNpy(bytes);
      } else {
        const fits = parseFits(bytes);
        kappa = fits.kappa;
        header = fromCards(fits.cards);
      }
    } catch (error) {
      unreadable = ` (the page cannot draw it: ${error.message}; the service reads it itself)`;
    }
    choose({ label: `${chosen.name}${kappa ? `, ${kappa.length} × ${kappa[0].length} pixels` : ""}${unreadable}`,
      kappa, bytes, type, ...header });
  });

  useGenerated.addEventListener("click", () => generated && choose(generated));

  form.element.addEventListener("submit", async (event) => {
    event.preventDefault();
    form.clearErrors();
    if (!input) {
      form.fieldError("convergence_map", "Choose a FITS or .npy file, or use the generated map.");
      file.focus();
      return;
    }
    form.busy(true);
    try {
      const options = { ...form.values(), target_size: await ctx.inputSize(), refine: false };
      const result = await infer(options);
      run = { options, series: [{ name: "network", result }] };
      await show();
    } catch (error) {
      // an npy/FITS body's map errors are at ["body"]; its options are at ["query", name]
      form.showError(error, (loc) => {
        const name = [...loc].reverse().find((p) => typeof p === "string" && p !== "body" && p !== "query");
        return name ?? (loc[0] === "body" ? "convergence_map" : undefined);
      });
    } finally {
      form.busy(false);
    }
  });

  /** One inference call: JSON for a map in memory, the file's own bytes for an upload. */
  function infer(options) {
    if (input.bytes) return api("api/v1/inference", { method: "POST", body: input.bytes, contentType: input.type, query: options });
    return api("api/v1/inference", { method: "POST", json: { convergence_map: input.kappa, ...options } });
  }

  refineButton.addEventListener("click", async () => {
    if (!run || run.series.length > 1) return;
    refineButton.disabled = true;
    refineStatus.textContent = "Refining with the physics renderer (a few seconds)…";
    try {
      // the same seed: the refinement starts from the very network estimate shown
      const result = await infer({ ...run.options, seed: run.series[0].result.seed, refine: true });
      run.series.push({ name: "refined", result });
      refineStatus.textContent = "Refined estimate shown.";
      await show();
    } catch (error) {
      refineStatus.textContent = error.message;
      refineButton.disabled = false;
    }
  });

  async function show() {
    results.hidden = false;
    const latest = run.series.at(-1);
    const geometry = Object.fromEntries(GEOMETRY.map((name) => [name, run.options[name]]));
    const r = latest.result;
    panel.querySelector("#infer-estimates").replaceChildren(...domainWarning(r.training_domain),
      intervalsPlot(ESTIMATES, run.series, input.truth), estimatesTable(run.series, input.truth));
    panel.querySelector("#infer-classes").replaceChildren(
      el("h3", {}, `Scenario: ${r.predicted_class}`), classBars(r.classification, r.predicted_class),
      el("p", {}, `Predictive entropy ${num(r.entropy)} nats (at most ln ${Object.keys(r.classification).length} = ` +
        `${num(Math.log(Object.keys(r.classification).length))}); mutual information ${num(r.mutual_information)} nats ` +
        `(the part due to model uncertainty); ${r.mc_samples} MC samples${r.symmetrized ? " on each of the map's 8 " +
        "turned and mirrored views" : ""}, seed ${r.seed}. "none": no detectable ` +
        `substructure. Noise σ ${num(r.noise_sigma)} per pixel (${r.noise_sigma_source}).`));
    refineButton.disabled = run.series.length > 1;
    if (run.series.length === 1) refineStatus.textContent = "";
    if (!input.kappa) {
      inputView.canvas.hidden = true;
      residualBox.hidden = true;
      residualNote.textContent = "No residual: the page could not read this file's pixels.";
      return;
    }
    inputView.canvas.hidden = false;
    inputView.show(input.kappa, { fovKpc: geometry.fov_kpc, arcsecPerKpc: input.arcsecPerKpc });
    residualNote.textContent = `Rendering the ${latest.name} estimate…`;
    try {
      const residual = await residualMap(ctx.openapi, input.kappa, geometry, r.predictions);
      residualBox.hidden = Boolean(residual.reason);
      if (residual.reason) {
        residualNote.textContent = residual.reason;
        return;
      }
      residualView.show(residual.residual, { fovKpc: geometry.fov_kpc, arcsecPerKpc: input.arcsecPerKpc,
        title: `Residual: input − ${latest.name} estimate rendered` });
      residualNote.textContent = `Residual of the ${latest.name} estimate: RMS Δκ = ${num(residual.rms)} ` +
        `(${share(residual.rms / residual.inputRms)} of the input's RMS κ = ${num(residual.inputRms)}).`;
    } catch (error) {
      residualBox.hidden = true;
      residualNote.textContent = `No residual: ${error.message}`;
    }
  }

  return (map) => {
    generated = { ...map, arcsecPerKpc: map.geometry.arcsecPerKpc, bytes: null };
    useGenerated.disabled = false;
    file.value = "";
    choose(generated);
  };
}
