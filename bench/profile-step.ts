/**
 * Where a training step's time goes on the `cpu` backend: runs the demo step (a case of
 * bench/train-step.ts) a few times with every step of the executable timed, and prints the time per
 * kind of step (JavaScript elementwise/reduce kernels, matmul, convolutions) and the slowest kernels.
 * A profiling aid, not a benchmark: timing every step adds a little overhead to each.
 *
 *   npx tsx bench/profile-step.ts [--case patchR|patchR/2|patchR/4|edm] [--runs 5] [--warmup 1] [--top 25] [--show 0] [--kernels wasm|js] [--state unpacked|packed]
 */
import '../index.ts';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { buildProgram, flatten, random, realize } from '../core/index.ts';
import { CpuBackend, cpuBackend, type CpuExecutable, type KernelLanguage } from '../backends/cpu/index.ts';
import { resolveConfig } from '../train/config.ts';
import { orThrow } from '../train/errors.ts';
import { trainingMethod } from '../train/method.ts';
import { packLayout } from '../train/packed.ts';
import { buildModel, fullSize, initState, stepBatch, stepFunction } from '../train/step.ts';

const arg = (name: string, dflt: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
};
const caseName = arg('case', 'patchR');
const runs = Number(arg('runs', '5'));
/** Untimed runs first (V8 optimizes a JavaScript kernel only after it has run a while). */
const warmup = Number(arg('warmup', '1'));
const top = Number(arg('top', '25'));
/** Print the source of this many of the slowest JavaScript kernels. */
const show = Number(arg('show', '0'));

const json = JSON.parse(readFileSync('train/configs/demo.json', 'utf8'));
if (caseName === 'edm') json.model.kind = 'edm';
const config = orThrow(resolveConfig(json, {}));
const R = fullSize(config).height;
const div = caseName === 'patchR/2' ? 2 : caseName === 'patchR/4' ? 4 : 1;
const size = R / div;
const b = config.train.batch_size * div;
const model = buildModel(config);
const named = initState(model, config);
await realize(flatten(named as never).leaves as never, 'reference');
// The cpu backend's runs carry named trees; --state packed profiles the step on a packed state (train/packed.ts).
const packed = arg('state', 'unpacked') === 'packed';
const layout = packed ? packLayout(named.params) : undefined;
const state = packed ? await trainingMethod(config).carry!.to(named as never) : named;
const images = new Float32Array(b * size * size).map((_, i) => Math.sin(i * 0.37));
const topI = new Int32Array(b).map((_, i) => (i * 5) % (R - size + 1));
const leftI = new Int32Array(b).map((_, i) => (i * 3) % (R - size + 1));
const out = stepFunction(model, config, layout)(state as never, stepBatch(images, [b, 1, size, size], topI, leftI));
const { program, lifted } = buildProgram(`trainStep-${caseName}`, flatten(out as never).leaves as never[]);
const kernels = arg('kernels', 'wasm') as KernelLanguage;
const be = new CpuBackend(cpuBackend().runtime, kernels);
const exe = be.compile(program) as CpuExecutable;
const bufs = await Promise.all(lifted.map(async (t) => be.upload(await t.data(), t.shape, t.dtype)));

// Time every step by wrapping the backend's (private) step runner.
const times = new Map<string, { ms: number; count: number; kind: string; total: number }>();
const proto = Object.getPrototypeOf(be) as { runStep: (c: { step: { kind: string; label: string; total?: number }; wasm: boolean }, ...rest: unknown[]) => void };
const inner = proto.runStep;
let timing = false;
proto.runStep = function (this: unknown, c, ...rest) {
  if (!timing) return inner.call(this, c, ...rest);
  const t0 = performance.now();
  inner.call(this, c, ...rest);
  const ms = performance.now() - t0;
  const key = c.step.label.replace(/^[^/]*\//, '');
  const kind = c.step.kind !== 'js' ? c.step.kind : `${c.wasm ? 'wasm' : 'js'} ${key.startsWith('reduce') ? 'reduce' : 'elementwise'}`;
  const e = times.get(key) ?? { ms: 0, count: 0, kind, total: c.step.total ?? 0 };
  e.ms += ms;
  e.count++;
  times.set(key, e);
};
const wall: number[] = [];
for (let i = 0; i < warmup + runs; i++) {
  timing = i >= warmup;
  const t0 = performance.now();
  const res = be.run(exe, bufs, bufs.map(() => false));
  await be.download(res[0]!);
  if (timing) wall.push(performance.now() - t0);
  res.forEach((r) => be.free(r));
}
const perRun = (ms: number): number => ms / runs;
const byKind = new Map<string, { ms: number; steps: number }>();
for (const e of times.values()) {
  const k = byKind.get(e.kind) ?? { ms: 0, steps: 0 };
  k.ms += perRun(e.ms);
  k.steps += e.count / runs;
  byKind.set(e.kind, k);
}
const sum = [...byKind.values()].reduce((s, k) => s + k.ms, 0);
console.log(`# ${caseName}, batch ${b}, ${size}x${size}; ${exe.steps.length} steps; ${runs} timed runs; load ${os.loadavg()[0]!.toFixed(2)}`);
console.log(`${JSON.stringify(be.describe())}; memory plan ${(exe.memoryPlanBytes / 2 ** 20).toFixed(1)} MiB`);
console.log(`wall per run ${(wall.reduce((s, x) => s + x, 0) / runs).toFixed(1)} ms; steps ${sum.toFixed(1)} ms`);
for (const [kind, k] of [...byKind].sort((x, y) => y[1].ms - x[1].ms)) console.log(`${kind.padEnd(18)} ${k.ms.toFixed(1).padStart(7)} ms  ${String(k.steps).padStart(5)} steps`);
console.log('\nslowest steps (ms per run, elements):');
for (const [label, e] of [...times].sort((x, y) => y[1].ms - x[1].ms).slice(0, top)) {
  console.log(`${perRun(e.ms).toFixed(2).padStart(7)}  ${e.kind.padEnd(16)} ${String(e.total).padStart(8)}  ${label}`);
}
const sources = new Map(exe.steps.map((c) => [c.step.label.replace(/^[^/]*\//, ''), c.step.kind === 'js' ? (c.wasm ? c.step.wasm!.body : c.step.source) : '']));
for (const [label] of [...times].filter(([, e]) => e.kind.startsWith('js') || e.kind.startsWith('wasm')).sort((x, y) => y[1].ms - x[1].ms).slice(0, show)) console.log(`\n// ${label}\n${sources.get(label)}`);
process.exit(0);
