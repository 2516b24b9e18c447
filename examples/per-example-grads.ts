/**
 * Per-example gradient norms with `vmap(grad(loss))`: the gradient of every example's loss in one
 * batched graph (one program under jit), checked against a loop that differentiates one example at
 * a time. Per-example norms are what differentially private SGD clips and what data-attribution and
 * outlier studies rank examples by.
 *
 * Run: node --import tsx examples/per-example-grads.ts
 */
import { add, grad, jit, matmul, mul, random, reshape, sin, slice, sqrt, square, sub, sum, tanh, treeLeaves, vmap, zeros, type Tensor } from 'tessera';

/** A type alias, not an interface, so that it is a pytree (a record of tensors) to the type checker. */
type Params = { readonly w1: Tensor; readonly b1: Tensor; readonly w2: Tensor };

const [k1, k2, k3] = random.split(random.key(0), 3) as [Tensor, Tensor, Tensor];
const params: Params = { w1: mul(random.normal(k1, [3, 16]), 0.5), b1: zeros([16]), w2: mul(random.normal(k2, [16, 1]), 0.25) };
const batch = 8;
const xs = random.normal(k3, [batch, 3]);
const ys = sum(sin(xs), 1);

/** The squared error of a one-hidden-layer network on one example x [3] with target y []. */
function loss(p: Params, x: Tensor, y: Tensor): Tensor {
  const h = tanh(add(matmul(reshape(x, [1, 3]), p.w1), p.b1));
  return square(sub(sum(matmul(h, p.w2)), y));
}

/** The Euclidean norm of a gradient tree. */
function norm(g: Params): Tensor {
  return sqrt(treeLeaves(g).map((leaf) => sum(square(leaf))).reduce((a, b) => add(a, b)));
}

// The parameters are shared (closed over); only x and y are mapped, along their first axis.
const perExampleNorms = jit((p: Params, xs: Tensor, ys: Tensor) => vmap((x: Tensor, y: Tensor) => norm(grad(loss)(p, x, y)))(xs, ys));
const batched = Array.from(await (await perExampleNorms(params, xs, ys)).data());

const looped: number[] = [];
for (let b = 0; b < batch; b++) {
  const x = reshape(slice(xs, [b, 0], [b + 1, 3]), [3]);
  const y = reshape(slice(ys, [b], [b + 1]), []);
  looped.push(await norm(grad(loss)(params, x, y)).item());
}

const worst = Math.max(...batched.map((v, i) => Math.abs(v - looped[i]!) / Math.max(1, Math.abs(looped[i]!))));
console.log('example  |grad| (vmap)  |grad| (loop)');
batched.forEach((v, i) => console.log(`${String(i).padStart(7)}  ${v.toFixed(6).padStart(12)}  ${looped[i]!.toFixed(6).padStart(12)}`));
console.log(`largest relative difference: ${worst.toExponential(2)}`);
if (!(worst < 1e-5)) throw new Error(`vmap(grad) and the loop disagree by ${worst}`);
