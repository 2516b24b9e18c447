/**
 * Which backend is the default: the highest-priority one that starts and does not decline. WebGPU
 * declines on a software adapter (lavapipe, SwiftShader), so a machine without a GPU defaults to
 * the compiled CPU backend; a backend that fails to start is passed over with a warning.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultChoice, getBackend, registerBackend, setDefaultBackend, type Backend } from '../../core/backend.ts';
import { registerCpuBackend } from '../../backends/cpu/index.ts';
import { registerWebGpuBackend, type WebGpuBackend } from '../../backends/webgpu/index.ts';

registerCpuBackend();

function fake(name: string, declines?: string): Backend {
  const fail = (): never => {
    throw new Error(`${name} is a stand-in`);
  };
  return { name, dtypes: new Set(['float32']), compile: fail, upload: fail, download: fail, run: fail, free: fail, describe: () => ({}), notDefaultBecause: () => declines };
}

test('a started backend that declines is passed over, with its reason', async () => {
  registerBackend('soft-gpu', async () => fake('soft-gpu', 'the adapter is a software rasteriser'), 20);
  registerBackend('broken-gpu', async () => Promise.reject(new Error('no adapter')), 30);
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (m: string) => warnings.push(m);
  try {
    const choice = await defaultChoice();
    assert.equal(choice.backend.name, 'cpu');
    assert.match(choice.reasons.join('\n'), /soft-gpu: the adapter is a software rasteriser/);
    assert.match(choice.reasons.join('\n'), /broken-gpu: could not start: no adapter/);
    assert.equal(warnings.length, 1);
  } finally {
    console.warn = warn;
  }
  setDefaultBackend('soft-gpu');
  assert.equal((await defaultChoice()).backend.name, 'soft-gpu');
  assert.deepEqual((await defaultChoice()).reasons, ['set with setDefaultBackend']);
  setDefaultBackend(undefined);
});

test('WebGPU declines to be the default exactly when its adapter is a software one', async () => {
  registerWebGpuBackend();
  const gpu = (await getBackend('webgpu')) as WebGpuBackend;
  const description = Object.values(gpu.ctx.adapterInfo).join(' ');
  if (/llvmpipe|lavapipe|swiftshader/i.test(description)) assert.equal(gpu.ctx.software, true, description);
  assert.equal(gpu.notDefaultBecause() !== undefined, gpu.ctx.software);
  if (gpu.ctx.software) assert.match(gpu.notDefaultBecause()!, /software rasteriser/);
});
