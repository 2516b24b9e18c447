/**
 * Per-primitive parity of a fast backend against the reference oracle on random shapes, broadcasts,
 * attributes and values. Movement, integer, boolean, cast and random-bit ops are exact on every
 * target; float arithmetic, transcendentals, reductions and contractions use the target's
 * tolerances (see `TOLERANCES`).
 */
import type { BinaryFn, UnaryFn } from '../../../core/index.ts';
import { EXACT, RUNS, T, broadcastPair, fc, paritySuite, randint, randn, seed, shape, type Target } from './helpers.ts';

const opts = { numRuns: RUNS };

/** Unary float ops with the range their inputs are drawn from, and whether they are transcendental. */
const FLOAT_UNARY: [UnaryFn, number, number, boolean][] = [
  ['neg', -3, 3, false],
  ['exp', -8, 8, true],
  ['log', 0.01, 10, true],
  ['sin', -6, 6, true],
  ['cos', -6, 6, true],
  ['sqrt', 0, 10, true],
  ['rsqrt', 0.01, 10, true],
  ['tanh', -12, 12, true],
  ['sigmoid', -20, 20, true],
  ['abs', -3, 3, false],
  ['reciprocal', 0.1, 10, true],
  ['floor', -5, 5, false],
  ['sign', -3, 3, false],
];

const FLOAT_BINARY: BinaryFn[] = ['add', 'sub', 'mul', 'div', 'max', 'min', 'lt', 'le', 'gt', 'ge', 'eq', 'ne'];

const INT_BINARY: BinaryFn[] = ['add', 'sub', 'mul', 'div', 'max', 'min', 'pow', 'lt', 'le', 'gt', 'ge', 'eq', 'ne'];

/** A convolution's attributes, with input and weight shapes that fit them. */
const convCase = fc
  .record({
    n: fc.integer({ min: 1, max: 2 }),
    groups: fc.integer({ min: 1, max: 2 }),
    cg: fc.integer({ min: 1, max: 3 }),
    og: fc.integer({ min: 1, max: 3 }),
    kh: fc.integer({ min: 1, max: 3 }),
    kw: fc.integer({ min: 1, max: 3 }),
    stride: fc.tuple(fc.integer({ min: 1, max: 2 }), fc.integer({ min: 1, max: 2 })),
    padding: fc.tuple(fc.nat(2), fc.nat(2)),
    dilation: fc.tuple(fc.integer({ min: 1, max: 2 }), fc.integer({ min: 1, max: 2 })),
    extraH: fc.nat(5),
    extraW: fc.nat(5),
  })
  .map((c) => ({
    ...c,
    x: [c.n, c.cg * c.groups, (c.kh - 1) * c.dilation[0] + 1 + c.extraH, (c.kw - 1) * c.dilation[1] + 1 + c.extraW],
    w: [c.og * c.groups, c.cg, c.kh, c.kw],
  }));

/** Registers the per-primitive parity tests of `target`, each named after it. */
export function primitiveSuite(target: Target): void {
  const { parity, test, tol } = paritySuite(target);

  test('unary float ops', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...FLOAT_UNARY), shape(), seed, async ([fn, lo, hi, transcendental], s, sd) => {
        await parity(fn, (x) => T.unary(fn, x), [randn(sd, s, lo, hi)], transcendental ? tol.transcendental : EXACT);
      }),
      opts,
    );
  });

  test('unary int32 ops and bool ops', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom<UnaryFn>('neg', 'abs', 'sign'), shape(), seed, async (fn, s, sd) => {
        await parity(fn, (x) => T.unary(fn, x), [randint(sd, s, -100, 100)]);
        await parity('logicalNot', (x) => T.logicalNot(T.less(x, 0)), [randint(sd, s, -3, 3)]);
      }),
      opts,
    );
  });

  test('isFinite and uniformFromBits', async () => {
    await fc.assert(
      fc.asyncProperty(shape(), seed, async (s, sd) => {
        // x / (x - 1) with x in {0, 1, 2}: finite, infinite and 0/0 NaN.
        await parity('isFinite', (x) => T.isFinite(T.div(x, T.sub(x, 1))), [T.cast(randint(sd, s, 0, 3), 'float32')]);
        await parity('uniformFromBits', (b) => T.uniformFromBits(b), [randint(sd, s, -(2 ** 31), 2 ** 31 - 1)]);
      }),
      opts,
    );
  });

  test('binary float ops with broadcasting', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...FLOAT_BINARY), broadcastPair(), seed, fc.boolean(), async (fn, [sa, sb], sd, swap) => {
        const a = randn(sd, sa);
        const b = fn === 'div' ? randn(sd + 1, sb, 0.5, 3) : randn(sd + 1, sb);
        const [x, y] = swap ? [b, a] : [a, b];
        await parity(fn, (p, q) => T.binary(fn, p, q), [x, y], tol.arithmetic);
      }),
      opts,
    );
  });

  test('pow: positive bases, and negative bases with integer exponents', async () => {
    await fc.assert(
      fc.asyncProperty(broadcastPair(), seed, async ([sa, sb], sd) => {
        await parity('pow', (a, b) => T.pow(a, b), [randn(sd, sa, 0.1, 4), randn(sd + 1, sb, -3, 3)], tol.transcendental);
        await parity('pow int exponent', (a, b) => T.pow(a, T.cast(b, 'float32')), [randn(sd, sa, -3, 3), randint(sd + 1, sb, -3, 4)], tol.transcendental);
      }),
      opts,
    );
  });

  test('binary int32 ops (wrapping, truncating division, x / 0 = x)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...INT_BINARY), broadcastPair(), seed, async (fn, [sa, sb], sd) => {
        const [lo, hi] = fn === 'pow' ? [-4, 5] : [-50000, 50000];
        await parity(fn, (p, q) => T.binary(fn, p, q), [randint(sd, sa, lo, hi), randint(sd + 1, sb, fn === 'pow' ? -2 : lo, fn === 'pow' ? 6 : hi)]);
      }),
      opts,
    );
  });

  test('logical and/or, eq/ne on bool, select', async () => {
    await fc.assert(
      fc.asyncProperty(broadcastPair(), seed, async ([sa, sb], sd) => {
        const a = randn(sd, sa);
        const b = randn(sd + 1, sb);
        await parity('and/or', (x, y) => [T.logicalAnd(T.less(x, 0), T.less(y, 0.5)), T.logicalOr(T.less(x, 0), T.less(y, 0.5)), T.equal(T.less(x, 0), T.less(y, 0))], [a, b]);
        await parity('select', (x, y) => T.where(T.less(x, y), x, y), [a, b]);
        await parity('select int', (x, y) => T.where(T.less(x, 0), T.cast(x, 'int32'), T.cast(y, 'int32')), [a, b]);
      }),
      opts,
    );
  });

  test('cast between float32, int32 and bool', async () => {
    const dtypes = ['float32', 'int32', 'bool'] as const;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...dtypes), fc.constantFrom(...dtypes), shape(), seed, async (from, to, s, sd) => {
        const x = from === 'float32' ? randn(sd, s, -5, 5) : from === 'int32' ? randint(sd, s, -5, 5) : T.less(randn(sd, s), 0);
        await parity(`cast ${from}->${to}`, (v) => T.cast(v, to), [x]);
      }),
      opts,
    );
  });

  test('cast saturates, NaN to 0 (float to int32), NaN is true (to bool)', async () => {
    const x = T.tensor([NaN, Infinity, -Infinity, 3e9, -3e9, 2.7, -2.7, 0, -0], [9]);
    await parity('cast specials', (v) => [T.cast(v, 'int32'), T.cast(v, 'bool')], [x]);
  });

  test('reductions: sum and max over random axes', async () => {
    await fc.assert(
      fc.asyncProperty(shape(4, 6), seed, fc.constantFrom('sum', 'max'), fc.boolean(), fc.boolean(), async (s, sd, fn, keep, int) => {
        const axes = s.map((_, i) => i).filter((i) => (sd >> i) & 1);
        const x = int ? randint(sd, s, -1000, 1000) : randn(sd, s);
        const f = fn === 'sum' ? T.sum : T.max;
        await parity(`${fn} [${axes}]`, (v) => f(v, axes, keep), [x], int ? EXACT : tol.reduction);
      }),
      opts,
    );
  });

  test('reductions: long rows and whole-tensor sums', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 256, max: 9000 }), seed, async (rows, n, sd) => {
        const x = randn(sd, [rows, n]);
        await parity('tree sum', (v) => [T.sum(v, [1]), T.max(v, [1]), T.sum(v)], [x], tol.longReduction);
      }),
      opts,
    );
  });

  test('max propagates NaN', async () => {
    await parity('max NaN', (v) => [T.max(v, [1]), T.maximum(v, 0)], [T.tensor([1, NaN, 2, 3, 4, 5], [2, 3])]);
  });

  test('reshape, permute and broadcast', async () => {
    await fc.assert(
      fc.asyncProperty(shape(5, 4), seed, fc.integer({ min: 0, max: 1000 }), async (s, sd, p) => {
        const perm = s.map((_, i) => i).sort((a, b) => ((a * 7919 + p) % 13) - ((b * 7919 + p) % 13));
        const x = randn(sd, s);
        await parity('permute', (v) => T.permute(v, perm), [x]);
        await parity('reshape', (v) => T.reshape(T.permute(v, perm), [-1]), [x]);
        await parity('broadcast', (v) => T.broadcastTo(T.reshape(v, [1, ...s.map((d, i) => ((p >> i) & 1 ? 1 : d))].slice(0, s.length + 1)), [3, ...s.map((d, i) => ((p >> i) & 1 ? d : d))]), [
          randn(sd, s.map((d, i) => ((p >> i) & 1 ? 1 : d))),
        ]);
      }),
      opts,
    );
  });

  test('slice with starts, ends and strides', async () => {
    await fc.assert(
      fc.asyncProperty(
        shape(4, 7).chain((s) =>
          fc.tuple(
            fc.constant(s),
            fc.tuple(...s.map((d) => fc.tuple(fc.integer({ min: 0, max: d }), fc.integer({ min: 0, max: d }), fc.integer({ min: 1, max: 3 })))),
          ),
        ),
        seed,
        async ([s, ranges], sd) => {
          const starts = ranges.map(([a, b]) => Math.min(a, b));
          const ends = ranges.map(([a, b]) => Math.max(a, b));
          await parity('slice', (v) => T.slice(v, starts, ends, ranges.map((r) => r[2])), [randn(sd, s)]);
        },
      ),
      opts,
    );
  });

  test('pad with lo, hi, interior and a fill value', async () => {
    await fc.assert(
      fc.asyncProperty(
        shape(4, 4, 0).chain((s) => fc.tuple(fc.constant(s), fc.array(fc.tuple(fc.nat(2), fc.nat(2), fc.nat(2)), { minLength: s.length, maxLength: s.length }))),
        seed,
        fc.double({ min: -5, max: 5, noNaN: true }),
        async ([s, p], sd, value) => {
          await parity('pad', (v) => T.pad(v, p.map((x) => x[0]), p.map((x) => x[1]), value, p.map((x) => x[2])), [randn(sd, s)]);
        },
      ),
      opts,
    );
  });

  test('concat along any axis, including empty parts', async () => {
    await fc.assert(
      fc.asyncProperty(shape(4, 4).filter((s) => s.length > 0), fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 5 }), seed, fc.nat(), async (s, sizes, sd, ax) => {
        const axis = ax % s.length;
        const parts = sizes.map((n, i) => randn(sd + i, s.map((d, j) => (j === axis ? n : d))));
        await parity('concat', (...xs) => T.concat(xs, axis), parts);
      }),
      opts,
    );
  });

  test('gather with clamped indices', async () => {
    await fc.assert(
      fc.asyncProperty(shape(3, 5).filter((s) => s.length > 0), shape(2, 4), seed, fc.nat(), async (s, is, sd, ax) => {
        const axis = ax % s.length;
        await parity('gather', (x, i) => T.gather(x, i, axis), [randn(sd, s), randint(sd + 1, is, -2, s[axis]! + 2)]);
      }),
      opts,
    );
  });

  test('iota and literals in every dtype', async () => {
    await fc.assert(
      fc.asyncProperty(shape(4, 5).filter((s) => s.length > 0), fc.nat(), fc.double({ min: -1e6, max: 1e6, noNaN: true }), async (s, ax, v) => {
        const axis = ax % s.length;
        await parity('iota', () => [T.iota(s, axis, 'int32'), T.iota(s, axis, 'float32'), T.iota(s, axis, 'bool'), T.full(s, v), T.full(s, v, 'int32')], []);
      }),
      opts,
    );
  });

  test('randomBits matches the reference bit for bit', async () => {
    await fc.assert(
      fc.asyncProperty(shape(3, 7), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), fc.nat(2 ** 31 - 1), async (s, k0, k1, offset) => {
        const key = T.tensor([k0, k1], [2], 'int32');
        await parity('randomBits', (k) => [T.randomBits(k, s, offset), T.uniformFromBits(T.randomBits(k, s, offset))], [key]);
      }),
      opts,
    );
  });

  test('matmul with batch broadcasting', async () => {
    await fc.assert(
      fc.asyncProperty(broadcastPair(2, 3), fc.integer({ min: 1, max: 70 }), fc.integer({ min: 1, max: 70 }), fc.integer({ min: 1, max: 70 }), seed, async ([ba, bb], m, k, n, sd) => {
        await parity('matmul', (a, b) => T.matmul(a, b), [randn(sd, [...ba, m, k]), randn(sd + 1, [...bb, k, n])], tol.contraction);
      }),
      opts,
    );
  });


  test('conv2d and both adjoints with random stride, padding, dilation and groups', async () => {
    await fc.assert(
      fc.asyncProperty(convCase, seed, async (c, sd) => {
        const o = { stride: c.stride, padding: c.padding, dilation: c.dilation, groups: c.groups };
        const x = randn(sd, c.x);
        const w = randn(sd + 1, c.w);
        const y = T.conv2d(x, w, o);
        const dy = randn(sd + 2, y.shape);
        await parity('conv2d', (a, b) => T.conv2d(a, b, o), [x, w], tol.contraction);
        await parity('conv2dGradInput', (g, b) => T.conv2dGradInput(g, b, c.x, o), [dy, w], tol.contraction);
        await parity('conv2dGradWeight', (a, g) => T.conv2dGradWeight(a, g, c.w, o), [x, dy], tol.contraction);
      }),
      opts,
    );
  });
}
