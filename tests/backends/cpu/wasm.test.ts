/**
 * The WebAssembly encoder the CPU backend's kernels are written with: LEB128 against known
 * encodings, and a module built with ModuleBuilder that must validate and compute what the same
 * arithmetic computes in JavaScript (integer, float32, loops, calls, f32x4 on the shared memory).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ModuleBuilder, sleb, uleb, type Label } from '../../../backends/cpu/wasm.ts';

test('uleb encodes known values and rejects what is not a u32', () => {
  const known: [number, number[]][] = [
    [0, [0x00]],
    [1, [0x01]],
    [127, [0x7f]],
    [128, [0x80, 0x01]],
    [300, [0xac, 0x02]],
    [624485, [0xe5, 0x8e, 0x26]],
    [2 ** 31 - 1, [0xff, 0xff, 0xff, 0xff, 0x07]],
    [2 ** 32 - 1, [0xff, 0xff, 0xff, 0xff, 0x0f]],
  ];
  for (const [n, bytes] of known) assert.deepEqual(uleb(n), bytes, `uleb(${n})`);
  for (const bad of [-1, 2 ** 32, 1.5, NaN]) assert.throws(() => uleb(bad), RangeError, `uleb(${bad})`);
});

test('sleb encodes known values, values from 2^31 as the i32 of the same bits', () => {
  const known: [number, number[]][] = [
    [0, [0x00]],
    [1, [0x01]],
    [63, [0x3f]],
    [64, [0xc0, 0x00]],
    [127, [0xff, 0x00]],
    [128, [0x80, 0x01]],
    [-1, [0x7f]],
    [-64, [0x40]],
    [-65, [0xbf, 0x7f]],
    [-123456, [0xc0, 0xbb, 0x78]],
    [2 ** 31 - 1, [0xff, 0xff, 0xff, 0xff, 0x07]],
    [-(2 ** 31), [0x80, 0x80, 0x80, 0x80, 0x78]],
    [2 ** 32 - 1, [0x7f]],
    [2 ** 31, [0x80, 0x80, 0x80, 0x80, 0x78]],
  ];
  for (const [n, bytes] of known) assert.deepEqual(sleb(n), bytes, `sleb(${n})`);
  for (const bad of [-(2 ** 31) - 1, 2 ** 32, 0.5]) assert.throws(() => sleb(bad), RangeError, `sleb(${bad})`);
});

type Fn = (...args: number[]) => number;

/** A module exercising each part of the encoder the kernels use, instantiated on a fresh shared memory. */
function instantiate(): { exports: Record<string, Fn>; f32: Float32Array; bytes: Uint8Array } {
  const mod = new ModuleBuilder();
  // A callee before its callers, not exported: calls go by function index.
  const square = mod.func('square', ['i32'], ['i32'], (f, x) => f.get(x).get(x).op('i32.mul'), { exported: false });
  mod.func('arith', ['i32', 'i32'], ['i32'], (f, a, b) => {
    // (a - b) * 3 + (a >> 2 signed) + (a mod 7 unsigned) + square(b)
    f.get(a).get(b).op('i32.sub').i32(3).op('i32.mul');
    f.get(a).i32(2).op('i32.shr_s').op('i32.add');
    f.get(a).i32(7).op('i32.rem_u').op('i32.add');
    f.get(b).call(square).op('i32.add');
  }, { exported: true });
  mod.func('constant', ['i32'], ['i32'], (f, which) => {
    // Constants with multi-byte signed immediates: the extremes of i32.
    f.i32(2 ** 31 - 1).i32(-(2 ** 31)).get(which).op('select');
  }, { exported: true });
  mod.func('fma', ['f32', 'f32', 'f32'], ['f32'], (f, a, b, c) => f.get(a).get(b).op('f32.mul').get(c).op('f32.add'), { exported: true });
  mod.func('mixed', ['i32', 'f32'], ['f32'], (f, i, x) => {
    // sqrt(|x|) + f32(i) * 0.1, clamped to at most 1000
    f.get(x).op('f32.abs').op('f32.sqrt').get(i).op('f32.convert_i32_s').f32(0.1).op('f32.mul').op('f32.add');
    f.f32(1000).op('f32.min');
  }, { exported: true });
  mod.func('sum_squares', ['i32'], ['i32'], (f, n) => {
    const { i, acc } = f.locals('i32', 'i', 'acc');
    f.for(i, 0, n, () => f.get(acc).get(i).call(square).op('i32.add').set(acc));
    f.get(acc);
  }, { exported: true });
  mod.func('factorial', ['i32'], ['i32'], (f, n) => {
    // A hand-written loop: a block to leave, a loop to repeat, branches by label.
    const acc = f.local('i32');
    f.i32(1).set(acc);
    f.block((done) => {
      f.loop((repeat) => {
        f.get(n).i32(2).op('i32.lt_s').brIf(done);
        f.get(acc).get(n).op('i32.mul').set(acc);
        f.get(n).i32(1).op('i32.sub').set(n);
        f.br(repeat);
      });
    });
    f.get(acc);
  }, { exported: true });
  mod.func('axpy', ['i32', 'i32', 'i32', 'i32', 'f32'], [], (f, x, y, out, n, alpha) => {
    // out[i] = alpha x[i] + y[i] over n floats (a multiple of 4), one f32x4 at a time.
    const { i, a } = f.locals('i32', 'i', 'a');
    const va = f.local('v128');
    f.get(alpha).op('f32x4.splat').set(va);
    f.for(i, 0, n, () => {
      f.get(i).i32(4).op('i32.mul').set(a);
      f.get(out).get(a).op('i32.add');
      f.get(x).get(a).op('i32.add').mem('v128.load').get(va).op('f32x4.mul');
      f.get(y).get(a).op('i32.add').mem('v128.load').op('f32x4.add');
      f.mem('v128.store');
    }, 4);
  }, { exported: true });
  mod.func('lanes', ['i32'], ['f32'], (f, p) => {
    // Stores [1, 2, 3, 4] * p[0..4] reversed at p + 16 (shuffle, offset immediate), returns lane 2 of the product.
    const v = f.local('v128');
    f.f32x4([1, 2, 3, 4]).get(p).mem('v128.load').op('f32x4.mul').set(v);
    const reverse = [12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3];
    f.get(p).get(v).get(v).shuffle(reverse).mem('v128.store', 16);
    f.get(v).lane('f32x4.extract_lane', 2);
  }, { exported: true });
  const bytes = mod.encode();
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 65536, shared: true });
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } });
  return { exports: instance.exports as unknown as Record<string, Fn>, f32: new Float32Array(memory.buffer), bytes };
}

test('a built module validates and exports only what was marked exported', () => {
  const { exports, bytes } = instantiate();
  assert.equal(WebAssembly.validate(bytes), true);
  const names = WebAssembly.Module.exports(new WebAssembly.Module(bytes)).map((e) => e.name);
  assert.deepEqual(names, ['arith', 'constant', 'fma', 'mixed', 'sum_squares', 'factorial', 'axpy', 'lanes']);
  assert.equal(exports.square, undefined);
});

test('i32 and f32 ops compute what JavaScript computes', () => {
  const { exports: e } = instantiate();
  const arith = (a: number, b: number) => (Math.imul(a - b, 3) + (a >> 2) + ((a >>> 0) % 7) + Math.imul(b, b)) | 0;
  for (const [a, b] of [[0, 0], [10, 3], [-17, 5], [2 ** 31 - 1, -2], [-(2 ** 31), 46341]] as const) {
    assert.equal(e.arith!(a, b), arith(a, b), `arith(${a}, ${b})`);
  }
  assert.equal(e.constant!(1), 2 ** 31 - 1);
  assert.equal(e.constant!(0), -(2 ** 31));
  const fr = Math.fround;
  for (const [a, b, c] of [[1.5, 2.25, -0.125], [0.1, 0.2, 0.3], [1e20, 1e20, 1], [-3, 7, 1e-8]] as const) {
    assert.equal(e.fma!(a, b, c), fr(fr(fr(a) * fr(b)) + fr(c)), `fma(${a}, ${b}, ${c})`);
  }
  for (const [i, x] of [[0, 2], [-7, -0.5], [123, 16], [100000, 1]] as const) {
    assert.equal(e.mixed!(i, x), Math.min(fr(fr(Math.sqrt(fr(Math.abs(x)))) + fr(fr(i) * fr(0.1))), 1000), `mixed(${i}, ${x})`);
  }
});

test('loops and calls run their bodies the expected number of times', () => {
  const { exports: e } = instantiate();
  for (const n of [0, 1, 2, 10, 100]) assert.equal(e.sum_squares!(n), (n - 1) * n * (2 * n - 1) / 6, `sum_squares(${n})`);
  assert.equal(e.sum_squares!(-5), 0);
  const factorial = (n: number): number => (n < 2 ? 1 : n * factorial(n - 1));
  for (const n of [0, 1, 5, 12]) assert.equal(e.factorial!(n), factorial(n), `factorial(${n})`);
});

test('f32x4 loads, arithmetic, shuffles and stores on the shared memory match JavaScript', () => {
  const { exports: e, f32 } = instantiate();
  const n = 12;
  const [x, y, out] = [0, 64, 128];
  const xs = Array.from({ length: n }, (_, i) => Math.fround(i * 0.37 - 2));
  const ys = Array.from({ length: n }, (_, i) => Math.fround(1 / (i + 1)));
  f32.set(xs, x / 4);
  f32.set(ys, y / 4);
  f32.fill(-1, out / 4, out / 4 + n + 4);
  const alpha = Math.fround(1.75);
  e.axpy!(x, y, out, n, alpha);
  const expected = xs.map((v, i) => Math.fround(Math.fround(alpha * v) + ys[i]!));
  assert.deepEqual([...f32.subarray(out / 4, out / 4 + n)], expected);
  // Nothing past the last vector is written.
  assert.deepEqual([...f32.subarray(out / 4 + n, out / 4 + n + 4)], [-1, -1, -1, -1]);

  const p = 256;
  f32.set([0.5, -3, 1.25, 8], p / 4);
  assert.equal(e.lanes!(p), 3.75);
  assert.deepEqual([...f32.subarray(p / 4 + 4, p / 4 + 8)], [32, 3.75, -6, 0.5]);
});

test('the builder rejects a branch to a closed label and a malformed shuffle', () => {
  const mod = new ModuleBuilder();
  assert.throws(() =>
    mod.func('bad_branch', [], [], (f) => {
      let closed: Label | undefined;
      f.block((l) => (closed = l));
      f.br(closed!);
    }, { exported: false }),
  );
  assert.throws(() => mod.func('bad_shuffle', [], [], (f) => f.shuffle([0, 1, 2]), { exported: false }), RangeError);
  assert.throws(() => mod.func('bad_lane', [], [], (f) => f.shuffle(Array.from({ length: 16 }, () => 32)), { exported: false }), RangeError);
});
