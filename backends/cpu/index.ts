/**
 * The compiled CPU backend. A program is lowered by the shared kernel layer (fusion plan, liveness
 * memory plan, donation) into steps: fused elementwise and reduction kernels rendered as JavaScript,
 * and WebAssembly SIMD GEMMs for matmul and convolutions. Every tensor lives in one shared
 * `WebAssembly.Memory`, and every step is split over worker threads with a fixed partition, so a
 * result never depends on timing or on the number of threads. The `reference` backend is the oracle
 * it is tested against; it has no float64 (use `reference` for that).
 */
import { registerBackend, type Backend, type Executable } from '../../core/backend.ts';
import type { DType, TypedArray } from '../../core/dtype.ts';
import { matchesDType } from '../../core/dtype.ts';
import { BackendError, fmtShape } from '../../core/errors.ts';
import type { Program, ProgramNode } from '../../core/program.ts';
import { sizeOf, type Shape } from '../../core/shape.ts';
import type { DeviceBuffer } from '../../core/tensor.ts';
import { debugEnabled } from '../kernel/debug.ts';
import { assignOutputs, planMemory, writesOf, type MemoryPlan } from '../kernel/memory.ts';
import { type ConvShapes, conv2d, conv2dGradInput, conv2dGradWeight, convScratchBytes } from './conv.ts';
import { matmul, matmulScratchBytes } from './gemm.ts';
import { elementBytes, viewOf } from './js.ts';
import { planSteps, type Step } from './kernels.ts';
import { compileKernel } from './simd.ts';
import { type KernelText, Unsupported } from './kernelText.ts';
import type { Parallel } from './parallel.ts';
import { createRuntime, sizeClass } from './runtime.ts';

const DTYPES: ReadonlySet<DType> = new Set(['float32', 'int32', 'bool']);

/** Elements times cost below which a fused kernel runs on the calling thread alone. */
const SERIAL_WORK = 1 << 15;
/** Outputs per grain of a WebAssembly fused kernel: a multiple of its 4 lanes, 64 bytes of f32. */
const WASM_GRAIN = 16;
/**
 * The grain of a kernel whose every output costs at least COSTLY_OUTPUT (a reduction over long
 * rows): 4 outputs, so that a reduction to a few outputs (8 to 24 channels) still splits over the
 * threads; two threads writing one cache line then matters little against the rows they read.
 */
const COSTLY_GRAIN = 4;
const COSTLY_OUTPUT = 1024;

/** A tensor in the shared memory: `offset` is in bytes, `size` in elements. */
export class CpuBuffer implements DeviceBuffer {
  readonly backendName = 'cpu';
  #offset: number | undefined;

  constructor(
    offset: number,
    readonly size: number,
    readonly dtype: DType,
  ) {
    this.#offset = offset;
  }

  get offset(): number {
    if (this.#offset === undefined) throw new BackendError(`cpu: a ${this.dtype} buffer of ${this.size} elements was used after it was freed or donated`);
    return this.#offset;
  }

  get isFreed(): boolean {
    return this.#offset === undefined;
  }

  /** Gives up the memory (freed, or handed to an output of a run that it was donated to). */
  release(): void {
    this.#offset = undefined;
  }
}

/** Bytes allocated for `size` elements of `dtype` (never zero, so every buffer has its own block). */
function bufferBytes(dtype: DType, size: number): number {
  return Math.max(4, size * elementBytes(dtype));
}

const nodeBytes = (nd: ProgramNode): number => bufferBytes(nd.dtype, sizeOf(nd.shape));

/**
 * A step ready to run, with the runtime's id of its fused kernel (-1 for a contraction): a
 * WebAssembly one (`wasm`: export `k`, byte offsets) or the JavaScript fallback (element offsets).
 */
interface Compiled {
  readonly step: Step;
  readonly kernel: number;
  readonly wasm: boolean;
}

/** Which language fused elementwise and reduction kernels are compiled to. */
export type KernelLanguage = 'wasm' | 'js';

export interface CpuExecutable extends Executable {
  readonly steps: readonly Compiled[];
  readonly memory: MemoryPlan;
  /** Bytes of one workspace block that contractions share for packed operands and patch matrices. */
  readonly scratchBytes: number;
  /** Bytes a run holds by its memory plan: inputs, intermediates' slots, the workspace and outputs (no donation counted). */
  readonly memoryPlanBytes: number;
}

export class CpuBackend implements Backend {
  readonly name = 'cpu';
  readonly dtypes = DTYPES;
  /** Kernel ids by source, so equal kernels of different programs compile once. */
  private readonly kernelIds = new Map<string, { readonly id: number; readonly wasm: boolean }>();
  /** Which donated input each output takes, per executable and donation pattern. */
  private readonly assignments = new WeakMap<CpuExecutable, Map<string, ReturnType<typeof assignOutputs>>>();

  /**
   * @param kernels `wasm` (the default) compiles fused kernels to WebAssembly SIMD where the
   *   compiler supports every op in them, else to JavaScript; `js` always to JavaScript (to compare).
   */
  constructor(
    readonly runtime: Parallel,
    readonly kernels: KernelLanguage = 'wasm',
  ) {}

  compile(program: Program): CpuExecutable {
    for (const nd of [...program.nodes, ...program.inputs]) {
      if (!DTYPES.has(nd.dtype)) throw new BackendError(`cpu: program '${program.name}' uses ${nd.dtype}, which the cpu backend does not hold; use the 'reference' backend`);
    }
    const { steps } = planSteps(program);
    const compiled = steps.map((step): Compiled => {
      if (step.kind !== 'js') return { step, kernel: -1, wasm: false };
      const wasm = this.kernels === 'wasm' ? step.wasm : undefined;
      const key = wasm === undefined ? `js:${step.source}` : `wasm:${wasm.body}`;
      let kernel = this.kernelIds.get(key);
      if (kernel === undefined) {
        kernel = this.compileKernel(step, wasm);
        this.kernelIds.set(key, kernel);
      }
      return { step, kernel: kernel.id, wasm: kernel.wasm };
    });
    const memory = planMemory(program, steps, nodeBytes);
    const inputBytes = program.inputs.reduce((s, i) => s + bufferBytes(i.dtype, sizeOf(i.shape)), 0);
    const outputBytes = [...new Set(program.outputs)].reduce((s, n) => s + nodeBytes(program.nodes[n]!), 0);
    const scratchBytes = Math.max(0, ...steps.map((st) => stepScratchBytes(st, program.nodes)));
    const memoryPlanBytes = inputBytes + memory.slotBytes.reduce((s, b) => s + b, 0) + scratchBytes + outputBytes;
    return { program, steps: compiled, memory, scratchBytes, memoryPlanBytes };
  }

  /** Registers a fused kernel: WebAssembly when `wasm` compiles, else the JavaScript source. */
  private compileKernel(step: Extract<Step, { kind: 'js' }>, wasm: KernelText | undefined): { id: number; wasm: boolean } {
    if (wasm !== undefined) {
      try {
        const { module } = compileKernel(wasm);
        if (debugEnabled('wasm')) console.log(`// ${step.label}\n${wasm.body}\n`);
        return { id: this.runtime.registerWasm(module), wasm: true };
      } catch (e) {
        if (!(e instanceof Unsupported)) throw new BackendError(`${step.label}: ${(e as Error).message}`);
      }
    }
    if (debugEnabled('js')) console.log(`// ${step.label}\n${step.source}\n`);
    try {
      return { id: this.runtime.registerJs({ body: step.source }), wasm: false };
    } catch (e) {
      throw new BackendError(`${step.label}: the generated kernel does not compile: ${(e as Error).message}\n${step.source}`);
    }
  }

  upload(data: TypedArray, shape: Shape, dtype: DType): CpuBuffer {
    const size = sizeOf(shape);
    if (!DTYPES.has(dtype)) throw new BackendError(`cpu: upload of ${dtype} ${fmtShape(shape)}: the cpu backend holds ${[...DTYPES].join(', ')}; use the 'reference' backend`);
    if (!matchesDType(data, dtype) || data.length !== size) {
      throw new BackendError(`cpu: upload of ${data.constructor.name}(${data.length}) as ${dtype} ${fmtShape(shape)}`);
    }
    const buf = this.allocate(dtype, size);
    this.view(buf).set(data);
    return buf;
  }

  async download(buffer: DeviceBuffer): Promise<TypedArray> {
    return this.view(this.own(buffer, 'download')).slice();
  }

  run(executable: Executable, inputBuffers: readonly DeviceBuffer[], donated: readonly boolean[]): CpuBuffer[] {
    const exe = executable as CpuExecutable;
    const { program, memory } = exe;
    if (exe.steps === undefined) throw new BackendError(`cpu: run was given an executable compiled by another backend`);
    if (inputBuffers.length !== program.inputs.length) {
      throw new BackendError(`cpu: program '${program.name}' takes ${program.inputs.length} inputs, got ${inputBuffers.length}`);
    }
    const ins = inputBuffers.map((b, i) => {
      const buf = this.own(b, `${program.name} input ${i}`);
      const want = program.inputs[i]!;
      if (buf.dtype !== want.dtype || buf.size !== sizeOf(want.shape)) {
        throw new BackendError(`cpu: program '${program.name}' input ${i} is ${want.dtype} ${fmtShape(want.shape)}, got a ${buf.dtype} buffer of ${buf.size} elements`);
      }
      return buf;
    });
    // A buffer passed twice cannot be given away.
    const uses = new Map<CpuBuffer, number>();
    for (const b of ins) uses.set(b, (uses.get(b) ?? 0) + 1);
    const canDonate = ins.map((b, i) => donated[i] === true && uses.get(b) === 1);
    const nodes = program.nodes;
    const where = new Map<number, number>();
    nodes.forEach((nd, n) => {
      if (nd.prim.op === 'input') where.set(n, ins[nd.prim.index]!.offset);
    });
    const rt = this.runtime;
    const slots = memory.slotBytes.map((bytes) => rt.alloc(bytes));
    memory.slotOf.forEach((slot, n) => where.set(n, slots[slot]!));
    // One workspace for every contraction of the run: the same size each run, so it is reused.
    const scratch = exe.scratchBytes > 0 ? rt.alloc(exe.scratchBytes) : undefined;

    // Inputs always have the program's sizes (checked above), so the assignment depends only on
    // which inputs are donated: computed once per pattern (a training loop has one) and kept.
    const pattern = canDonate.map((d) => (d ? '1' : '0')).join('');
    let assignments = this.assignments.get(exe);
    if (assignments === undefined) this.assignments.set(exe, (assignments = new Map()));
    let assignment = assignments.get(pattern);
    if (assignment === undefined) {
      assignment = assignOutputs(program, memory, canDonate, (i, n) =>
        // Only a block of the same size class: a larger one would drift to ever smaller tensors.
        sizeClass(bufferBytes(ins[i]!.dtype, ins[i]!.size)) === sizeClass(nodeBytes(nodes[n]!)) ? 0 : undefined,
      );
      assignments.set(pattern, assignment);
    }
    const { outputs, unused } = assignment;
    const copies: [from: number, to: CpuBuffer][] = [];
    const results = program.outputs.map((n, k) => {
      const nd = nodes[n]!;
      const size = sizeOf(nd.shape);
      const src = outputs[k]!;
      if (src.kind === 'input') return ins[src.input]!;
      let buf: CpuBuffer;
      if (src.kind === 'reuse') {
        const old = ins[src.input]!;
        buf = new CpuBuffer(old.offset, size, nd.dtype);
        old.release();
      } else {
        buf = this.allocate(nd.dtype, size);
      }
      if (src.kind === 'copy') copies.push([where.get(n)!, buf]);
      else where.set(n, buf.offset);
      return buf;
    });

    try {
      for (const c of exe.steps) this.runStep(c, where, nodes, scratch);
    } catch (e) {
      throw e instanceof BackendError ? e : new BackendError(`cpu: program '${program.name}' failed: ${(e as Error).message}`);
    } finally {
      if (scratch !== undefined) rt.free(scratch);
    }
    const u8 = rt.heap().u8;
    for (const [from, to] of copies) u8.copyWithin(to.offset, from, from + to.size * elementBytes(to.dtype));
    slots.forEach((s) => rt.free(s));
    for (const i of unused) this.free(ins[i]!);
    return results;
  }

  free(buffer: DeviceBuffer): void {
    const b = this.own(buffer, 'free');
    if (b.isFreed) return;
    this.runtime.free(b.offset);
    b.release();
  }

  describe(): Record<string, unknown> {
    return {
      backend: 'cpu (compiled: JavaScript and WebAssembly SIMD kernels on worker threads)',
      threads: this.runtime.threads,
      dtypes: [...DTYPES],
      kernelsCompiled: this.kernelIds.size,
      wasmKernels: [...this.kernelIds.values()].filter((k) => k.wasm).length,
      memoryBytes: this.runtime.memory.buffer.byteLength,
      bytesInUse: this.runtime.bytesInUse,
      peakBytes: this.runtime.bytesReserved,
    };
  }

  private runStep({ step, kernel, wasm }: Compiled, where: ReadonlyMap<number, number>, nodes: readonly ProgramNode[], scratch: number | undefined): void {
    const rt = this.runtime;
    const at = (n: number): number => where.get(n)!;
    switch (step.kind) {
      case 'js': {
        const serialBelow = Math.ceil(SERIAL_WORK / step.cost);
        if (wasm) {
          // Byte offsets; ranges start at multiples of 4, as the vector loop needs.
          const grain = step.cost >= COSTLY_OUTPUT ? COSTLY_GRAIN : WASM_GRAIN;
          rt.run(kernel, 'k', step.total, [...step.reads, ...writesOf(step)].map(at), { grain, serialBelow: Math.max(serialBelow, 2 * grain) });
          return;
        }
        const args = [...step.reads, ...writesOf(step)].map((n) => at(n) / elementBytes(nodes[n]!.dtype));
        rt.run(kernel, '', step.total, args, { serialBelow });
        return;
      }
      case 'matmul': {
        const { a, b, m, n, k } = step;
        matmul(rt, {
          batch: step.batch, m, n, k,
          a: at(a.node), b: at(b.node), c: at(step.writes),
          aBatchStride: a.shared ? 0 : m * k, bBatchStride: b.shared ? 0 : k * n,
          transA: a.transposed, transB: b.transposed, scratch,
        });
        return;
      }
      case 'conv2d':
      case 'conv2dGradInput':
      case 'conv2dGradWeight': {
        const [p, q] = step.reads as [number, number];
        // The reads may sit under reshapes: the shapes are those of the convolution's own operands.
        const conv = step.kind === 'conv2d' ? conv2d : step.kind === 'conv2dGradInput' ? conv2dGradInput : conv2dGradWeight;
        conv(rt, { a: at(p), b: at(q), out: at(step.writes), ...convShapes(step, nodes), scratch });
        return;
      }
      default:
        return step satisfies never;
    }
  }

  private allocate(dtype: DType, size: number): CpuBuffer {
    return new CpuBuffer(this.runtime.alloc(bufferBytes(dtype, size)), size, dtype);
  }

  private view(b: CpuBuffer): TypedArray {
    const heap = this.runtime.heap();
    const off = b.offset / elementBytes(b.dtype);
    return heap[viewOf(b.dtype)].subarray(off, off + b.size);
  }

  private own(buffer: DeviceBuffer, what: string): CpuBuffer {
    if (!(buffer instanceof CpuBuffer)) throw new BackendError(`cpu: ${what} is a buffer of backend '${buffer.backendName}', not of 'cpu'`);
    return buffer;
  }
}

/** A convolution step's sizes. The reads may sit under reshapes: the shapes are those of the convolution's own operands. */
function convShapes(step: Extract<Step, { kind: 'conv2d' | 'conv2dGradInput' | 'conv2dGradWeight' }>, nodes: readonly ProgramNode[]): ConvShapes {
  const [x, w] = nodes[step.writes]!.inputs as [number, number];
  return { aShape: nodes[x]!.shape, bShape: nodes[w]!.shape, outShape: nodes[step.writes]!.shape, ...step.attrs };
}

/** Bytes of workspace a step needs (contractions only). */
function stepScratchBytes(step: Step, nodes: readonly ProgramNode[]): number {
  switch (step.kind) {
    case 'js':
      return 0;
    case 'matmul':
      return matmulScratchBytes({ batch: step.batch, m: step.m, n: step.n, k: step.k, aBatchStride: step.a.shared ? 0 : step.m * step.k, bBatchStride: step.b.shared ? 0 : step.k * step.n });
    default:
      return convScratchBytes(step.kind, convShapes(step, nodes));
  }
}

let instance: CpuBackend | undefined;

/** The process-wide compiled CPU backend (threads: `TESSERA_CPU_THREADS`, default one per core). */
export function cpuBackend(): CpuBackend {
  instance ??= new CpuBackend(createRuntime());
  return instance;
}

/** Makes 'cpu' available to `getBackend`, `setDefaultBackend` and `jit`. */
export function registerCpuBackend(): void {
  registerBackend('cpu', async () => cpuBackend(), 5);
}
