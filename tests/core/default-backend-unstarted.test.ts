/**
 * A backend that can tell without starting that it cannot be the default (WebGPU with no GPU
 * device on the machine) is not started for the choice; it is still started when nothing else can
 * run. Its own process, so that only these stand-ins are registered.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultChoice, registerBackend, type Backend } from '../../core/backend.ts';
import { noGpuDevice } from '../../backends/webgpu/index.ts';

function fake(name: string): Backend {
  const fail = (): never => {
    throw new Error(`${name} is a stand-in`);
  };
  return { name, dtypes: new Set(['float32']), compile: fail, upload: fail, download: fail, run: fail, free: fail, describe: () => ({}) };
}

test('a backend ruled out before starting is not started, unless nothing else starts', async () => {
  const started: string[] = [];
  const factory = (name: string) => async () => {
    started.push(name);
    return fake(name);
  };
  // Nothing else starts: the ruled-out backend is started after all.
  registerBackend('no-gpu-b', factory('no-gpu-b'), 20, () => 'no GPU device');
  registerBackend('broken', async () => Promise.reject(new Error('cannot start')), 10);
  const fallback = await defaultChoice();
  assert.equal(fallback.backend.name, 'no-gpu-b');
  assert.match(fallback.reasons.join('\n'), /^no-gpu-b: no GPU device \(not started\)$/m);
  assert.match(fallback.reasons.join('\n'), /broken: could not start: cannot start/);
  assert.match(fallback.reasons.join('\n'), /no-gpu-b: no other backend started/);

  // Another backend starts: the ruled-out one is never started.
  registerBackend('no-gpu-a', factory('no-gpu-a'), 40, () => 'no GPU device');
  registerBackend('plain', factory('plain'), 30);
  const choice = await defaultChoice();
  assert.equal(choice.backend.name, 'plain');
  assert.deepEqual(started, ['no-gpu-b', 'plain']);
  assert.match(choice.reasons.join('\n'), /^no-gpu-a: no GPU device \(not started\)$/m);
});

test('noGpuDevice: on Linux, a render node, an NVIDIA device or WSL\'s dxg means a GPU may be there', () => {
  if (process.platform !== 'linux') return assert.equal(noGpuDevice(() => []), undefined);
  assert.equal(noGpuDevice(() => ['null', 'tty', 'card0', 'renderD128']), undefined);
  assert.equal(noGpuDevice(() => ['null', 'nvidia0', 'nvidiactl']), undefined);
  assert.equal(noGpuDevice(() => ['null', 'dxg']), undefined);
  assert.match(noGpuDevice(() => ['null', 'tty', 'nvidiactl', 'card0'])!, /no GPU device .*only a software adapter could start/);
});
