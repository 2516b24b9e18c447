/**
 * The page: reads its query (checkpoint, backend, count, steps, seed), starts the sampling worker,
 * shows its progress, and draws the samples as a grid on the canvas. `body[data-state]` goes from
 * 'loading' to 'sampling' to 'done' (or 'error'), for people and for tests/browser/page.test.ts.
 */
import type { SampleRequest, WorkerMessage } from './protocol.ts';

const element = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const status = element<HTMLParagraphElement>('status');
const progress = element<HTMLProgressElement>('progress');
const canvas = element<HTMLCanvasElement>('grid');
const backendLine = element<HTMLParagraphElement>('backend');

const query = new URLSearchParams(location.search);
const request: SampleRequest = {
  checkpoint: new URL(query.get('checkpoint') ?? 'checkpoint/', location.href).href,
  backend: query.get('backend') ?? undefined,
  count: Number(query.get('count') ?? 16),
  steps: Number(query.get('steps') ?? 18),
  seed: Number(query.get('seed') ?? 0),
};

function setState(state: 'loading' | 'sampling' | 'done' | 'error', text: string): void {
  document.body.dataset['state'] = state;
  status.textContent = text;
}

/** Samples [N, C, H, W] in [-1, 1] as a grid of N images, ceil(sqrt(N)) per row, one canvas pixel per image pixel. */
function drawGrid(pixels: Float32Array, [n, c, h, w]: readonly [number, number, number, number]): void {
  const cols = Math.ceil(Math.sqrt(n));
  const rows = Math.ceil(n / cols);
  canvas.width = cols * w;
  canvas.height = rows * h;
  const image = new ImageData(canvas.width, canvas.height);
  const byte = (v: number) => Math.max(0, Math.min(255, Math.round((v + 1) * 127.5)));
  for (let i = 0; i < n; i++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const at = 4 * ((Math.floor(i / cols) * h + y) * canvas.width + (i % cols) * w + x);
        for (let k = 0; k < 3; k++) image.data[at + k] = byte(pixels[((i * c + (c === 1 ? 0 : k)) * h + y) * w + x]!);
        image.data[at + 3] = 255;
      }
    }
  }
  canvas.getContext('2d')!.putImageData(image, 0, 0);
}

setState('loading', 'starting');
const worker = new Worker(new URL('./sampler.js', import.meta.url), { type: 'module' });
worker.onmessage = (e: MessageEvent<WorkerMessage>) => {
  const m = e.data;
  switch (m.kind) {
    case 'status':
      setState(document.body.dataset['state'] === 'sampling' || m.text.startsWith('sampling') ? 'sampling' : 'loading', m.text);
      return;
    case 'progress':
      progress.max = m.steps;
      progress.value = m.step;
      status.textContent = `step ${m.step} of ${m.steps}`;
      return;
    case 'done':
      drawGrid(m.pixels, m.shape);
      backendLine.textContent = `backend: ${m.backend} (${m.reasons.join('; ')})`;
      document.body.dataset['backend'] = m.backend;
      setState('done', `${m.shape[0]} samples in ${m.seconds.toFixed(1)} s`);
      return;
    case 'error':
      setState('error', m.message);
      return;
    default:
      return m satisfies never;
  }
};
worker.onerror = (e) => setState('error', `the worker failed: ${e.message}`);
worker.postMessage(request);
