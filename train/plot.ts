/**
 * Line plots as self-contained SVG strings, without dependencies: training loss against step
 * (raw points plus an EMA-smoothed line, optionally on a log y axis), or any metric against
 * wall-clock seconds with several named series and a legend.
 *
 * Points that cannot be drawn (NaN or infinite values, or values <= 0 on a log axis) are left
 * out, and the plot says how many, because a NaN loss is something the reader must not miss.
 */

export interface Series {
  readonly name: string;
  /** [x, y] pairs, in x order. */
  readonly points: readonly (readonly [number, number])[];
  /** CSS colour; default from a palette by series position. */
  readonly color?: string;
}

export interface PlotOptions {
  readonly title?: string;
  readonly xLabel?: string;
  readonly yLabel?: string;
  readonly logY?: boolean;
  /** EMA weight in [0, 1) of the smoothed line (0: lines through the raw points, no dots). */
  readonly smoothing?: number;
  readonly width?: number;
  readonly height?: number;
  /** At most this many points per series are drawn (evenly thinned); default 2000. */
  readonly maxPoints?: number;
}

const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];
const MARGIN = { left: 72, right: 24, top: 36, bottom: 52 };

function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

/** A short label: 3 significant digits, exponent form for very large or small values. */
export function formatTick(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1).replace('.0e', 'e').replace('e+', 'e');
  return String(Number(v.toPrecision(3)));
}

/** Ticks at 1, 2 or 5 times a power of ten, about `target` of them, covering [lo, hi]. */
export function linearTicks(lo: number, hi: number, target = 5): number[] {
  const raw = (hi - lo) / target;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => raw <= s * 1.0000001) ?? 10 * power;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

/** Decades within [lo, hi] (lo > 0), with 2x and 5x between them when the range spans at most 3 decades. */
export function logTicks(lo: number, hi: number): number[] {
  const first = Math.floor(Math.log10(lo));
  const last = Math.ceil(Math.log10(hi));
  const mantissas = Math.log10(hi / lo) <= 3 ? [1, 2, 5] : [1];
  const ticks: number[] = [];
  for (let e = first; e <= last; e++) {
    for (const m of mantissas) {
      const v = Number((m * 10 ** e).toPrecision(12));
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) ticks.push(v);
    }
  }
  return ticks;
}

/** Exponential moving average with bias correction (the first values are not pulled toward 0). */
export function emaSmooth(values: readonly number[], weight: number): number[] {
  let acc = 0;
  let norm = 0;
  return values.map((v) => {
    acc = weight * acc + (1 - weight) * v;
    norm = weight * norm + (1 - weight);
    return acc / norm;
  });
}

function thin<T>(xs: readonly T[], max: number): readonly T[] {
  if (xs.length <= max) return xs;
  const stride = xs.length / max;
  return Array.from({ length: max }, (_, i) => xs[Math.floor(i * stride)]!).concat(xs.length > 0 ? [xs[xs.length - 1]!] : []);
}

function padRange(lo: number, hi: number, log: boolean): [number, number] {
  if (lo < hi) return [lo, hi];
  return log ? [lo / Math.SQRT2 / Math.SQRT2, hi * 2] : lo === 0 ? [-1, 1] : [lo - Math.abs(lo) / 2, hi + Math.abs(hi) / 2];
}

/** An SVG document plotting `series` on shared axes. */
export function linePlotSvg(series: readonly Series[], options: PlotOptions = {}): string {
  const { title, xLabel = '', yLabel = '', logY = false, smoothing = 0, width = 720, height = 420, maxPoints = 2000 } = options;
  if (!(smoothing >= 0 && smoothing < 1)) throw new RangeError(`linePlotSvg: smoothing must be in [0, 1), got ${smoothing}`);
  let omitted = 0;
  const kept = series.map((s) => {
    const pts = s.points.filter(([x, y]) => {
      const ok = Number.isFinite(x) && Number.isFinite(y) && (!logY || y > 0);
      if (!ok) omitted++;
      return ok;
    });
    return { ...s, pts };
  });
  const all = kept.flatMap((s) => s.pts);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const [x0, x1] = padRange(all.length ? Math.min(...xs) : 0, all.length ? Math.max(...xs) : 1, false);
  const [y0, y1] = padRange(all.length ? Math.min(...ys) : logY ? 1 : 0, all.length ? Math.max(...ys) : logY ? 10 : 1, logY);
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = height - MARGIN.top - MARGIN.bottom;
  const fy = (y: number): number => (logY ? Math.log10(y) : y);
  const px = (x: number): number => MARGIN.left + ((x - x0) / (x1 - x0)) * plotW;
  const py = (y: number): number => MARGIN.top + plotH - ((fy(y) - fy(y0)) / (fy(y1) - fy(y0))) * plotH;
  const r = (v: number): string => v.toFixed(1);

  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  if (title !== undefined) out.push(`<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">${escapeXml(title)}</text>`);

  // Grid, ticks and labels.
  const bottom = MARGIN.top + plotH;
  for (const t of linearTicks(x0, x1)) {
    out.push(`<line x1="${r(px(t))}" y1="${MARGIN.top}" x2="${r(px(t))}" y2="${bottom}" stroke="#eee"/>`);
    out.push(`<line x1="${r(px(t))}" y1="${bottom}" x2="${r(px(t))}" y2="${bottom + 5}" stroke="black"/>`);
    out.push(`<text x="${r(px(t))}" y="${bottom + 18}" text-anchor="middle">${formatTick(t)}</text>`);
  }
  for (const t of logY ? logTicks(y0, y1) : linearTicks(y0, y1)) {
    out.push(`<line x1="${MARGIN.left}" y1="${r(py(t))}" x2="${MARGIN.left + plotW}" y2="${r(py(t))}" stroke="#eee"/>`);
    out.push(`<line x1="${MARGIN.left - 5}" y1="${r(py(t))}" x2="${MARGIN.left}" y2="${r(py(t))}" stroke="black"/>`);
    out.push(`<text x="${MARGIN.left - 8}" y="${r(py(t) + 4)}" text-anchor="end">${formatTick(t)}</text>`);
  }
  out.push(`<path d="M${MARGIN.left},${MARGIN.top}V${bottom}H${MARGIN.left + plotW}" fill="none" stroke="black"/>`);
  out.push(`<text x="${MARGIN.left + plotW / 2}" y="${height - 10}" text-anchor="middle">${escapeXml(xLabel)}</text>`);
  out.push(`<text transform="translate(16 ${MARGIN.top + plotH / 2}) rotate(-90)" text-anchor="middle">${escapeXml(yLabel + (logY ? ' (log scale)' : ''))}</text>`);

  // Data: raw points as faint dots under the smoothed line when smoothing, else a plain line.
  kept.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length]!;
    if (s.pts.length === 0) return;
    const line = smoothing > 0 ? emaSmooth(s.pts.map((p) => p[1]), smoothing).map((y, k) => [s.pts[k]![0], y] as const) : s.pts;
    if (smoothing > 0) {
      const dots = thin(s.pts, maxPoints).map(([x, y]) => `<circle cx="${r(px(x))}" cy="${r(py(y))}" r="1.5"/>`);
      out.push(`<g fill="${color}" fill-opacity="0.25" class="raw" data-series="${escapeXml(s.name)}">${dots.join('')}</g>`);
    }
    const d = thin(line, maxPoints).map(([x, y], k) => `${k === 0 ? 'M' : 'L'}${r(px(x))},${r(py(y))}`).join('');
    out.push(`<path class="line" data-series="${escapeXml(s.name)}" d="${d}" fill="none" stroke="${color}" stroke-width="1.75"/>`);
  });

  if (series.length > 1) {
    const boxW = 40 + 7 * Math.max(...series.map((s) => s.name.length));
    const lx = MARGIN.left + plotW - boxW;
    out.push(`<g class="legend"><rect x="${lx - 8}" y="${MARGIN.top + 4}" width="${boxW}" height="${series.length * 18 + 8}" fill="white" fill-opacity="0.85" stroke="#ccc"/>`);
    series.forEach((s, i) => {
      const y = MARGIN.top + 20 + i * 18;
      out.push(`<line x1="${lx}" y1="${y - 4}" x2="${lx + 20}" y2="${y - 4}" stroke="${s.color ?? PALETTE[i % PALETTE.length]!}" stroke-width="2"/>`);
      out.push(`<text x="${lx + 26}" y="${y}">${escapeXml(s.name)}</text>`);
    });
    out.push('</g>');
  }
  if (omitted > 0) {
    out.push(`<text class="omitted" x="${MARGIN.left + 4}" y="${MARGIN.top - 6}" fill="#d62728">${escapeXml(`${omitted} point${omitted === 1 ? '' : 's'} not drawn (${logY ? 'non-finite or <= 0' : 'non-finite'})`)}</text>`);
  }
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

/** Training loss against step: raw losses as dots, an EMA-smoothed line (default weight 0.9). */
export function lossCurveSvg(points: readonly (readonly [number, number])[], options: PlotOptions = {}): string {
  return linePlotSvg([{ name: 'loss', points }], { xLabel: 'step', yLabel: 'loss', smoothing: 0.9, ...options });
}
