/**
 * Sampling throughput of multi-scale non-uniform diffusion (MSDiff) against uniform diffusion with
 * one full-resolution network, measured in the same run: the same SongUNet architecture at every
 * scale (so each network has the single model's parameter count), the same total number of sampler
 * steps, the same batch. MSDiff runs 1/n of its steps at each resolution R / 2^k, so its network
 * FLOPs per sample are (1 + 1/4 + 1/16) / 3 = 0.44 of the single model's at two Haar levels
 * (Batzolis et al. 2022); the FLOPs printed here are counted from the traced programs.
 *
 *   npx tsx bench/msdiff-sampling.ts [--resolution 32] [--levels 2] [--batch 64] [--steps 30] [--channels 8] [--backend cpu]
 */
import os from 'node:os';
import { Bench } from 'tinybench';
import '../index.ts';
import { buildProgram, random, tensor, type BackendName } from '../core/index.ts';
import { componentShapes, msdiffModel, msdiffSample, type MsdiffParams } from '../models/msdiff.ts';
import { parameterCount } from '../models/nn.ts';
import { programFlops } from './flops.ts';

const arg = (name: string, dflt: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
};
const R = Number(arg('resolution', '32'));
const levels = Number(arg('levels', '2'));
const batch = Number(arg('batch', '64'));
const numSteps = Number(arg('steps', '30'));
const channels = Number(arg('channels', '8'));
const backend = arg('backend', 'cpu') as BackendName;
const network = { modelChannels: channels, channelMult: [1, 2, 2], numBlocks: 1, attnResolutions: [], dropout: 0 };

interface Contender {
  readonly name: string;
  readonly levels: number;
  readonly params: number;
  /** Network FLOPs of one sample's whole sampling run. */
  readonly flopsPerSample: number;
  readonly run: () => Promise<void>;
}

function contender(name: string, l: number): Contender {
  const model = msdiffModel({ imgResolution: R, imgChannels: 1, schedule: { levels: l }, networks: network });
  const params: MsdiffParams = model.init(random.key(0));
  const score = model.scoreFunction(params);
  const n = l + 1;
  const stepsPerScale = Math.round(numSteps / n);
  // One network evaluation per step; the final denoising adds one at full resolution.
  const shapes = componentShapes([1, 1, R, R], l);
  const flopsAt = (k: number) => {
    const live = shapes.slice(k).map((s) => random.normal(random.key(k), s));
    return programFlops(buildProgram(`scale${k}`, model.predictNoise(params, k, live, tensor([0.5]))).program);
  };
  const perScale = Array.from({ length: n }, (_, k) => flopsAt(k));
  let seed = 0;
  return {
    name, levels: l,
    params: params.scales.reduce((s, p) => s + parameterCount(p), 0),
    flopsPerSample: perScale.reduce((s, f) => s + stepsPerScale * f, 0) + perScale[0]!,
    run: async () => {
      const x = await msdiffSample(score, { schedule: { levels: l }, shape: [batch, 1, R, R], key: random.key(seed++), numSteps, backend });
      await x.data();
    },
  };
}

const contenders = [contender(`uniform (one ${R}px network)`, 0), contender(`MSDiff (${levels + 1} networks, ${R}..${R / 2 ** levels}px)`, levels)];
const load = () => os.loadavg().map((v) => v.toFixed(2)).join(', ');
console.log(`# ${os.cpus()[0]?.model ?? 'cpu'}, ${os.availableParallelism()} threads; backend ${backend}; batch ${batch}, ${numSteps} steps, ${R}x${R}; load ${load()}`);
const bench = new Bench({ time: 1, iterations: 3, warmupIterations: 1 });
for (const c of contenders) bench.add(c.name, c.run);
await bench.run();
const rows = contenders.map((c) => {
  const ms = (bench.getTask(c.name)?.result as { latency?: { p50?: number } } | undefined)?.latency?.p50;
  if (ms === undefined) throw new Error(`${c.name}: no result`);
  return { ...c, ms, imagesPerS: (batch * 1000) / ms, gflops: (c.flopsPerSample * batch) / (ms * 1e6) };
});
console.log('model | networks | parameters | network GFLOP per sample | median ms per batch | images/s | GFLOP/s');
for (const r of rows) {
  console.log(`${r.name} | ${r.levels + 1} | ${r.params} | ${(r.flopsPerSample / 1e9).toFixed(3)} | ${r.ms.toFixed(0)} | ${r.imagesPerS.toFixed(1)} | ${r.gflops.toFixed(1)}`);
}
const [u, m] = rows as [typeof rows[0], typeof rows[0]];
console.log(`MSDiff / uniform: FLOPs per sample ${(m.flopsPerSample / u.flopsPerSample).toFixed(3)}, sampling speed ${(m.imagesPerS / u.imagesPerS).toFixed(2)}x; load ${load()}`);
process.exit(0);
