/**
 * vmap: for every primitive and for random compositions, `vmap(f)` equals `f` applied to each example
 * and stacked, over random batch axes (in and out), shared and mapped operands; per-example gradients
 * equal a loop of `grad`; `grad` of `vmap`, nested `vmap`, pytrees, `jit` (reference and cpu); and
 * errors that name the argument and its path.
 */
import { registerCpuBackend } from '../../backends/cpu/index.ts';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { setDefaultBackend } from '../../core/backend.ts';
import { test } from 'node:test';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { arbBroadcastPair, arbBroadcastShapes, arbConvCase, arbShape, arbTensor, type TensorConstraints } from '../../autodiff/arbitraries.ts';
import { insertAxis } from '../../autodiff/batching.ts';
import { customVjp, remat } from '../../autodiff/custom.ts';
import { grad } from '../../autodiff/grad.ts';
import { hessian } from '../../autodiff/jac.ts';
import { jvp } from '../../autodiff/jvp.ts';
import { vmap, type AxisSpec } from '../../autodiff/vmap.ts';
import { logsumexp, mean, relu, softmax, square } from '../../core/composite.ts';
import { ShapeError, TreeError } from '../../core/errors.ts';
import { jit } from '../../core/jit.ts';
import {
  add, binary, broadcastTo, cast, concat, conv2d, conv2dGradInput, conv2dGradWeight, gather, greater, iota, matmul,
  max, maximum, mul, pad, permute, randomBits, reshape, scalar, sin, slice, stack, stopGradient, sub, sum, tanh, tensor, transpose, unary, where,
} from '../../core/ops.ts';
import * as random from '../../core/random.ts';
import { sizeOf, type Shape } from '../../core/shape.ts';
import type { BinaryFn, Tensor, UnaryFn } from '../../core/tensor.ts';
import { holds } from './helpers.ts';

registerReferenceBackend();
registerCpuBackend();
setDefaultBackend('reference');

type Axis = number | null;
type Arg = readonly [Tensor, Axis];
type Fn = (...xs: Tensor[]) => Tensor;

/** Example `b` of `x`, batched along `axis`. */
function take(x: Tensor, axis: number, b: number): Tensor {
  const starts = x.shape.map((_, i) => (i === axis ? b : 0));
  const ends = x.shape.map((d, i) => (i === axis ? b + 1 : d));
  return reshape(slice(x, starts, ends), x.shape.filter((_, i) => i !== axis));
}

async function assertClose(got: Tensor, want: Tensor, tol: number, what = ''): Promise<void> {
  assert.deepEqual(got.shape, want.shape, `${what} shape`);
  assert.equal(got.dtype, want.dtype, `${what} dtype`);
  const [g, w] = [Array.from(await got.data()), Array.from(await want.data())];
  g.forEach((v, i) => {
    const ok = Object.is(v, w[i]) || Math.abs(v - w[i]!) <= tol * (1 + Math.abs(w[i]!)) || (Number.isNaN(v) && Number.isNaN(w[i]));
    assert.ok(ok, `${what} entry ${i}: vmap ${v}, loop ${w[i]} (vmap ${g}, loop ${w})`);
  });
}

/** The per-example results of `f`, stacked along `outAxis`. */
function loop(f: Fn, args: readonly Arg[], size: number, outAxis: number): Tensor {
  const per = Array.from({ length: size }, (_, b) => f(...args.map(([t, a]) => (a === null ? t : take(t, a, b)))));
  return stack(per, outAxis);
}

/**
 * `vmap(f)` on `args` (each with its batch axis, or null: shared) equals the loop, with the output's
 * batch axis at `outSeed` modulo the output's rank + 1 (negative for odd seeds).
 */
async function agrees(f: Fn, args: readonly Arg[], size: number, outSeed = 0, tol = 1e-6, backend?: 'cpu'): Promise<void> {
  const perExample = f(...args.map(([t, a]) => (a === null ? t : take(t, a, 0))));
  const rank = perExample.rank + 1;
  const out = outSeed % rank;
  const outAxes = outSeed % 2 === 1 ? out - rank : out;
  const batched = vmap(f, { inAxes: args.map(([, a]) => a), outAxes, axisSize: size });
  const tensors = args.map(([t]) => t);
  const got = backend === undefined ? batched(...tensors) : await jit(batched, { backend })(...tensors);
  await assertClose(got, loop(f, args, size, out), tol);
}

const sizes = fc.integer({ min: 1, max: 3 });
const seed = fc.nat(7);

/** An argument of shape `perShape` per example, batched at a random axis, or (if `shared`) sometimes the same for all. */
function arbArg(perShape: Shape, size: number, c: TensorConstraints = {}, shared = false): fc.Arbitrary<Arg> {
  const axes = fc.integer({ min: 0, max: perShape.length });
  return (shared ? fc.oneof(axes, fc.constant(null)) : axes).chain((axis) =>
    arbTensor({ ...c, shape: axis === null ? perShape : insertAxis(perShape, axis, size) }).map((t): Arg => [t, axis]));
}

/** Arguments of the given per-example shapes, each mapped or shared, at least one mapped. */
function arbArgs(shapes: readonly Shape[], size: number, cs: readonly TensorConstraints[] = []): fc.Arbitrary<Arg[]> {
  return fc
    .tuple(...shapes.map((s, i) => arbArg(s, size, cs[i] ?? {}, true)))
    .filter((args) => args.some(([, a]) => a !== null));
}

const unaryCases: [UnaryFn, TensorConstraints][] = [
  ['neg', {}], ['exp', {}], ['log', { positive: true }], ['sin', {}], ['cos', {}], ['sqrt', { positive: true }],
  ['rsqrt', { positive: true }], ['tanh', {}], ['sigmoid', {}], ['abs', {}], ['reciprocal', { awayFrom: [0] }],
  ['floor', {}], ['sign', {}], ['isFinite', {}],
];
test('unary: every function, the batch axis anywhere', () =>
  holds(
    fc.tuple(fc.constantFrom(...unaryCases), sizes, arbShape(), seed).chain(([[fn, c], n, s, o]) =>
      fc.tuple(fc.constant(fn), fc.constant(n), arbArg(s, n, c), fc.constant(o))),
    (fn, n, x, o) => agrees((x) => unary(fn, x), [x], n, o),
  ));

test('unary: logicalNot and uniformFromBits', () =>
  holds(fc.tuple(sizes, arbShape()).chain(([n, s]) => fc.tuple(fc.constant(n), arbArg(s, n, { dtype: 'int32', min: -1000, max: 1000 }))),
    async (n, x) => {
      await agrees((x) => unary('uniformFromBits', x), [x], n);
      await agrees((x) => unary('logicalNot', greater(x, 0)), [x], n);
    }));

const binaryFns: BinaryFn[] = ['add', 'sub', 'mul', 'div', 'pow', 'max', 'min', 'lt', 'le', 'gt', 'ge', 'eq', 'ne'];
test('binary: every function, with broadcasting, each operand mapped or shared', () =>
  holds(
    fc.tuple(fc.constantFrom(...binaryFns), sizes, arbBroadcastPair(), seed).chain(([fn, n, [sa, sb], o]) =>
      fc.tuple(fc.constant(fn), fc.constant(n), arbArgs([sa, sb], n, [{ positive: fn === 'pow' }, { awayFrom: [0], step: 0.5 }]), fc.constant(o))),
    (fn, n, [a, b], o) => agrees((a, b) => binary(fn, a, b), [a!, b!], n, o),
  ));

test('binary and/or on bools; select with broadcasting', () =>
  holds(
    fc.tuple(sizes, arbBroadcastShapes(3)).chain(([n, [sc, sa, sb]]) =>
      fc.tuple(fc.constant(n), arbArgs([sc!, sa!, sb!], n), fc.constantFrom<BinaryFn>('and', 'or'))),
    async (n, [c, a, b], fn) => {
      await agrees((c, a, b) => where(greater(c, 0), a, b), [c!, a!, b!], n);
      await agrees((c, a) => cast(binary(fn, greater(c, 0), greater(a, 0)), 'float32'), [c!, a!], n);
    },
  ));

test('cast between float32, float64, int32 and bool', () =>
  holds(fc.tuple(sizes, arbShape(), seed).chain(([n, s, o]) => fc.tuple(fc.constant(n), arbArg(s, n, { min: -5, max: 5 }), fc.constant(o))),
    async (n, x, o) => {
      await agrees((x) => cast(x, 'int32'), [x], n, o);
      await agrees((x) => cast(x, 'float64'), [x], n, o);
      await agrees((x) => cast(cast(x, 'bool'), 'float32'), [x], n, o);
    }));

test('reduce sum and max over any axes, keepdims or not', () =>
  holds(
    fc.tuple(sizes, arbShape({ minRank: 1 }), seed).chain(([n, s, o]) =>
      fc.tuple(fc.constant(n), arbArg(s, n), fc.subarray(s.map((_, i) => i), { minLength: 1 }), fc.boolean(), fc.constant(o))),
    async (n, x, axes, keep, o) => {
      await agrees((x) => sum(x, axes, keep), [x], n, o);
      await agrees((x) => max(x, axes, keep), [x], n, o);
    },
  ));

test('reshape, permute and broadcast', () =>
  holds(
    fc.tuple(sizes, arbShape({ minRank: 1 }), seed).chain(([n, s, o]) =>
      fc.tuple(
        fc.constant(n), arbArg(s, n), fc.shuffledSubarray(s.map((_, i) => i), { minLength: s.length, maxLength: s.length }),
        fc.array(fc.boolean(), { minLength: s.length, maxLength: s.length }), fc.integer({ min: 1, max: 3 }), fc.constant(o))),
    async (n, x, perm, ones, lead, o) => {
      const s = (flags: boolean[]) => flags.flatMap((f, i) => (f ? [i] : []));
      await agrees((x) => reshape(x, [...x.shape].reverse()), [x], n, o);
      await agrees((x) => reshape(x, [-1]), [x], n, o);
      await agrees((x) => permute(x, perm), [x], n, o);
      // Summed (size-1) dimensions expand again, and a new leading axis appears.
      const summed = s(ones);
      await agrees((x) => broadcastTo(summed.length === 0 ? x : sum(x, summed, true), [lead, ...x.shape]), [x], n, o);
    },
  ));

test('slice with strides and pad with interior padding', () =>
  holds(
    fc.tuple(sizes, arbShape({ minRank: 1 }), seed).chain(([n, s, o]) => {
      const ranges = fc.tuple(...s.map((d) => fc.tuple(fc.integer({ min: 0, max: d - 1 }), fc.integer({ min: 1, max: 3 }))));
      const pads = fc.tuple(...s.map(() => fc.tuple(fc.nat(2), fc.nat(2), fc.nat(1))));
      return fc.tuple(fc.constant(n), arbArg(s, n), ranges, pads, fc.constant(o));
    }),
    async (n, x, ranges, pads, o) => {
      await agrees((x) => slice(x, ranges.map(([st]) => st), undefined, ranges.map(([, k]) => k)), [x], n, o);
      await agrees((x) => pad(x, pads.map((p) => p[0]), pads.map((p) => p[1]), 0.5, pads.map((p) => p[2])), [x], n, o);
    },
  ));

test('concat of mapped and shared operands', () =>
  holds(
    fc.tuple(sizes, arbShape({ minRank: 1 }), fc.integer({ min: 2, max: 3 })).chain(([n, s, k]) =>
      fc.integer({ min: 0, max: s.length - 1 }).chain((axis) =>
        fc.tuple(
          fc.constant(n), fc.constant(axis),
          fc.array(fc.integer({ min: 1, max: 3 }), { minLength: k, maxLength: k }).chain((lens) =>
            arbArgs(lens.map((l) => s.map((d, i) => (i === axis ? l : d))), n)),
          seed))),
    (n, axis, args, o) => agrees((...xs) => concat(xs, axis), args, n, o),
  ));

test('matmul: rows, columns or both mapped, with batch dimensions', () =>
  holds(
    fc.tuple(sizes, arbShape({ maxRank: 2, maxDim: 3 }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 }), seed)
      .chain(([n, batch, m, k, p, o]) => fc.tuple(fc.constant(n), arbArgs([[...batch, m, k], [...batch, k, p]], n), fc.constant(o))),
    (n, [a, b], o) => agrees(matmul, [a!, b!], n, o, 1e-5),
  ));

/** A convolution case with groups, and its attributes as options. */
const convCases = fc.tuple(sizes, arbConvCase({ maxGroups: 2, maxBatch: 2 }), seed);

test('conv2d: input, weight or both mapped', () =>
  holds(
    convCases.chain(([n, c, o]) => fc.tuple(fc.constant(n), fc.constant(c), arbArgs([c.xShape, c.wShape], n), fc.constant(o))),
    (n, c, [x, w], o) => agrees((x, w) => conv2d(x, w, c.attrs), [x!, w!], n, o, 1e-5),
  ));

test('conv2dGradInput and conv2dGradWeight: either operand or both mapped', () =>
  holds(
    convCases.chain(([n, c, o]) => {
      const { yShape } = c;
      return fc.tuple(fc.constant(n), fc.constant(c), arbArgs([yShape, c.wShape], n), arbArgs([c.xShape, yShape], n), fc.constant(o));
    }),
    async (n, c, [dy, w], [x, dy2], o) => {
      await agrees((dy, w) => conv2dGradInput(dy, w, c.xShape, c.attrs), [dy!, w!], n, o, 1e-5);
      await agrees((x, dy) => conv2dGradWeight(x, dy, c.wShape, c.attrs), [x!, dy2!], n, o, 1e-5);
    },
  ));

test('convolutions on the cpu backend (folded into images, channel groups per example), under jit', () =>
  holds(
    convCases.chain(([n, c, o]) => {
      const { yShape } = c;
      return fc.tuple(fc.constant(n), fc.constant(c), arbArgs([c.xShape, c.wShape], n), arbArgs([yShape, c.wShape], n), arbArgs([c.xShape, yShape], n), fc.constant(o));
    }),
    async (n, c, [x, w], [dy, w2], [x2, dy2], o) => {
      await agrees((x, w) => conv2d(x, w, c.attrs), [x!, w!], n, o, 1e-4, 'cpu');
      await agrees((dy, w) => conv2dGradInput(dy, w, c.xShape, c.attrs), [dy!, w2!], n, o, 1e-4, 'cpu');
      await agrees((x, dy) => conv2dGradWeight(x, dy, c.wShape, c.attrs), [x2!, dy2!], n, o, 1e-4, 'cpu');
    },
  ));

test('gather: values, indices (out of range included) or both mapped', () =>
  holds(
    fc.tuple(sizes, arbShape({ minRank: 1 }), arbShape({ maxRank: 2 }), seed).chain(([n, s, is, o]) =>
      fc.integer({ min: 0, max: s.length - 1 }).chain((axis) =>
        fc.tuple(fc.constant(n), fc.constant(axis), arbArgs([s, is], n, [{}, { dtype: 'int32', min: -1, max: s[axis]! }]), fc.constant(o)))),
    (n, axis, [x, idx], o) => agrees((x, i) => gather(x, i, axis), [x!, idx!], n, o),
  ));

test('iota, literals and closed-over constants stay shared', () =>
  holds(fc.tuple(sizes, arbShape({ minRank: 1 })).chain(([n, s]) => fc.tuple(fc.constant(n), arbArg(s, n), arbTensor({ shape: s }))),
    async (n, x, c) => {
      await agrees((x) => add(mul(x, 2), add(cast(iota(x.shape, x.rank - 1), 'float32'), c)), [x], n);
      // Nothing mapped reaches the output: it is broadcast along the batch.
      await agrees((x) => add(c, scalar(x.rank)), [x], n);
    }));

test('randomBits and normal draws under a batch of keys equal a draw per key', () =>
  holds(fc.tuple(fc.integer({ min: 0, max: 2 ** 31 - 1 }), sizes, arbShape(), fc.nat(100)), async (s, n, shape, offset) => {
    const keys = stack(random.split(random.key(s), n));
    await agrees((k) => randomBits(k, shape, offset), [[keys, 0]], n, 0, 0);
    await agrees((k) => random.normal(k, shape), [[transpose(keys), 1]], n, 1, 0);
  }));

// ---------------------------------------------------------------- random compositions

type Step = (x: Tensor) => Tensor;
const steps: Record<string, Step> = {
  tanh, sin, square,
  relu,
  leaky: (x) => where(greater(x, 0), x, mul(x, 0.1)),
  center: (x) => sub(x, mean(x, -1, true)),
  softmax: (x) => softmax(x, 0),
  lse: (x) => reshape(logsumexp(x, 0), [1, x.shape[1]!]),
  transpose,
  gram: (x) => mul(matmul(x, transpose(x)), 0.1),
  flip: (x) => reshape(x, [x.shape[1]!, x.shape[0]!]),
  stride: (x) => pad(slice(x, [0, 0], undefined, [1, 2]), [1, 0], [0, 1]),
  grow: (x) => concat([x, tanh(x)], 0),
  shift: (x) => sub(x, max(x, 0, true)),
  rows: (x) => gather(x, tensor([0, x.shape[0]! - 1, 0], [3], 'int32'), 0),
  constant: (x) => add(x, reshape(cast(iota([sizeOf(x.shape)], 0, 'int32'), x.dtype), x.shape)),
  conv: (x) => reshape(conv2d(reshape(x, [1, 1, ...x.shape]), broadcastTo(scalar(0.3, x.dtype), [1, 1, 1, 2]), { padding: [0, 1] }), [x.shape[0]!, x.shape[1]! + 1]),
};

test('random compositions of primitives: vmap equals the loop (float64)', () =>
  holds(
    fc.tuple(
      sizes, fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 }),
      fc.array(fc.constantFrom(...Object.keys(steps)), { minLength: 1, maxLength: 5 }), seed,
    ).chain(([n, r, c, names, o]) =>
      fc.tuple(fc.constant(n), arbArg([r, c], n, { dtype: 'float64' }), fc.constant(names), fc.constant(o))),
    (n, x, names, o) => agrees((x) => names.reduce((y, name) => steps[name]!(y), x), [x], n, o, 1e-9),
  ));

test('under jit on the cpu backend: compositions, matmul and convolution equal the loop on the reference backend', () =>
  holds(
    fc.tuple(sizes, fc.array(fc.constantFrom(...Object.keys(steps)), { minLength: 1, maxLength: 4 }))
      .chain(([n, names]) => fc.tuple(fc.constant(n), arbArg([2, 3], n), arbTensor({ shape: [3, 2] }), fc.constant(names))),
    async (n, [x, axis], w, names) => {
      const f = (x: Tensor, w: Tensor) => {
        const y = names.reduce((y, name) => steps[name]!(y), x);
        const z = matmul(y, broadcastTo(reshape(sum(w), [1, 1]), [y.shape[1]!, 2]));
        return conv2d(reshape(z, [1, 1, ...z.shape]), reshape(w, [1, 1, 3, 2]), { padding: 1 });
      };
      const compiled = await jit(vmap(f, { inAxes: [axis, null] }), { backend: 'cpu' })(x, w);
      await assertClose(compiled, loop(f, [[x, axis], [w, null]], n, 0), 1e-4);
    },
  ));

// ---------------------------------------------------------------- transformations together

interface Mlp {
  readonly w1: Tensor;
  readonly b1: Tensor;
  readonly w2: Tensor;
}
const mlpLoss = (p: Mlp, x: Tensor, y: Tensor): Tensor => {
  const h = tanh(add(matmul(reshape(x, [1, x.size]), p.w1), p.b1));
  return square(sub(sum(matmul(h, p.w2)), y));
};

const arbMlpBatch = fc.tuple(sizes, fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 })).chain(([n, d, h]) =>
  fc.tuple(
    fc.record({ w1: arbTensor({ shape: [d, h] }), b1: arbTensor({ shape: [h] }), w2: arbTensor({ shape: [h, 1] }) }),
    arbTensor({ shape: [n, d] }), arbTensor({ shape: [n] }),
  ));

test('per-example gradients: vmap(grad(loss)) over an MLP equals a loop of grad', () =>
  holds(arbMlpBatch, async (p, xs, ys) => {
    const perExample = vmap(grad(mlpLoss), { inAxes: [null, 0, 0] })(p, xs, ys);
    const n = xs.shape[0]!;
    const each = Array.from({ length: n }, (_, b) => grad(mlpLoss)(p, take(xs, 0, b), take(ys, 0, b)));
    for (const k of ['w1', 'b1', 'w2'] as const) await assertClose(perExample[k], stack(each.map((g) => g[k])), 1e-5, k);
  }));

test('per-example gradients of a convolution (conv2dGradWeight with one group per example) equal a loop', () =>
  holds(
    fc.tuple(sizes, arbConvCase({ maxBatch: 1, maxGroups: 2 })).chain(([n, c]) =>
      fc.tuple(fc.constant(c), arbTensor({ shape: c.wShape }), arbTensor({ shape: [n, ...c.xShape] }))),
    async (c, w, xs) => {
      const loss = (w: Tensor, x: Tensor) => sum(square(tanh(conv2d(x, w, c.attrs))));
      const got = vmap(grad(loss), { inAxes: [null, 0] })(w, xs);
      const want = stack(Array.from({ length: xs.shape[0]! }, (_, b) => grad(loss)(w, take(xs, 0, b))));
      await assertClose(got, want, 1e-5);
    },
  ));

test('grad of vmap: gradients of a batched loss equal the sum (shared) and stack (mapped) of per-example ones', () =>
  holds(arbMlpBatch, async (p, xs, ys) => {
    const total = (p: Mlp, xs: Tensor) => sum(vmap(mlpLoss, { inAxes: [null, 0, 0] })(p, xs, ys));
    const [gp, gx] = grad(total, { argnums: [0, 1] })(p, xs);
    const n = xs.shape[0]!;
    const each = Array.from({ length: n }, (_, b) => grad(mlpLoss, { argnums: [0, 1] })(p, take(xs, 0, b), take(ys, 0, b)));
    for (const k of ['w1', 'b1', 'w2'] as const) {
      await assertClose(gp[k], each.map(([g]) => g[k]).reduce((a, b) => add(a, b)), 1e-5, k);
    }
    await assertClose(gx, stack(each.map(([, g]) => g)), 1e-5, 'x');
  }));

test('nested vmap over two batch axes equals a double loop', () =>
  holds(
    fc.tuple(sizes, sizes, fc.integer({ min: 1, max: 3 })).chain(([n1, n2, k]) =>
      fc.tuple(fc.constant([n1, n2]), arbTensor({ shape: [k, n1, 2] }), arbTensor({ shape: [n2, 2, k] }))),
    async ([n1, n2], a, b) => {
      // Outer over a's axis 1 (b shared), inner over b's axis 0 (a's example shared).
      const f = (x: Tensor, y: Tensor) => tanh(matmul(x, y));
      const got = vmap(vmap(f, { inAxes: [null, 0] }), { inAxes: [1, null] })(a, b);
      const want = stack(Array.from({ length: n1! }, (_, i) =>
        stack(Array.from({ length: n2! }, (_, j) => f(take(a, 1, i), take(b, 0, j))))));
      await assertClose(got, want, 1e-6);
      // Both levels mapping the same argument, with a gradient inside.
      const g = vmap(vmap(grad((x: Tensor) => sum(sin(mul(x, x))))), { inAxes: 1, outAxes: 1 })(a);
      await assertClose(g, mul(mul(a, 2), unary('cos', mul(a, a))), 1e-6);
    },
  ));

test('vmap composes with jvp and hessian: per-example tangents and Hessians equal a loop', () =>
  holds(fc.tuple(sizes, fc.integer({ min: 1, max: 3 })).chain(([n, d]) => fc.tuple(arbTensor({ shape: [n, d], dtype: 'float64' }), arbTensor({ shape: [n, d], dtype: 'float64' }))),
    async (xs, vs) => {
      const f = (x: Tensor) => sin(mul(x, tanh(x)));
      const n = xs.shape[0]!;
      const tangent = (x: Tensor, v: Tensor) => jvp(f, [x], [v])[1];
      await assertClose(vmap(tangent)(xs, vs), loop(tangent, [[xs, 0], [vs, 0]], n, 0), 1e-12, 'vmap(jvp)');
      await assertClose(jvp(vmap(f), [xs], [vs])[1], loop(tangent, [[xs, 0], [vs, 0]], n, 0), 1e-12, 'jvp(vmap)');
      const h = hessian((x: Tensor) => sum(f(x))) as (x: Tensor) => Tensor;
      await assertClose(vmap(h)(xs), loop(h, [[xs, 0]], n, 0), 1e-12, 'vmap(hessian)');
    }));

test('pytrees: inAxes per subtree, outAxes per output leaf, non-tensor leaves passed through', async () => {
  const p = { w: tensor([[1, 2], [3, 4], [5, 6]]), scale: tensor([2]), name: 'layer' };
  const f = (p: { w: Tensor; scale: Tensor; name: string }, xs: [Tensor, Tensor]) => ({
    y: mul(add(p.w, xs[0]), p.scale),
    z: [sum(xs[1]), p.name],
  });
  const x0 = tensor([[10, 20, 30], [40, 50, 60]]);
  const x1 = tensor([[1, 2, 3], [4, 5, 6]]);
  const spec: AxisSpec = [{ w: 0, scale: null, name: null }, [1, 1]];
  const out = vmap(f, { inAxes: spec, outAxes: { y: 1, z: [0, null] } })(p, [x0, x1]);
  assert.equal(out.z[1], 'layer');
  const want = stack([0, 1, 2].map((b) => f({ ...p, w: take(p.w, 0, b) }, [take(x0, 1, b), take(x1, 1, b)]).y), 1);
  await assertClose(out.y, want, 0);
  await assertClose(out.z[0] as Tensor, tensor([5, 7, 9]), 0);
});

test('under jit on the reference backend, vmap(grad) equals eager', async () => {
  const p = { w1: tensor([[0.5, -1], [2, 0.25]]), b1: tensor([0.1, -0.2]), w2: tensor([[1], [-1]]) };
  const xs = tensor([[1, 2], [-1, 0.5], [0, 3]]);
  const ys = tensor([0.5, -1, 2]);
  const f = vmap(grad(mlpLoss), { inAxes: [null, 0, 0] });
  const compiled = await jit(f, { backend: 'reference' })(p, xs, ys);
  const eager = f(p, xs, ys);
  for (const k of ['w1', 'b1', 'w2'] as const) await assertClose(compiled[k], eager[k], 1e-6, k);
});

// ---------------------------------------------------------------- stopGradient, customVjp, remat

test('stopGradient keeps its meaning under vmap, in both orders with grad', () =>
  holds(fc.tuple(sizes, arbShape()).chain(([n, s]) => fc.tuple(arbTensor({ shape: [n, ...s], dtype: 'float64' }))), async (xs) => {
    const f = (x: Tensor) => sum(mul(stopGradient(x), sin(x)));
    const perExample = vmap(grad(f))(xs);
    const ofBatch = grad((xs: Tensor) => sum(vmap(f)(xs)))(xs);
    // d/dx [c sin x] at c = x is x cos x: the stopped factor contributes nothing.
    const want = mul(xs, unary('cos', xs));
    await assertClose(perExample, want, 1e-12);
    await assertClose(ofBatch, want, 1e-12);
  }));

/** Whether a node satisfying `pred` lies below `t`. */
function reaches(t: Tensor, pred: (t: Tensor) => boolean): boolean {
  const seen = new Set<Tensor>();
  const stack = [t];
  while (stack.length > 0) {
    const u = stack.pop()!;
    if (pred(u)) return true;
    for (const i of u.inputs) if (!seen.has(i)) stack.push(i), seen.add(i);
  }
  return false;
}

/** w * x with a deliberately different backward rule: cotangents 10 ct for w and ct * w * w for x. */
const scaled = customVjp(
  (w: Tensor, x: Tensor) => mul(w, x),
  (w: Tensor, x: Tensor) => [mul(w, x), { w }] as const,
  (r: { w: Tensor }, ct: Tensor) => [mul(ct, 10), mul(ct, mul(r.w, r.w))],
);

test('customVjp under vmap: grad uses the (vmapped) user rule, per example and for a shared argument', () =>
  holds(fc.tuple(sizes, fc.integer({ min: 1, max: 3 })).chain(([n, d]) => fc.tuple(arbTensor({ shape: [d] }), arbTensor({ shape: [n, d] }))), async (w, xs) => {
    const loss = (w: Tensor, x: Tensor) => sum(tanh(scaled(w, x)));
    const n = xs.shape[0]!;
    const each = Array.from({ length: n }, (_, b) => grad(loss, { argnums: [0, 1] })(w, take(xs, 0, b)));
    // The rule is observed: the gradient in w is 10 * tanh'(w x), not x * tanh'(w x).
    const tanhPrime = (x: Tensor) => sub(scalar(1), square(tanh(mul(w, x))));
    await assertClose(each[0]![0], mul(tanhPrime(take(xs, 0, 0)), 10), 1e-5, 'rule');
    const [gw, gx] = vmap(grad(loss, { argnums: [0, 1] }), { inAxes: [null, 0] })(w, xs);
    await assertClose(gw, stack(each.map(([g]) => g)), 1e-5, 'per-example w');
    await assertClose(gx, stack(each.map(([, g]) => g)), 1e-5, 'per-example x');
    const [sw, sx] = grad((w: Tensor, xs: Tensor) => sum(vmap(loss, { inAxes: [null, 0] })(w, xs)), { argnums: [0, 1] })(w, xs);
    await assertClose(sw, each.map(([g]) => g).reduce((a, b) => add(a, b)), 1e-5, 'shared w');
    await assertClose(sx, stack(each.map(([, g]) => g)), 1e-5, 'mapped x');
  }));

test('remat under vmap gives the same values and gradients as without', () =>
  holds(arbMlpBatch, async (p, xs, ys) => {
    const block = (p: Mlp, x: Tensor) => tanh(add(matmul(reshape(x, [1, x.size]), p.w1), p.b1));
    const loss = (b: typeof block) => (p: Mlp, x: Tensor, y: Tensor) => square(sub(sum(matmul(b(p, x), p.w2)), y));
    const plain = vmap(grad(loss(block)), { inAxes: [null, 0, 0] })(p, xs, ys);
    const rematted = vmap(grad(loss(remat(block))), { inAxes: [null, 0, 0] })(p, xs, ys);
    for (const k of ['w1', 'b1', 'w2'] as const) await assertClose(rematted[k], plain[k], 0, k);
    const total = (b: typeof block) => (p: Mlp) => sum(vmap(loss(b), { inAxes: [null, 0, 0] })(p, xs, ys));
    const [g1, g2] = [grad(total(block))(p), grad(total(remat(block)))(p)];
    for (const k of ['w1', 'b1', 'w2'] as const) await assertClose(g2[k], g1[k], 0, k);
    // vmap kept the remat call, so grad recomputed it (behind barriers) rather than walking it.
    assert.ok(reaches(g2.w1, (t) => t.marker?.kind === 'rematBarrier'));
    assert.ok(!reaches(g1.w1, (t) => t.marker?.kind === 'rematBarrier'));
  }));

// ---------------------------------------------------------------- errors

test('errors name the argument and its path', () => {
  const f = (a: Tensor, p: { u: Tensor; v: Tensor }) => add(a, mul(p.u, p.v));
  const a = tensor([1, 2, 3]);
  const p = { u: tensor([1, 2, 3]), v: tensor([[1, 2], [3, 4]]) };
  assert.throws(() => vmap(f)(a, p), (e: Error) => e instanceof ShapeError && /args\[0\] has 3 along axis 0/.test(e.message) && /args\[1\]\.v/.test(e.message));
  assert.throws(() => vmap(f, { inAxes: [0, { u: 0 }] })(a, p), (e: Error) => e instanceof TreeError && /inAxes at args\[1\]/.test(e.message) && /\{u\}/.test(e.message) && /\{u,v\}/.test(e.message));
  assert.throws(() => vmap(f, { inAxes: [0, [0, 0]] })(a, p), (e: Error) => e instanceof TreeError && /inAxes at args\[1\] is an array of 2/.test(e.message));
  assert.throws(() => vmap(f, { inAxes: [0] })(a, p), (e: Error) => e instanceof TreeError && /1 entries.*2 argument/.test(e.message));
  assert.throws(() => vmap(f, { inAxes: [0, { u: 0, v: 2 }] })(a, p), (e: Error) => e instanceof ShapeError && /inAxes 2 for args\[1\]\.v/.test(e.message));
  assert.throws(() => vmap(f, { inAxes: [0, { u: 0, v: 'x' as unknown as number }] })(a, p), (e: Error) => e instanceof TreeError && /args\[1\]\.v is string/.test(e.message));
  assert.throws(() => vmap((a: Tensor, k: number) => mul(a, k))(a, 2), (e: Error) => e instanceof TreeError && /args\[1\] is number 2, not a Tensor/.test(e.message));
  assert.throws(() => vmap((a: Tensor) => ({ y: sin(a) }), { outAxes: { y: null } })(a), (e: Error) => e instanceof ShapeError && /result\.y/.test(e.message));
  assert.throws(() => vmap((a: Tensor) => ({ y: sin(a) }), { outAxes: { z: 0 } })(a), (e: Error) => e instanceof TreeError && /outAxes at result/.test(e.message));
  assert.throws(() => vmap((a: Tensor) => sin(a), { inAxes: null })(a), (e: Error) => e instanceof TreeError && /axisSize/.test(e.message));
});

test('a shared argument with axisSize is broadcast; a mapped non-tensor with null passes', async () => {
  const a = tensor([1, 2]);
  await assertClose(vmap((a: Tensor, k: number) => mul(a, k), { inAxes: null, axisSize: 3 })(a, 2), tensor([[2, 4], [2, 4], [2, 4]]), 0);
  await assertClose(vmap((a: Tensor, k: number) => mul(a, k), { inAxes: [0, null] })(a, 2), tensor([2, 4]), 0);
});

test('an empty batch gives empty outputs of the right shape', async () => {
  const xs = tensor([], [0, 3]);
  const out = vmap((x: Tensor) => matmul(reshape(x, [1, 3]), tensor([[1], [2], [3]])))(xs);
  assert.deepEqual(out.shape, [0, 1, 1]);
  assert.equal((await out.data()).length, 0);
  assert.deepEqual(vmap((x: Tensor) => maximum(x, 0), { outAxes: 1 })(xs).shape, [3, 0]);
});

test('examples/per-example-grads.ts runs, and its vmap(grad) norms agree with its loop', async () => {
  const root = join(import.meta.dirname, '..', '..');
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', join(root, 'examples', 'per-example-grads.ts')], { cwd: root, timeout: 120_000 });
  assert.match(stdout, /largest relative difference/);
});
