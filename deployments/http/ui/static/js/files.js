// Files in the browser: reading .npy and FITS maps (to show them and compute residuals; the API
// decodes the same bytes itself), saving downloads, and writing CSV.

/** Rows of numbers from a flat typed array of `rows` x `cols`, C order (or Fortran order). */
function toRows(flat, rows, cols, fortran = false) {
  return Array.from({ length: rows }, (_, i) =>
    Array.from({ length: cols }, (_, j) => Number(fortran ? flat[j * rows + i] : flat[i * cols + j])));
}

// dtype of an npy header ('<f8', '>i4', '|u1', ...) -> DataView reader and item size
const NPY_TYPES = {
  f8: ["getFloat64", 8], f4: ["getFloat32", 4], i8: ["getBigInt64", 8], i4: ["getInt32", 4],
  i2: ["getInt16", 2], i1: ["getInt8", 1], u8: ["getBigUint64", 8], u4: ["getUint32", 4],
  u2: ["getUint16", 2], u1: ["getUint8", 1],
};

/** A 2-D .npy array (numpy's format 1.0/2.0/3.0) as rows of numbers. */
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  if (String.fromCharCode(...bytes.slice(1, 6)) !== "NUMPY" || bytes[0] !== 0x93) throw new Error("not an .npy file");
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.slice(start, start + headerLength));
  const descr = /'descr':\s*'([<>|=])(\w\d)'/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !shape || !NPY_TYPES[descr[2]]) throw new Error("unsupported .npy data type");
  const dims = shape[1].split(",").map((d) => d.trim()).filter(Boolean).map(Number);
  if (dims.length !== 2) throw new Error(`the array is ${dims.length}-D, a map is 2-D`);
  const [method, size] = NPY_TYPES[descr[2]];
  const little = descr[1] !== ">";
  const offset = start + headerLength;
  const flat = Array.from({ length: dims[0] * dims[1] }, (_, k) => view[method](offset + k * size, little));
  return toRows(flat, dims[0], dims[1], /'fortran_order':\s*True/.test(header));
}

/** The value of one FITS header card ('text', T/F, or a number; D exponents allowed). */
function cardValue(raw) {
  const text = raw.split(" /")[0].trim();
  if (text.startsWith("'")) return text.slice(1, text.lastIndexOf("'")).trim();
  if (text === "T" || text === "F") return text === "T";
  const value = Number(text.replace("D", "E"));
  return text === "" || Number.isNaN(value) ? null : value;
}

const FITS_BLOCK = 2880;
const FITS_TYPES = { 8: ["getUint8", 1], 16: ["getInt16", 2], 32: ["getInt32", 4], 64: ["getBigInt64", 8],
  "-32": ["getFloat32", 4], "-64": ["getFloat64", 8] };

/**
 * The first 2-D image of a FITS file (primary HDU or IMAGE extension), as the service reads it:
 * {kappa, cards}, kappa[i][j] with i along NAXIS2 (y) and j along NAXIS1 (x); BSCALE/BZERO applied.
 */
export function parseFits(buffer) {
  const view = new DataView(buffer);
  const ascii = new TextDecoder("ascii");
  let offset = 0;
  while (offset + FITS_BLOCK <= buffer.byteLength) {
    const primary = offset === 0;
    const cards = {};
    let ended = false;
    while (!ended && offset + FITS_BLOCK <= buffer.byteLength) {
      const block = ascii.decode(new Uint8Array(buffer, offset, FITS_BLOCK));
      offset += FITS_BLOCK;
      for (let c = 0; c < FITS_BLOCK; c += 80) {
        const card = block.slice(c, c + 80);
        const keyword = card.slice(0, 8).trim();
        if (keyword === "END") { ended = true; break; }
        if (card.slice(8, 10) === "= ") cards[keyword] = cardValue(card.slice(10));
      }
    }
    if (!ended) break;
    if (primary && cards.SIMPLE !== true) throw new Error("not a FITS file");
    const naxis = cards.NAXIS || 0;
    const dims = Array.from({ length: naxis }, (_, k) => cards[`NAXIS${k + 1}`] || 0);
    const count = naxis ? dims.reduce((a, b) => a * b, 1) : 0;
    const [method, size] = FITS_TYPES[String(cards.BITPIX)] || [];
    if (!method) throw new Error(`unsupported BITPIX ${cards.BITPIX}`);
    const isImage = primary || cards.XTENSION === "IMAGE";
    if (isImage && count > 0) {
      const real = dims.filter((d) => d > 1);
      if (real.length !== 2) throw new Error(`the image is ${real.length}-D, a map is 2-D`);
      const scale = cards.BSCALE ?? 1, zero = cards.BZERO ?? 0;
      const flat = Array.from({ length: count }, (_, k) => zero + scale * Number(view[method](offset + k * size, false)));
      return { kappa: toRows(flat, real[1], real[0]), cards };
    }
    const bytes = size * (cards.GCOUNT ?? 1) * ((cards.PCOUNT ?? 0) + count);
    offset += Math.ceil(bytes / FITS_BLOCK) * FITS_BLOCK;
  }
  throw new Error("no HDU holds a 2-D image");
}

/** Save a Blob as a file named `name` (a download the browser handles as usual). */
export function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** CSV text (RFC 4180 quoting) of rows of values under `header`. */
export function csv(header, rows) {
  const cell = (v) => {
    const text = v === null || v === undefined ? "" : String(v);
    return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  };
  return [header, ...rows].map((row) => row.map(cell).join(",")).join("\r\n") + "\r\n";
}
