/**
 * The contract between the CPU backend's kernels and the threads that run them. Every kernel works
 * on one shared `WebAssembly.Memory` (tensors are byte offsets into it) and is run as
 * `entry(start, end, ...args)` over a fixed partition of `[0, total)`: the same element is always
 * computed by the same code in the same order, so results never depend on timing or thread count.
 */

/**
 * Typed views over the current shared memory. Take them again after any `alloc`: growing the memory
 * replaces its buffer, and views taken before still read and write the same bytes but stop at the old
 * end, so they miss every block allocated since.
 */
export interface Heap {
  readonly f32: Float32Array;
  readonly i32: Int32Array;
  readonly u8: Uint8Array;
}

/**
 * A JavaScript kernel: `(start, end, args, heap) => void`, given as the source text of its body (the
 * parameters are named `start`, `end`, `args`, `heap`). Compiled once per thread with `new Function`.
 */
export interface JsKernelSource {
  readonly body: string;
}

export interface Parallel {
  readonly memory: WebAssembly.Memory;
  /** Threads that share a run, the calling thread included. */
  readonly threads: number;
  /** A 64-byte aligned block of at least `bytes` bytes (growing the memory when needed). */
  alloc(bytes: number): number;
  free(offset: number): void;
  heap(): Heap;
  /** Bytes in live blocks. */
  readonly bytesInUse: number;
  /** The most bytes ever held in blocks, live or free for reuse (the peak). */
  readonly bytesReserved: number;
  /**
   * Instantiates `module` on every thread with imports `{ env: { memory }, math }` (`math.js`); returns its id. The module
   * must import `env.memory` as shared with maximum 65536 pages (a shared import must declare a maximum,
   * and it must equal the memory's) and a minimum no larger than the memory's current size (1 is safe).
   */
  registerWasm(module: WebAssembly.Module): number;
  /** Compiles a JavaScript kernel on every thread; returns its id. */
  registerJs(source: JsKernelSource): number;
  /**
   * Runs `entry` of kernel `id` (the export of a Wasm kernel, ignored for a JavaScript one) over a
   * fixed partition of `[0, total)` into one contiguous range per thread, each a multiple of `grain`
   * except the last; returns when every thread has finished. Ranges are a function of `total`,
   * `grain` and `threads` only. Work below `serialBelow` elements runs on the calling thread alone.
   * `args` are numbers: a Wasm entry receives them converted to its parameter types (so an i32 offset
   * at or past 2 GiB arrives wrapped to the same bits, and an f32 parameter works too), a JavaScript
   * kernel as an array. A failure on any thread throws a `BackendError` naming the kernel, the entry,
   * the thread and its range, once every thread has finished.
   */
  run(id: number, entry: string, total: number, args: readonly number[], options?: { readonly grain?: number; readonly serialBelow?: number }): void;
  /** Stops the worker threads. */
  dispose(): void;
}
