/**
 * The ceiling of the cpu backend's arithmetic on this machine: one thread's rate of WebAssembly
 * f32x4 multiply-add (a multiply, then an add: SIMD128 in Node 20 has no fused multiply-add) with
 * every operand in registers, so no memory access limits it. A GEMM micro-kernel can approach it,
 * never pass it; compare `npm run bench`'s GFLOP/s (two threads) with twice this figure.
 *
 *   npx tsx bench/wasm-peak.ts
 */
import os from 'node:os';
import { ModuleBuilder } from '../backends/cpu/wasm.ts';

/** Independent accumulators: enough to hide the add's latency, few enough to stay in the 16 vector registers. */
const ACCUMULATORS = 12;
const ITERATIONS = 2e7;

const mb = new ModuleBuilder();
mb.func('run', ['i32'], ['f32'], (f, n) => {
  const i = f.local('i32');
  const acc = Array.from({ length: ACCUMULATORS }, () => f.local('v128'));
  const x = f.local('v128');
  const y = f.local('v128');
  f.f32x4([1.0001, 1.0001, 1.0001, 1.0001]).set(x).f32x4([1e-7, 1e-7, 1e-7, 1e-7]).set(y);
  f.for(i, 0, n!, () => {
    for (const a of acc) f.get(a).get(x).get(y).op('f32x4.mul').op('f32x4.add').set(a);
    // x changes every iteration, so x * y cannot be hoisted out of the loop.
    f.get(x).get(y).op('f32x4.add').set(x);
  });
  f.get(acc[0]!);
  for (const a of acc.slice(1)) f.get(a).op('f32x4.add');
  f.lane('f32x4.extract_lane', 0);
}, { exported: true });
// The encoder's modules import a shared memory (the backend's); this one never touches it.
const memory = new WebAssembly.Memory({ initial: 1, maximum: 65536, shared: true });
const run = new WebAssembly.Instance(new WebAssembly.Module(mb.encode()), { env: { memory } }).exports['run'] as (n: number) => number;

run(ITERATIONS / 10);
const rates: number[] = [];
for (let r = 0; r < 5; r++) {
  const t0 = performance.now();
  run(ITERATIONS);
  const seconds = (performance.now() - t0) / 1000;
  // Per iteration: ACCUMULATORS multiply-adds of 4 lanes (8 FLOPs each) and the one add to x (4).
  rates.push((ITERATIONS * (ACCUMULATORS * 8 + 4)) / seconds / 1e9);
}
rates.sort((a, b) => a - b);
console.log(`${os.cpus()[0]?.model ?? 'cpu'}: one thread, f32x4 multiply then add, operands in registers: ${rates[2]!.toFixed(1)} GFLOP/s (median of 5; best ${rates[4]!.toFixed(1)}); load average ${os.loadavg().map((l) => l.toFixed(2)).join(', ')}`);
