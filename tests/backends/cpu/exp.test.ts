/**
 * The WebAssembly exp (backends/cpu/exp.ts) against V8's Math.exp, bit for bit: float32 values
 * (what kernels feed it) across the whole range it handles, doubles, and the edges of fdlibm's
 * branches.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { EXP_FAST_LIMIT, emitExpF64x2 } from '../../../backends/cpu/exp.ts';
import { ModuleBuilder } from '../../../backends/cpu/wasm.ts';
import { RUNS } from '../parity/helpers.ts';

/** exp over pairs of doubles in a private (non-shared) memory: `run(n)` maps f64[0, n) to f64[n, 2n). */
function wasmExp(): (xs: Float64Array) => Float64Array {
  const mb = new ModuleBuilder();
  mb.func('run', ['i32'], [], (f, n) => {
    const i = f.local('i32');
    const x = f.local('v128');
    f.for(i, 0, n!, () => {
      f.get(i).i32(3).op('i32.shl').mem('v128.load', 0, 3).set(x);
      f.get(i).get(n!).op('i32.add').i32(3).op('i32.shl');
      emitExpF64x2(f, x);
      f.mem('v128.store', 0, 3);
    }, 2);
  }, { exported: true });
  const memory = new WebAssembly.Memory({ initial: 64, maximum: 65536, shared: true });
  const instance = new WebAssembly.Instance(new WebAssembly.Module(mb.encode()), { env: { memory } });
  const run = instance.exports['run'] as (n: number) => void;
  return (xs) => {
    const n = xs.length + (xs.length % 2);
    const heap = new Float64Array(memory.buffer, 0, 2 * n);
    heap.fill(0);
    heap.set(xs);
    run(n);
    return heap.slice(n, n + xs.length);
  };
}

const exp2 = wasmExp();

function assertSame(xs: Float64Array): void {
  const got = exp2(xs);
  xs.forEach((x, i) => {
    if (!Object.is(got[i], Math.exp(x))) assert.fail(`exp(${x}) = ${got[i]}, Math.exp gives ${Math.exp(x)}`);
  });
}

test('exp: float32 inputs over the fast range match Math.exp bit for bit', () => {
  fc.assert(
    fc.property(fc.float32Array({ minLength: 1, maxLength: 256, noNaN: true, min: -EXP_FAST_LIMIT + 1, max: EXP_FAST_LIMIT - 1 }), (xs) => assertSame(Float64Array.from(xs))),
    { numRuns: 10 * RUNS },
  );
});

test('exp: doubles over the fast range match Math.exp bit for bit', () => {
  fc.assert(
    fc.property(fc.array(fc.double({ min: -EXP_FAST_LIMIT + 1e-9, max: EXP_FAST_LIMIT - 1e-9, noNaN: true }), { minLength: 1, maxLength: 256 }), (xs) => assertSame(Float64Array.from(xs))),
    { numRuns: 10 * RUNS },
  );
});

test('exp: the edges of the reduction branches, 1, tiny and zero arguments', () => {
  const edges: number[] = [0, -0, 1, -1, 2 ** -28, -(2 ** -28), 2 ** -29, 1e-300, 0.5 * Math.LN2, 1.5 * Math.LN2, 700, -700, 707.9, -707.9];
  const words = (hi: number, lo: number): number => new Float64Array(new Uint32Array([lo >>> 0, hi >>> 0]).buffer)[0]!;
  for (const hi of [0x3fd62e42, 0x3fd62e43, 0x3ff0a2b1, 0x3ff0a2b2, 0x3e2fffff, 0x3e300000]) {
    for (const lo of [0, 1, 0xfefa39ef, 0xffffffff]) edges.push(words(hi, lo), -words(hi, lo));
  }
  const dense = Array.from({ length: 20000 }, (_, i) => -20 + i * 0.002);
  assertSame(Float64Array.from([...edges, ...dense]));
});
