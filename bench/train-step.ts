/**
 * One training step of the demo diffusion UNet (train/configs/demo.json, or --config) on WebGPU and
 * on the CPU, in the same process: the patch model at the three patch sizes a Patch Diffusion run
 * uses (R, R/2, R/4 with batch multipliers 1, 2, 4 at the config's batch size) and the full-image
 * EDM baseline (no coordinates) at R, with the same network.
 * Prints, per case and backend: codegen/compile ms, kernels per step and distinct pipelines, the
 * first run (which on lavapipe includes compiling every new pipeline), and the median steady-state
 * step with images/s; then the webgpu/cpu ratio.
 *
 *   npx tsx bench/train-step.ts [--config FILE] [--cases patchR,patchR/2,patchR/4,edm] [--backends webgpu,cpu] [--steps 3] [--shader-cache]
 */
import '../index.ts';
import { readFileSync } from 'node:fs';
import { getBackend, buildProgram, realize, flatten } from '../core/index.ts';
import type { Backend } from '../core/backend.ts';
import { resolveConfig } from '../train/config.ts';
import { orThrow } from '../train/errors.ts';
import { buildModel, fullSize, initState, stepFunction, stepBatch } from '../train/step.ts';

const arg = (name: string, dflt: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
};
const caseNames = arg('cases', 'patchR,patchR/2,patchR/4,edm').split(',');
const configFile = arg('config', 'train/configs/demo.json');
const backends = arg('backends', 'webgpu,cpu').split(',');
const steps = Number(arg('steps', '3'));
process.env['XDG_RUNTIME_DIR'] ??= '/tmp/xdg';
// Mesa keeps compiled shaders on disk: without this, a second benchmark run would not measure the
// first-run compilation that a fresh machine (or a changed kernel) pays. --shader-cache keeps it.
if (!process.argv.includes('--shader-cache')) process.env['MESA_SHADER_CACHE_DISABLE'] ??= 'true';

const baseConfig = orThrow(resolveConfig(JSON.parse(readFileSync(configFile, 'utf8')), {}));
const R = fullSize(baseConfig).height;
const BASE = baseConfig.train.batch_size;
const CASES: Record<string, { kind: 'patch' | 'edm'; size: number; batch: number }> = {
  patchR: { kind: 'patch', size: R, batch: BASE },
  'patchR/2': { kind: 'patch', size: R / 2, batch: 2 * BASE },
  'patchR/4': { kind: 'patch', size: R / 4, batch: 4 * BASE },
  edm: { kind: 'edm', size: R, batch: BASE },
};

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;

interface Row {
  case: string;
  backend: string;
  nodes: number;
  codegenMs: number;
  kernels: number | string;
  pipelines: number | string;
  firstMs: number;
  stepMs: number;
  imagesPerS: number;
}

async function measure(name: string, be: Backend): Promise<Row> {
  const c = CASES[name]!;
  const json = JSON.parse(readFileSync(configFile, 'utf8'));
  json.model.kind = c.kind;
  const config = orThrow(resolveConfig(json, {}));
  const model = buildModel(config);
  const state = initState(model, config);
  await realize(flatten(state as never).leaves as never, 'cpu');
  const b = c.batch;
  const images = new Float32Array(b * c.size * c.size).map((_, i) => Math.sin(i * 0.37));
  const top = new Int32Array(b).map((_, i) => (i * 5) % (R - c.size + 1));
  const left = new Int32Array(b).map((_, i) => (i * 3) % (R - c.size + 1));
  const out = stepFunction(model, config)(state, stepBatch(images, [b, 1, c.size, c.size], top, left));
  const { program, lifted } = buildProgram(`trainStep-${name}`, flatten(out as never).leaves as never[]);
  let t0 = performance.now();
  const exe = be.compile(program);
  const codegenMs = performance.now() - t0;
  const ks = (exe as { kernels?: { pipeline?: unknown }[] }).kernels;
  const kernels = ks === undefined ? '-' : ks.filter((k) => k.pipeline !== undefined).length;
  const pipelines = ks === undefined ? '-' : new Set(ks.map((k) => k.pipeline).filter((p) => p !== undefined)).size;
  const bufs = await Promise.all(lifted.map(async (t) => be.upload(await t.data(), t.shape, t.dtype)));
  const times: number[] = [];
  for (let i = 0; i <= steps; i++) {
    t0 = performance.now();
    const res = be.run(exe, bufs, bufs.map(() => false));
    await be.download(res[0]!);
    times.push(performance.now() - t0);
    res.forEach((r) => be.free(r));
  }
  bufs.forEach((x) => be.free(x));
  const stepMs = median(times.slice(1));
  return { case: name, backend: be.name, nodes: program.nodes.length, codegenMs, kernels, pipelines, firstMs: times[0]!, stepMs, imagesPerS: (1000 * b) / stepMs };
}

const rows: Row[] = [];
const fmt = (r: Row): string =>
  [r.case.padEnd(8), r.backend.padEnd(7), String(r.nodes).padStart(6), r.codegenMs.toFixed(0).padStart(8), String(r.kernels).padStart(8),
    String(r.pipelines).padStart(9), r.firstMs.toFixed(0).padStart(9), r.stepMs.toFixed(0).padStart(8), r.imagesPerS.toFixed(1).padStart(9)].join(' ');
console.log(`# steps per case: 1 first + ${steps} timed (median); ${new Date().toISOString()}`);
console.log('case     backend   nodes codegenMs kernels pipelines  firstMs  stepMs  images/s');
for (const name of caseNames) {
  for (const bn of backends) {
    const r = await measure(name, await getBackend(bn));
    rows.push(r);
    console.log(fmt(r));
  }
  const g = rows.find((r) => r.case === name && r.backend === 'webgpu');
  const cpu = rows.find((r) => r.case === name && r.backend === 'cpu');
  if (g !== undefined && cpu !== undefined) console.log(`${name}: webgpu/cpu step time ratio ${(g.stepMs / cpu.stepMs).toFixed(2)} (above 1: webgpu slower)`);
}
process.exit(0);
