// Numbers for people: three significant digits, powers of ten as superscripts (2.00×10¹²).

const SUPERSCRIPT = { "-": "⁻", "+": "", 0: "⁰", 1: "¹", 2: "²", 3: "³", 4: "⁴", 5: "⁵", 6: "⁶", 7: "⁷", 8: "⁸", 9: "⁹" };

/** `x` with `digits` significant digits; scientific notation outside 1e-3..1e5. */
export function num(x, digits = 3) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  const size = Math.abs(x);
  if (size !== 0 && (size >= 1e5 || size < 1e-3)) {
    const [mantissa, exponent] = x.toExponential(digits - 1).split("e");
    return `${mantissa}×10${[...exponent].map((c) => SUPERSCRIPT[c]).join("")}`;
  }
  return String(Number(x.toPrecision(digits)));
}

/** An axis tick: a power of ten as 10ⁿ, other values without trailing zeros (2×10¹², 0.25). */
export function tick(x) {
  const text = num(x);
  if (/^1(\.0+)?×10/.test(text)) return text.replace(/^1(\.0+)?×/, "");
  return text.replace(/\.?0+×/, "×");
}

/** A number as typed in an <input type=number>: 2e12 rather than 2000000000000. */
export function inputValue(x) {
  if (typeof x !== "number") return x ?? "";
  return Math.abs(x) >= 1e5 ? x.toExponential().replace("e+", "e") : String(x);
}

/** A percentage with one decimal. */
export const percent = (p) => `${(100 * p).toFixed(1)} %`;

/** Element helper: el("p", {class: "note"}, "text", child, ...). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/** "M_vir" -> ["M", <sub>vir</sub>]: a label with its subscripts. */
export function subscripted(text) {
  return text.split(/_(\w+)/).map((part, i) => (i % 2 ? el("sub", {}, part) : part));
}
