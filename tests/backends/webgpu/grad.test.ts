/**
 * Gradient parity: the forward and backward program of a small convolutional block (conv, group
 * norm, SiLU, attention-style softmax, matmul) runs in one jit on WebGPU and on the CPU oracle.
 * Backward programs exercise the convolution adjoints, broadcast-reductions and fusion together.
 */
import { test } from 'node:test';
import { grad } from '../../../autodiff/index.ts';
import { RUNS, T, fc, parity, randn, seed } from './helpers.ts';

function block(x: T.Tensor, w: T.Tensor, b: T.Tensor, m: T.Tensor): T.Tensor {
  const h = T.silu(T.groupNorm(T.add(T.conv2d(x, w, { padding: 1 }), T.reshape(b, [1, -1, 1, 1])), 2));
  const [n, c, hh, ww] = h.shape as [number, number, number, number];
  const tokens = T.reshape(h, [n, c, hh * ww]);
  const att = T.softmax(T.matmul(T.transpose(tokens), tokens), -1);
  return T.mean(T.square(T.matmul(T.reshape(T.matmul(tokens, att), [n * c, hh * ww]), m)));
}

test('grad of a conv / group norm / attention block matches the CPU', async () => {
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 1, max: 2 }), fc.integer({ min: 1, max: 2 }), fc.integer({ min: 3, max: 6 }), seed, async (n, half, size, sd) => {
      const c = 2 * half;
      const args = [randn(sd, [n, c, size, size]), randn(sd + 1, [c, c, 3, 3], -0.5, 0.5), randn(sd + 2, [c]), randn(sd + 3, [size * size, 3], -0.5, 0.5)];
      await parity('grad block', (x, w, b, m) => grad(block, { argnums: [1, 2, 3] })(x!, w!, b!, m!) as T.Tensor[], args, { atol: 1e-4, rtol: 2e-3 });
    }),
    { numRuns: Math.max(3, Math.ceil(RUNS / 4)) },
  );
});
