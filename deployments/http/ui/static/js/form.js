// Labelled form controls built from the API's field schemas, and API errors shown beside them.
//
// Each control has a visible <label>, a hint with the API's range and units, and an error line
// (role=alert) tied to it by aria-describedby. Forms are `novalidate`: the API is the one judge of
// an input, and its 422 messages appear next to the field that their `loc` names.

import { fieldSchema } from "./schema.js";
import { el, inputValue, num, subscripted } from "./format.js";

/** Page copy for the API's field names: label (x_y renders y as a subscript), unit, hint. */
export const FIELD_TEXT = {
  profile_type: { label: "Profile" },
  mass: { label: "M_vir", unit: "M☉", hint: "virial mass M₂₀₀c" },
  scale_radius: { label: "r_s", unit: "kpc", hint: "NFW scale radius; blank, with c blank too: Duffy et al. (2008)" },
  concentration: { label: "Concentration c", hint: "r₂₀₀ / r_s, instead of r_s (give one, or neither)" },
  ellipticity: { label: "Ellipticity e", hint: "(1 − q)/(1 + q); 0 for a round NFW" },
  position_angle: { label: "Position angle", unit: "°", hint: "counter-clockwise from +x" },
  scenario: { label: "Dark-matter scenario", none: "none (smooth host)", hint: "subhalos of cold, warm or self-interacting dark matter" },
  noise_sigma: { label: "Noise σ", hint: "Gaussian noise added to κ" },
  seed: { label: "Seed", hint: "blank: drawn by the service and reported" },
  grid_size: { label: "Grid", unit: "pixels a side" },
  fov_kpc: { label: "Field of view", unit: "kpc", hint: "side of the square map" },
  z_lens: { label: "z_lens", hint: "lens redshift" },
  z_source: { label: "z_source", hint: "source redshift, behind the lens" },
  mc_samples: { label: "MC samples", hint: "dropout samples; 1 = a single deterministic pass" },
  symmetrize: { label: "Symmetrize" },
};

/** "1×10¹¹ to 1×10¹⁴ M☉" from a field schema's bounds (empty when it has none). */
function rangeText(schema, unit) {
  const low = schema.min ?? schema.exclusiveMin;
  const high = schema.max ?? schema.exclusiveMax;
  const u = unit && unit !== "°" ? ` ${unit}` : unit || "";
  if (low !== undefined && high !== undefined) {
    const above = schema.exclusiveMin !== undefined ? "above " : "";
    return `${above}${num(low)} to ${num(high)}${u}`;
  }
  if (low !== undefined) return `${schema.exclusiveMin !== undefined ? ">" : "≥"} ${num(low)}${u}`;
  if (high !== undefined) return `≤ ${num(high)}${u}`;
  return "";
}

export class Form {
  /** `element`: the <form>; `prefix`: for element ids; `openapi` + `model`: where field schemas live. */
  constructor(element, prefix, openapi, model) {
    Object.assign(this, { element, prefix, openapi, model });
    this.controls = new Map();
    this.formError = element.querySelector(".form-error");
  }

  /** Build the fields named in each `[data-fields]` slot; `specs[name]` overrides schema and copy. */
  build(specs = {}) {
    for (const slot of this.element.querySelectorAll("[data-fields]")) {
      for (const name of slot.dataset.fields.split(/\s+/)) slot.append(this.field(name, specs[name] || {}));
    }
  }

  /** One labelled control for field `name` (spec: {schema, label, unit, hint, choices, value}). */
  field(name, spec) {
    const schema = spec.schema || fieldSchema(this.openapi, spec.model || this.model, name);
    const text = { ...FIELD_TEXT[name], ...spec };
    const id = `${this.prefix}-${name.replace(/_/g, "-")}`;
    const hint = [rangeText(schema, text.unit), text.hint || schema.description].filter(Boolean).join("; ");
    const value = spec.value ?? schema.default;
    let control;
    if (spec.choices || schema.enum) {
      control = el("select", { id, name });
      const choices = spec.choices || schema.enum.map((v) => [v, String(v)]);
      if (schema.nullable && !spec.choices) control.append(el("option", { value: "" }, text.none || "none"));
      for (const [v, label] of choices) control.append(el("option", { value: v }, label));
      control.value = value ?? "";
    } else if (schema.type === "boolean") {
      control = el("input", { id, name, type: "checkbox" });
      control.checked = Boolean(value);
    } else {
      control = el("input", {
        id, name, type: "number", inputmode: "decimal", autocomplete: "off",
        step: schema.type === "integer" ? 1 : "any", min: schema.min ?? schema.exclusiveMin, max: schema.max,
      });
      control.value = inputValue(value);
    }
    control.setAttribute("aria-describedby", `${id}-hint ${id}-error`);
    this.controls.set(name, { control, schema, error: null });
    const unit = text.unit ? el("span", { class: "unit" }, ` (${text.unit})`) : null;
    const label = el("label", { for: id }, ...subscripted(text.label || name), unit);
    const error = el("p", { class: "error", id: `${id}-error`, role: "alert" });
    this.controls.get(name).error = error;
    const parts = schema.type === "boolean" ? [control, label] : [label, control];
    return el("div", { class: `field${schema.type === "boolean" ? " check" : ""}`, "data-name": name },
      ...parts, el("p", { class: "hint", id: `${id}-hint` }, hint), error);
  }

  /** Register a control written in the HTML (the file input) so errors can be shown beside it. */
  adopt(name, control, error) {
    this.controls.set(name, { control, schema: {}, error, adopted: true });
  }

  has(name) {
    return this.controls.has(name);
  }

  control(name) {
    return this.controls.get(name).control;
  }

  /** The value to send for `name`: a number, string, boolean or null. An empty or unreadable number
   * is sent as null, so the API's own message says what it needs. */
  value(name) {
    const { control, schema } = this.controls.get(name);
    if (control.type === "checkbox") return control.checked;
    if (control.tagName === "SELECT") {
      if (control.value === "") return null;
      return schema.type === "integer" || schema.type === "number" ? Number(control.value) : control.value;
    }
    return control.value === "" ? null : Number(control.value);
  }

  set(name, value) {
    const { control } = this.controls.get(name);
    if (control.type === "checkbox") control.checked = Boolean(value);
    else control.value = control.type === "number" ? inputValue(value) : value ?? "";
  }

  /** {name: value} of `names` (default: every control built from a schema). */
  values(names = [...this.controls].filter(([, c]) => !c.adopted).map(([name]) => name)) {
    return Object.fromEntries(names.map((name) => [name, this.value(name)]));
  }

  clearErrors() {
    for (const { control, error } of this.controls.values()) {
      control.removeAttribute("aria-invalid");
      error.textContent = "";
    }
    if (this.formError) this.formError.textContent = "";
  }

  /** Show `message` beside field `name` (or under the form when there is no such field). */
  fieldError(name, message) {
    const entry = this.controls.get(name);
    if (!entry) return this.say(message);
    entry.control.setAttribute("aria-invalid", "true");
    entry.error.textContent = entry.error.textContent ? `${entry.error.textContent} ${message}` : message;
  }

  say(message) {
    if (this.formError) this.formError.textContent = message;
  }

  /**
   * Show an ApiError: each 422 item beside the field its loc names (`nameOf(loc)`, by default the
   * last string of loc that is a field of this form), the rest under the form. The first field in
   * error gets the focus, so a keyboard user lands where the fix is.
   */
  showError(error, nameOf = (loc) => [...loc].reverse().find((p) => typeof p === "string" && this.has(p))) {
    if (!error.fields?.length) {
      this.say(error.message);
      return;
    }
    const unplaced = [];
    for (const { loc, msg } of error.fields) {
      const name = nameOf(loc);
      if (name && this.has(name)) this.fieldError(name, msg);
      else unplaced.push(`${loc.filter((p) => p !== "body" && p !== "query").join(".") || "input"}: ${msg}`);
    }
    this.say(unplaced.length ? unplaced.join(" ") : error.message);
    const first = [...this.controls.values()].find((c) => c.control.getAttribute("aria-invalid"));
    first?.control.focus();
  }

  /** Disable the submit button while a request runs. */
  busy(flag) {
    const submit = this.element.querySelector("button[type=submit]");
    submit.disabled = flag;
    this.element.setAttribute("aria-busy", String(flag));
  }
}
