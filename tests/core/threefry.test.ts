import assert from 'node:assert/strict';
import { test } from 'node:test';
import { THREEFRY_WGSL, randomBitsHost, threefry2x32, uniformFromBitsHost } from '../../core/threefry.ts';

/** Random123 kat_vectors for threefry2x32_20 (also in JAX's random tests): key, counter, result. */
const KAT: readonly { key: [number, number]; ctr: [number, number]; out: [number, number] }[] = [
  { key: [0x00000000, 0x00000000], ctr: [0x00000000, 0x00000000], out: [0x6b200159, 0x99ba4efe] },
  { key: [0xffffffff, 0xffffffff], ctr: [0xffffffff, 0xffffffff], out: [0x1cb996fc, 0xbb002be7] },
  { key: [0x13198a2e, 0x03707344], ctr: [0x243f6a88, 0x85a308d3], out: [0xc4923a9c, 0x483df7a0] },
];

test('threefry2x32 matches the Random123 known-answer vectors', () => {
  for (const { key, ctr, out } of KAT) assert.deepEqual(threefry2x32(key[0], key[1], ctr[0], ctr[1]), out);
});

test('threefry2x32 takes int32 bit patterns as their uint32 values', () => {
  assert.deepEqual(threefry2x32(-1, -1, -1, -1), threefry2x32(0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff));
});

test('randomBitsHost lays out words of consecutive counters, as int32, starting at offset', () => {
  const [k0, k1] = [0x13198a2e, 0x03707344];
  const bits = randomBitsHost(k0, k1, 5, 7);
  assert.ok(bits instanceof Int32Array);
  const expected = [7, 8, 9].flatMap((c) => threefry2x32(k0, k1, 0, c).map((w) => w | 0));
  assert.deepEqual([...bits], expected.slice(0, 5));
  // An offset shifts the stream by whole counters: bits at offset 1 are bits at offset 0 without the first pair.
  assert.deepEqual([...randomBitsHost(k0, k1, 4, 1)], [...randomBitsHost(k0, k1, 6, 0)].slice(2));
  assert.equal(randomBitsHost(1, 2, 0, 0).length, 0);
});

test('uniformFromBitsHost keeps the top 24 bits, exactly, in [0, 1)', () => {
  const u = uniformFromBitsHost(new Int32Array([0, -1, 0x100, 0x7fffffff, -0x80000000, 0xff]));
  assert.deepEqual([...u], [0, 1 - 2 ** -24, 2 ** -24, 0.5 - 2 ** -24, 0.5, 0]);
});

/** Runs THREEFRY_WGSL over the KAT inputs on a WebGPU adapter, when this machine has one. */
async function wgslThreefry(inputs: readonly number[]): Promise<number[] | undefined> {
  let gpu: GPU;
  try {
    const { create, globals } = await import('webgpu');
    Object.assign(globalThis, globals);
    gpu = create([]);
  } catch {
    return undefined;
  }
  const adapter = await gpu.requestAdapter();
  if (adapter === null) return undefined;
  const device = await adapter.requestDevice();
  try {
    const n = inputs.length / 4;
    const code = `${THREEFRY_WGSL}
@group(0) @binding(0) var<storage, read> io_in: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> io_out: array<vec2<u32>>;
@compute @workgroup_size(1) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let q = io_in[id.x];
  io_out[id.x] = threefry2x32(q.xy, q.zw);
}`;
    const module = device.createShaderModule({ code });
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    const input = device.createBuffer({ size: n * 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(input, 0, new Uint32Array(inputs));
    const output = device.createBuffer({ size: n * 8, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
    const readback = device.createBuffer({ size: n * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const bind = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [{ binding: 0, resource: { buffer: input } }, { binding: 1, resource: { buffer: output } }],
    });
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(n);
    pass.end();
    enc.copyBufferToBuffer(output, 0, readback, 0, n * 8);
    device.queue.submit([enc.finish()]);
    await readback.mapAsync(GPUMapMode.READ);
    const result = [...new Uint32Array(readback.getMappedRange().slice(0))];
    readback.unmap();
    return result;
  } finally {
    device.destroy();
  }
}

test('THREEFRY_WGSL computes the same function on a WebGPU adapter', { timeout: 60_000 }, async (t) => {
  const random = randomBitsHost(12345, 678, 64, 0);
  const cases = [...KAT.map(({ key, ctr }) => [...key, ...ctr]), ...Array.from({ length: 16 }, (_, i) => [...random.slice(4 * i, 4 * i + 4)].map((v) => v >>> 0))];
  const got = await wgslThreefry(cases.flat());
  if (got === undefined) {
    t.skip('no WebGPU adapter');
    return;
  }
  const expected = cases.flatMap(([k0, k1, x0, x1]) => threefry2x32(k0!, k1!, x0!, x1!));
  assert.deepEqual(got, expected);
});
