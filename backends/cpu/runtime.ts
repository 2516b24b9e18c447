/**
 * The CPU backend's thread runtime (the `Parallel` contract of `parallel.ts`): one shared
 * `WebAssembly.Memory` with a size-class allocator, and `threads - 1` worker threads
 * (`worker.js`) that run registered kernels together with the calling thread.
 *
 * The protocol, over a small SharedArrayBuffer (`control`) of i32 slots followed by f64 arguments:
 *  - the caller writes a job (kernel, entry, one range per thread, arguments), resets `done` and
 *    the `claim` word, and publishes a new `job` word with `Atomics.store` + `Atomics.notify`;
 *  - then every thread, the caller included, claims ranges one at a time by a compare-and-swap on
 *    `claim` (`sequence << 10 | next range`) and runs them, until none is left; the caller then
 *    waits until `done` counts every range. Which thread runs a range changes nothing in its
 *    result (the partition is fixed and every range runs the same code), but a worker still asleep
 *    or descheduled (a VM's idle vCPU can take a millisecond to wake) no longer holds the run up:
 *    the others take its range;
 *  - the `job` word is `sequence << 10 | parts`, and a claim carries the same sequence, so a worker
 *    that wakes late for a finished job claims nothing, never a range of the next job with the old
 *    job's count; a range it did claim cannot be overwritten, since the next job is published only
 *    once `done` counts it;
 *  - a worker that fails posts its message on its port and bumps `failed` before it bumps `done`,
 *    so a failure never leaves the caller waiting;
 *  - kernels are registered by posting them on one MessagePort per worker; a worker drains its
 *    port with `receiveMessageOnPort` before each job, so a `run` right after `register*` finds the
 *    kernel even though the worker never returns to its event loop.
 * Both sides poll `Atomics.load` for a while before `Atomics.wait` (`SpinPolicy`). Measured on a
 * 2-vCPU VM, threads = 2, an empty kernel's round trip (median): sleeping at once costs ~80 µs (the
 * futex wake-up of an idle core); polling up to 200 µs brings it to ~1.5 µs back to back, still
 * ~1.5 µs with 10 µs of JavaScript between runs, ~6 µs with 50 µs, ~45 µs with 150 µs. With a busy
 * process on one of the two cores, fixed polling costs ~420 µs (each side polls its whole budget
 * while the other waits for the core), hence the adaptive budget: ~15-25 µs there, near the
 * ~10-20 µs of never polling.
 */
import type { MessagePort, Worker } from 'node:worker_threads';
import { BackendError } from '../../core/errors.ts';
import { envVar, node, nodeOnly } from '../platform.ts';
import { MATH_IMPORTS } from './math.js';
import type { Heap, JsKernelSource, Parallel } from './parallel.ts';

/** Alignment of every block: a cache line, and enough for any SIMD load. */
export const ALIGN = 64;
const PAGE = 65536;
/** The most pages a 32-bit memory can hold (4 GiB); shared memories must declare a maximum. */
const MAX_PAGES = 65536;
/** Pages the memory starts with (1 MiB); it grows on demand. */
const INITIAL_PAGES = 16;
/** `parts` takes the low 10 bits of the job word. */
const MAX_THREADS = 1023;
const PARTS_BITS = 10;
/** Arguments a kernel may take (f64 slots in the control block). */
export const MAX_ARGS = 256;
/** The longest a waiting thread polls before it sleeps, in µs (the header has the measurements). */
const SPIN_MICROS = 200;
/** Misses at the floor after which a `SpinPolicy` polls for the whole budget once more. */
const PROBE_AFTER = 128;
/** How long the first parallel run waits for the workers to boot before giving up. */
const BOOT_TIMEOUT_MS = 30000;

/** Slots of the control block's i32 part; `ranges` holds [start, end) of range r at `ranges + 2r`. */
const SLOT = { job: 0, done: 1, ready: 2, failed: 3, stop: 4, kernel: 5, entry: 6, argCount: 7, claim: 8, ranges: 9 } as const;

/**
 * The fixed partition of `[0, total)` over `threads`: contiguous ranges in thread order, each a
 * multiple of `grain` except the last non-empty one, with whole grains spread as evenly as possible
 * (the first `chunks % threads` threads get one more). Empty ranges, if any, come last.
 */
export function partition(total: number, grain: number, threads: number): Array<readonly [number, number]> {
  const chunks = Math.ceil(total / grain);
  const base = Math.floor(chunks / threads);
  const extra = chunks % threads;
  return Array.from({ length: threads }, (_, t) => {
    const start = Math.min(total, (t * base + Math.min(t, extra)) * grain);
    const end = Math.min(total, start + (base + (t < extra ? 1 : 0)) * grain);
    return [start, end] as const;
  });
}

/**
 * Claims the next range of job `sequence` (of `parts` ranges): its index, or -1 when every range is
 * taken or the job is no longer the current one. worker.js holds the same function.
 */
function claimRange(ctl: Int32Array, sequence: number, parts: number): number {
  for (;;) {
    const word = Atomics.load(ctl, SLOT.claim);
    const next = word & ((1 << PARTS_BITS) - 1);
    if (word >>> PARTS_BITS !== sequence || next >= parts) return -1;
    if (Atomics.compareExchange(ctl, SLOT.claim, word, word + 1) === word) return next;
  }
}

/** Block sizes: 64-byte steps up to 4 KiB, then 1/8 of the enclosing power of two (<= 12.5% waste). */
export function sizeClass(bytes: number): number {
  if (bytes <= 4096) return Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
  const step = 2 ** (Math.ceil(Math.log2(bytes)) - 3);
  return Math.ceil(bytes / step) * step;
}

/**
 * How long a waiting thread polls before it sleeps in `Atomics.wait`: up to `max` µs, adapted to
 * whether polling pays. It pays when the other side is running on another core; it hurts when the
 * threads outnumber free cores, since a poller then only delays the thread it waits for. So the
 * budget doubles when polling found the event and halves when it did not, down to `max / 64`; after
 * PROBE_AFTER misses there, one wait polls for the whole `max` again, in case the cores came back.
 * worker.js holds the same policy in JavaScript.
 */
export class SpinPolicy {
  private budget: number;
  private misses = 0;
  private probing = false;

  constructor(private readonly max: number) {
    this.budget = max;
  }

  /** Microseconds the next wait polls. */
  get micros(): number {
    return this.budget;
  }

  record(found: boolean): void {
    const floor = this.max / 64;
    const probe = this.probing;
    this.probing = false;
    if (found) {
      this.budget = Math.min(this.max, 2 * this.budget);
      this.misses = 0;
    } else if (probe || this.budget <= floor) {
      this.budget = floor;
      if (++this.misses >= PROBE_AFTER) {
        this.budget = this.max;
        this.misses = 0;
        this.probing = true;
      }
    } else {
      this.budget = Math.max(floor, this.budget / 2);
    }
  }
}

type WasmEntry = (start: number, end: number, ...args: number[]) => unknown;
type JsKernel = (start: number, end: number, args: readonly number[], heap: Heap) => void;

type Kernel =
  | { readonly kind: 'wasm'; readonly names: readonly string[]; readonly entries: readonly WasmEntry[] }
  | { readonly kind: 'js'; readonly fn: JsKernel };

/** What a worker receives for each registration (kept in step with `worker.js`). */
type Registration =
  | { readonly kind: 'wasm'; readonly id: number; readonly module: WebAssembly.Module; readonly names: readonly string[] }
  | { readonly kind: 'js'; readonly id: number; readonly body: string };

function heapViews(buffer: ArrayBufferLike): Heap {
  return { f32: new Float32Array(buffer), i32: new Int32Array(buffer), u8: new Uint8Array(buffer) };
}

function message(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

/**
 * Threads from the option, else `TESSERA_CPU_THREADS`, else every core. Outside Node, one: worker
 * threads need Node's `receiveMessageOnPort` (a worker blocked in `Atomics.wait` drains its
 * registrations synchronously), which Web Workers have no counterpart of.
 */
function threadCount(requested: number | undefined): number {
  const env = envVar('TESSERA_CPU_THREADS') ?? '';
  const [threads, source] =
    requested !== undefined ? [requested, `the threads option ${requested}`]
    : env !== '' ? [Number(env), `TESSERA_CPU_THREADS=${JSON.stringify(env)}`]
    : node !== undefined ? [node.os.availableParallelism(), 'os.availableParallelism()']
    : [1, 'the browser default (one thread)'];
  if (!Number.isInteger(threads) || threads < 1 || threads > MAX_THREADS) {
    throw new BackendError(`cpu runtime: threads must be an integer in [1, ${MAX_THREADS}], got ${source}`);
  }
  if (threads > 1) nodeOnly(`cpu runtime: ${threads} threads (${source})`);
  return threads;
}

export class CpuRuntime implements Parallel {
  readonly memory: WebAssembly.Memory;
  readonly threads: number;
  private readonly control: Int32Array;
  private readonly args: Float64Array;
  private readonly workers: Worker[] = [];
  private readonly ports: MessagePort[] = [];
  private readonly kernels: Kernel[] = [];
  private views: Heap;
  private sequence = 0;
  private readonly spin: SpinPolicy;
  private booted: boolean;
  private disposed = false;
  /** A worker's 'error' or early 'exit', seen when the event loop got a turn. */
  private workerFailure: string | undefined;

  // The allocator: blocks are handed out from `top` upwards and, once freed, kept on the free list of
  // their size class for the next block of that class. Offset 0 is never handed out (0 means null).
  private top = ALIGN;
  private inUse = 0;
  private readonly live = new Map<number, number>();
  private readonly freeLists = new Map<number, number[]>();

  /** `spinMicros`: the longest a waiting thread polls before it sleeps, on both sides (0: never polls). */
  constructor(threads: number, spinMicros = SPIN_MICROS) {
    this.threads = threads;
    this.spin = new SpinPolicy(spinMicros);
    if (typeof SharedArrayBuffer === 'undefined') {
      throw new BackendError('cpu runtime: SharedArrayBuffer is unavailable; a browser offers it only to a cross-origin isolated page (serve it with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp)');
    }
    this.memory = new WebAssembly.Memory({ initial: INITIAL_PAGES, maximum: MAX_PAGES, shared: true });
    this.views = heapViews(this.memory.buffer);
    const argsOffset = Math.ceil(((SLOT.ranges + 2 * threads) * 4) / 8) * 8;
    const control = new SharedArrayBuffer(argsOffset + MAX_ARGS * 8);
    this.control = new Int32Array(control, 0, SLOT.ranges + 2 * threads);
    this.args = new Float64Array(control, argsOffset, MAX_ARGS);
    this.booted = threads === 1;
    for (let thread = 1; thread < threads; thread++) {
      const { MessageChannel, Worker } = nodeOnly('cpu runtime worker threads').workerThreads;
      const { port1, port2 } = new MessageChannel();
      const worker = new Worker(new URL('./worker.js', import.meta.url), {
        // worker.js is plain JavaScript: it needs no loader, and booting one (tsx) per worker is slow.
        execArgv: [],
        workerData: { memory: this.memory, control, port: port2, thread, spinMicros, probeAfter: PROBE_AFTER, slot: SLOT, argsOffset, maxArgs: MAX_ARGS, partsBits: PARTS_BITS },
        transferList: [port2],
      });
      worker.on('error', (error) => (this.workerFailure ??= `worker ${thread} failed: ${message(error)}`));
      worker.on('exit', (code) => {
        if (!this.disposed) this.workerFailure ??= `worker ${thread} exited with code ${code}`;
      });
      worker.unref();
      port1.unref();
      this.workers.push(worker);
      this.ports.push(port1);
    }
  }

  /** Bytes of the live blocks (rounded up to their size class). */
  get bytesInUse(): number {
    return this.inUse;
  }

  /** Bytes ever handed out from the memory: live blocks plus free lists, the allocator's high-water mark. */
  get bytesReserved(): number {
    return this.top - ALIGN;
  }

  alloc(bytes: number): number {
    if (!Number.isInteger(bytes) || bytes < 0) throw new BackendError(`cpu runtime alloc: bytes must be a non-negative integer, got ${bytes}`);
    const size = sizeClass(bytes);
    const offset = this.freeLists.get(size)?.pop() ?? this.bump(size);
    this.live.set(offset, size);
    this.inUse += size;
    return offset;
  }

  free(offset: number): void {
    const size = this.live.get(offset);
    if (size === undefined) throw new BackendError(`cpu runtime free: offset ${offset} is not a live block (freed twice, or never allocated)`);
    this.live.delete(offset);
    this.inUse -= size;
    let list = this.freeLists.get(size);
    if (list === undefined) this.freeLists.set(size, (list = []));
    list.push(offset);
  }

  /** Views over the current buffer; growing the memory replaces it (old views stay valid, but short). */
  heap(): Heap {
    const buffer = this.memory.buffer;
    if (buffer.byteLength !== this.views.u8.byteLength) this.views = heapViews(buffer);
    return this.views;
  }

  registerWasm(module: WebAssembly.Module): number {
    this.assertLive('registerWasm');
    let instance: WebAssembly.Instance;
    try {
      instance = new WebAssembly.Instance(module, { env: { memory: this.memory }, math: MATH_IMPORTS });
    } catch (error) {
      throw new BackendError(`cpu runtime registerWasm: cannot instantiate the module (it must import env.memory as a shared memory with maximum ${MAX_PAGES} pages and minimum <= ${this.memory.buffer.byteLength / PAGE}): ${message(error)}`);
    }
    const names = WebAssembly.Module.exports(module).filter((e) => e.kind === 'function').map((e) => e.name);
    const entries = names.map((name) => instance.exports[name] as WasmEntry);
    return this.register({ kind: 'wasm', names, entries }, (id) => ({ kind: 'wasm', id, module, names }));
  }

  registerJs(source: JsKernelSource): number {
    this.assertLive('registerJs');
    let fn: JsKernel;
    try {
      fn = new Function('start', 'end', 'args', 'heap', source.body) as JsKernel;
    } catch (error) {
      throw new BackendError(`cpu runtime registerJs: the kernel body does not compile: ${message(error)}\n${source.body}`);
    }
    return this.register({ kind: 'js', fn }, (id) => ({ kind: 'js', id, body: source.body }));
  }

  /**
   * Work below `serialBelow` elements (default `2 * grain`) runs on the calling thread alone: `grain`
   * is meant as the least work worth a thread's round trip, so a split pays once two threads get a
   * whole grain each. Kernels must not grow the memory themselves.
   */
  run(id: number, entry: string, total: number, args: readonly number[], options: { readonly grain?: number; readonly serialBelow?: number } = {}): void {
    this.assertLive('run');
    const kernel = this.kernels[id];
    if (kernel === undefined) throw new BackendError(`cpu runtime run: no kernel ${id} (${this.kernels.length} registered)`);
    const grain = options.grain ?? 1;
    const serialBelow = options.serialBelow ?? 2 * grain;
    const entryIndex = kernel.kind === 'wasm' ? kernel.names.indexOf(entry) : 0;
    if (entryIndex < 0) throw new BackendError(`cpu runtime run: kernel ${id} has no export '${entry}' (has ${kernel.kind === 'wasm' ? kernel.names.join(', ') : ''})`);
    if (!Number.isInteger(total) || total < 0) throw new BackendError(`cpu runtime run: kernel ${id} '${entry}': total must be a non-negative integer, got ${total}`);
    if (!Number.isInteger(grain) || grain < 1) throw new BackendError(`cpu runtime run: kernel ${id} '${entry}': grain must be a positive integer, got ${grain}`);
    if (args.length > MAX_ARGS) throw new BackendError(`cpu runtime run: kernel ${id} '${entry}': ${args.length} arguments, at most ${MAX_ARGS}`);
    if (total === 0) return;

    const ranges = this.threads === 1 || total < serialBelow ? [[0, total] as const] : partition(total, grain, this.threads).filter(([s, e]) => s < e);
    if (ranges.length === 1) {
      try {
        this.invokeHere(kernel, entryIndex, 0, total, args);
      } catch (error) {
        throw new BackendError(`cpu kernel ${id} '${entry}' failed on thread 0 over [0, ${total}): ${message(error)}`);
      }
      return;
    }
    this.publish(id, entryIndex, ranges, args);
    const failures: string[] = [];
    for (let r = claimRange(this.control, this.sequence, ranges.length); r >= 0; r = claimRange(this.control, this.sequence, ranges.length)) {
      const [start, end] = ranges[r]!;
      try {
        this.invokeHere(kernel, entryIndex, start, end, args);
      } catch (error) {
        failures.push(`thread 0 over [${start}, ${end}): ${message(error)}`);
      }
      Atomics.add(this.control, SLOT.done, 1);
    }
    // Collected even when a range here failed: the next run rewrites the slots the workers read.
    failures.push(...this.collect(ranges.length));
    if (failures.length > 0) throw new BackendError(`cpu kernel ${id} '${entry}' failed on ${failures.join('; ')}`);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    // A clean exit for workers asleep in Atomics.wait; terminate() is the backstop.
    Atomics.store(this.control, SLOT.stop, 1);
    Atomics.add(this.control, SLOT.job, 1 << PARTS_BITS);
    Atomics.notify(this.control, SLOT.job);
    for (const worker of this.workers) void worker.terminate();
    for (const port of this.ports) port.close();
  }

  private register(kernel: Kernel, registration: (id: number) => Registration): number {
    const id = this.kernels.push(kernel) - 1;
    const posted = registration(id);
    for (const port of this.ports) port.postMessage(posted);
    return id;
  }

  private invokeHere(kernel: Kernel, entryIndex: number, start: number, end: number, args: readonly number[]): void {
    switch (kernel.kind) {
      case 'wasm':
        kernel.entries[entryIndex]!(start, end, ...args);
        return;
      case 'js':
        kernel.fn(start, end, args, this.heap());
        return;
      default:
        return kernel satisfies never;
    }
  }

  private bump(size: number): number {
    const offset = this.top;
    const needed = offset + size;
    const bytes = this.memory.buffer.byteLength;
    if (needed > bytes) {
      const pages = bytes / PAGE;
      // Grow by at least 1/8 so that a run of allocations does not grow (and rebuild views) each time.
      const grow = Math.min(MAX_PAGES - pages, Math.max(Math.ceil((needed - bytes) / PAGE), Math.ceil(pages / 8)));
      if (needed > (pages + grow) * PAGE) throw new BackendError(`cpu runtime alloc: out of memory: ${size} bytes at offset ${offset} exceed the 4 GiB of a 32-bit memory (${this.inUse} bytes in use)`);
      try {
        this.memory.grow(grow);
      } catch (error) {
        throw new BackendError(`cpu runtime alloc: cannot grow the memory from ${bytes} by ${grow * PAGE} bytes: ${message(error)}`);
      }
    }
    this.top = needed;
    return offset;
  }

  /** Writes the job into the control block and wakes the workers. */
  private publish(id: number, entryIndex: number, ranges: ReadonlyArray<readonly [number, number]>, args: readonly number[]): void {
    this.awaitBoot();
    const ctl = this.control;
    ctl[SLOT.kernel] = id;
    ctl[SLOT.entry] = entryIndex;
    ctl[SLOT.argCount] = args.length;
    this.args.set(args);
    ranges.forEach(([start, end], t) => {
      ctl[SLOT.ranges + 2 * t] = start;
      ctl[SLOT.ranges + 2 * t + 1] = end;
    });
    this.sequence = (this.sequence + 1) & ((1 << (31 - PARTS_BITS)) - 1);
    Atomics.store(ctl, SLOT.done, 0);
    Atomics.store(ctl, SLOT.claim, this.sequence << PARTS_BITS);
    Atomics.store(ctl, SLOT.job, (this.sequence << PARTS_BITS) | ranges.length);
    Atomics.notify(ctl, SLOT.job);
  }

  /** The first parallel run waits for the workers to start (they boot while the backend compiles). */
  private awaitBoot(): void {
    if (this.booted) return;
    const deadline = performance.now() + BOOT_TIMEOUT_MS;
    for (let ready = Atomics.load(this.control, SLOT.ready); ready < this.workers.length; ready = Atomics.load(this.control, SLOT.ready)) {
      const left = deadline - performance.now();
      if (left <= 0 || this.workerFailure !== undefined) {
        throw new BackendError(`cpu runtime: ${ready} of ${this.workers.length} worker threads started within ${BOOT_TIMEOUT_MS / 1000} s${this.workerFailure === undefined ? '' : `: ${this.workerFailure}`}`);
      }
      Atomics.wait(this.control, SLOT.ready, ready, left);
    }
    this.booted = true;
  }

  /** Waits until `parts` ranges are done; returns the workers' failures as `thread t over [s, e): message`. */
  private collect(parts: number): string[] {
    const ctl = this.control;
    const deadline = performance.now() + this.spin.micros / 1000;
    let done = Atomics.load(ctl, SLOT.done);
    for (let i = 1; done !== parts && (i % 256 !== 0 || performance.now() < deadline); i++) done = Atomics.load(ctl, SLOT.done);
    this.spin.record(done === parts);
    for (; done !== parts; done = Atomics.load(ctl, SLOT.done)) Atomics.wait(ctl, SLOT.done, done);
    if (Atomics.load(ctl, SLOT.failed) === 0) return [];
    Atomics.store(ctl, SLOT.failed, 0);
    const { receiveMessageOnPort } = nodeOnly('cpu runtime worker threads').workerThreads;
    return this.ports.flatMap((port) => {
      const found: string[] = [];
      for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
        const { thread, start, end, error } = m.message as { thread: number; start: number; end: number; error: string };
        found.push(`thread ${thread} over [${start}, ${end}): ${error}`);
      }
      return found;
    });
  }

  private assertLive(what: string): void {
    if (this.disposed) throw new BackendError(`cpu runtime ${what}: the runtime was disposed`);
    if (this.workerFailure !== undefined) throw new BackendError(`cpu runtime ${what}: ${this.workerFailure}`);
  }
}

/** A runtime with `threads` threads (default: `TESSERA_CPU_THREADS`, else every core); 1 starts no workers. */
export function createRuntime(options: { readonly threads?: number; readonly spinMicros?: number } = {}): CpuRuntime {
  return new CpuRuntime(threadCount(options.threads), options.spinMicros);
}
