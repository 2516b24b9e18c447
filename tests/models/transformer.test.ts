/** Transformer layers of models/transformer.ts: values against loops, token selection, and a gradient check of every layer. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { registerCpuBackend } from '../../backends/cpu/index.ts';
import { flatten, leafPaths, random, setDefaultBackend, tensor, type Tensor } from '../../core/index.ts';
import { checkGrad } from '../../autodiff/check.ts';
import {
  attention, block, erf, geluErf, layerNorm, learnedPositionalEmbedding, mlp, patchEmbed, patchify, placeTokens, selectTokens, unpatchify,
} from '../../models/transformer.ts';
import { holds } from '../autodiff/helpers.ts';

registerReferenceBackend();
registerCpuBackend();
setDefaultBackend('reference');

const values = async (t: Tensor): Promise<number[]> => Array.from(await t.data());
const input = (shape: number[], seed = 0) => random.normal(random.key(seed), shape);
const paths = (tree: unknown) => leafPaths(flatten(tree as never).def);

function close(actual: readonly number[], expected: readonly number[], tol = 1e-5): void {
  assert.equal(actual.length, expected.length, 'length');
  actual.forEach((a, i) => assert.ok(Math.abs(a - expected[i]!) <= tol * (1 + Math.abs(expected[i]!)), `entry ${i}: ${a} vs ${expected[i]}`));
}

test('erf matches tabulated values to 2e-7; GELU is x Phi(x)', async () => {
  const xs = [-2, -1, -0.5, 0, 0.5, 1, 2, 3];
  const table = [-0.995322265, -0.8427007929, -0.5204998778, 0, 0.5204998778, 0.8427007929, 0.995322265, 0.9999779095];
  const got = await values(erf(tensor(xs, [8], 'float64')));
  got.forEach((v, i) => assert.ok(Math.abs(v - table[i]!) < 2e-7, `erf(${xs[i]}) = ${v}`));
  // x Phi(x) at x = sqrt(2) k uses erf(k) from the table.
  const k = [-1, 0.5, 1, 2];
  const gs = await values(geluErf(tensor(k.map((v) => v * Math.SQRT2), [4], 'float64')));
  gs.forEach((v, i) => assert.ok(Math.abs(v - k[i]! * Math.SQRT2 * 0.5 * (1 + table[xs.indexOf(k[i]!)]!)) < 3e-7, `gelu at ${k[i]}: ${v}`));
});

test('patchify is U-ViT\'s (p1 p2 C) layout and unpatchify inverts it', async () => {
  const [b, c, h, p] = [2, 3, 4, 2];
  const x = input([b, c, h, h], 1);
  const xs = await values(x);
  const t = patchify(x, p);
  assert.deepEqual(t.shape, [b, 4, p * p * c]);
  const ts = await values(t);
  // token (r, q) of sample n, entry (i, j, ch) = x[n, ch, r p + i, q p + j]
  for (let n = 0; n < b; n++) for (let r = 0; r < 2; r++) for (let q = 0; q < 2; q++) for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) for (let ch = 0; ch < c; ch++) {
    const got = ts[((n * 4 + r * 2 + q) * p * p + i * p + j) * c + ch]!;
    assert.equal(got, xs[((n * c + ch) * h + r * p + i) * h + q * p + j]!);
  }
  assert.deepEqual(await values(unpatchify(t, c)), xs);
});

test('patchEmbed: a convolution with kernel = stride = p, one token per patch in row-major order', async () => {
  const [b, c, h, p, d] = [1, 2, 4, 2, 3];
  const layer = patchEmbed({ patchSize: p, inChannels: c, embedDim: d });
  const params = layer.init(random.key(0));
  assert.deepEqual(paths(params), ['proj.bias', 'proj.weight']);
  const x = input([b, c, h, h], 2);
  const [xs, w, bias] = [await values(x), await values(params.proj.weight), await values(params.proj.bias)];
  const bound = 1 / Math.sqrt(c * p * p);
  assert.ok([...w, ...bias].every((v) => Math.abs(v) <= bound), 'PyTorch conv init bounds');
  const expected: number[] = [];
  for (let r = 0; r < 2; r++) for (let q = 0; q < 2; q++) for (let o = 0; o < d; o++) {
    let s = bias[o]!;
    for (let ch = 0; ch < c; ch++) for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) s += w[((o * c + ch) * p + i) * p + j]! * xs[(ch * h + r * p + i) * h + q * p + j]!;
    expected.push(s);
  }
  close(await values(layer.apply(params, x)), expected);
});

/** Multi-head self-attention by loops, U-ViT's qkv layout (q|k|v, head, head dim). */
function attentionRef(x: number[], [n, dim]: [number, number], heads: number, wqkv: number[], wp: number[], bp: number[]): number[] {
  const hd = dim / heads;
  const qkv = Array.from({ length: n }, (_, i) => Array.from({ length: 3 * dim }, (_, o) => x.slice(i * dim, (i + 1) * dim).reduce((s, v, k) => s + v * wqkv[o * dim + k]!, 0)));
  const concat = Array.from({ length: n }, () => new Array<number>(dim).fill(0));
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < n; i++) {
      const logits = Array.from({ length: n }, (_, j) => {
        let s = 0;
        for (let e = 0; e < hd; e++) s += qkv[i]![h * hd + e]! * qkv[j]![dim + h * hd + e]!;
        return s / Math.sqrt(hd);
      });
      const m = Math.max(...logits);
      const ws = logits.map((l) => Math.exp(l - m));
      const z = ws.reduce((a, v) => a + v, 0);
      for (let e = 0; e < hd; e++) concat[i]![h * hd + e] = ws.reduce((s, wv, j) => s + (wv / z) * qkv[j]![2 * dim + h * hd + e]!, 0);
    }
  }
  return concat.flatMap((row) => Array.from({ length: dim }, (_, o) => bp[o]! + row.reduce((s, v, k) => s + v * wp[o * dim + k]!, 0)));
}

test('attention: heads as U-ViT lays out qkv, against loops', async () => {
  const [n, dim, heads] = [3, 4, 2];
  const layer = attention({ dim, numHeads: heads });
  const params = layer.init(random.key(1));
  assert.deepEqual(paths(params), ['proj.bias', 'proj.weight', 'qkv.weight']);
  // A bias that is not zero, so that it is checked.
  const p = { ...params, proj: { ...params.proj, bias: tensor([0.1, -0.2, 0.3, 0.05]) } };
  const x = input([1, n, dim], 3);
  const expected = attentionRef(await values(x), [n, dim], heads, await values(p.qkv.weight), await values(p.proj.weight), await values(p.proj.bias));
  close(await values(layer.apply(p, x)), expected, 1e-4);
  assert.deepEqual(paths(attention({ dim, numHeads: heads, qkvBias: true }).init(random.key(0))), ['proj.bias', 'proj.weight', 'qkv.bias', 'qkv.weight']);
});

test('block: U-ViT\'s parameter names, skip_linear only on skip blocks; layer norm and linear init', async () => {
  const plain = block({ dim: 8, numHeads: 2 }).init(random.key(0));
  assert.deepEqual(paths(plain), [
    'attn.proj.bias', 'attn.proj.weight', 'attn.qkv.weight', 'mlp.fc1.bias', 'mlp.fc1.weight', 'mlp.fc2.bias', 'mlp.fc2.weight',
    'norm1.bias', 'norm1.weight', 'norm2.bias', 'norm2.weight',
  ]);
  assert.deepEqual(plain.mlp.fc1.weight.shape, [32, 8]);
  const skip = block({ dim: 8, numHeads: 2, skip: true }).init(random.key(0));
  assert.deepEqual(skip.skip_linear!.weight.shape, [8, 16]);
  const w = await values(block({ dim: 64, numHeads: 2 }).init(random.key(3)).mlp.fc1.weight);
  const std = Math.sqrt(w.reduce((s, v) => s + v * v, 0) / w.length);
  assert.ok(Math.abs(std / 0.02 - 1) < 0.05, `trunc_normal(0.02): std ${std}`);
  assert.deepEqual(await values(plain.norm1.weight), new Array(8).fill(1));
});

test('selectTokens takes per-sample tokens; placeTokens puts them back with zeros elsewhere', async () => {
  const x = input([2, 5, 3], 4);
  const idx = tensor([[0, 3], [4, 1]], [2, 2], 'int32');
  const xs = await values(x);
  const row = (n: number, l: number) => xs.slice((n * 5 + l) * 3, (n * 5 + l + 1) * 3);
  assert.deepEqual(await values(selectTokens(x, idx)), [...row(0, 0), ...row(0, 3), ...row(1, 4), ...row(1, 1)]);
  const placed = await values(placeTokens(selectTokens(x, idx), idx, 5));
  const zero = [0, 0, 0];
  assert.deepEqual(placed, [...row(0, 0), ...zero, ...zero, ...row(0, 3), ...zero, ...zero, ...row(1, 1), ...zero, ...zero, ...row(1, 4)]);
});

test('selectTokens/placeTokens: gradients (custom per-sample scatter) against central differences', () =>
  holds(
    fc.tuple(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 2, max: 5 }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 0, max: 1000 })),
    async (b, l, d, seed) => {
      const m = 1 + (seed % l);
      // Distinct indices per sample: a rotation of 0..l-1, first m.
      const idx = tensor(Array.from({ length: b }, (_, n) => Array.from({ length: m }, (_, j) => (j + n + seed) % l)).flat(), [b, m], 'int32');
      await checkGrad((x: Tensor) => selectTokens(x, idx), [input([b, l, d], seed)]);
      await checkGrad((y: Tensor) => placeTokens(y, idx, l), [input([b, m, d], seed + 1)]);
    },
  ));

test('gradient checks: layer norm, MLP (exact GELU), attention, pre-norm block with skip, patch and positional embedding', async () => {
  const dim = 4;
  const x = input([2, 3, dim], 5);
  const ln = layerNorm({ dim });
  const lnParams = { weight: input([dim], 6), bias: input([dim], 7) };
  await checkGrad((p: typeof lnParams, v: Tensor) => ln.apply(p, v), [lnParams, x]);
  const ff = mlp({ inFeatures: dim, hiddenFeatures: 6 });
  await checkGrad((p: ReturnType<typeof ff.init>, v: Tensor) => ff.apply(p, v), [ff.init(random.key(1)), x]);
  const at = attention({ dim, numHeads: 2, qkvBias: true });
  await checkGrad((p: ReturnType<typeof at.init>, v: Tensor) => at.apply(p, v), [at.init(random.key(2)), x]);
  const bl = block({ dim, numHeads: 2, skip: true, mlpRatio: 2 });
  const skip = input([2, 3, dim], 8);
  await checkGrad((p: ReturnType<typeof bl.init>, v: Tensor, s: Tensor) => bl.apply(p, v, s), [bl.init(random.key(3)), x, skip]);
  const pe = patchEmbed({ patchSize: 2, inChannels: 2, embedDim: 3 });
  await checkGrad((p: ReturnType<typeof pe.init>, v: Tensor) => pe.apply(p, v), [pe.init(random.key(4)), input([1, 2, 4, 4], 9)]);
  const pos = learnedPositionalEmbedding({ length: 3, dim });
  await checkGrad((p: Tensor, v: Tensor) => pos.apply(p, v), [pos.init(random.key(5)), x]);
  await checkGrad((v: Tensor) => geluErf(v), [input([16], 10)]);
});
