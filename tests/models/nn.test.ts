/** Layers of models/nn.ts against direct loop implementations of EDM's (PyTorch's) semantics. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import fc from 'fast-check';
import { grad } from '../../autodiff/index.ts';
import { add, avgPool2d, cast, conv2d as conv2dOp, groupNorm as groupNormOp, mul, random, setDefaultBackend, sin, sum, tensor, upsampleNearest2d, type Tensor } from '../../core/index.ts';
import {
  conv2d, dropout, fourierEmbedding, groupNorm, linear, parameterCount, positionalEmbedding, selfAttention, weightInit,
} from '../../models/nn.ts';

registerReferenceBackend();
setDefaultBackend('reference');

async function values(t: Tensor): Promise<number[]> {
  return Array.from(await t.data());
}

function close(actual: readonly number[], expected: readonly number[], tol = 1e-5): void {
  assert.equal(actual.length, expected.length, 'length');
  actual.forEach((a, i) => assert.ok(Math.abs(a - expected[i]!) <= tol * (1 + Math.abs(expected[i]!)), `entry ${i}: ${a} vs ${expected[i]}`));
}

const input = (shape: number[], seed = 0) => random.normal(random.key(seed), shape);

test('weightInit follows EDM weight_init: bounds and standard deviations', async () => {
  const [fi, fo] = [48, 80];
  const xu = await values(weightInit(random.key(1), [64, 64], 'xavier_uniform', fi, fo));
  const bound = Math.sqrt(6 / (fi + fo));
  assert.ok(xu.every((v) => Math.abs(v) <= bound) && Math.max(...xu.map(Math.abs)) > 0.95 * bound);
  const std = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length);
  const kn = await values(weightInit(random.key(2), [64, 64], 'kaiming_normal', fi, fo));
  assert.ok(Math.abs(std(kn) / Math.sqrt(1 / fi) - 1) < 0.05);
  const xn = await values(weightInit(random.key(3), [64, 64], 'xavier_normal', fi, fo));
  assert.ok(Math.abs(std(xn) / Math.sqrt(2 / (fi + fo)) - 1) < 0.05);
  const ku = await values(weightInit(random.key(4), [64, 64], 'kaiming_uniform', fi, fo));
  assert.ok(ku.every((v) => Math.abs(v) <= Math.sqrt(3 / fi)));
});

test('linear: x W^T + b, init_weight/init_bias factors, no bias', async () => {
  const layer = linear({ inFeatures: 3, outFeatures: 2, init: { mode: 'kaiming_uniform', weight: 1, bias: 1 } });
  const p = layer.init(random.key(0));
  assert.deepEqual([p.weight.shape, p.bias?.shape], [[2, 3], [2]]);
  const [w, b] = [await values(p.weight), await values(p.bias!)];
  assert.ok(b.some((v) => v !== 0), 'init_bias 1 draws biases');
  const x = tensor([[1, 2, 3]]);
  close(await values(layer.apply(p, x)), [0, 1].map((o) => w[3 * o]! + 2 * w[3 * o + 1]! + 3 * w[3 * o + 2]! + b[o]!));
  assert.equal(linear({ inFeatures: 3, outFeatures: 2, bias: false }).init(random.key(0)).bias, undefined);
  assert.equal(parameterCount(linear({ inFeatures: 3, outFeatures: 2 }).init(random.key(0))), 8);
});

test('conv2d with the [1,1] filter: down = 2x2 average pooling, up = nearest neighbour', async () => {
  const x = input([2, 3, 6, 4]);
  const down = conv2d({ inChannels: 3, outChannels: 3, kernel: 0, down: true });
  const up = conv2d({ inChannels: 3, outChannels: 3, kernel: 0, up: true });
  assert.deepEqual(down.init(random.key(0)), {});
  close(await values(down.apply({}, x)), await values(avgPool2d(x, 2)));
  close(await values(up.apply({}, x)), await values(upsampleNearest2d(x, 2)));
});

/** PyTorch's conv2d(x, f, groups=C, stride=2, padding=p) with a depthwise filter, by loops. */
function downRef(x: number[], [n, c, h, w]: [number, number, number, number], f: number[][], p: number): number[] {
  const k = f.length;
  const oh = Math.floor((h + 2 * p - k) / 2) + 1;
  const ow = Math.floor((w + 2 * p - k) / 2) + 1;
  const out: number[] = [];
  for (let b = 0; b < n * c; b++) {
    for (let i = 0; i < oh; i++) {
      for (let j = 0; j < ow; j++) {
        let s = 0;
        for (let a = 0; a < k; a++) {
          for (let d = 0; d < k; d++) {
            const y = 2 * i + a - p;
            const z = 2 * j + d - p;
            if (y >= 0 && y < h && z >= 0 && z < w) s += f[a]![d]! * x[b * h * w + y * w + z]!;
          }
        }
        out.push(s);
      }
    }
  }
  return out;
}

/** PyTorch's conv_transpose2d(x, 4 f, groups=C, stride=2, padding=p), by loops. */
function upRef(x: number[], [n, c, h, w]: [number, number, number, number], f: number[][], p: number): number[] {
  const k = f.length;
  const oh = (h - 1) * 2 - 2 * p + k;
  const ow = (w - 1) * 2 - 2 * p + k;
  const out = new Array<number>(n * c * oh * ow).fill(0);
  for (let b = 0; b < n * c; b++) {
    for (let i = 0; i < h; i++) {
      for (let j = 0; j < w; j++) {
        for (let a = 0; a < k; a++) {
          for (let d = 0; d < k; d++) {
            const y = 2 * i + a - p;
            const z = 2 * j + d - p;
            if (y >= 0 && y < oh && z >= 0 && z < ow) out[b * oh * ow + y * ow + z]! += 4 * f[a]![d]! * x[b * h * w + i * w + j]!;
          }
        }
      }
    }
  }
  return out;
}

test('conv2d with the [1,3,3,1] filter matches PyTorch semantics (padding (k-1)//2 = 1)', async () => {
  const shape: [number, number, number, number] = [1, 2, 6, 8];
  const x = input(shape, 5);
  const xs = await values(x);
  const taps = [1, 3, 3, 1];
  const f = taps.map((a) => taps.map((b) => (a * b) / 64));
  const down = conv2d({ inChannels: 2, outChannels: 2, kernel: 0, down: true, resampleFilter: taps });
  const up = conv2d({ inChannels: 2, outChannels: 2, kernel: 0, up: true, resampleFilter: taps });
  const d = down.apply({}, x);
  const u = up.apply({}, x);
  assert.deepEqual([d.shape, u.shape], [[1, 2, 3, 4], [1, 2, 12, 16]]);
  close(await values(d), downRef(xs, shape, f, 1));
  close(await values(u), upRef(xs, shape, f, 1));
});

test('conv2d: resampling then a same-padded conv; fused down convolves first (EDM fused_resample)', async () => {
  const x = input([1, 2, 8, 8], 7);
  const init = { mode: 'xavier_uniform' as const, bias: 1 };
  const plain = conv2d({ inChannels: 2, outChannels: 3, kernel: 3, down: true, init });
  const fused = conv2d({ inChannels: 2, outChannels: 3, kernel: 3, down: true, fusedResample: true, init });
  const p = plain.init(random.key(3));
  const bias = (await values(p.bias!));
  const addBias = (v: number[]) => v.map((a, i) => a + bias[Math.floor(i / 16)]!);
  const w = p.weight!;
  close(await values(plain.apply(p, x)), addBias(await values(conv2dOp(avgPool2d(x, 2), w, { padding: 1 }))));
  close(await values(fused.apply(p, x)), addBias(await values(avgPool2d(conv2dOp(x, w, { padding: 1 }), 2))));
  const up = conv2d({ inChannels: 2, outChannels: 3, kernel: 3, up: true, init });
  assert.deepEqual(up.apply(up.init(random.key(0)), x).shape, [1, 3, 16, 16]);
  assert.throws(() => conv2d({ inChannels: 2, outChannels: 3, kernel: 3, up: true, fusedResample: true }), /fused upsampling/);
});

test('groupNorm: EDM groups min(32, C // 4), eps, per-group zero mean and unit variance', async () => {
  assert.equal(groupNorm({ numChannels: 16 }).groups, 4);
  assert.equal(groupNorm({ numChannels: 256 }).groups, 32);
  assert.equal(groupNorm({ numChannels: 48 }).groups, 12);
  const gn = groupNorm({ numChannels: 8, eps: 1e-6 });
  const y = await values(gn.apply(gn.init(), input([1, 8, 3, 3], 2)));
  for (let g = 0; g < 2; g++) {
    const part = y.slice(g * 36, (g + 1) * 36);
    const mean = part.reduce((a, b) => a + b, 0) / 36;
    const v = part.reduce((a, b) => a + (b - mean) ** 2, 0) / 36;
    assert.ok(Math.abs(mean) < 1e-5 && Math.abs(v - 1) < 1e-4, `group ${g}: mean ${mean}, var ${v}`);
  }
});

test('groupNorm: its closed-form backward equals autodiff through the forward ops, on random shapes and groups', async () => {
  const RUNS = Number(process.env['TESSERA_FC_RUNS'] ?? 20);
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 3 }),
      fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 0, maxLength: 2 }), fc.nat(1000),
      async (n, groups, perGroup, spatial, seed) => {
        const c = groups * perGroup;
        const gn = groupNorm({ numChannels: c, numGroups: groups, minChannelsPerGroup: 1 });
        // In float64: a group of few close values has a large 1 / sigma, and the two float32
        // computations would differ by their rounding times that; here they agree to far below it.
        const f64 = (t: Tensor) => cast(t, 'float64');
        const x = f64(input([n, c, ...spatial], seed));
        const p = { weight: f64(input([c], seed + 1)), bias: f64(input([c], seed + 2)) };
        // A loss whose cotangent differs at every entry, so each term of the rule is exercised.
        const probe = sin(add(mul(f64(input([n, c, ...spatial], seed + 3)), 3), 1));
        const viaRule = (xx: Tensor, w: Tensor, b: Tensor) => sum(mul(gn.apply({ weight: w, bias: b }, xx), probe));
        const viaOps = (xx: Tensor, w: Tensor, b: Tensor) => sum(mul(groupNormOp(xx, groups, 1e-5, w, b), probe));
        assert.deepEqual(await values(viaRule(x, p.weight, p.bias)), await values(viaOps(x, p.weight, p.bias)));
        for (const arg of [0, 1, 2] as const) {
          const expected = await values(grad(viaOps, { argnums: arg })(x, p.weight, p.bias) as Tensor);
          close(await values(grad(viaRule, { argnums: arg })(x, p.weight, p.bias) as Tensor), expected, 1e-8);
        }
      },
    ),
    { numRuns: RUNS },
  );
  const gn = groupNorm({ numChannels: 8 });
  assert.throws(() => gn.apply(gn.init(), input([2, 6, 3, 3])), /groupNorm: the layer normalises \[N, 8, \.\.\.\], got \[2,6,3,3\]/);
  assert.throws(() => gn.apply({ ...gn.init(), weight: input([4]) }, input([2, 8, 3, 3])), /groupNorm: weight must be \[8\], got \[4\]/);
});

test('dropout: a pure function of its key; identity when not training or at rate 0', async () => {
  const x = input([1000], 1);
  assert.equal(dropout(x, 0.3), x);
  assert.equal(dropout(x, 0, { train: true }), x);
  assert.equal(dropout(x, 0.3, { train: false, key: random.key(0) }), x);
  assert.throws(() => dropout(x, 0.3, { train: true }), /needs a key/);
  const a = await values(dropout(x, 0.3, { train: true, key: random.key(9) }));
  const b = await values(dropout(x, 0.3, { train: true, key: random.key(9) }));
  const c = await values(dropout(x, 0.3, { train: true, key: random.key(10) }));
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  const xs = await values(x);
  const kept = a.filter((v) => v !== 0).length;
  assert.ok(Math.abs(kept / 1000 - 0.7) < 0.06, `kept ${kept}`);
  a.forEach((v, i) => assert.ok(v === 0 || Math.abs(v - xs[i]! / 0.7) < 1e-5));
});

test('selfAttention equals EDM UNetBlock attention (qkv layout [heads, C/heads, 3]), by loops', async () => {
  const [n, c, h, w, heads] = [2, 8, 2, 3, 2];
  const attn = selfAttention({ channels: c, numHeads: heads, init: { mode: 'xavier_uniform' }, initZero: { mode: 'xavier_uniform' } });
  const p = attn.init(random.key(4));
  const x = input([n, c, h, w], 3);
  const xs = await values(x);
  const gn = groupNorm({ numChannels: c });
  const normed = await values(gn.apply(p.norm2, x));
  const [wq, bq, wp, bp] = [await values(p.qkv.weight!), await values(p.qkv.bias!), await values(p.proj.weight!), await values(p.proj.bias!)];
  const l = h * w;
  const d = c / heads;
  const expected: number[] = [];
  for (let b = 0; b < n; b++) {
    const qkv = (o: number, pix: number) => bq[o]! + Array.from({ length: c }, (_, i) => wq[o * c + i]! * normed[b * c * l + i * l + pix]!).reduce((s, v) => s + v, 0);
    const a = new Array<number>(c * l).fill(0);
    for (let hd = 0; hd < heads; hd++) {
      // channel of (head, ch, part) in the reshape [N*heads, C/heads, 3, L]
      const ch = (ci: number, part: number) => (hd * d + ci) * 3 + part;
      for (let qi = 0; qi < l; qi++) {
        const logits = Array.from({ length: l }, (_, ki) => Array.from({ length: d }, (_, ci) => qkv(ch(ci, 0), qi) * qkv(ch(ci, 1), ki)).reduce((s, v) => s + v, 0) / Math.sqrt(d));
        const mx = Math.max(...logits);
        const e = logits.map((v) => Math.exp(v - mx));
        const z = e.reduce((s, v) => s + v, 0);
        for (let ci = 0; ci < d; ci++) a[(hd * d + ci) * l + qi] = e.reduce((s, v, ki) => s + (v / z) * qkv(ch(ci, 2), ki), 0);
      }
    }
    for (let o = 0; o < c; o++) {
      for (let pix = 0; pix < l; pix++) expected.push(bp[o]! + Array.from({ length: c }, (_, i) => wp[o * c + i]! * a[i * l + pix]!).reduce((s, v) => s + v, 0));
    }
  }
  assert.equal(xs.length, n * c * l);
  close(await values(attn.apply(p, x)), expected, 1e-4);
});

test('positional embedding (endpoint) and Fourier embedding values', async () => {
  const pe = positionalEmbedding({ numChannels: 8, endpoint: true });
  const x = tensor([0.5, -2]);
  const freqs = [0, 1, 2, 3].map((j) => (1e-4) ** (j / 3));
  const expected = [0.5, -2].flatMap((v) => [...freqs.map((f) => Math.cos(v * f)), ...freqs.map((f) => Math.sin(v * f))]);
  close(await values(pe.apply({}, x)), expected);
  const pe2 = positionalEmbedding({ numChannels: 8 });
  close((await values(pe2.apply({}, tensor([1])))).slice(0, 4), [0, 1, 2, 3].map((j) => Math.cos((1e-4) ** (j / 4))));
  const fe = fourierEmbedding({ numChannels: 6 });
  const fp = fe.init(random.key(0));
  const f = await values(fp.freqs);
  assert.ok(Math.sqrt(f.reduce((s, v) => s + v * v, 0) / 3) > 1, 'scale 16');
  close(await values(fe.apply(fp, tensor([0.25]))), [...f.map((v) => Math.cos(2 * Math.PI * 0.25 * v)), ...f.map((v) => Math.sin(2 * Math.PI * 0.25 * v))], 1e-4);
});
