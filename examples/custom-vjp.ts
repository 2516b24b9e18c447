/**
 * User-defined gradients with `customVjp`, and the transformations around them:
 *
 * 1. A straight-through estimator (Bengio et al. 2013): the forward pass rounds, the backward pass
 *    pretends it did not, so a quantised layer still trains. Without it the gradient is zero.
 * 2. A log-sum-exp whose backward rule is the softmax written once, stable for any input size
 *    (log(sum(exp(x))) overflows at x = 1000; the max-shifted form does not), compiled with `jit`
 *    and mapped over a batch with `vmap` for per-row gradients.
 * 3. `stopGradient` and `remat` next to them: a frozen factor, and a block recomputed in the
 *    backward pass whose gradient is bit-identical to the plain one.
 *
 *   node --import tsx examples/custom-vjp.ts
 */
import {
  add, broadcastTo, customVjp, exp, floor, grad, jit, log, max, mul, remat, reshape, sin, stopGradient, sub, sum, tanh, tensor,
  vmap, type Tensor,
} from 'tessera';

// 1. Straight-through rounding: value round(x), gradient as if it were x.
const roundST = customVjp(
  (x: Tensor) => floor(add(x, 0.5)),
  (x: Tensor) => [floor(add(x, 0.5)), null] as const,
  (_residuals: null, ct: Tensor) => [ct],
);
const w = tensor([0.5, -2, 3]);
const x = tensor([0.2, 1.7, -0.6]);
const quantised = (v: Tensor) => sum(mul(roundST(v), w));
const plainRounding = (v: Tensor) => sum(mul(floor(add(v, 0.5)), w));
console.log('round(x)                     ', Array.from(await roundST(x).data()));
const straightThrough = Array.from(await grad(quantised)(x).data());
console.log('straight-through d/dx        ', straightThrough, '(= w)');
check('the straight-through gradient is w', straightThrough.every((g, i) => g === [0.5, -2, 3][i]));
console.log('plain rounding d/dx          ', Array.from(await grad(plainRounding)(x).data()), '(zero almost everywhere)');

// 2. log-sum-exp over the last axis with the softmax as its hand-written backward rule.
const lse = customVjp(
  (z: Tensor) => {
    const m = max(z, [0], true);
    return add(reshape(m, []), log(sum(exp(sub(z, broadcastTo(m, z.shape))))));
  },
  (z: Tensor) => {
    const m = max(z, [0], true);
    const y = add(reshape(m, []), log(sum(exp(sub(z, broadcastTo(m, z.shape))))));
    return [y, { z, y }] as const;
  },
  (r: { z: Tensor; y: Tensor }, ct: Tensor) => [mul(exp(sub(r.z, broadcastTo(r.y, r.z.shape))), broadcastTo(ct, r.z.shape))],
);
const big = tensor([1000, 1001, 1002]);
console.log('naive log(sum(exp(x)))       ', await log(sum(exp(big))).item());
console.log('lse(x)                       ', await lse(big).item());
const softmaxOf = jit(grad(lse));
const softmax = Array.from(await (await softmaxOf(big)).data());
console.log('jit(grad(lse))(x) = softmax  ', softmax);
check('the gradient of lse at 1000 is a finite softmax', softmax.every(Number.isFinite) && Math.abs(softmax.reduce((a, b) => a + b, 0) - 1) < 1e-4);
const rows = tensor([[0, 0, 0], [1, 2, 3], [-50, 50, 0]]);
console.log('vmap(grad(lse)) per row      ', await (await jit(vmap(grad(lse)))(rows)).toArray());

// 3. stopGradient freezes a factor; remat recomputes a block in the backward pass, same bits.
const frozenScale = (v: Tensor) => sum(mul(v, stopGradient(v)));
const frozen = Array.from(await grad(frozenScale)(x).data());
console.log('d/dx sum(x * stopGradient(x))', frozen, '(= x, not 2x)');
check('stopGradient: the gradient is x', frozen.every((g, i) => g === Math.fround([0.2, 1.7, -0.6][i]!)));
const block = (v: Tensor) => tanh(mul(sin(v), v));
const deep = (f: (v: Tensor) => Tensor) => (v: Tensor) => sum(f(f(f(v))));
const [plainGrad, rematGrad] = await Promise.all([grad(deep(block))(x).data(), grad(deep(remat(block)))(x).data()]);
const identical = plainGrad.every((g, i) => Object.is(g, rematGrad[i]));
console.log('remat gradient bit-identical ', identical);
check('remat gives the same gradient bits', identical);

function check(what: string, ok: boolean): void {
  if (!ok) throw new Error(`custom-vjp example: expected ${what}`);
}
