/**
 * Hessian-vector products by forward over reverse mode, and the sharpness of a small network's loss
 * (the top eigenvalue of its Hessian) by power iteration, never forming the Hessian. On a model this
 * small we can afford the dense Hessian too, and check the two against each other.
 *
 *   node --import tsx examples/hessian-vector-product.ts
 */
import {
  add, div, grad, hessian, jit, jvp, matmul, mean, mul, random, sin, sqrt, square, sub, sum, tanh, tensor, treeLeaves, treeMap,
  zeros, type Tensor,
} from 'tessera';

type Params = { w1: Tensor; b1: Tensor; w2: Tensor; b2: Tensor };
const hidden = 12;

function init(key: Tensor): Params {
  const [k1, k2] = random.split(key, 2) as [Tensor, Tensor];
  return { w1: random.normal(k1, [1, hidden]), b1: zeros([hidden]), w2: mul(random.normal(k2, [hidden, 1]), 1 / Math.sqrt(hidden)), b2: zeros([1]) };
}

const mlp = (p: Params, x: Tensor) => add(matmul(tanh(add(matmul(x, p.w1), p.b1)), p.w2), p.b2);
const loss = (p: Params, x: Tensor, y: Tensor) => mean(square(sub(mlp(p, x), y)));

/** H v: the derivative of the gradient along v (forward over reverse), about the cost of two gradients. */
const hvp = (p: Params, v: Params, x: Tensor, y: Tensor): Params => jvp((q: Params) => grad(loss)(q, x, y), [p], [v])[1];

const dot = (a: Params, b: Params): Tensor => treeLeaves(treeMap((u: Tensor, w: Tensor) => sum(mul(u, w)), a, b)).reduce((s, t) => add(s, t));
const scale = (v: Params, s: Tensor): Params => treeMap((t: Tensor) => mul(t, s), v) as Params;

// One compiled power-iteration step: the Rayleigh quotient v^T H v and the next direction H v / |H v|.
const powerStep = jit((p: Params, v: Params, x: Tensor, y: Tensor) => {
  const hv = hvp(p, v, x, y);
  return { rayleigh: dot(v, hv), next: scale(hv, div(1, sqrt(dot(hv, hv)))) };
});

const x = tensor(Array.from({ length: 32 }, (_, i) => [i / 15.5 - 1]));
const y = sin(mul(x, 3));
const sgd = jit((p: Params) => treeMap((w: Tensor, g: Tensor) => sub(w, mul(g, 0.2)), p, grad(loss)(p, x, y)) as Params);
let params = init(random.key(0));
for (let i = 0; i < 200; i++) params = await sgd(params);

let v = scale(params, tensor(1 / Math.sqrt(await dot(params, params).item())));
let sharpness = 0;
for (let i = 0; i < 100; i++) {
  const { rayleigh, next } = await powerStep(params, v, x, y);
  sharpness = await rayleigh.item();
  v = next;
}
console.log(`loss ${(await loss(params, x, y).item()).toFixed(4)}, sharpness (top Hessian eigenvalue) ${sharpness.toFixed(4)}`);

// The dense Hessian: a tree of blocks {w1: {w1, b1, ...}, ...}, block [a][b] of shape a.shape ++ b.shape.
// Multiply it by v by hand and compare with the matrix-free product.
const dense = await jit((p: Params) => hessian((q: Params) => loss(q, x, y))(p))(params);
const names = Object.keys(params).sort() as (keyof Params)[];
const vs = Object.fromEntries(await Promise.all(names.map(async (k) => [k, Array.from(await v[k].data())]))) as Record<keyof Params, number[]>;
const fromDense: number[] = [];
for (const a of names) {
  const rows = params[a].size;
  const acc = new Array<number>(rows).fill(0);
  for (const b of names) {
    const block = await dense[a][b].data();
    const cols = params[b].size;
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) acc[i]! += block[i * cols + j]! * vs[b][j]!;
  }
  fromDense.push(...acc);
}
const hv = await jit(hvp)(params, v, x, y);
const matrixFree = (await Promise.all(names.map(async (k) => Array.from(await hv[k].data())))).flat();
const gap = Math.max(...matrixFree.map((h, i) => Math.abs(h - fromDense[i]!)));
const size = Math.max(...fromDense.map(Math.abs));
console.log(`${matrixFree.length} parameters: |Hv (matrix-free) - Hv (dense)| = ${gap.toExponential(2)} (largest entry ${size.toFixed(4)})`);
if (!(gap <= 1e-4 * (1 + size))) throw new Error('the Hessian-vector products disagree');
// v is (nearly) an eigenvector: H v is close to sharpness * v.
const residual = Math.sqrt(fromDense.reduce((s, h, i) => s + (h - sharpness * names.flatMap((k) => vs[k])[i]!) ** 2, 0));
console.log(`|H v - sharpness v| = ${residual.toExponential(2)}`);
