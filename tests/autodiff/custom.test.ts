/**
 * stopGradient, customVjp and remat: values unchanged, gradients as promised (a deliberately
 * different backward rule is observed), markers never reach a program, composition with jit and
 * second-order grad, bit-identical remat gradients on the reference and cpu backends, and errors
 * naming what was wrong.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { registerCpuBackend } from '../../backends/cpu/index.ts';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { customVjp, grad, remat, valueAndGrad, vmap } from '../../autodiff/index.ts';
import { arbTensor } from '../../autodiff/arbitraries.ts';
import { setDefaultBackend } from '../../core/backend.ts';
import { logsumexp } from '../../core/composite.ts';
import { ShapeError, TesseraError, TreeError } from '../../core/errors.ts';
import { jit } from '../../core/jit.ts';
import {
  add, broadcastTo, exp, matmul, mul, reshape, sin, slice, stopGradient, sub, sum, tanh, tensor,
} from '../../core/ops.ts';
import { buildProgram } from '../../core/program.ts';
import type { Tensor } from '../../core/tensor.ts';
import { holds } from './helpers.ts';

registerReferenceBackend();
registerCpuBackend();
setDefaultBackend('reference');

const values = async (t: Tensor): Promise<number[]> => Array.from(await t.data());

test('stopGradient: same values, zero cotangent, x * stopGradient(x) differentiates to x', async () => {
  await holds(fc.tuple(arbTensor({ dtype: 'float64' })), async (x) => {
    assert.deepEqual(await values(stopGradient(x)), await values(x));
    assert.deepEqual(await values(grad((v: Tensor) => sum(sin(stopGradient(v))))(x)), new Array(x.size).fill(0));
    assert.deepEqual(await values(grad((v: Tensor) => sum(mul(v, stopGradient(v))))(x)), await values(x));
  });
});

test('stopGradient: freezes a whole tree and never reaches a program', () => {
  const w = tensor([1, 2]);
  const frozen = stopGradient({ a: w, b: [w], n: 3 });
  assert.equal(frozen.n, 3);
  assert.equal(frozen.a.marker?.kind, 'stopGradient');
  const plain = buildProgram('p', [sin(w)]).program;
  const marked = buildProgram('p', [sin(frozen.a)]).program;
  assert.equal(marked.nodes.length, plain.nodes.length);
  assert.equal(marked.hash, plain.hash);
});

/** log-sum-exp with the textbook gradient softmax(x), and a deliberately wrong one (3 * softmax). */
function lse(scale: number): (x: Tensor) => Tensor {
  const plain = (x: Tensor): Tensor => logsumexp(x, [0]);
  return customVjp(
    plain,
    (x: Tensor) => {
      const y = logsumexp(x, [0]);
      return [y, { x, y }] as const;
    },
    (r: { x: Tensor; y: Tensor }, ct: Tensor) => [mul(mul(exp(sub(r.x, broadcastTo(r.y, r.x.shape))), broadcastTo(ct, r.x.shape)), scale)],
  );
}

test('customVjp: the value is f, the gradient is bwd (a scaled rule is observed), with and without jit', async () => {
  await holds(fc.tuple(arbTensor({ dtype: 'float64', shapeArb: fc.constantFrom([3], [5]) })), async (x) => {
    const honest = grad(logsumexp as (x: Tensor, axes: number[]) => Tensor)(x, [0]);
    const [value, g3] = valueAndGrad(lse(3))(x);
    assert.deepEqual(await values(value), await values(logsumexp(x, [0])));
    const h = await values(honest);
    const got = await values(g3);
    got.forEach((v, i) => assert.ok(Math.abs(v - 3 * h[i]!) < 1e-12, `entry ${i}: ${v} vs 3 * ${h[i]}`));
    const jitted = await jit(grad(lse(3)))(x);
    (await values(jitted)).forEach((v, i) => assert.ok(Math.abs(v - got[i]!) < 1e-12));
    // The same rule compiled by the cpu backend (float32).
    const onCpu = await jit(grad(lse(3)), { backend: 'cpu' })(tensor(Float32Array.from(await x.data()), x.shape));
    (await values(onCpu)).forEach((v, i) => assert.ok(Math.abs(v - got[i]!) < 1e-5, `cpu entry ${i}: ${v} vs ${got[i]}`));
  });
});

test('customVjp composes with vmap: per-row gradients use bwd, as does grad of the mapped function', async () => {
  const rows = tensor([[0.1, -0.4, 2], [3, 1, -1]], undefined, 'float64');
  const perRow = await values(vmap(grad(lse(3)))(rows));
  const throughVmap = await values(grad((r: Tensor) => sum(vmap(lse(3))(r)))(rows));
  const expected: number[] = [];
  for (const i of [0, 1]) expected.push(...(await values(grad(lse(3))(reshape(slice(rows, [i, 0], [i + 1, 3]), [3])))));
  perRow.forEach((v, i) => assert.ok(Math.abs(v - expected[i]!) < 1e-12, `vmap(grad) entry ${i}: ${v} vs ${expected[i]}`));
  throughVmap.forEach((v, i) => assert.ok(Math.abs(v - expected[i]!) < 1e-12, `grad(vmap) entry ${i}: ${v} vs ${expected[i]}`));
  // 3 * softmax sums to 3 per row: the scaled rule, not autodiff through logsumexp, was used.
  assert.ok(Math.abs(perRow.slice(0, 3).reduce((a, b) => a + b) - 3) < 1e-12);
});

test('customVjp: trees of arguments, null cotangents, second order through bwd', async () => {
  // f(p, k) = sum(p.w * x) with a straight-through style rule: d/dw = ct (ignores x), no gradient for k.
  const f = customVjp(
    (p: { w: Tensor; x: Tensor }, k: Tensor) => sum(mul(mul(p.w, p.x), k)),
    (p: { w: Tensor; x: Tensor }, k: Tensor) => [sum(mul(mul(p.w, p.x), k)), p.w] as const,
    (w: Tensor, ct: Tensor) => [{ w: mul(broadcastTo(ct, w.shape), w), x: null }, null],
  );
  const p = { w: tensor([1, 2, 3]), x: tensor([4, 5, 6]) };
  const k = tensor([1, 1, 1]);
  const g = grad(f, { argnums: [0, 1] })(p, k);
  assert.deepEqual(await values(g[0].w), [1, 2, 3]);
  assert.deepEqual(await values(g[0].x), [0, 0, 0]);
  assert.deepEqual(await values(g[1]), [0, 0, 0]);
  // d/dw sum(bwd's w-cotangent) = 1 per entry: bwd's own graph is differentiated.
  assert.deepEqual(await values(grad((w: Tensor) => sum(grad(f)({ w, x: p.x }, k).w))(p.w)), [1, 1, 1]);
});

test('customVjp: errors name the argument and the rule', () => {
  const wrongShape = customVjp(
    (x: Tensor) => sum(x),
    (x: Tensor) => [sum(x), x] as const,
    (_x: Tensor, ct: Tensor) => [reshape(ct, [1])],
  );
  assert.throws(() => grad(wrongShape)(tensor([1, 2])), (e: Error) => e instanceof ShapeError && /bwd's cotangent for args\[0\] is float32 \[1\]/.test(e.message));
  const notArray = customVjp(
    (x: Tensor) => sum(x),
    (x: Tensor) => [sum(x), x] as const,
    ((_x: Tensor, ct: Tensor) => ct) as never,
  );
  assert.throws(() => grad(notArray)(tensor([1, 2])), (e: Error) => e instanceof TreeError && /one cotangent tree \(or null\) per argument/.test(e.message));
  // A closed-over tensor that depends on the differentiated input would silently lose its gradient.
  assert.throws(
    () => grad((x: Tensor) => {
      const y = sin(x);
      const g = customVjp((z: Tensor) => sum(mul(z, y)), (z: Tensor) => [sum(mul(z, y)), z] as const, (_z: Tensor, ct: Tensor) => [broadcastTo(ct, [2])]);
      return g(x);
    })(tensor([1, 2])),
    (e: Error) => e instanceof TesseraError && /without taking it as an argument/.test(e.message),
  );
});

/** A small two-layer block with enough intermediates to make recomputation visible. */
function block(p: { w1: Tensor; w2: Tensor }, x: Tensor): Tensor {
  const h = tanh(matmul(x, p.w1));
  return add(x, matmul(mul(h, sin(h)), p.w2));
}

const net = (blockFn: typeof block) => (p: { w1: Tensor; w2: Tensor }[], x: Tensor): Tensor => {
  let h = x;
  for (const q of p) h = blockFn(q, h);
  return sum(mul(h, h));
};

test('remat: gradients are bit-identical to the plain function, on the reference and the cpu backend', async () => {
  await holds(fc.tuple(fc.integer({ min: 0, max: 1000 })), async (seed) => {
    const r = (i: number, n: number) => tensor(Float32Array.from({ length: n }, (_, j) => Math.sin(seed + 7 * i + 1.3 * j) * 0.5), undefined, 'float32');
    const p = [0, 1, 2].map((i) => ({ w1: reshape(r(i, 12), [4, 3]), w2: reshape(r(i + 10, 12), [3, 4]) }));
    const x = reshape(r(99, 8), [2, 4]);
    for (const backend of ['reference', 'cpu'] as const) {
      const plain = await jit(grad(net(block), { argnums: [0, 1] }), { backend })(p, x);
      const rem = await jit(grad(net(remat(block)), { argnums: [0, 1] }), { backend })(p, x);
      for (let i = 0; i < 3; i++) {
        assert.deepEqual(await values(rem[0][i]!.w1), await values(plain[0][i]!.w1), `${backend} w1 of block ${i}`);
        assert.deepEqual(await values(rem[0][i]!.w2), await values(plain[0][i]!.w2), `${backend} w2 of block ${i}`);
      }
      assert.deepEqual(await values(rem[1]), await values(plain[1]), `${backend} x`);
    }
  });
});

test('remat: the backward program recomputes the block (the barrier keeps CSE from merging it)', () => {
  const p = [{ w1: tensor([[0.1, 0.2], [0.3, 0.4]]), w2: tensor([[0.5, 0.6], [0.7, 0.8]]) }];
  const x = tensor([[1, 2]]);
  const count = (f: typeof block) => {
    const g = grad(net(f))(p, x);
    const { program } = buildProgram('g', [g[0]!.w1, g[0]!.w2]);
    return program.nodes.filter((n) => n.prim.op === 'unary' && n.prim.fn === 'tanh').length;
  };
  assert.equal(count(block), 1);
  assert.equal(count(remat(block)), 2);
});

test('remat: nested remat, closed-over live tensors and second order agree with the plain function', async () => {
  const x = tensor([0.3, -0.7, 1.1], undefined, 'float64');
  const plain = (v: Tensor) => {
    const c = exp(v);
    const inner = (u: Tensor) => mul(sin(u), c);
    const outer = (u: Tensor) => tanh(inner(mul(u, u)));
    return sum(outer(v));
  };
  const rematted = (v: Tensor) => {
    const c = exp(v); // closed over by the rematerialised function: it gets its gradient too
    const inner = remat((u: Tensor) => mul(sin(u), c));
    const outer = remat((u: Tensor) => tanh(inner(mul(u, u))));
    return sum(outer(v));
  };
  assert.deepEqual(await values(grad(rematted)(x)), await values(grad(plain)(x)));
  const second = (f: (v: Tensor) => Tensor) => grad((v: Tensor) => sum(mul(grad(f)(v), v)))(x);
  assert.deepEqual(await values(second(rematted)), await values(second(plain)));
});

test('remat and customVjp: a result leaf that is not a tensor is refused', () => {
  assert.throws(() => remat((x: Tensor) => [x, 3] as const)(tensor([1])), (e: Error) => e instanceof TreeError && /output result\[1\] is number 3/.test(e.message));
});
