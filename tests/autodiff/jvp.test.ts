/**
 * The forward-mode API: jvp and linearize over pytrees, jacfwd / jacrev / hessian against each other,
 * against central differences and closed forms, composition with grad, jit and itself, and errors
 * that name the offending path.
 */
import { registerCpuBackend } from '../../backends/cpu/index.ts';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { setDefaultBackend } from '../../core/backend.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { checkGrad, grad, hessian, jacfwd, jacrev, jvp, linearize, vjp, vmap } from '../../autodiff/index.ts';
import { arbShape, arbTensor } from '../../autodiff/arbitraries.ts';
import { customVjp, remat } from '../../autodiff/custom.ts';
import { logsumexp } from '../../core/composite.ts';
import { DTypeError, ShapeError, TreeError } from '../../core/errors.ts';
import { jit } from '../../core/jit.ts';
import {
  add, cast, cos, exp, floor, greater, matmul, mul, neg, reshape, sin, slice, stopGradient, sum, tanh, tensor, zeros,
} from '../../core/ops.ts';
import { flatten, type PyTree } from '../../core/pytree.ts';
import type { Tensor } from '../../core/tensor.ts';
import { holds } from './helpers.ts';
import { checkJvp, direction, float64 } from './jvp-check.ts';

registerReferenceBackend();
registerCpuBackend();
setDefaultBackend('reference');

async function values(t: Tensor): Promise<number[]> {
  return Array.from(await t.data());
}

async function close(actual: Tensor, expected: readonly number[] | Tensor, tol = 1e-10, what = ''): Promise<void> {
  const a = await values(actual);
  const e = Array.isArray(expected) ? expected : await values(expected as Tensor);
  assert.equal(a.length, e.length, `${what} length ${a.length} vs ${e.length}`);
  a.forEach((v, i) => assert.ok(Math.abs(v - e[i]!) <= tol * (1 + Math.abs(e[i]!)), `${what} entry ${i}: ${v} vs ${e[i]}`));
}

const f64 = (shape: number[], phase = 0) => direction(shape, 0, phase);

test('jvp of sin is cos times the tangent, lazily', async () => {
  const xs = [0.1, -0.5, 2];
  const [y, t] = jvp((x: Tensor) => sin(x), [tensor(xs)], [tensor([1, 2, 3])]);
  assert.equal(t.isRealized, false);
  await close(y, xs.map(Math.sin), 1e-6);
  await close(t, xs.map((x, i) => Math.cos(x) * (i + 1)), 1e-6);
});

/** A small two-layer network over a parameter tree, with two outputs. */
type Params = { w: Tensor; b: Tensor; head: [Tensor] };
const network = (p: Params, x: Tensor) => {
  const h = tanh(add(matmul(x, p.w), p.b));
  return { out: matmul(h, p.head[0]), energy: logsumexp(reshape(h, [h.size])) };
};
const arbNetwork = fc
  .tuple(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 2 }))
  .chain(([n, d, h, o]) => fc.tuple(arbTensor({ shape: [d, h] }), arbTensor({ shape: [h] }), arbTensor({ shape: [h, o] }), arbTensor({ shape: [n, d] })));

test('jvp of a random network over a parameter tree agrees with central differences and vjp', () =>
  holds(arbNetwork, (w, b, head, x) => checkJvp((w, b, head, x) => network({ w: w!, b: b!, head: [head!] }, x!), [w, b, head, x])));

test('jvp over trees returns tangents shaped like the outputs, equal to the flat computation', () =>
  holds(arbNetwork, async (...raw) => {
    const [w, b, head, x] = await Promise.all(raw.map(float64));
    const [dw, db, dhead, dx] = [w, b, head, x].map((t, k) => direction(t!.shape, k));
    const p = { w: w!, b: b!, head: [head!] as [Tensor] };
    const [out, tan] = jvp(network, [p, x!], [{ w: dw!, b: db!, head: [dhead!] as [Tensor] }, dx!]);
    const [, flat] = jvp((w: Tensor, b: Tensor, head: Tensor, x: Tensor) => network({ w, b, head: [head] }, x), [w!, b!, head!, x!], [dw!, db!, dhead!, dx!]);
    assert.deepEqual(Object.keys(tan).sort(), ['energy', 'out']);
    assert.deepEqual(tan.out.shape, out.out.shape);
    assert.deepEqual(await values(tan.out), await values(flat.out));
    assert.deepEqual(await values(tan.energy), await values(flat.energy));
  }));

test('linearize gives the same outputs and tangents as jvp, for several tangents', () =>
  holds(arbNetwork, async (...raw) => {
    const [w, b, head, x] = await Promise.all(raw.map(float64));
    const fn = (w: Tensor, b: Tensor, head: Tensor, x: Tensor) => network({ w, b, head: [head] }, x);
    const primals: [Tensor, Tensor, Tensor, Tensor] = [w!, b!, head!, x!];
    const [out, fJvp] = linearize(fn, ...primals);
    for (const phase of [0, 1.1, 2.3]) {
      const tangents = primals.map((t, k) => direction(t.shape, k, phase)) as [Tensor, Tensor, Tensor, Tensor];
      const [y, t] = jvp(fn, primals, tangents);
      const l = fJvp(...tangents);
      assert.deepEqual(await values(out.out), await values(y.out));
      assert.deepEqual(await values(l.out), await values(t.out));
      assert.deepEqual(await values(l.energy), await values(t.energy));
    }
  }));

test('jvp is linear in the tangent: J(a v + w) = a J v + J w', () =>
  holds(fc.tuple(arbNetwork, fc.double({ min: -3, max: 3, noNaN: true })), async (raw, a) => {
    const xs = await Promise.all(raw.map(float64));
    const fn = (w: Tensor, b: Tensor, head: Tensor, x: Tensor) => network({ w, b, head: [head] }, x).out;
    const vs = xs.map((t) => direction(t.shape, 1));
    const ws = xs.map((t) => direction(t.shape, 2, 0.5));
    const [, fJvp] = linearize(fn, ...(xs as [Tensor, Tensor, Tensor, Tensor]));
    const combined = fJvp(...(vs.map((v, k) => add(mul(v, a), ws[k]!)) as [Tensor, Tensor, Tensor, Tensor]));
    const separate = add(mul(fJvp(...(vs as [Tensor, Tensor, Tensor, Tensor])), a), fJvp(...(ws as [Tensor, Tensor, Tensor, Tensor])));
    await close(combined, separate, 1e-12);
  }));

/** f(x) = 1/2 x^T A x + sum(sin x): the Hessian is (A + A^T)/2 - diag(sin x). */
test('hessian equals jacfwd(grad) equals jacrev(grad) equals the closed form', () =>
  holds(
    fc.integer({ min: 1, max: 4 }).chain((n) => fc.tuple(arbTensor({ shape: [n, n], dtype: 'float64' }), arbTensor({ shape: [n], dtype: 'float64' }))),
    async (a, x) => {
      const n = x.size;
      const f = (x: Tensor) => add(mul(sum(mul(x, reshape(matmul(a, reshape(x, [n, 1])), [n]))), 0.5), sum(sin(x)));
      const av = await values(a);
      const xv = await values(x);
      const expected = Array.from({ length: n * n }, (_, k) => {
        const [i, j] = [Math.floor(k / n), k % n];
        return (av[i * n + j]! + av[j * n + i]!) / 2 - (i === j ? Math.sin(xv[i]!) : 0);
      });
      const h = hessian(f)(x);
      assert.deepEqual(h.shape, [n, n]);
      await close(h, expected, 1e-12, 'hessian');
      await close(jacfwd(grad(f))(x), expected, 1e-12, 'jacfwd(grad)');
      await close(jacrev(grad(f))(x), expected, 1e-12, 'jacrev(grad)');
    },
  ));

test('hessian over a parameter tree nests as {a: {a, b}, b: {a, b}} with blocks a.shape ++ b.shape', async () => {
  // f = sum(a^2 b): d2/da2 = diag(2b), d2/da db = diag(2a), d2/db2 = 0.
  const a = tensor([0.5, -1, 2], [3], 'float64');
  const b = tensor([1.5, 0.25, -0.75], [3], 'float64');
  const h = hessian((p: { a: Tensor; b: Tensor }) => sum(mul(mul(p.a, p.a), p.b)))({ a, b });
  const diag = (v: number[]) => v.flatMap((x, i) => v.map((_, j) => (i === j ? x : 0)));
  await close(h.a.a, diag([3, 0.5, -1.5]), 1e-12, 'aa');
  await close(h.a.b, diag([1, -2, 4]), 1e-12, 'ab');
  await close(h.b.a, diag([1, -2, 4]), 1e-12, 'ba');
  await close(h.b.b, new Array<number>(9).fill(0), 1e-12, 'bb');
  assert.deepEqual(h.a.b.shape, [3, 3]);
});

test('jacfwd equals jacrev equals central differences, with tree outputs and several argnums', () =>
  holds(
    fc.tuple(arbTensor({ shapeArb: arbShape({ maxRank: 2, maxDim: 3 }) }), arbTensor({ shapeArb: arbShape({ maxRank: 2, maxDim: 3 }) })),
    async (rawX, rawY) => {
      const [x, y] = [await float64(rawX), await float64(rawY)];
      const f = (x: Tensor, k: number, y: Tensor) => [mul(sin(x), k), { s: mul(sum(exp(x)), sum(cos(y))) }] as const;
      const fwd = jacfwd(f, { argnums: [0, 2] })(x, 2, y);
      const rev = jacrev(f, { argnums: [0, 2] })(x, 2, y);
      assert.deepEqual(fwd[0][0].shape, [...x.shape, ...x.shape]);
      assert.deepEqual(fwd[0][1].shape, [...x.shape, ...y.shape]);
      assert.deepEqual(fwd[1].s[1].shape, [...y.shape]);
      const pairs: [Tensor, Tensor, Tensor][] = [
        [fwd[0][0], rev[0][0], x], [fwd[0][1], rev[0][1], y], [fwd[1].s[0], rev[1].s[0], x], [fwd[1].s[1], rev[1].s[1], y],
      ];
      for (const [jf, jr] of pairs) await close(jf, jr, 1e-12, 'jacfwd vs jacrev');
      // Central differences, one input entry at a time: column j of d f[0] / dx and d f[1].s / dy.
      const eps = 1e-6;
      const xv = await values(x);
      const jx = await values(fwd[0][0]);
      for (let j = 0; j < x.size; j++) {
        const at = (h: number) => values(f(tensor(Float64Array.from(xv, (v, i) => (i === j ? v + h : v)), x.shape, 'float64'), 2, y)[0]);
        const [plus, minus] = [await at(eps), await at(-eps)];
        plus.forEach((p, i) => {
          const numeric = (p - minus[i]!) / (2 * eps);
          assert.ok(Math.abs(jx[i * x.size + j]! - numeric) <= 1e-6 * (1 + Math.abs(numeric)), `d f0[${i}] / dx[${j}]: ${jx[i * x.size + j]} vs ${numeric}`);
        });
      }
      const yv = await values(y);
      const jy = await values(fwd[1].s[1]);
      for (let j = 0; j < y.size; j++) {
        const at = (h: number) => f(x, 2, tensor(Float64Array.from(yv, (v, i) => (i === j ? v + h : v)), y.shape, 'float64'))[1].s.item();
        const numeric = ((await at(eps)) - (await at(-eps))) / (2 * eps);
        assert.ok(Math.abs(jy[j]! - numeric) <= 1e-6 * (1 + Math.abs(numeric)), `d s / dy[${j}]: ${jy[j]} vs ${numeric}`);
      }
    },
  ));

test('Jacobians of zero-size inputs and outputs are empty blocks of the right shape', async () => {
  const x = tensor([], [0, 2], 'float64');
  const z = tensor([1, 2], [2], 'float64');
  const f = (x: Tensor, z: Tensor) => ({ fromX: sin(x), fromZ: mul(z, 3) });
  for (const jac of [jacfwd, jacrev]) {
    const j = jac(f, { argnums: [0, 1] })(x, z);
    assert.deepEqual(j.fromX[0].shape, [0, 2, 0, 2]);
    assert.deepEqual(j.fromZ[0].shape, [2, 0, 2]);
    await close(j.fromZ[1], [3, 0, 0, 3], 0);
  }
});

test('jit of jvp, linearize and hessian equals eager', async () => {
  const x = f64([4]);
  const v = f64([4], 1);
  const f = (x: Tensor) => mul(sum(mul(x, x)), sum(sin(x)));
  const [, eager] = jvp(f, [x], [v]);
  const [, jitted] = await jit((x: Tensor, v: Tensor) => jvp(f, [x], [v]), { backend: 'reference' })(x, v);
  await close(jitted, eager, 1e-14);
  const lin = await jit((x: Tensor, v: Tensor) => linearize(f, x)[1](v), { backend: 'reference' })(x, v);
  await close(lin, eager, 1e-14);
  const h = await jit(hessian(f), { backend: 'reference' })(x);
  await close(h, hessian(f)(x), 1e-14);
});

test('the compiled cpu backend runs jvp, jacrev and hessian programs as the reference does (float32)', () =>
  holds(arbNetwork, async (w, b, head, x) => {
    const fn = (w: Tensor, b: Tensor, head: Tensor, x: Tensor) => network({ w, b, head: [head] }, x);
    const both = (f: (w: Tensor, b: Tensor, head: Tensor, x: Tensor) => unknown) =>
      Promise.all((['reference', 'cpu'] as const).map(async (backend) => {
        const out = await jit(f, { backend })(w, b, head, x);
        return Promise.all(flatten<Tensor>(out as PyTree<Tensor>).leaves.map(values));
      }));
    const tangents = [w, b, head, x].map((t) => mul(t, 0.5)) as [Tensor, Tensor, Tensor, Tensor];
    const programs = {
      jvp: (w: Tensor, b: Tensor, head: Tensor, x: Tensor) => jvp(fn, [w, b, head, x], tangents),
      jacrev: jacrev(fn, { argnums: [0, 1] }),
      hessian: hessian((w: Tensor, b: Tensor, head: Tensor, x: Tensor) => fn(w, b, head, x).energy, { argnums: 1 }),
    };
    for (const [name, f] of Object.entries(programs)) {
      const [ref, cpu] = await both(f);
      ref!.forEach((leaf, i) => leaf.forEach((r, j) => {
        const c = cpu![i]![j]!;
        assert.ok(Math.abs(c - r) <= 1e-4 * (1 + Math.abs(r)), `${name} leaf ${i} entry ${j}: cpu ${c}, reference ${r}`);
      }));
    }
  }));

test('jvp of grad (forward over reverse) is the Hessian-vector product; so is grad of <grad, v>', () =>
  holds(fc.tuple(arbTensor({ shape: [3], dtype: 'float64' })), async (x) => {
    const v = f64([3], 0.3);
    const f = (x: Tensor) => sum(mul(exp(mul(x, 0.5)), cos(x)));
    const [, hvp] = jvp(grad(f), [x], [v]);
    const reverse = grad((x: Tensor) => sum(mul(grad(f)(x), v)))(x);
    const dense = reshape(matmul(hessian(f)(x), reshape(v, [3, 1])), [3]);
    await close(hvp, reverse, 1e-12, 'fwd-over-rev vs rev-over-rev');
    await close(hvp, dense, 1e-12, 'fwd-over-rev vs dense');
  }));

test('grad of jvp agrees with central differences (reverse over forward)', () =>
  holds(fc.tuple(arbTensor({ shape: [2, 3] }), arbTensor({ shape: [2, 3] })), async (x, v) => {
    const f = (x: Tensor) => tanh(mul(x, add(sin(x), 2)));
    await checkGrad((x: Tensor, v: Tensor) => jvp(f, [x], [v])[1], [x, v]);
  }));

test('jvp of jvp is the second directional derivative', () =>
  holds(fc.tuple(arbTensor({ shape: [3], dtype: 'float64' })), async (x) => {
    const [u, w] = [f64([3], 0.2), f64([3], 1.7)];
    const d2 = jvp((x: Tensor) => jvp(sin, [x], [u])[1], [x], [w])[1];
    const [xv, uv, wv] = [await values(x), await values(u), await values(w)];
    await close(d2, xv.map((a, i) => -Math.sin(a) * uv[i]! * wv[i]!), 1e-12);
  }));

test('identity, constant and integer outputs: tangents pass through, or are zeros', async () => {
  const x = f64([2, 2]);
  const v = f64([2, 2], 1);
  const [, t] = jvp((x: Tensor) => ({ same: x, twice: [x, x], constant: tensor([1, 2]), count: cast(greater(x, 0), 'int32') }), [x], [v]);
  assert.deepEqual(await values(t.same), await values(v));
  assert.deepEqual(await values(t.twice[1]!), await values(v));
  assert.deepEqual(await values(t.constant), [0, 0]);
  assert.equal(t.count.dtype, 'int32');
  assert.deepEqual(await values(t.count), [0, 0, 0, 0]);
  // One input used by two arguments: each tangent counts.
  const [, sumT] = jvp((a: Tensor, b: Tensor) => add(a, neg(b)), [x, x], [v, zeros([2, 2], 'float64')]);
  assert.deepEqual(await values(sumT), await values(v));
});

test('jvp honours stopGradient (zero tangent), customVjp (the transpose of bwd) and remat (identical)', () =>
  holds(fc.tuple(arbTensor({ shape: [2, 3], dtype: 'float64' })), async (x) => {
    const v = f64([2, 3], 0.6);
    const [xv, vv] = [await values(x), await values(v)];
    // d/dx [stopGradient(x) * x] = stopGradient(x): only the second factor carries a tangent.
    const [y, frozen] = jvp((x: Tensor) => mul(stopGradient(x), x), [x], [v]);
    await close(y, xv.map((a) => a * a), 0, 'value');
    await close(frozen, xv.map((a, i) => a * vv[i]!), 1e-14, 'stopGradient');
    // A straight-through estimator: floor forward, identity backward, so identity forward mode.
    const ste = customVjp((x: Tensor) => floor(x), (x: Tensor) => [floor(x), null] as const, (_r: never, ct: Tensor) => [ct]);
    await close(jvp(ste, [x], [v])[1], vv, 0, 'straight-through');
    // A deliberately wrong rule (twice the derivative of sin) is what forward mode sees too.
    const doubled = customVjp((x: Tensor) => sin(x), (x: Tensor) => [sin(x), x] as const, (r: never, ct: Tensor) => [mul(ct, mul(cos(r as Tensor), 2))]);
    await close(jvp(doubled, [x], [v])[1], xv.map((a, i) => 2 * Math.cos(a) * vv[i]!), 1e-14, 'customVjp');
    const g = (x: Tensor) => sin(exp(mul(x, tanh(x))));
    assert.deepEqual(await values(jvp(remat(g), [x], [v])[1]), await values(jvp(g, [x], [v])[1]));
    assert.deepEqual(await values(hessian((x: Tensor) => sum(remat(g)(x)))(x)), await values(hessian((x: Tensor) => sum(g(x)))(x)));
  }));

test('vmap of jvp, jvp of vmap and vmap of hessian equal the per-example results', () =>
  holds(fc.tuple(fc.integer({ min: 1, max: 3 }).chain((b) => arbTensor({ shape: [b, 2], dtype: 'float64' }))), async (xs) => {
    const vs = f64([...xs.shape], 0.8);
    const f = (x: Tensor) => mul(sin(x), sum(exp(x)));
    const rows = (t: Tensor) => Array.from({ length: t.shape[0]! }, (_, i) => reshape(slice(t, [i, 0], [i + 1, t.shape[1]!]), [t.shape[1]!]));
    const perExample = rows(xs).map((x, i) => jvp(f, [x], [rows(vs)[i]!])[1]);
    const batchedOuter = vmap((x: Tensor, v: Tensor) => jvp(f, [x], [v])[1])(xs, vs);
    const batchedInner = jvp(vmap(f), [xs], [vs])[1];
    for (const [i, expected] of perExample.entries()) {
      await close(rows(batchedOuter)[i]!, expected, 1e-13, 'vmap(jvp)');
      await close(rows(batchedInner)[i]!, expected, 1e-13, 'jvp(vmap)');
    }
    const h = vmap(hessian((x: Tensor) => sum(f(x))))(xs);
    for (const [i, x] of rows(xs).entries()) {
      await close(reshape(slice(h, [i, 0, 0], [i + 1, 2, 2]), [2, 2]), hessian((x: Tensor) => sum(f(x)))(x), 1e-13, 'vmap(hessian)');
    }
  }));

test('errors name the tangent or primal path that is wrong', () => {
  const p = { w: tensor([1, 2, 3]), b: tensor([0]) };
  const f = (p: { w: Tensor; b: Tensor }) => sum(mul(p.w, p.b));
  assert.throws(() => jvp(f, [p], [{ w: tensor([1, 2]), b: tensor([0]) }]), (e: Error) => e instanceof ShapeError && /tangents\[0\]\.w is float32 \[2\], but its primal is float32 \[3\]/.test(e.message));
  assert.throws(() => jvp(f, [p], [{ w: tensor([1, 2, 3], [3], 'float64'), b: tensor([0]) }]), (e: Error) => e instanceof DTypeError && /tangents\[0\]\.w is float64 \[3\]/.test(e.message));
  assert.throws(() => jvp(f, [p], [{ w: tensor([1, 2, 3]) } as never]), (e: Error) => e instanceof TreeError && /tangents\[0\]: keys \{b,w\} vs \{w\}/.test(e.message));
  assert.throws(() => jvp(f, [p], [p, p] as never), (e: Error) => e instanceof TreeError && /1 vs 2 children/.test(e.message));
  assert.throws(() => jvp(f, p as never, [p]), (e: Error) => e instanceof TreeError && /primals must be an array/.test(e.message));
  assert.throws(() => jvp(f, [p], p as never), (e: Error) => e instanceof TreeError && /tangents must be an array/.test(e.message));
  const ints = { w: tensor([1, 2, 3], [3], 'int32'), b: tensor([0]) };
  assert.throws(() => jvp(f as never, [ints], [ints]), (e: Error) => e instanceof DTypeError && /primals\[0\]\.w is int32 \[3\]/.test(e.message));
  assert.throws(() => jvp(() => ({ k: 3 }), [], []), (e: Error) => e instanceof TreeError && /output result\.k is number 3/.test(e.message));
  const [, fJvp] = linearize(f, p);
  assert.throws(() => fJvp({ w: tensor([1]), b: tensor([0]) }), (e: Error) => e instanceof ShapeError && /linearize\(f\): tangents\[0\]\.w/.test(e.message));
  assert.throws(() => jacrev((x: Tensor) => cast(x, 'int32'))(tensor([1])), (e: Error) => e instanceof DTypeError && /output result is int32 \[1\]; only float outputs/.test(e.message));
  assert.throws(() => jacfwd((x: Tensor, n: Tensor) => mul(x, cast(n, 'float32')), { argnums: 1 })(tensor([1]), tensor([1], [1], 'int32')), (e: Error) => e instanceof DTypeError && /args\[1\] is int32 \[1\]/.test(e.message));
  assert.throws(() => hessian(f, { argnums: 2 })(p), (e: Error) => e instanceof TreeError && /argnums 2 is out of range/.test(e.message));
});

test('vjp and jvp agree on a long chain (no recursion limits)', async () => {
  let f = (x: Tensor) => x;
  for (let i = 0; i < 2000; i++) {
    const g = f;
    f = (x: Tensor) => sin(g(x));
  }
  const x = tensor([0.3], [1], 'float64');
  const v = tensor([1], [1], 'float64');
  const [, t] = jvp(f, [x], [v]);
  const [, pull] = vjp(f, x);
  await close(t, pull(v)[0]!, 1e-12);
});
