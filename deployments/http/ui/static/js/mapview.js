// A convergence map drawn on a <canvas>: pixels in a colour map, axes in kpc (or arcsec), a colour bar.
//
// Geometry (docs/design.md section 3): row i of the map is y, column j is x; pixel centres sit at
// (k - (n - 1)/2) * fov/n, so the map spans -fov/2..fov/2 on both axes, centred on the halo. Row 0 is
// the lowest y and is drawn at the bottom, as in the service's PNG. Arcsec per kpc comes from the
// lens geometry (pixel_scale_arcsec / pixel_scale_kpc of a /synthetic response or FITS header).

import { RDBU, VIRIDIS, colour, makeScale, niceTicks, scaleTicks } from "./colormaps.js";
import { el, num, tick } from "./format.js";

const WIDTH = 484, HEIGHT = 390;                  // CSS pixels of the whole figure
const PLOT = { x: 66, y: 12, size: 320 };         // the map's square
const BAR = { x: PLOT.x + PLOT.size + 22, width: 14 };
const INK = "#1f2328", FONT = "12px system-ui, sans-serif";
let views = 0;

export class MapView {
  /** `options`: {title, diverging (residual maps: symmetric scale, red-blue colours)}. */
  constructor(container, { title, diverging = false } = {}) {
    const id = `map-${++views}`;
    this.diverging = diverging;
    this.canvas = el("canvas", { role: "img", id, "aria-label": title });
    // a residual is linear about zero; a map of kappa chooses (log by default, as the service's PNG)
    this.scaleSelect = el("select", { id: `${id}-scale` },
      ...[["log", "log"], ["asinh", "asinh"], ["linear", "linear"]].map(([v, label]) => el("option", { value: v }, label)));
    this.arcsec = el("input", { type: "checkbox", id: `${id}-arcsec` });
    this.readout = el("p", { class: "readout", "aria-hidden": "true" }, " ");
    this.caption = el("figcaption", {}, title);
    const tools = el("div", { class: "toolbar" },
      ...(diverging ? [] : [el("label", { for: this.scaleSelect.id }, "Scale "), this.scaleSelect]),
      el("span", { class: "check" }, this.arcsec, el("label", { for: this.arcsec.id }, "axes in arcsec")));
    container.replaceChildren(el("figure", { class: "mapview" }, this.caption, tools, this.canvas, this.readout));
    this.scaleSelect.addEventListener("change", () => this.draw());
    this.arcsec.addEventListener("change", () => this.draw());
    this.canvas.addEventListener("mousemove", (event) => this.point(event));
    this.canvas.addEventListener("mouseleave", () => (this.readout.textContent = " "));
  }

  /** Show `kappa` (rows of numbers) over `fovKpc`; `arcsecPerKpc` enables the arcsec axes. */
  show(kappa, { fovKpc, arcsecPerKpc = null, title = null }) {
    this.kappa = kappa;
    this.n = kappa.length;
    this.fov = fovKpc;
    this.arcsecPerKpc = arcsecPerKpc;
    if (title) this.caption.textContent = title;
    this.arcsec.disabled = !arcsecPerKpc;
    if (!arcsecPerKpc) this.arcsec.checked = false;
    this.arcsec.title = arcsecPerKpc ? "" : "the angular scale is unknown for this map (no lens geometry)";
    let low = Infinity, high = -Infinity;
    for (const row of kappa) for (const v of row) { if (v < low) low = v; if (v > high) high = v; }
    Object.assign(this, { low, high });
    this.draw();
  }

  /** The axis unit and the factor from kpc to it. */
  units() {
    return this.arcsec.checked && this.arcsecPerKpc ? ["arcsec", this.arcsecPerKpc] : ["kpc", 1];
  }

  draw() {
    if (!this.kappa) return;
    const ratio = window.devicePixelRatio || 1;
    const canvas = this.canvas;
    canvas.width = WIDTH * ratio;
    canvas.height = HEIGHT * ratio;
    canvas.style.width = `${WIDTH}px`;
    canvas.style.height = `${HEIGHT}px`;
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, WIDTH, HEIGHT);
    const scale = makeScale(this.diverging ? "symmetric" : this.scaleSelect.value, this.low, this.high);
    const lut = this.diverging ? RDBU : VIRIDIS;
    g.imageSmoothingEnabled = false;  // one map pixel is a crisp block
    g.drawImage(this.pixels(scale, lut), PLOT.x, PLOT.y, PLOT.size, PLOT.size);
    this.axes(g);
    this.colourBar(g, scale, lut);
    const [unit, factor] = this.units();
    canvas.setAttribute("aria-label", `${this.caption.textContent}: ${this.n} × ${this.n} pixels over ` +
      `${num(this.fov * factor)} ${unit}; κ from ${num(this.low)} to ${num(this.high)}, ${scale.kind} scale.`);
  }

  /** The map as an n x n image, row 0 at the bottom. */
  pixels(scale, lut) {
    const n = this.n;
    const image = new ImageData(n, n);
    for (let i = 0; i < n; i++) {
      const row = this.kappa[i];
      for (let j = 0; j < n; j++) {
        const [r, gr, b] = colour(lut, scale.toUnit(row[j]));
        const k = 4 * ((n - 1 - i) * n + j);
        image.data.set([r, gr, b, 255], k);
      }
    }
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = n;
    canvas.getContext("2d").putImageData(image, 0, 0);
    return canvas;
  }

  axes(g) {
    const [unit, factor] = this.units();
    const half = (this.fov / 2) * factor;
    const toPx = (v) => ((v + half) / (2 * half)) * PLOT.size;
    g.strokeStyle = INK;
    g.fillStyle = INK;
    g.font = FONT;
    g.lineWidth = 1;
    g.strokeRect(PLOT.x + 0.5, PLOT.y + 0.5, PLOT.size, PLOT.size);
    for (const v of niceTicks(-half, half, 4)) {
      const x = PLOT.x + toPx(v), y = PLOT.y + PLOT.size - toPx(v);
      g.beginPath();
      g.moveTo(x, PLOT.y + PLOT.size); g.lineTo(x, PLOT.y + PLOT.size + 5);
      g.moveTo(PLOT.x - 5, y); g.lineTo(PLOT.x, y);
      g.stroke();
      g.textAlign = "center"; g.textBaseline = "top";
      g.fillText(tick(v), x, PLOT.y + PLOT.size + 7);
      g.textAlign = "right"; g.textBaseline = "middle";
      g.fillText(tick(v), PLOT.x - 8, y);
    }
    g.textAlign = "center"; g.textBaseline = "alphabetic";
    g.fillText(`x (${unit})`, PLOT.x + PLOT.size / 2, PLOT.y + PLOT.size + 36);
    g.save();
    g.translate(16, PLOT.y + PLOT.size / 2);
    g.rotate(-Math.PI / 2);
    g.fillText(`y (${unit})`, 0, 0);
    g.restore();
  }

  colourBar(g, scale, lut) {
    const { x, width } = BAR, top = PLOT.y, height = PLOT.size;
    for (let k = 0; k < height; k++) {
      const [r, gr, b] = colour(lut, 1 - k / (height - 1));
      g.fillStyle = `rgb(${r},${gr},${b})`;
      g.fillRect(x, top + k, width, 1);
    }
    g.strokeStyle = INK;
    g.strokeRect(x + 0.5, top + 0.5, width, height);
    g.fillStyle = INK;
    g.textAlign = "left"; g.textBaseline = "middle";
    for (const v of scaleTicks(scale)) {
      const y = top + (1 - scale.toUnit(v)) * height;
      g.beginPath(); g.moveTo(x + width, y); g.lineTo(x + width + 4, y); g.stroke();
      g.fillText(tick(Number(v.toPrecision(2))), x + width + 6, y);
    }
    g.textAlign = "center"; g.textBaseline = "bottom";
    g.fillText(this.diverging ? "Δκ" : "κ", x + width / 2, top + height + 22);
  }

  /** Coordinates and kappa under the mouse. */
  point(event) {
    if (!this.kappa) return;
    const box = this.canvas.getBoundingClientRect();
    const px = event.clientX - box.left - PLOT.x, py = event.clientY - box.top - PLOT.y;
    const j = Math.floor((px / PLOT.size) * this.n), i = this.n - 1 - Math.floor((py / PLOT.size) * this.n);
    if (i < 0 || j < 0 || i >= this.n || j >= this.n) {
      this.readout.textContent = " ";
      return;
    }
    const [unit, factor] = this.units();
    const centre = (k) => ((k - (this.n - 1) / 2) * this.fov / this.n) * factor;
    this.readout.textContent = `x = ${num(centre(j))} ${unit}, y = ${num(centre(i))} ${unit}, κ = ${num(this.kappa[i][j])}`;
  }
}
