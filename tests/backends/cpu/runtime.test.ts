import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BackendError } from '../../../core/errors.ts';
import { ALIGN, type CpuRuntime, SpinPolicy, createRuntime, partition } from '../../../backends/cpu/runtime.ts';

/** Unsigned LEB128, as Wasm encodes sizes, counts and limits. */
function leb(n: number): number[] {
  const out: number[] = [];
  do {
    const byte = n & 0x7f;
    n = Math.floor(n / 128);
    out.push(n === 0 ? byte : byte | 0x80);
  } while (n !== 0);
  return out;
}

const section = (id: number, bytes: number[]) => [id, ...leb(bytes.length), ...bytes];
const name = (s: string) => [...leb(s.length), ...new TextEncoder().encode(s)];
const f32 = (x: number) => [...new Uint8Array(new Float32Array([x]).buffer)];

/**
 * `(module (import "env" "memory" (memory 1 65536 shared))
 *   (func (export "fill") (param $start i32) (param $end i32) (param $base i32)
 *     ;; for i in [start, end): f32[base + 4i] += i * 0.5 + 1
 *   ))`
 * The store adds to what is there, so an element computed twice shows.
 */
function fillModule(): WebAssembly.Module {
  const [i, end, base] = [0, 1, 2];
  const address = [0x20, base, 0x20, i, 0x41, 2, 0x74, 0x6a]; // base + (i << 2)
  const body = [
    0x00, // no locals
    0x02, 0x40, 0x03, 0x40, // block, loop
    0x20, i, 0x20, end, 0x4e, 0x0d, 1, // br_if (i >= end) out of the block
    ...address,
    ...address, 0x2a, 2, 0, // f32.load
    0x20, i, 0xb2, 0x43, ...f32(0.5), 0x94, 0x43, ...f32(1), 0x92, // f32(i) * 0.5 + 1
    0x92, 0x38, 2, 0, // f32.add, f32.store
    0x20, i, 0x41, 1, 0x6a, 0x21, i, // i += 1
    0x0c, 0, 0x0b, 0x0b, 0x0b, // br loop; end loop, block, function
  ];
  const bytes = [
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [1, 0x60, 3, 0x7f, 0x7f, 0x7f, 0]),
    ...section(2, [1, ...name('env'), ...name('memory'), 0x02, 0x03, ...leb(1), ...leb(65536)]),
    ...section(3, [1, 0]),
    ...section(7, [1, ...name('fill'), 0x00, 0]),
    ...section(10, [1, ...leb(body.length), ...body]),
  ];
  return new WebAssembly.Module(new Uint8Array(bytes));
}

const expected = (i: number) => i * 0.5 + 1;
const jsFill = { body: 'const f = heap.f32, at = args[0] / 4; for (let i = start; i < end; i++) f[at + i] += i * args[1] + 1;' };

/** Runs `fill` over n elements of a zeroed block on a fresh runtime; returns the values. */
function fillWith(threads: number, kind: 'wasm' | 'js', n: number): Float32Array {
  const rt = createRuntime({ threads });
  try {
    const at = rt.alloc(n * 4);
    rt.heap().f32.fill(0, at / 4, at / 4 + n);
    if (kind === 'wasm') rt.run(rt.registerWasm(fillModule()), 'fill', n, [at], { grain: 1000 });
    else rt.run(rt.registerJs(jsFill), '', n, [at, 0.5], { grain: 1000 });
    return rt.heap().f32.slice(at / 4, at / 4 + n);
  } finally {
    rt.dispose();
  }
}

function assertFilled(values: Float32Array, what: string): void {
  for (let i = 0; i < values.length; i++) {
    if (values[i] !== expected(i)) assert.fail(`${what}[${i}]: got ${values[i]}, expected ${expected(i)} (written once)`);
  }
}

test('partition: contiguous ranges covering [0, total), whole grains but the last, empties last', () => {
  for (const [total, grain, threads] of [[10, 1, 3], [10, 4, 3], [5, 2, 4], [1, 8, 3], [1000003, 64, 7], [7, 1, 1]] as const) {
    const ranges = partition(total, grain, threads);
    assert.equal(ranges.length, threads);
    let at = 0;
    ranges.forEach(([s, e], t) => {
      assert.equal(s, at, `range ${t} starts where ${t - 1} ended`);
      assert.ok(e >= s);
      if (e < total) assert.equal((e - s) % grain, 0, `range ${t} of ${total}/${grain}/${threads} is whole grains`);
      if (s === e) assert.ok(ranges.slice(t).every(([a, b]) => a === b), 'empty ranges come last');
      at = e;
    });
    assert.equal(at, total);
  }
  assert.deepEqual(partition(5, 2, 4), [[0, 2], [2, 4], [4, 5], [5, 5]]);
  assert.deepEqual(partition(10, 1, 3), [[0, 4], [4, 7], [7, 10]]);
});

test('SpinPolicy: polls longer while polling pays, fades out when it does not, probes now and then', () => {
  const spin = new SpinPolicy(64);
  const budgets: number[] = [];
  for (let i = 0; i < 400; i++) {
    budgets.push(spin.micros);
    spin.record(false);
  }
  assert.deepEqual(budgets.slice(0, 7), [64, 32, 16, 8, 4, 2, 1], 'halves down to max / 64');
  assert.ok(budgets.slice(7).every((b) => b === 1 || b === 64));
  const probes = budgets.flatMap((b, i) => (i > 0 && b === 64 ? [i] : []));
  assert.ok(probes.length >= 2 && probes[1]! - probes[0]! === probes[0]! - 6, `one probe per fixed number of misses: ${probes}`);
  const grown: number[] = [];
  for (let i = 0; i < 8; i++) {
    spin.record(true);
    grown.push(spin.micros);
  }
  assert.deepEqual(grown.slice(-3), [64, 64, 64], 'doubles back up to max while polling finds the event');
  assert.equal(new SpinPolicy(0).micros, 0);
});

test('alloc: 64-byte aligned, never 0, freed blocks reused, bad frees rejected', () => {
  const rt = createRuntime({ threads: 1 });
  const blocks = [1, 0, 63, 64, 65, 1000, 5000, 100000].map((b) => rt.alloc(b));
  assert.ok(blocks.every((b) => b > 0 && b % ALIGN === 0), `aligned and non-null: ${blocks}`);
  assert.equal(new Set(blocks).size, blocks.length);
  const big = blocks[7]!;
  rt.free(big);
  assert.equal(rt.alloc(99000), big, 'a block of the same size class is reused');
  const reserved = rt.bytesReserved;
  rt.free(blocks[5]!);
  assert.equal(rt.alloc(1000), blocks[5]);
  assert.equal(rt.bytesReserved, reserved, 'reuse reserves nothing more');
  rt.free(blocks[0]!);
  assert.throws(() => rt.free(blocks[0]!), (e) => e instanceof BackendError && /offset \d+ is not a live block/.test(e.message));
  assert.throws(() => rt.free(12345), BackendError);
  assert.throws(() => rt.alloc(-1), BackendError);
  rt.dispose();
});

test('alloc: growing the memory keeps the data; heap() and the workers follow it', () => {
  const rt = createRuntime({ threads: 2 });
  const small = rt.alloc(16);
  rt.heap().f32.set([1, 2, 3, 4], small / 4);
  assert.equal(rt.heap(), rt.heap(), 'views are cached while the memory keeps its size');
  const fill = rt.registerJs(jsFill);
  rt.run(fill, '', 4, [small, 0]); // the worker has booted and seen the memory at its first size
  const before = rt.memory.buffer.byteLength;
  const inUse = rt.bytesInUse;
  const n = 2 << 20;
  const big = rt.alloc(4 * n);
  assert.ok(rt.memory.buffer.byteLength > before, 'the memory grew');
  assert.ok(rt.heap().u8.byteLength >= big + 4 * n, 'heap() covers the new block');
  assert.deepEqual([...rt.heap().f32.subarray(small / 4, small / 4 + 4)], [2, 3, 4, 5]);
  rt.heap().f32.fill(0, big / 4, big / 4 + n);
  rt.run(fill, '', n, [big, 0.5], { grain: 1024 });
  rt.run(rt.registerWasm(fillModule()), 'fill', n, [big], { grain: 1024 });
  const got = rt.heap().f32.subarray(big / 4, big / 4 + n);
  for (let i = 0; i < n; i++) if (got[i] !== 2 * expected(i)) assert.fail(`[${i}]: got ${got[i]}, expected ${2 * expected(i)}`);
  assert.ok(rt.bytesInUse >= inUse + 4 * n);
  rt.free(big);
  assert.equal(rt.bytesInUse, inUse);
  assert.ok(rt.bytesReserved >= 4 * n);
  rt.dispose();
});

for (const kind of ['wasm', 'js'] as const) {
  test(`a ${kind} kernel writes every element once, with the same result on 1, 2 and 3 threads`, () => {
    const n = 1 << 20;
    const serial = fillWith(1, kind, n);
    assertFilled(serial, `${kind} threads=1`);
    for (const threads of [2, 3]) assert.deepEqual(fillWith(threads, kind, n), serial, `${kind} threads=${threads}`);
  });
}

test('a kernel runs at once after it is registered, also on workers still booting', () => {
  const rt = createRuntime({ threads: 3 });
  const n = 3000;
  const at = rt.alloc(n * 4);
  for (let k = 1; k <= 20; k++) {
    const id = rt.registerJs({ body: `for (let i = start; i < end; i++) heap.i32[args[0] / 4 + i] = ${k} * i;` });
    rt.run(id, '', n, [at]);
    const got = rt.heap().i32.subarray(at / 4, at / 4 + n);
    assert.ok(got.every((v, i) => v === k * i), `kernel ${k} wrote every element`);
  }
  rt.dispose();
});

for (const spinMicros of [undefined, 0]) {
  // With no polling every worker sleeps between jobs and often wakes after the others took its
  // range, or after the job is over: a late claim must take nothing, least of all a range of the
  // next job.
  test(`back-to-back jobs that leave some workers idle run each range exactly once (spin ${spinMicros ?? 'default'})`, () => {
    const rt = createRuntime({ threads: 3, spinMicros });
    const at = rt.alloc(16);
    const count = rt.registerJs({ body: 'for (let i = start; i < end; i++) heap.i32[args[0] / 4 + i] += 1;' });
    const rounds = 3000;
    for (let r = 0; r < rounds; r++) rt.run(count, '', 1 + (r % 3), [at], { serialBelow: 0 });
    assert.deepEqual([...rt.heap().i32.subarray(at / 4, at / 4 + 3)], [rounds, (2 * rounds) / 3, rounds / 3]);
    rt.dispose();
  });
}

test('a small job runs as one call on the calling thread; serialBelow and grain decide', () => {
  const rt = createRuntime({ threads: 2 });
  const at = rt.alloc(64);
  // Each element records the start of the call that computed it.
  const id = rt.registerJs({ body: 'for (let i = start; i < end; i++) heap.i32[args[0] / 4 + i] = start;' });
  const starts = (total: number, options: { grain?: number; serialBelow?: number }) => {
    rt.run(id, '', total, [at], options);
    return [...rt.heap().i32.subarray(at / 4, at / 4 + total)];
  };
  assert.deepEqual(starts(7, { grain: 4 }), [0, 0, 0, 0, 0, 0, 0], 'below 2 grains: one call');
  assert.deepEqual(starts(8, { grain: 4, serialBelow: 9 }), [0, 0, 0, 0, 0, 0, 0, 0], 'below serialBelow: one call');
  assert.deepEqual(starts(8, { grain: 4 }), [0, 0, 0, 0, 4, 4, 4, 4], 'split in whole grains');
  assert.deepEqual(starts(5, { grain: 4, serialBelow: 0 }), [0, 0, 0, 0, 4], 'the last range takes the rest');
  rt.dispose();
});

test('a kernel that throws or traps in one range surfaces as a BackendError naming it, and the runtime goes on', () => {
  const rt = createRuntime({ threads: 2 });
  const n = 1000;
  // Either thread may run the second range (whoever claims it first).
  const throwing = rt.registerJs({ body: 'if (start > 0) throw new Error("boom at " + start);' });
  assert.throws(
    () => rt.run(throwing, '', n, []),
    (e) => e instanceof BackendError && /kernel 0 ''.*thread [01] over \[500, 1000\).*boom at 500/.test(e.message),
  );
  // The second range lies past the end of the memory: a trap in that range only.
  const wasm = rt.registerWasm(fillModule());
  const base = rt.memory.buffer.byteLength - 4 * (n / 2);
  assert.throws(() => rt.run(wasm, 'fill', n, [base]), (e) => e instanceof BackendError && /kernel 1 'fill'.*thread [01] over \[500, 1000\).*RuntimeError/.test(e.message));
  assert.throws(() => rt.run(wasm, 'fill', n, [0x7fff0000]), (e) => e instanceof BackendError && /thread 0/.test(e.message), 'a trap on the calling thread too');
  assert.throws(() => rt.run(wasm, 'nope', n, [0]), (e) => e instanceof BackendError && /no export 'nope'/.test(e.message));
  assert.throws(() => rt.run(7, '', n, []), (e) => e instanceof BackendError && /no kernel 7/.test(e.message));
  assert.throws(() => rt.registerJs({ body: 'this is not javascript' }), (e) => e instanceof BackendError && /does not compile/.test(e.message));

  const at = rt.alloc(n * 4);
  rt.heap().f32.fill(0, at / 4, at / 4 + n);
  rt.run(wasm, 'fill', n, [at]);
  assertFilled(rt.heap().f32.slice(at / 4, at / 4 + n), 'after the failures');
  rt.dispose();
});

test('dispose stops the workers; the runtime then refuses work', () => {
  const runtimes: CpuRuntime[] = [createRuntime({ threads: 3 }), createRuntime({ threads: 1 })];
  for (const rt of runtimes) {
    const id = rt.registerJs({ body: '' });
    rt.run(id, '', 100, []);
    rt.dispose();
    rt.dispose();
    assert.throws(() => rt.run(id, '', 100, []), (e) => e instanceof BackendError && /disposed/.test(e.message));
    assert.throws(() => rt.registerJs({ body: '' }), BackendError);
  }
});

test('threads: the option, else TESSERA_CPU_THREADS; bad values are named', () => {
  const saved = process.env['TESSERA_CPU_THREADS'];
  try {
    process.env['TESSERA_CPU_THREADS'] = '1';
    const fromEnv = createRuntime();
    assert.equal(fromEnv.threads, 1);
    fromEnv.dispose();
    process.env['TESSERA_CPU_THREADS'] = 'many';
    assert.throws(() => createRuntime(), (e) => e instanceof BackendError && /TESSERA_CPU_THREADS.*"many"/.test(e.message));
    assert.throws(() => createRuntime({ threads: 0 }), (e) => e instanceof BackendError && /threads option 0/.test(e.message));
  } finally {
    if (saved === undefined) delete process.env['TESSERA_CPU_THREADS'];
    else process.env['TESSERA_CPU_THREADS'] = saved;
  }
});
