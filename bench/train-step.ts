/**
 * One training step of the demo diffusion UNet (train/configs/demo.json, or --config) on each Tessera
 * backend and on PyTorch (bench/torch_train_step.py, the same network, loss, Adam and EMA), back to
 * back in the same run: the patch model at the three patch sizes a Patch Diffusion run uses (R, R/2,
 * R/4 with batch multipliers 1, 2, 4 at the config's batch size) and the full-image EDM baseline (no
 * coordinates) at R, with the same network. Then MaskDM's U-ViT step (train/configs/maskdm-pretrain.json,
 * or --uvit-config: 32x32 images in 4-pixel patches, 64 tokens) with block masks at ratios 0, 0.5
 * and 0.9: the masked tokens are dropped, so images/s should rise with the visible fraction (MaskDM,
 * Sec. 3.2); each U-ViT case reports its visible tokens and its speed over ratio 0. PyTorch has no
 * twin of the U-ViT step, so those cases have no torch column.
 *
 * The steps run on the state a training run carries on that backend (`--state auto`): packed on
 * WebGPU (`train/packed.ts`: params, EMA and Adam's moments one flat tensor each), named trees
 * elsewhere; `--state packed|unpacked` chooses for every backend.
 *
 * Prints, per case and backend: the parameter count, program nodes, kernels and distinct pipelines
 * (where the executable lists them), the first step split into trace, compile and first run (which on
 * lavapipe includes compiling every new pipeline), the median steady-state step with images/s, the
 * memory plan and peak device bytes (where the backend reports them; the peak is the process's, so
 * a case's figure also covers the cases before it: compare plan and peak on the first case, or run
 * one case with --cases) and the 1-minute load average;
 * then images/s per backend with the ratio to PyTorch. A backend that cannot start is skipped with
 * its reason; without python3-torch the PyTorch column is skipped with the command that installs it.
 *
 *   npm run bench:train -- [--config FILE] [--uvit-config FILE] [--cases patchR,patchR/2,patchR/4,edm,uvit0,uvit0.5,uvit0.9]
 *                          [--backends cpu,reference,webgpu] [--steps 3] [--warmup 5] [--no-torch] [--shader-cache] [--state auto|packed|unpacked]
 *   npx tsx bench/train-step.ts --cases uvit0,uvit0.5,uvit0.9 --backends cpu --no-torch     (the U-ViT cases alone)
 */
import '../index.ts';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { getBackend, buildProgram, realize, flatten, random, tensor } from '../core/index.ts';
import type { Backend, BackendName, Executable } from '../core/backend.ts';
import { parameterCount } from '../models/nn.ts';
import { resolveConfig } from '../train/config.ts';
import { orThrow } from '../train/errors.ts';
import { buildUvit, initMaskdmState, maskdmStepFunction, maskdmTrainOptions } from '../train/maskdm.ts';
import { visibleCount } from '../models/masks.ts';
import { trainingMethod } from '../train/method.ts';
import { packLayout, usesPackedState, type PackLayout } from '../train/packed.ts';
import { buildModel, fullSize, initState, stepFunction, stepBatch } from '../train/step.ts';

const arg = (name: string, dflt: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
};
const caseNames = arg('cases', 'patchR,patchR/2,patchR/4,edm,uvit0,uvit0.5,uvit0.9').split(',');
const configFile = arg('config', 'train/configs/demo.json');
const uvitConfigFile = arg('uvit-config', 'train/configs/maskdm-pretrain.json');
const backendNames = arg('backends', 'cpu,reference,webgpu').split(',');
const steps = Number(arg('steps', '3'));
/** Untimed steps between the first and the timed ones, so every side is measured warm (V8 and Wasm tier up while a program runs). */
const warmup = Number(arg('warmup', '5'));
const stateForm = arg('state', 'auto');
if (!['auto', 'packed', 'unpacked'].includes(stateForm)) throw new Error(`--state: expected auto, packed or unpacked, got '${stateForm}'`);
const withTorch = !process.argv.includes('--no-torch');
process.env['XDG_RUNTIME_DIR'] ??= '/tmp/xdg';
// Mesa keeps compiled shaders on disk: without this, a second benchmark run would not measure the
// first-run compilation that a fresh machine (or a changed kernel) pays. --shader-cache keeps it.
if (!process.argv.includes('--shader-cache')) process.env['MESA_SHADER_CACHE_DISABLE'] ??= 'true';

const baseConfig = orThrow(resolveConfig(JSON.parse(readFileSync(configFile, 'utf8')), {}));
const R = fullSize(baseConfig).height;
const BASE = baseConfig.train.batch_size;
const CASES: Record<string, { kind: 'patch' | 'edm'; size: number; batch: number } | { kind: 'uvit'; ratio: number }> = {
  patchR: { kind: 'patch', size: R, batch: BASE },
  'patchR/2': { kind: 'patch', size: R / 2, batch: 2 * BASE },
  'patchR/4': { kind: 'patch', size: R / 4, batch: 4 * BASE },
  edm: { kind: 'edm', size: R, batch: BASE },
  uvit0: { kind: 'uvit', ratio: 0 },
  'uvit0.5': { kind: 'uvit', ratio: 0.5 },
  'uvit0.9': { kind: 'uvit', ratio: 0.9 },
};
for (const name of caseNames) if (CASES[name] === undefined) throw new Error(`unknown case '${name}'; known: ${Object.keys(CASES).join(', ')}`);

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
const load1 = (): number => os.loadavg()[0]!;

interface Row {
  readonly case: string;
  readonly backend: string;
  readonly params: number;
  readonly nodes?: number;
  readonly kernels?: number;
  readonly pipelines?: number;
  readonly traceMs?: number;
  readonly compileMs?: number;
  readonly firstRunMs?: number;
  /** Trace + compile + first run for Tessera; PyTorch's first (eager) step. */
  readonly firstStepMs: number;
  readonly stepMs: number;
  readonly imagesPerS: number;
  readonly planBytes?: number;
  /** The backend's peak bytes so far in this process (cumulative over the cases run before). */
  readonly peakBytes?: number;
  readonly load: number;
}

/** What an executable may expose beyond the interface: its kernels (webgpu) or steps (cpu), its memory plan. */
type Inspectable = Executable & {
  kernels?: readonly { pipeline?: unknown }[];
  steps?: readonly unknown[];
  memoryPlanBytes?: number;
};

/** Kernels one run launches: WebGPU's kernels that have a pipeline (the others have nothing to do), the cpu backend's steps. */
function kernelCount(exe: Inspectable): number | undefined {
  return exe.kernels?.filter((k) => k.pipeline !== undefined).length ?? exe.steps?.length;
}

/** The largest numeric `describe()` entry whose key names a peak (bytes), if the backend reports one. */
function peakBytes(be: Backend): number | undefined {
  const peaks = Object.entries(be.describe()).filter(([k, v]) => /peak/i.test(k) && typeof v === 'number').map(([, v]) => v as number);
  return peaks.length === 0 ? undefined : Math.max(...peaks);
}

function caseConfig(name: string) {
  const c = CASES[name]!;
  if (c.kind === 'uvit') {
    // The U-ViT config's block masks at this case's ratio (0: no mask).
    const json = JSON.parse(readFileSync(uvitConfigFile, 'utf8'));
    json.train.mask = { ...json.train.mask, kind: 'block', ratio: c.ratio };
    return orThrow(resolveConfig(json, {}));
  }
  const json = JSON.parse(readFileSync(configFile, 'utf8'));
  json.model.kind = c.kind;
  return orThrow(resolveConfig(json, {}));
}

/** Tessera parameters of a case's model (shapes only: nothing is evaluated). */
function tesseraParams(name: string): number {
  const config = caseConfig(name);
  return parameterCount(CASES[name]!.kind === 'uvit' ? buildUvit(config).init(random.key(0)) : buildModel(config).init(random.key(0)));
}

const sines = (n: number) => new Float32Array(n).map((_, i) => Math.sin(i * 0.37));

/** A case's initial state (from the reference interpreter, so every backend starts from the same numbers), its step on a fixed batch (to trace), and the images per step. */
async function stepCase(name: string, packed: boolean): Promise<{ state: unknown; trace: () => unknown; batch: number }> {
  const c = CASES[name]!;
  const config = caseConfig(name);
  /** The fresh state computed on the reference interpreter, then in the form the step carries: packed (with its layout) or named. */
  const carried = async <S extends { params: unknown }>(named: S): Promise<{ layout: PackLayout | undefined; state: unknown }> => {
    await realize(flatten(named as never).leaves as never, 'reference');
    if (!packed) return { layout: undefined, state: named };
    return { layout: packLayout(named.params as never), state: await trainingMethod(config).carry!.to(named as never) };
  };
  if (c.kind === 'uvit') {
    const model = buildUvit(config);
    const options = maskdmTrainOptions(config, model);
    const { layout, state } = await carried(initMaskdmState(model, random.key(config.train.seed), options));
    const b = config.train.batch_size;
    const side = fullSize(config).height;
    return { state, trace: () => maskdmStepFunction(model, options, layout)(state as never, { images: tensor(sines(b * side * side), [b, 1, side, side]) }), batch: b };
  }
  const model = buildModel(config);
  const { layout, state } = await carried(initState(model, config));
  const b = c.batch;
  const top = new Int32Array(b).map((_, i) => (i * 5) % (R - c.size + 1));
  const left = new Int32Array(b).map((_, i) => (i * 3) % (R - c.size + 1));
  return { state, trace: () => stepFunction(model, config, layout)(state as never, stepBatch(sines(b * c.size * c.size), [b, 1, c.size, c.size], top, left)), batch: b };
}

/** Visible tokens of a U-ViT case, e.g. '8/64'. */
function visibleTokens(name: string): string {
  const config = caseConfig(name);
  const model = buildUvit(config);
  const m = config.train.mask!;
  return m.ratio === 0 ? `${model.numPatches}/${model.numPatches}` : `${visibleCount({ kind: 'block', ratio: m.ratio!, blockSize: m.block_size! }, model.side)}/${model.numPatches}`;
}

async function measure(name: string, be: Backend): Promise<Row> {
  const { state, trace, batch: b } = await stepCase(name, stateForm === 'auto' ? usesPackedState(be.name as BackendName) : stateForm === 'packed');
  let t0 = performance.now();
  const out = trace();
  const { program, lifted } = buildProgram(`trainStep-${name}`, flatten(out as never).leaves as never[]);
  const traceMs = performance.now() - t0;
  t0 = performance.now();
  const exe = be.compile(program) as Inspectable;
  // WebGPU builds its pipelines asynchronously: compile time runs until they are all built (a run
  // before then is refused). On lavapipe the driver still compiles each shader at its first dispatch,
  // which lands in the first run.
  await exe.ready;
  const compileMs = performance.now() - t0;
  const pipelines = exe.kernels?.map((k) => k.pipeline).filter((p) => p !== undefined);
  const bufs = await Promise.all(lifted.map(async (t) => be.upload(await t.data(), t.shape, t.dtype)));
  const times: number[] = [];
  for (let i = 0; i <= warmup + steps; i++) {
    t0 = performance.now();
    const res = be.run(exe, bufs, bufs.map(() => false));
    await be.download(res[0]!);
    if (i === 0 || i > warmup) times.push(performance.now() - t0);
    res.forEach((r) => be.free(r));
  }
  bufs.forEach((x) => be.free(x));
  const stepMs = median(times.slice(1));
  return {
    case: name, backend: be.name, params: parameterCount((state as { params: never }).params), nodes: program.nodes.length,
    kernels: kernelCount(exe), pipelines: pipelines === undefined ? undefined : new Set(pipelines).size,
    traceMs, compileMs, firstRunMs: times[0]!, firstStepMs: traceMs + compileMs + times[0]!, stepMs, imagesPerS: (1000 * b) / stepMs,
    planBytes: exe.memoryPlanBytes, peakBytes: peakBytes(be), load: load1(),
  };
}

/** The first interpreter that imports torch: $TESSERA_PYTHON, python3, then Debian's (python3-torch installs there). */
function torchPython(): string | undefined {
  const candidates = [process.env['TESSERA_PYTHON'], 'python3', '/usr/bin/python3'].filter((p): p is string => p !== undefined && p !== '');
  return candidates.find((p) => spawnSync(p, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0);
}

const TWIN = fileURLToPath(new URL('./torch_train_step.py', import.meta.url));
let torchInfo = '';

function measureTorch(python: string, name: string): Row | string {
  const r = spawnSync(python, [TWIN, '--case', name, '--config', configFile, '--steps', String(steps), '--warmup', String(warmup)], { encoding: 'utf8' });
  const line = r.stdout?.trim().split('\n').pop();
  if (r.status !== 0 || line === undefined || line === '') return `torch failed (${r.status ?? r.signal}): ${(r.stderr ?? r.error?.message ?? '').trim().split('\n').slice(-3).join(' | ')}`;
  const j = JSON.parse(line) as { imagesPerS: number; stepMs: number; firstMs: number; params: number; threads: number; torch: string };
  torchInfo = `torch ${j.torch} (${python}), ${j.threads} threads`;
  return { case: name, backend: 'torch', params: j.params, firstStepMs: j.firstMs, stepMs: j.stepMs, imagesPerS: j.imagesPerS, load: load1() };
}

const COLUMNS: [string, number, (r: Row) => string][] = [
  ['case', 8, (r) => r.case],
  ['backend', 9, (r) => r.backend],
  ['params', 7, (r) => String(r.params)],
  ['nodes', 6, (r) => String(r.nodes ?? '-')],
  ['kernels', 7, (r) => String(r.kernels ?? '-')],
  ['pipelines', 9, (r) => String(r.pipelines ?? '-')],
  ['traceMs', 7, (r) => r.traceMs?.toFixed(0) ?? '-'],
  ['compileMs', 9, (r) => r.compileMs?.toFixed(0) ?? '-'],
  ['firstRunMs', 10, (r) => r.firstRunMs?.toFixed(0) ?? '-'],
  ['firstStepMs', 11, (r) => r.firstStepMs.toFixed(0)],
  ['stepMs', 7, (r) => r.stepMs.toFixed(1)],
  ['images/s', 9, (r) => r.imagesPerS.toFixed(1)],
  ['planMiB', 7, (r) => (r.planBytes === undefined ? '-' : (r.planBytes / 2 ** 20).toFixed(1))],
  ['peakMiB', 7, (r) => (r.peakBytes === undefined ? '-' : (r.peakBytes / 2 ** 20).toFixed(1))],
  ['load1', 5, (r) => r.load.toFixed(2)],
];
const fmt = (r: Row): string => COLUMNS.map(([, w, f], i) => (i < 2 ? f(r).padEnd(w) : f(r).padStart(w))).join(' ');

const cpus = os.cpus();
console.log(`# machine: ${cpus[0]?.model.trim() ?? 'unknown CPU'}, ${cpus.length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; node ${process.version}`);
console.log(`# ${configFile}${caseNames.some((n) => CASES[n]!.kind === 'uvit') ? ` and ${uvitConfigFile}` : ''}; steps per case: 1 first + ${warmup} untimed + ${steps} timed (median); ${new Date().toISOString()}; load average ${os.loadavg().map((l) => l.toFixed(2)).join(', ')}`);

const backends: Backend[] = [];
for (const name of backendNames) {
  try {
    backends.push(await getBackend(name));
  } catch (e) {
    console.log(`# backend ${name} skipped: ${(e as Error).message.split('\n')[0]}`);
  }
}
const python = withTorch ? torchPython() : undefined;
if (withTorch && python === undefined) console.log('# torch skipped: python3 cannot import torch; install it with `npm run bench:setup` (Debian: apt-get install python3-torch)');

console.log(COLUMNS.map(([h, w], i) => (i < 2 ? h.padEnd(w) : h.padStart(w))).join(' '));
/** The U-ViT cases' rows, for their speed over the unmasked case. */
const uvitRows = new Map<string, Row[]>();
for (const name of caseNames) {
  const rows: Row[] = [];
  for (const be of backends) {
    try {
      const r = await measure(name, be);
      rows.push(r);
      console.log(fmt(r));
    } catch (e) {
      console.log(`# ${name} on ${be.name} failed: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  const torchRow = python === undefined || CASES[name]!.kind === 'uvit' ? undefined : measureTorch(python, name);
  if (typeof torchRow === 'string') console.log(`# ${name}: ${torchRow}`);
  else if (torchRow !== undefined) {
    rows.push(torchRow);
    console.log(fmt(torchRow));
  }
  const peer = typeof torchRow === 'object' ? torchRow : undefined;
  const figures = rows.map((r) => `${r.backend} ${r.imagesPerS.toFixed(1)}${peer === undefined || r === peer ? '' : ` (${(r.imagesPerS / peer.imagesPerS).toFixed(2)}x torch)`}`);
  const tessera = tesseraParams(name);
  const params = peer === undefined ? `params tessera ${tessera}` : `params tessera ${tessera} ${tessera === peer.params ? '=' : '!= (MISMATCH)'} torch ${peer.params}`;
  if (CASES[name]!.kind === 'uvit') {
    uvitRows.set(name, rows);
    const unmasked = uvitRows.get('uvit0');
    const speedup = rows.map((r) => {
      const base = unmasked?.find((u) => u.backend === r.backend);
      return base === undefined ? '' : `${r.backend} ${(r.imagesPerS / base.imagesPerS).toFixed(2)}x`;
    }).filter((s) => s !== '');
    console.log(`# ${name}: ${visibleTokens(name)} tokens visible; images/s ${figures.join(', ')}${speedup.length === 0 ? '' : `; over uvit0: ${speedup.join(', ')}`}; ${params}; load ${os.loadavg().map((l) => l.toFixed(2)).join(', ')}`);
    continue;
  }
  console.log(`# ${name}: images/s ${figures.join(', ')}; ${params}; load ${os.loadavg().map((l) => l.toFixed(2)).join(', ')}`);
}
if (torchInfo !== '') console.log(`# ${torchInfo}`);
process.exit(0);
