/**
 * Whole programs on the compiled CPU backend: the backend-neutral properties of ../parity/graphs.ts
 * (random DAGs, gradients, donation, zero-size tensors), then the memory a donated input gives to
 * an output.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBuffer, cpuBackend, registerCpuBackend } from '../../../backends/cpu/index.ts';
import { T } from '../parity/helpers.ts';
import { graphSuite } from '../parity/graphs.ts';

registerCpuBackend();
graphSuite('cpu');

function cpuBuffer(t: T.Tensor): CpuBuffer {
  const s = t.storage;
  assert.ok(s?.kind === 'device' && s.buffer instanceof CpuBuffer);
  return s.buffer;
}

test('cpu: an output takes the memory of the donated input, which is then unusable', async () => {
  const b = cpuBackend();
  const onCpu = (v: number[]): T.Tensor => T.fromDevice(b, b.upload(new Float32Array(v), [v.length], 'float32'), [v.length], 'float32');
  const [x, y] = [onCpu([1, 2, 3, 4]), onCpu([5, 6, 7, 8])];
  const xBuf = cpuBuffer(x);
  const offset = xBuf.offset;
  const out = await T.jit((p: T.Tensor, q: T.Tensor) => T.mul(q, 2), { backend: 'cpu', donate: [0] })(x, y);
  assert.equal(cpuBuffer(out).offset, offset);
  assert.deepEqual(Array.from(await out.data()), [10, 12, 14, 16]);
  assert.ok(xBuf.isFreed);
  await assert.rejects(b.download(xBuf), /freed or donated/);
});
