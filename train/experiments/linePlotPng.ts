/**
 * A PNG rendering of a line plot, for pages where SVG is not shown (and because rendering SVG to
 * PNG would need a dependency). Same axes as train/plot.ts's `linePlotSvg` (its ticks become grid
 * lines), series in the same palette order, with a dot at each point; there is no text (pngjs has
 * no fonts): the SVG next to it carries the labels and the legend.
 */
import { PNG } from 'pngjs';
import { linearTicks, logTicks, type PlotOptions, type Series } from '../plot.ts';

const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];
const MARGIN = 24;

function rgb(hex: string): [number, number, number] {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

export function linePlotPng(series: readonly Series[], options: PlotOptions = {}): Uint8Array {
  const { width = 720, height = 420, logY = false } = options;
  const pts = series.map((s) => s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!logY || y > 0)));
  const all = pts.flat();
  const fy = (y: number) => (logY ? Math.log10(y) : y);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => fy(p[1]));
  const [x0, x1] = all.length ? [Math.min(...xs, 0), Math.max(...xs) * 1.05 || 1] : [0, 1];
  const [ylo, yhi] = all.length ? [Math.min(...ys), Math.max(...ys)] : [0, 1];
  const pad = (yhi - ylo) * 0.1 || 0.5;
  const [y0, y1] = [ylo - pad, yhi + pad];
  const png = new PNG({ width, height, colorType: 6 });
  png.data.fill(255);
  const set = (x: number, y: number, [r, g, b]: readonly number[]) => {
    const xi = Math.round(x);
    const yi = Math.round(y);
    if (xi < 0 || yi < 0 || xi >= width || yi >= height) return;
    const at = 4 * (yi * width + xi);
    png.data[at] = r!;
    png.data[at + 1] = g!;
    png.data[at + 2] = b!;
  };
  const px = (x: number) => MARGIN + ((x - x0) / (x1 - x0)) * (width - 2 * MARGIN);
  const py = (y: number) => height - MARGIN - ((fy(y) - y0) / (y1 - y0)) * (height - 2 * MARGIN);
  const line = (ax: number, ay: number, bx: number, by: number, c: readonly number[], thick = 0) => {
    const n = Math.max(Math.abs(bx - ax), Math.abs(by - ay), 1);
    for (let i = 0; i <= n; i++) {
      for (let d = -thick; d <= thick; d++) {
        set(ax + ((bx - ax) * i) / n, ay + ((by - ay) * i) / n + d, c);
        set(ax + ((bx - ax) * i) / n + d, ay + ((by - ay) * i) / n, c);
      }
    }
  };
  const grey = [225, 225, 225];
  for (const t of linearTicks(x0, x1)) line(px(t), MARGIN, px(t), height - MARGIN, grey);
  for (const t of logY ? logTicks(10 ** y0, 10 ** y1) : linearTicks(y0, y1)) line(MARGIN, py(t), width - MARGIN, py(t), grey);
  line(MARGIN, MARGIN, MARGIN, height - MARGIN, [0, 0, 0]);
  line(MARGIN, height - MARGIN, width - MARGIN, height - MARGIN, [0, 0, 0]);
  pts.forEach((p, i) => {
    const c = rgb(series[i]!.color ?? PALETTE[i % PALETTE.length]!);
    for (let k = 1; k < p.length; k++) line(px(p[k - 1]![0]), py(p[k - 1]![1]), px(p[k]![0]), py(p[k]![1]), c, 1);
    for (const [x, y] of p) for (let dx = -3; dx <= 3; dx++) for (let dy = -3; dy <= 3; dy++) set(px(x) + dx, py(y) + dy, c);
  });
  return new Uint8Array(PNG.sync.write(png));
}
