/** jit warns once when a function keeps being traced anew, naming the non-tensor arguments that change. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { add, jit, setDefaultBackend, tensor, type Tensor } from '../../core/index.ts';

registerReferenceBackend();
setDefaultBackend('reference');

test('a number that changes every call retraces every call, and jit says so once, naming it', async () => {
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (m: string) => warnings.push(m);
  try {
    const step = jit((batch: { x: Tensor; step: number }) => add(batch.x, 1), { name: 'step' });
    const x = tensor([1, 2]);
    for (let i = 0; i < 16; i++) await step({ x, step: i });
    assert.equal(warnings.length, 0, 'sixteen signatures are allowed quietly');
    for (let i = 16; i < 24; i++) await step({ x, step: i });
    assert.equal(warnings.length, 1, 'one warning, not one per call');
    assert.match(warnings[0]!, /^tessera: step has been traced and compiled for 17 different argument signatures/);
    assert.match(warnings[0]!, /args\[0\]\.step = 16/);
    // Tensors only: one trace however many calls.
    const quiet = jit((batch: { x: Tensor; step: Tensor }) => add(batch.x, batch.step), { name: 'quiet' });
    for (let i = 0; i < 24; i++) await quiet({ x, step: tensor(i) });
    assert.equal(warnings.length, 1);
  } finally {
    console.warn = warn;
  }
});
