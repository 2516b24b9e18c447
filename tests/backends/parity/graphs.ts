/**
 * Whole programs on a fast backend against the reference oracle: random expression DAGs (so fusion
 * and memory planning meet arbitrary mixes of elementwise, reduction, movement and matmul nodes),
 * the gradient of a convolutional block, donation as the public API shows it, tensors large enough
 * to be split over threads or workgroups, and zero-size tensors.
 */
import assert from 'node:assert/strict';
import { grad } from '../../../autodiff/index.ts';
import { RUNS, T, fc, paritySuite, randn, seed, type Target } from './helpers.ts';

const opts = { numRuns: RUNS };

export type Step =
  | { kind: 'unary'; fn: 'tanh' | 'sigmoid' | 'neg' | 'abs' | 'sin'; a: number }
  | { kind: 'binary'; fn: 'add' | 'sub' | 'mul' | 'max'; a: number; b: number }
  | { kind: 'center' | 'rowmax' | 'transpose' | 'matmul' | 'shift' | 'select' | 'colsum' | 'moments'; a: number; b: number };

export const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ kind: fc.constant('unary' as const), fn: fc.constantFrom('tanh' as const, 'sigmoid' as const, 'neg' as const, 'abs' as const, 'sin' as const), a: fc.nat() }),
  fc.record({ kind: fc.constant('binary' as const), fn: fc.constantFrom('add' as const, 'sub' as const, 'mul' as const, 'max' as const), a: fc.nat(), b: fc.nat() }),
  fc.record({ kind: fc.constantFrom('center' as const, 'rowmax' as const, 'transpose' as const, 'matmul' as const, 'shift' as const, 'select' as const, 'colsum' as const, 'moments' as const), a: fc.nat(), b: fc.nat() }),
);

/** Builds the DAG over square [n, n] tensors; every step refers to earlier values by index modulo. */
export function dag(steps: readonly Step[], n: number, outs: readonly number[]): (...xs: T.Tensor[]) => T.Tensor[] {
  return (...xs) => {
    const vals: T.Tensor[] = [...xs];
    const pick = (i: number): T.Tensor => vals[i % vals.length]!;
    for (const s of steps) {
      const a = pick(s.a);
      switch (s.kind) {
        case 'unary':
          vals.push(T.unary(s.fn, a));
          break;
        case 'binary':
          vals.push(T.binary(s.fn, a, pick(s.b)));
          break;
        case 'center':
          vals.push(T.sub(a, T.div(T.sum(a, 1, true), n)));
          break;
        case 'rowmax':
          vals.push(T.sub(a, T.max(a, 1, true)));
          break;
        case 'colsum':
          vals.push(T.mul(pick(s.b), T.sum(T.tanh(a), 0, true)));
          break;
        case 'moments':
          // Two row means over one input, each broadcast back (a multi-output reduction, as group norm's backward).
          vals.push(T.sub(T.mul(a, T.div(T.sum(T.mul(a, pick(s.b)), 1, true), n)), T.div(T.sum(a, 1, true), n)));
          break;
        case 'transpose':
          vals.push(T.transpose(a));
          break;
        case 'matmul':
          vals.push(T.tanh(T.div(T.matmul(a, pick(s.b)), n)));
          break;
        case 'shift':
          vals.push(T.pad(T.slice(a, [1, 0]), [0, 0], [1, 0], 0.5));
          break;
        case 'select':
          vals.push(T.where(T.less(a, pick(s.b)), a, T.mul(pick(s.b), 0.5)));
          break;
        default:
          s satisfies never;
      }
    }
    return outs.map((o) => pick(o + xs.length));
  };
}

/**
 * An optimizer step over one parameter (Adam's moments, the parameter from them, its EMA from
 * that): four outputs that multi-output fusion writes in one kernel.
 */
export function adamLike(p: T.Tensor, m: T.Tensor, v: T.Tensor, g: T.Tensor, e: T.Tensor, lr: T.Tensor): T.Tensor[] {
  const g2 = T.where(T.isFinite(g), g, 0);
  const m2 = T.add(T.mul(m, 0.9), T.mul(g2, 0.1));
  const v2 = T.add(T.mul(v, 0.999), T.mul(T.mul(g2, g2), 0.001));
  const p2 = T.sub(p, T.mul(T.div(m2, T.add(T.sqrt(v2), 1e-8)), lr));
  const e2 = T.add(p2, T.mul(T.sub(e, p2), 0.99));
  return [m2, v2, p2, e2];
}

/** Conv, group norm, SiLU, attention-style softmax and matmul: backward programs exercise the convolution adjoints, broadcast-reductions and fusion together. */
function block(x: T.Tensor, w: T.Tensor, b: T.Tensor, m: T.Tensor): T.Tensor {
  const h = T.silu(T.groupNorm(T.add(T.conv2d(x, w, { padding: 1 }), T.reshape(b, [1, -1, 1, 1])), 2));
  const [n, c, hh, ww] = h.shape as [number, number, number, number];
  const tokens = T.reshape(h, [n, c, hh * ww]);
  const att = T.softmax(T.matmul(T.transpose(tokens), tokens), -1);
  return T.mean(T.square(T.matmul(T.reshape(T.matmul(tokens, att), [n * c, hh * ww]), m)));
}

/** Registers the whole-program parity tests of `target`, each named after it. */
export function graphSuite(target: Target): void {
  const { parity, test, tol } = paritySuite(target);

  test('random expression DAGs agree with the reference', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(step, { minLength: 1, maxLength: 14 }),
        fc.integer({ min: 1, max: 12 }),
        fc.integer({ min: 1, max: 3 }),
        fc.array(fc.nat(), { minLength: 1, maxLength: 3 }),
        seed,
        async (steps, n, inputs, outs, sd) => {
          const xs = Array.from({ length: inputs }, (_, i) => randn(sd + i, [n, n]));
          await parity('dag', dag(steps, n, outs.map((o) => o % steps.length)), xs, tol.program);
        },
      ),
      opts,
    );
  });

  test('multi-output kernels agree with the reference: a fused optimizer step; a reader between two outputs; an output read at another index; sibling reductions', async () => {
    const args = [randn(1, [5, 7]), randn(2, [5, 7]), randn(3, [5, 7], 0, 2), randn(4, [5, 7]), randn(5, [5, 7]), randn(6, [])];
    await parity('adam-like', adamLike, args, tol.program);
    // sum(m2) is built between m2 and p2: m2 and p2 stay in separate kernels, the sum reads m2 in between.
    await parity('reader between', (m, g) => {
      const m2 = T.add(T.mul(m, 0.9), g);
      const total = T.sum(m2);
      return [m2, total, T.add(T.tanh(m2), total)];
    }, [randn(7, [6, 6]), randn(8, [6, 6])], tol.program);
    // b reads a transposed: not at its own index, so a and b stay apart.
    await parity('other index', (x) => {
      const a = T.tanh(x);
      return [a, T.add(T.transpose(a), a)];
    }, [randn(9, [6, 6])], tol.program);
    // Reductions of one structure over shared inputs: one loop, an accumulator each, each output
    // through its own epilogue; short rows (a thread per output), and long ones (a workgroup's tree on
    // WebGPU, partial sums on the CPU).
    await parity('sibling reductions', (g, x) => [
      T.sum(g, [1, 2]), T.mul(T.sum(T.mul(g, x), [1, 2]), 0.5), T.max(g, [1, 2]), T.max(T.mul(g, x), [1, 2]), T.sum(T.reshape(x, [5, 42]), 1),
    ], [randn(10, [5, 6, 7]), randn(11, [5, 6, 7])], tol.program);
    await parity('sibling long reductions', (v, w) => [T.exp(T.div(T.sum(v, 1), 300)), T.sum(T.mul(v, w), 1), T.sum(T.square(v), 1)], [randn(12, [3, 300]), randn(13, [3, 300])], tol.longReduction);
  });

  test('grad of a conv / group norm / attention block agrees with the reference', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 2 }), fc.integer({ min: 1, max: 2 }), fc.integer({ min: 3, max: 6 }), seed, async (n, half, size, sd) => {
        const c = 2 * half;
        const args = [randn(sd, [n, c, size, size]), randn(sd + 1, [c, c, 3, 3], -0.5, 0.5), randn(sd + 2, [c]), randn(sd + 3, [size * size, 3], -0.5, 0.5)];
        await parity('grad block', (x, w, b, m) => grad(block, { argnums: [1, 2, 3] })(x!, w!, b!, m!) as T.Tensor[], args, tol.gradient);
      }),
      { numRuns: Math.max(3, Math.ceil(RUNS / 4)) },
    );
  });

  test('donation: donated arguments cannot be read or passed again; values stay right when an output cannot reuse them', async () => {
    const b = await T.getBackend(target);
    const onDevice = (v: number[]): T.Tensor => T.fromDevice(b, b.upload(new Float32Array(v), [v.length], 'float32'), [v.length], 'float32');
    const [x, y] = [onDevice([1, 2, 3, 4]), onDevice([5, 6, 7, 8])];
    const f = T.jit((p: T.Tensor, q: T.Tensor) => T.mul(q, 2), { backend: target, donate: [0] });
    const out = await f(x, y);
    assert.deepEqual(Array.from(await out.data()), [10, 12, 14, 16]);
    assert.ok(x.isDonated);
    await assert.rejects(x.data(), /donated/);
    await assert.rejects(f(x, y), /donated/);
    assert.ok(!y.isDonated);
    assert.deepEqual(Array.from(await y.data()), [5, 6, 7, 8]);
    // In place: the kernel reads the donated input, so the output goes elsewhere; values are right.
    const g = T.jit((p: T.Tensor) => T.add(T.sum(p), p), { backend: target, donate: [0] });
    assert.deepEqual(Array.from(await (await g(onDevice([1, 2, 3]))).data()), [7, 8, 9]);
    // A buffer passed twice is not given away.
    const z = onDevice([1, 2]);
    const h = T.jit((p: T.Tensor, q: T.Tensor) => T.add(p, q), { backend: target, donate: [0] });
    assert.deepEqual(Array.from(await (await h(z, z)).data()), [2, 4]);
    assert.deepEqual(Array.from(await z.data()), [1, 2]);
  });

  test('large tensors, split over threads or workgroups, with sizes that are not multiples of any tile', async () => {
    const x = randn(1, [257, 1031]);
    await parity('large elementwise', (v) => [T.tanh(T.add(T.mul(v, 3), T.transpose(T.transpose(v)))), T.exp(T.slice(v, [1, 2]))], [x], tol.transcendental);
    await parity('large reductions', (v) => [T.sum(v, [1]), T.sum(v, [0]), T.max(v, [0]), T.sum(v)], [x], tol.longReduction);
    await parity('large matmul', (a, b) => T.matmul(a, b), [randn(2, [3, 131, 257]), randn(3, [257, 97])], tol.contraction);
  });

  test('zero-size tensors: elementwise, reductions over empty axes, contractions with k = 0', async () => {
    await parity('empty', (x, w) => [T.exp(x), T.sum(x, 0), T.matmul(T.transpose(x), T.reshape(w, [0, 2])), T.concat([x, T.zeros([0, 3])], 0)], [randn(1, [0, 3]), randn(2, [0])]);
  });
}
