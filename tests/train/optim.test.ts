import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { jit, scalar, setDefaultBackend, tensor, type Tensor } from '../../core/index.ts';
import { adam, applyUpdates, chain, clipByGlobalNorm, edmLearningRate, emaUpdate, replaceNonFinite } from '../../train/optim.ts';

registerReferenceBackend();
setDefaultBackend('reference');

const close = (a: ArrayLike<number>, b: ArrayLike<number>, tol = 1e-5) =>
  Array.from(a).forEach((v, i) => assert.ok(Math.abs(v - b[i]!) <= tol * (1 + Math.abs(b[i]!)), `index ${i}: ${v} vs ${b[i]}`));

test('adam matches the textbook update over three steps, with decoupled weight decay', async () => {
  const opt = adam({ lr: 0.1, weightDecay: 0.01 });
  let params: Record<string, Tensor> = { w: tensor([1, -2]) };
  let state = opt.init(params);
  const grads = [[0.5, -1], [0.25, 2], [-1, 0]];
  // Reference in plain JS (Kingma & Ba, Algorithm 1; AdamW decay on the param).
  const p = [1, -2];
  const m = [0, 0];
  const v = [0, 0];
  for (let t = 1; t <= 3; t++) {
    const g = grads[t - 1]!;
    for (let i = 0; i < 2; i++) {
      m[i] = 0.9 * m[i]! + 0.1 * g[i]!;
      v[i] = 0.999 * v[i]! + 0.001 * g[i]! ** 2;
      const mh = m[i]! / (1 - 0.9 ** t);
      const vh = v[i]! / (1 - 0.999 ** t);
      p[i] = p[i]! - 0.1 * (mh / (Math.sqrt(vh) + 1e-8) + 0.01 * p[i]!);
    }
    const [u, s] = opt.update({ w: tensor(g) }, state, params);
    params = applyUpdates(params, u) as Record<string, Tensor>;
    state = s;
  }
  close(await params['w']!.data(), p);
});

test('global-norm clipping scales to the bound and leaves small gradients alone', async () => {
  const clip = clipByGlobalNorm(1);
  const [big] = clip.update({ a: tensor([3]), b: tensor([4]) }, {}, {});
  const [small] = clip.update({ a: tensor([0.3]), b: tensor([0.4]) }, {}, {});
  const b = big as Record<string, Tensor>;
  close([...(await b['a']!.data()), ...(await b['b']!.data())], [0.6, 0.8], 1e-5);
  const s = small as Record<string, Tensor>;
  close([...(await s['a']!.data()), ...(await s['b']!.data())], [0.3, 0.4], 1e-5);
});

test('non-finite gradient entries are replaced by zero and counted', async () => {
  const t = chain(replaceNonFinite(), adam({ lr: 1 }));
  const params = { w: tensor([1, 1, 1]) };
  const state = t.init(params);
  const [u, s] = t.update({ w: tensor([NaN, Infinity, 1]) }, state, params);
  const upd = await (u as Record<string, Tensor>)['w']!.data();
  assert.ok(Array.from(upd).every(Number.isFinite));
  assert.ok(upd[0] === 0, `replaced entry is ${upd[0]}`);
  assert.equal(await ((s as [{ replaced: Tensor }])[0].replaced).item(), 2);
});

test('EDM learning-rate ramp-up and EMA beta follow their formulas', async () => {
  close(await edmLearningRate(1e-3, 1000, scalar(250)).data(), [2.5e-4]);
  close(await edmLearningRate(1e-3, 1000, scalar(5000)).data(), [1e-3]);
  // seen 1000 images, ramp-up 0.05 -> ema_nimg = min(500, 50) = 50; beta = 0.5^(10/50).
  const e = emaUpdate({ w: tensor([0]) }, { w: tensor([1]) }, scalar(1000), 10, 500, 0.05) as Record<string, Tensor>;
  const beta = 0.5 ** (10 / 50);
  close(await e['w']!.data(), [1 - beta]);
});

test('the optimizer runs inside jit with its state as a pytree of tensors', async () => {
  const opt = adam({ lr: 0.05 });
  const step = jit((params: { w: Tensor }, state: ReturnType<typeof opt.init>) => {
    const g = { w: params.w }; // gradient of |w|^2 / 2
    const [u, s] = opt.update(g, state, params);
    return { params: applyUpdates(params, u), state: s };
  }, { donate: [0, 1] });
  let params = { w: tensor([1, -1]) };
  let state = opt.init(params);
  for (let i = 0; i < 50; i++) ({ params, state } = (await step(params, state)) as { params: { w: Tensor }; state: typeof state });
  const w = await params.w.data();
  assert.ok(Math.abs(w[0]!) < 0.5 && Math.abs(w[1]!) < 0.5, `w moved toward 0: ${w}`);
});
