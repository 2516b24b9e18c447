/**
 * A short tuning run: times every GEMM tile candidate on a matmul and 3x3 convolutions (a wide
 * one, and a small one with both adjoints) on this adapter, and stores the ranking (fastest first)
 * in the tile cache that the WebGPU backend reads at start-up (`~/.cache/tessera/tiles.json`, or
 * TESSERA_TILE_CACHE). It ranks by steady speed only: on lavapipe, which compiles each kernel at its
 * first dispatch, bigger tiles also cost compile time (bench/RESULTS.md, 2026-11-29 late night).
 *
 *   npx tsx bench/tune.ts [--dry]     # --dry: print the ranking, write nothing
 */
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname } from 'node:path';
import * as T from '../core/index.ts';
import { adapterKey, createWebGpuBackend } from '../backends/webgpu/index.ts';
import { TILE_CANDIDATES, tileCachePath } from '../backends/webgpu/tiles.ts';
import type { Tile } from '../backends/webgpu/gemm.ts';

const input = (i: number, shape: number[]): T.Tensor => new T.Tensor({ op: 'input', index: i }, [], shape, 'float32');
const problems: { name: string; shapes: number[][]; f: (...xs: T.Tensor[]) => T.Tensor }[] = [
  { name: 'matmul 512', shapes: [[512, 512], [512, 512]], f: (a, b) => T.matmul(a, b) },
  { name: 'conv 3x3 8x64x16x16', shapes: [[8, 64, 16, 16], [64, 64, 3, 3]], f: (x, w) => T.conv2d(x, w, { padding: 1 }) },
  // A diffusion UNet's small layers (the demo network's 16 channels at 16x16, batch 32) and both adjoints.
  { name: 'conv 3x3 32x16x16x16', shapes: [[32, 16, 16, 16], [16, 16, 3, 3]], f: (x, w) => T.conv2d(x, w, { padding: 1 }) },
  { name: 'conv grad input 32x16x16x16', shapes: [[32, 16, 16, 16], [16, 16, 3, 3]], f: (dy, w) => T.conv2dGradInput(dy, w, [32, 16, 16, 16], { padding: 1 }) },
  { name: 'conv grad weight 32x16x16x16', shapes: [[32, 16, 16, 16], [32, 16, 16, 16]], f: (x, dy) => T.conv2dGradWeight(x, dy, [16, 16, 3, 3], { padding: 1 }) },
];

const timings = new Map<Tile, number>();
let key = '';
for (const tile of TILE_CANDIDATES) {
  const be = await createWebGpuBackend({ tiles: [tile] });
  key = adapterKey(be.ctx);
  let total = 0;
  const each: string[] = [];
  for (const p of problems) {
    const ins = p.shapes.map((s, i) => input(i, s));
    const exe = be.compile(T.buildProgram(p.name, [p.f(...ins)], ins).program);
    await exe.ready;
    const bufs = p.shapes.map((s) => be.upload(new Float32Array(T.sizeOf(s)).fill(0.5), s, 'float32'));
    const times: number[] = [];
    for (let r = 0; r < 4; r++) {
      const t0 = performance.now();
      const [o] = be.run(exe, bufs, bufs.map(() => false));
      await be.ctx.device.queue.onSubmittedWorkDone();
      if (r > 0) times.push(performance.now() - t0);
      be.free(o!);
    }
    const t = times.sort((a, b) => a - b)[1]!;
    each.push(`${p.name} ${t.toFixed(1)}`);
    total += t;
  }
  timings.set(tile, total);
  console.log(JSON.stringify(tile), `${total.toFixed(1)} ms (${each.join(', ')})`);
  be.ctx.device.destroy();
}
const ranked = [...TILE_CANDIDATES].sort((a, b) => timings.get(a)! - timings.get(b)!);
if (process.argv.includes('--dry')) {
  console.log('ranking (not written, --dry):', ranked.map((t) => JSON.stringify(t)).join(' '));
  process.exit(0);
}
const path = tileCachePath();
const all = existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as Record<string, Tile[]>) : {};
all[key] = ranked;
mkdirSync(dirname(path), { recursive: true });
writeFileSync(path, JSON.stringify(all, null, 2));
console.log(`ranking for '${key}' written to ${path}`);
process.exit(0);
