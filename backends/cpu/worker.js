/**
 * A worker thread of the CPU runtime: waits for a job, claims and runs its ranges while any is left,
 * counting each done.
 * `runtime.ts` documents the protocol and hands over its layout in workerData, so the two files
 * cannot disagree about slots. Plain JavaScript, so that it loads with no loader at all.
 */
import { receiveMessageOnPort, workerData } from 'node:worker_threads';
import { MATH_IMPORTS } from './math.js';

const { memory, control, port, thread, spinMicros, probeAfter, slot, argsOffset, maxArgs, partsBits } = workerData;
const ctl = new Int32Array(control, 0, argsOffset / 4);
const argv = new Float64Array(control, argsOffset, maxArgs);
const partsMask = (1 << partsBits) - 1;

/** By id: `{ kind: 'wasm', fns }`, `{ kind: 'js', fn }`, or `{ kind: 'broken', reason }`. */
const kernels = [];

function describe(error) {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

function register(registration) {
  switch (registration.kind) {
    case 'wasm':
      try {
        const instance = new WebAssembly.Instance(registration.module, { env: { memory }, math: MATH_IMPORTS });
        kernels[registration.id] = { kind: 'wasm', fns: registration.names.map((name) => instance.exports[name]) };
      } catch (error) {
        // Reported by the first run that uses the kernel, on the thread that asked for it.
        kernels[registration.id] = { kind: 'broken', reason: `cannot instantiate on worker ${thread}: ${describe(error)}` };
      }
      return;
    case 'js':
      kernels[registration.id] = { kind: 'js', fn: new Function('start', 'end', 'args', 'heap', registration.body) };
      return;
    default:
      throw new Error(`unknown registration kind ${registration.kind}`);
  }
}

function views(buffer) {
  return { f32: new Float32Array(buffer), i32: new Int32Array(buffer), u8: new Uint8Array(buffer) };
}

let heap = views(memory.buffer);

/** Views over the current buffer: the calling thread may have grown the memory since the last job. */
function currentHeap() {
  const buffer = memory.buffer;
  if (buffer.byteLength !== heap.u8.byteLength) heap = views(buffer);
  return heap;
}

function runJob(start, end) {
  for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) register(m.message);
  const id = ctl[slot.kernel];
  const kernel = kernels[id];
  const args = Array.from(argv.subarray(0, ctl[slot.argCount]));
  switch (kernel?.kind) {
    case 'wasm':
      kernel.fns[ctl[slot.entry]](start, end, ...args);
      return;
    case 'js':
      kernel.fn(start, end, args, currentHeap());
      return;
    case 'broken':
      throw new Error(kernel.reason);
    default:
      throw new Error(`no kernel ${id} on worker ${thread}`);
  }
}

/** runtime.ts's `SpinPolicy`, the same rules: how long a wait polls before it sleeps. */
class SpinPolicy {
  budget = spinMicros;
  misses = 0;
  probing = false;

  record(found) {
    const floor = spinMicros / 64;
    const probe = this.probing;
    this.probing = false;
    if (found) {
      this.budget = Math.min(spinMicros, 2 * this.budget);
      this.misses = 0;
    } else if (probe || this.budget <= floor) {
      this.budget = floor;
      if (++this.misses >= probeAfter) {
        this.budget = spinMicros;
        this.misses = 0;
        this.probing = true;
      }
    } else {
      this.budget = Math.max(floor, this.budget / 2);
    }
  }
}

const spin = new SpinPolicy();

/** The next job word after `seen`: poll (back-to-back jobs then skip a futex wake-up), then sleep. */
function nextJob(seen) {
  const deadline = performance.now() + spin.budget / 1000;
  let word = Atomics.load(ctl, slot.job);
  for (let i = 1; word === seen && (i % 256 !== 0 || performance.now() < deadline); i++) word = Atomics.load(ctl, slot.job);
  spin.record(word !== seen);
  while (word === seen) {
    Atomics.wait(ctl, slot.job, seen);
    word = Atomics.load(ctl, slot.job);
  }
  return word;
}

Atomics.add(ctl, slot.ready, 1);
Atomics.notify(ctl, slot.ready);
// Starting from 0 rather than the current word: a job published before this worker booted still runs.
/** runtime.ts's `claimRange`: the next range of job `sequence`, or -1 when none is left or the job is over. */
function claimRange(sequence, parts) {
  for (;;) {
    const word = Atomics.load(ctl, slot.claim);
    const next = word & partsMask;
    if (word >>> partsBits !== sequence || next >= parts) return -1;
    if (Atomics.compareExchange(ctl, slot.claim, word, word + 1) === word) return next;
  }
}

for (let seen = nextJob(0); Atomics.load(ctl, slot.stop) === 0; seen = nextJob(seen)) {
  const parts = seen & partsMask;
  const sequence = seen >>> partsBits;
  for (let r = claimRange(sequence, parts); r >= 0; r = claimRange(sequence, parts)) {
    const start = ctl[slot.ranges + 2 * r];
    const end = ctl[slot.ranges + 2 * r + 1];
    try {
      runJob(start, end);
    } catch (error) {
      port.postMessage({ thread, start, end, error: describe(error) });
      Atomics.add(ctl, slot.failed, 1);
    }
    // The last range done wakes the caller (it may be asleep in Atomics.wait).
    if (Atomics.add(ctl, slot.done, 1) === parts - 1) Atomics.notify(ctl, slot.done);
  }
}
port.close();
