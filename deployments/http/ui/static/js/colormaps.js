// Colour maps and intensity scales of the map views.
//
// VIRIDIS (sequential, for kappa) and RDBU (diverging, for residuals) are matplotlib's "viridis" and
// "RdBu_r" sampled at 64 levels, stored as hex RGB. A scale maps a value to [0, 1] and back, so the
// colour bar's ticks sit where their values are drawn.

const table = (hex) => Array.from({ length: hex.length / 6 }, (_, i) =>
  [0, 2, 4].map((k) => parseInt(hex.slice(6 * i + k, 6 * i + k + 2), 16)));

export const VIRIDIS = table(
  "44015446075a470d6047136548186a481d6f482374482878472d7b46327e453781443b844240864045883e49893d4e8a3a538b38588c36" +
  "5c8d34608d32648e31688e2f6c8e2d708e2c738e2a778e297b8e277f8e26828e24868e238a8d218e8d20928c1f968b1f9a8a1f9e891fa1" +
  "8721a58523a98326ad812ab07f2fb47c35b7793bbb7542be714ac16d52c5695ac86465cb5e6ece5877d15381d34d8bd64695d840a0da39aa" +
  "dc32b5de2bc0df25cae11fd5e21adfe318eae51af4e61efde725");

export const RDBU = table(
  "05306109396d0e4179124a851752911b5b9d2063a8256baf2a72b23079b63580ba3a88bd408fc14896c5559ec961a6cd6eaed27ab6d687be" +
  "da93c6de9dcbe1a7d0e4b1d5e7bbdaeac5dfedcfe4efd6e7f1dceaf2e2edf3e8f0f4eef3f5f4f6f6f7f5f3f8f0ecf9ece4fae7dcfbe3d5fc" +
  "dfcdfdd9c5fbd1bafac8aff8c0a4f7b799f6ae8ef4a683f09b7aeb9072e6856ae17a61dd6f59d86450d3594acd4e44c7423fc1373abc2b34" +
  "b6202fae172aa31329970f278b0b257f082373042167001f");

/** RGB of position t in [0, 1] on a colour table. */
export function colour(lut, t) {
  const i = Math.round(Math.min(1, Math.max(0, t)) * (lut.length - 1));
  return lut[Number.isFinite(i) ? i : 0];
}

// Log scale: like the service's PNG (lensing/io.py), the floor is 1e-4 of the brightest pixel.
const LOG_DYNAMIC_RANGE = 1e-4;
// Asinh scale: linear within ASINH_SOFTENING of the peak, logarithmic far above it.
const ASINH_SOFTENING = 0.02;

/**
 * A scale for values from `low` to `high`: {kind, low, high, toUnit(v), fromUnit(t)}. "log" falls
 * back to linear when nothing is positive; "symmetric" is linear about zero (residual maps).
 */
export function makeScale(kind, low, high) {
  if (kind === "symmetric") {
    const m = Math.max(Math.abs(low), Math.abs(high)) || 1;
    return linear("symmetric", -m, m);
  }
  if (kind === "log" && high > 0) {
    const floor = Math.max(high * LOG_DYNAMIC_RANGE, low > 0 ? low : 0);
    const a = Math.log10(floor), b = Math.log10(high);
    const span = b - a || 1;
    return { kind, low: floor, high, toUnit: (v) => (Math.log10(Math.max(v, floor)) - a) / span,
      fromUnit: (t) => 10 ** (a + t * span) };
  }
  if (kind === "asinh") {
    const soft = ASINH_SOFTENING * (Math.max(Math.abs(low), Math.abs(high)) || 1);
    const a = Math.asinh(low / soft), b = Math.asinh(high / soft);
    const span = b - a || 1;
    return { kind, low, high, toUnit: (v) => (Math.asinh(v / soft) - a) / span,
      fromUnit: (t) => soft * Math.sinh(a + t * span) };
  }
  return linear("linear", low, high);
}

function linear(kind, low, high) {
  const span = high - low || 1;
  return { kind, low, high, toUnit: (v) => (v - low) / span, fromUnit: (t) => low + t * span };
}

/** About `count` round tick values (1, 2, 5 x 10^k steps) between low and high. */
export function niceTicks(low, high, count = 5) {
  const span = high - low;
  if (!(span > 0)) return [low];
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return ticks;
}

/** Ticks of a colour bar: round values that the scale spreads evenly (decades on a log scale). */
export function scaleTicks(scale) {
  if (scale.kind === "log") {
    const first = Math.ceil(Math.log10(scale.low)), last = Math.floor(Math.log10(scale.high));
    const decades = [];
    for (let e = first; e <= last; e++) decades.push(10 ** e);
    return decades.length >= 2 ? decades : niceTicks(scale.low, scale.high);
  }
  if (scale.kind === "asinh") {  // evenly spaced along the bar, each rounded to one significant digit
    const values = [0, 0.25, 0.5, 0.75, 1].map((t) => scale.fromUnit(t))
      .map((v) => (v === 0 ? 0 : Number(v.toPrecision(1))))
      .filter((v) => v >= scale.low && v <= scale.high);
    return [...new Set(values)];
  }
  return niceTicks(scale.low, scale.high);
}
