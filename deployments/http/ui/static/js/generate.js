// The Generate tab: a synthetic convergence map from /api/v1/synthetic, drawn with its parameters,
// downloadable as .npy, FITS or PNG, and ready to send to the Infer tab.

import { api } from "./api.js";
import { download } from "./files.js";
import { Form } from "./form.js";
import { el, num, subscripted } from "./format.js";
import { MapView } from "./mapview.js";

const FORMATS = { "application/x-npy": "npy", "application/fits": "fits", "image/png": "png" };

/** A round NFW takes no ellipticity (the API refuses e != 0 for it), nor a position angle. */
export function followRoundProfile(form, swept = () => null) {
  const update = () => {
    const round = form.value("profile_type") === "NFW";
    for (const name of ["ellipticity", "position_angle"]) form.control(name).disabled = round || swept() === name;
  };
  form.control("profile_type").addEventListener("change", update);
  update();
  return update;
}

/** The /synthetic body of form values: a round NFW sends no ellipticity or position angle. */
export function mapSpec(values) {
  const spec = { ...values };
  if (spec.profile_type === "NFW") {
    delete spec.ellipticity;
    delete spec.position_angle;
  }
  return spec;
}

/** Lens geometry of a /synthetic response: what the Infer tab and the map view need. */
export function geometryOf(response) {
  const g = response.geometry;
  return { fov_kpc: g.fov_kpc, z_lens: g.z_lens, z_source: g.z_source, arcsecPerKpc: g.pixel_scale_arcsec / g.pixel_scale_kpc };
}

function parameterRows(response) {
  const p = response.parameters, g = response.geometry, request = response.metadata.request;
  return [
    ["concentration c", num(p.concentration)], ["r_200", `${num(p.r200_kpc)} kpc`], ["κ_s", num(p.kappa_s)],
    ["ρ_s", `${num(p.rho_s)} M☉/kpc³`], ["M_vir", `${num(p.M_vir)} M☉`], ["r_s", `${num(p.scale_radius)} kpc`],
    ["r_s from", p.scale_radius_source ?? "scale_radius"], ["e", num(p.ellipticity)], ["position angle", `${num(p.position_angle)}°`],
    ["scenario", p.scenario ?? "none"], ["subhalos", String(p.n_subhalos)],
    ...(p.core_fraction != null ? [["SIDM core / r_s", num(p.core_fraction)]] : []),
    ["pixel", `${num(g.pixel_scale_kpc)} kpc = ${num(g.pixel_scale_arcsec)}″`],
    ["Σ_cr", `${num(g.sigma_crit_msun_per_kpc2)} M☉/kpc²`], ["seed", String(request.seed ?? "–")],
  ];
}

/** Wire the Generate tab. `ctx`: {openapi, sendToInfer(map)}. */
export function setupGenerate(panel, ctx) {
  const form = new Form(panel.querySelector("form"), "gen", ctx.openapi, "SyntheticRequest");
  // The page opens on an elliptical halo, which shows more than the API's round default.
  form.build({ profile_type: { value: "Elliptical NFW" }, ellipticity: { value: 0.2 }, position_angle: { value: 30 } });
  followRoundProfile(form);
  const results = panel.querySelector("#generate-results");
  const view = new MapView(panel.querySelector("#generate-map"), { title: "Convergence κ" });
  const downloadError = panel.querySelector("#generate-download-error");
  let current = null;  // {spec (with the seed the service drew), response}

  form.element.addEventListener("submit", async (event) => {
    event.preventDefault();
    form.clearErrors();
    form.busy(true);
    try {
      const spec = mapSpec(form.values());
      const response = await api("api/v1/synthetic", { method: "POST", json: spec });
      current = { spec: { ...spec, seed: response.metadata.request.seed }, response };
      show(response);
    } catch (error) {
      form.showError(error);
    } finally {
      form.busy(false);
    }
  });

  function show(response) {
    const { fov_kpc, arcsecPerKpc } = geometryOf(response);
    const p = response.parameters;
    results.hidden = false;
    view.show(response.convergence_map, { fovKpc: fov_kpc, arcsecPerKpc,
      title: `Convergence κ: ${response.metadata.profile_type}, M_vir ${num(p.M_vir)} M☉${p.scenario ? `, ${p.scenario}` : ""}` });
    panel.querySelector("#generate-params tbody").replaceChildren(
      ...parameterRows(response).map(([name, value]) => el("tr", {}, el("th", { scope: "row" }, ...subscripted(name)), el("td", {}, value))));
    downloadError.textContent = "";
  }

  // Downloads ask the API again with the same spec and seed, so the file is the map on screen, with
  // the service's own FITS header and PNG rendering.
  for (const button of panel.querySelectorAll("[data-download]")) {
    button.addEventListener("click", async () => {
      const type = button.dataset.download;
      downloadError.textContent = "";
      button.disabled = true;
      try {
        const blob = await api("api/v1/synthetic", { method: "POST", json: current.spec, accept: type });
        download(blob, `kappa-${current.response.job_id}.${FORMATS[type]}`);
      } catch (error) {
        downloadError.textContent = error.message;
      } finally {
        button.disabled = false;
      }
    });
  }

  panel.querySelector("#generate-to-infer").addEventListener("click", () => {
    const { response } = current;
    const p = response.parameters;
    ctx.sendToInfer({
      kappa: response.convergence_map, geometry: geometryOf(response),
      truth: { M_vir: p.M_vir, r_s: p.scale_radius, ellipticity: p.ellipticity },
      label: `the generated map (${response.metadata.profile_type}, M_vir ${num(p.M_vir)} M☉, ${response.metadata.grid_size} × ${response.metadata.grid_size})`,
    });
  });
}
