/**
 * The grad / valueAndGrad / vjp API: pytrees, argnums, hasAux, jit, second derivatives against
 * closed forms, edge cases (ties, empty and size-1 axes, deep graphs) and errors naming culprits.
 */
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { setDefaultBackend } from '../../core/backend.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { grad, valueAndGrad, vjp } from '../../autodiff/index.ts';
import { arbTensor } from '../../autodiff/arbitraries.ts';
import { logsumexp, mean, relu, softmax } from '../../core/composite.ts';
import { DTypeError, ShapeError, TreeError } from '../../core/errors.ts';
import { jit } from '../../core/jit.ts';
import {
  add, broadcastTo, cast, cos, exp, matmul, max, maximum, mul, pow, reshape, sin, sub, sum, tensor, zeros,
} from '../../core/ops.ts';
import type { Tensor } from '../../core/tensor.ts';
import { holds } from './helpers.ts';

registerReferenceBackend();
setDefaultBackend('reference');

async function close(actual: Tensor, expected: readonly number[], tol = 1e-5): Promise<void> {
  const a = Array.from(await actual.data());
  assert.equal(a.length, expected.length, `length ${a.length} vs ${expected.length}`);
  a.forEach((v, i) => assert.ok(Math.abs(v - expected[i]!) <= tol * (1 + Math.abs(expected[i]!)), `entry ${i}: ${v} vs ${expected[i]} (all: ${a})`));
}

test('grad of sum(sin) is cos, eagerly and lazily', async () => {
  const x = tensor([0.1, -0.5, 2]);
  const g = grad((x: Tensor) => sum(sin(x)))(x);
  assert.equal(g.isRealized, false);
  await close(g, [0.1, -0.5, 2].map(Math.cos));
});

test('second derivatives against closed forms: sin, x^3 (mul and pow), and a third derivative', async () => {
  const values = [0.3, -1.2, 1.7];
  const x = tensor(values, [3], 'float64');
  const d2 = (f: (x: Tensor) => Tensor) => grad((x: Tensor) => sum(grad((y: Tensor) => sum(f(y)))(x)))(x);
  await close(d2(sin), values.map((v) => -Math.sin(v)), 1e-12);
  await close(d2((x) => mul(x, mul(x, x))), values.map((v) => 6 * v), 1e-12);
  await close(d2((x) => pow(x, 3)), values.map((v) => 6 * v), 1e-12);
  const d3 = grad((x: Tensor) => sum(d2Fn(x)))(x);
  function d2Fn(x: Tensor): Tensor {
    return grad((x: Tensor) => sum(grad((y: Tensor) => sum(cos(y)))(x)))(x);
  }
  await close(d3, values.map((v) => Math.sin(v)), 1e-12);
});

test('Hessian of softmax cross-entropy is diag(p) - p p^T (checked as a Hessian-vector product)', () =>
  holds(
    fc.integer({ min: 1, max: 6 }).chain((n) =>
      fc.tuple(arbTensor({ shape: [n], dtype: 'float64' }), arbTensor({ shape: [n], dtype: 'float64' }), fc.integer({ min: 0, max: n - 1 }))),
    async (x, v, label) => {
      const onehot = tensor(Array.from({ length: x.size }, (_, i) => (i === label ? 1 : 0)), [x.size], 'float64');
      const crossEntropy = (x: Tensor) => sub(logsumexp(x), sum(mul(x, onehot)));
      const hvp = grad((x: Tensor) => sum(mul(grad(crossEntropy)(x), v)))(x);
      const p = Array.from(await softmax(x).data());
      const vs = Array.from(await v.data());
      const pv = p.reduce((acc, pi, i) => acc + pi * vs[i]!, 0);
      await close(hvp, p.map((pi, i) => pi * vs[i]! - pi * pv), 1e-10);
    },
  ));

test('grad inside jit equals eager grad', async () => {
  const loss = (p: { w: Tensor; b: Tensor }, x: Tensor) => mean(relu(add(matmul(x, p.w), p.b)));
  const params = { w: tensor([[0.5, -1], [2, 0.25], [-0.3, 0.7]]), b: tensor([0.1, -0.2]) };
  const x = tensor([[1, 2, 3], [-1, 0.5, 2]]);
  const eager = grad(loss)(params, x);
  const jitted = await jit((p: typeof params, x: Tensor) => grad(loss)(p, x), { backend: 'reference' })(params, x);
  await close(jitted.w, Array.from(await eager.w.data()), 1e-6);
  await close(jitted.b, Array.from(await eager.b.data()), 1e-6);
});

test('argnums: one index gives that tree, a list gives a list of trees; unreached inputs get zeros', async () => {
  const f = (a: Tensor, p: { u: Tensor; v: Tensor[] }, c: Tensor) => sum(mul(mul(a, p.u), add(p.v[0]!, c)));
  const a = tensor([1, 2]);
  const p = { u: tensor([3, 4]), v: [tensor([5, 6]), tensor([7, 8])] };
  const c = tensor([0.5, 0.5]);
  const g1 = grad(f, { argnums: 1 })(a, p, c);
  await close(g1.u, [5.5, 13]);
  await close(g1.v[0]!, [3, 8]);
  await close(g1.v[1]!, [0, 0]);
  const [ga, gc] = grad(f, { argnums: [0, 2] })(a, p, c);
  await close(ga, [16.5, 26]);
  await close(gc, [3, 8]);
  await close(grad(f)(a, p, c), [16.5, 26]);
});

test('the same tensor passed twice gets one gradient per position', async () => {
  const x = tensor([2, 3]);
  const [g0, g1] = grad((a: Tensor, b: Tensor) => sum(mul(a, mul(b, b))), { argnums: [0, 1] })(x, x);
  await close(g0, [4, 9]);
  await close(g1, [8, 18]);
});

test('valueAndGrad with hasAux returns [[value, aux], grad]', async () => {
  const x = tensor([1, 2, 3]);
  const [[value, aux], g] = valueAndGrad((x: Tensor) => [sum(mul(x, x)), { doubled: mul(x, 2) }] as const, { hasAux: true })(x);
  assert.equal(await value.item(), 14);
  await close(aux.doubled, [2, 4, 6]);
  await close(g, [2, 4, 6]);
  const [v2, g2] = valueAndGrad((x: Tensor) => sum(exp(x)))(x);
  await close(v2, [Math.exp(1) + Math.exp(2) + Math.exp(3)]);
  await close(g2, [1, 2, 3].map(Math.exp));
});

test('vjp over tree outputs, with a cotangent tree', async () => {
  const x = tensor([1, 2]);
  const y = tensor([3, 4]);
  const [out, pullback] = vjp((x: Tensor, y: Tensor) => ({ s: mul(x, y), t: [sin(x)] }), x, y);
  await close(out.s, [3, 8]);
  const [gx, gy] = pullback({ s: tensor([1, 10]), t: [tensor([2, 0])] });
  await close(gx, [3 + 2 * Math.cos(1), 40]);
  await close(gy, [1, 20]);
  assert.throws(() => pullback({ s: tensor([1, 10]) } as never), (e: Error) => e instanceof TreeError && /keys \{s\} vs|keys \{s,t\} vs \{s\}/.test(e.message));
  assert.throws(() => pullback({ s: tensor([1, 10, 3]), t: [tensor([2, 0])] }), (e: Error) => e instanceof ShapeError && e.message.includes('result.s'));
});

test('max with ties splits the gradient equally (reduce max and binary max)', async () => {
  await close(grad((x: Tensor) => max(x))(tensor([1, 3, 3, 2])), [0, 0.5, 0.5, 0]);
  await close(grad((x: Tensor) => sum(max(x, 1)))(tensor([[1, 1, 1], [0, 5, 4]])), [1 / 3, 1 / 3, 1 / 3, 0, 1, 0]);
  const [ga, gb] = grad((a: Tensor, b: Tensor) => sum(maximum(a, b)), { argnums: [0, 1] })(tensor([1, 2, 3]), tensor([1, 5, 0]));
  await close(ga, [0.5, 0, 1]);
  await close(gb, [0.5, 1, 0]);
  await close(grad((x: Tensor) => sum(relu(x)))(tensor([-1, 0, 2])), [0, 0.5, 1]);
});

test('reductions over all axes and size-1 broadcasts', async () => {
  const x = tensor([[1, 2, 3], [4, 5, 6]]);
  await close(grad((x: Tensor) => sum(mul(x, x)))(x), [2, 4, 6, 8, 10, 12]);
  await close(grad((x: Tensor) => mean(x, [0, 1]))(x), Array(6).fill(1 / 6));
  const [gcol, grow] = grad((c: Tensor, r: Tensor) => sum(mul(add(c, r), x)), { argnums: [0, 1] })(tensor([[1], [2]]), tensor([10, 20, 30]));
  await close(gcol, [6, 15]);
  await close(grow, [5, 7, 9]);
  await close(grad((s: Tensor) => sum(mul(broadcastTo(s, [2, 3]), x)))(tensor(2)), [21]);
});

test('zero-size dimensions give empty gradients (or a clear error), never a crash', async () => {
  const empty = tensor([], [0, 3]);
  const g = grad((x: Tensor) => sum(mul(x, 2)))(empty);
  assert.deepEqual(g.shape, [0, 3]);
  assert.equal((await g.data()).length, 0);
  const gm = grad((x: Tensor, w: Tensor) => sum(matmul(x, w)), { argnums: [0, 1] })(tensor([], [2, 0]), tensor([], [0, 4]));
  assert.deepEqual(gm.map((t) => t.shape), [[2, 0], [0, 4]]);
  const gb = grad((x: Tensor) => sum(broadcastTo(x, [0, 3])))(tensor([1, 2, 3]));
  await close(gb, [0, 0, 0]);
  const gs = grad((x: Tensor) => sum(sum(x, 0)))(empty);
  assert.deepEqual(gs.shape, [0, 3]);
  assert.throws(() => grad((x: Tensor) => sum(max(x, 0)))(empty), (e: Error) => e instanceof ShapeError && e.message.includes('[0,3]'));
});

test('a deep graph does not overflow the stack', async () => {
  const chain = (x: Tensor) => {
    let y = x;
    for (let i = 0; i < 20000; i++) y = add(mul(y, 1), 0.0001);
    return sum(y);
  };
  await close(grad(chain)(tensor([1, 2])), [1, 1]);
});

test('errors name the culprit: non-scalar or non-float output, int or non-tensor inputs, argnums', () => {
  const x = tensor([1, 2, 3]);
  assert.throws(() => grad((x: Tensor) => mul(x, 2))(x), (e: Error) => e instanceof ShapeError && e.message.includes('float32 [3]'));
  assert.throws(() => grad((x: Tensor) => sum(cast(x, 'int32')))(x), (e: Error) => e instanceof DTypeError && e.message.includes('int32 []') && e.message.includes('grad('));
  assert.throws(
    () => grad((p: { w: Tensor; n: Tensor }) => sum(p.w))({ w: x, n: tensor([1], [1], 'int32') }),
    (e: Error) => e instanceof DTypeError && e.message.includes('args[0].n') && e.message.includes('int32'),
  );
  assert.throws(
    () => grad((p: { w: Tensor; lr: number }) => sum(mul(p.w, p.lr)))({ w: x, lr: 0.1 }),
    (e: Error) => e instanceof TreeError && e.message.includes('args[0].lr') && e.message.includes('0.1'),
  );
  assert.throws(() => grad((a: Tensor) => sum(a), { argnums: 2 })(x), (e: Error) => e instanceof TreeError && e.message.includes('argnums 2'));
  assert.throws(() => valueAndGrad((a: Tensor) => sum(a), { hasAux: true })(x), (e: Error) => e instanceof TreeError && e.message.includes('[output, aux]'));
});

test('non-differentiated arguments may hold ints and numbers', async () => {
  const g = grad((x: Tensor, k: Tensor, s: number) => sum(mul(mul(x, cast(k, x.dtype)), s)))(tensor([1, 2]), tensor([3, 4], [2], 'int32'), 2);
  await close(g, [6, 8]);
});

test('zeros and reshape of a gradient keep dtype float64', async () => {
  const x = tensor([1, 2], [2], 'float64');
  const g = grad((x: Tensor) => sum(reshape(mul(x, zeros([2], 'float64')), [1, 2])))(x);
  assert.equal(g.dtype, 'float64');
  await close(g, [0, 0]);
});
