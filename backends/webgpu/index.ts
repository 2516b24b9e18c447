/**
 * The WebGPU backend on Dawn: compiles a Program into fused kernels with a liveness-planned memory
 * layout, and runs it as one queue submission. `download` is the only point that waits.
 */
import { registerBackend, type Backend, type Executable } from '../../core/backend.ts';
import type { DType, TypedArray } from '../../core/dtype.ts';
import { BackendError, fmtShape } from '../../core/errors.ts';
import type { Program } from '../../core/program.ts';
import { sizeOf, type Shape } from '../../core/shape.ts';
import type { DeviceBuffer } from '../../core/tensor.ts';
import { acquireDevice, type GpuContext } from './device.ts';
import { elementwiseBody } from './elementwise.ts';
import { groupSiblings, kernelWrites, planFusion, reductionMembers, splitCandidates, type FusionPlan, type KernelPlan } from '../kernel/fusion.ts';
import { gemmBody, gemmShape, type Tile } from './gemm.ts';
import { buildKernel, foldGrid, type KernelBody, type KernelSource } from './kernel.ts';
import { assignOutputs, planMemory, writesOf, type MemoryPlan } from '../kernel/memory.ts';
import { BufferPool, bindingBytes } from './memory.ts';
import { PipelineCache } from './pipelines.ts';
import { reduceBody } from './reduce.ts';
import { TILE_CANDIDATES, cachedTiles, chooseTile } from './tiles.ts';
import { envVar, node } from '../platform.ts';
import { checkDType } from './wgsl.ts';

export class WebGpuBuffer implements DeviceBuffer {
  readonly backendName = 'webgpu';
  constructor(
    /** Elements. */
    readonly size: number,
    readonly dtype: DType,
    readonly gpu: GPUBuffer,
  ) {}
}

interface CompiledKernel {
  readonly source: KernelSource;
  /** Set once built (`ready`); absent for kernels with nothing to do. */
  pipeline: GPUComputePipeline | undefined;
}

interface WebGpuExecutable extends Executable {
  readonly kernels: readonly CompiledKernel[];
  /** Every shape-generic kernel's numbers, one uniform buffer; `paramOffsets[i]` is kernel i's (-1: none). */
  readonly params: GPUBuffer | undefined;
  readonly paramOffsets: readonly number[];
  readonly memory: MemoryPlan;
  readonly ready: Promise<void>;
  /** Whether every pipeline is built. */
  built: boolean;
}

export interface WebGpuOptions {
  /** Tile candidates in order of preference (default: the built-in table). */
  readonly tiles?: readonly Tile[];
  /**
   * Shape-generic kernels (default true; `TESSERA_WEBGPU_SPECIALIZE=1` turns them off): a kernel's
   * sizes, strides and literal values are read from a uniform buffer, so one pipeline serves every
   * shape of the same structure (every batch and patch size) and a new shape compiles little or
   * nothing. Specialized kernels spell every number (the shader compiler folds them; each shape
   * compiles its own).
   */
  readonly shapeGeneric?: boolean;
}

/** WebGPU's largest `minUniformBufferOffsetAlignment`: kernels' numbers start at multiples of it. */
const UNIFORM_ALIGN = 256;

/** Kernel sources for a program, materializing more nodes until every kernel is within limits. */
export function generateKernels(program: Program, maxStorageBuffers: number, tiles: readonly Tile[], generic = true): KernelSource[] {
  const forced = new Set<number>();
  // Sources by root from earlier attempts: a kernel is rebuilt only when the plan changed for a
  // node it looked at (each attempt forces a few nodes, so rebuilding everything is quadratic).
  const cache = new Map<number, { heavy: number | undefined; writes: string; source: KernelSource; materialized: boolean[] }>();
  for (let attempt = 0; ; attempt++) {
    const plan = groupSiblings(program, planFusion(program, forced), maxStorageBuffers);
    const sources = plan.kernels.map((k) => {
      const hit = cache.get(k.root);
      const writes = kernelWrites(k).join(',');
      if (hit !== undefined && hit.heavy === k.heavy && hit.writes === writes && (hit.source.touched ?? []).every((n, i) => plan.materialized.has(n) === hit.materialized[i])) {
        return hit.source;
      }
      const source = kernelSource(program, plan, k, tiles, generic);
      cache.set(k.root, { heavy: k.heavy, writes, source, materialized: (source.touched ?? []).map((n) => plan.materialized.has(n)) });
      return source;
    });
    const before = forced.size;
    sources.forEach((s, i) => {
      s.overused.forEach((n) => forced.add(n));
      const bound = s.reads.length + writesOf(s).length;
      if (bound > maxStorageBuffers) {
        const cs = splitCandidates(program, plan, plan.kernels[i]!, maxStorageBuffers - 1);
        if (cs.length === 0) {
          throw new BackendError(`${s.label}: needs ${bound} storage buffers, the device allows ${maxStorageBuffers}, and the kernel cannot be split`);
        }
        cs.forEach((c) => forced.add(c));
      }
    });
    if (forced.size === before) return sources;
    if (attempt > program.nodes.length) throw new BackendError(`${program.name}: kernel fusion did not converge`);
  }
}

/** Words of numbers a shape-generic kernel may have: WebGPU's default uniform binding limit, 64 KiB. */
const MAX_PARAM_WORDS = 16384;

function kernelSource(program: Program, plan: FusionPlan, k: KernelPlan, tiles: readonly Tile[], generic: boolean): KernelSource {
  const node = program.nodes[k.root]!;
  if (sizeOf(node.shape) === 0) return emptyKernel(program, k.root);
  let body: KernelBody;
  if (k.heavy === undefined) body = elementwiseBody(kernelWrites(k), node);
  else if (program.nodes[k.heavy]!.prim.op === 'reduce') body = reduceBody(program, reductionMembers(k));
  else {
    const s = gemmShape(program, k.heavy);
    body = gemmBody(program, k.root, k.heavy, chooseTile(tiles, s.m, s.n));
  }
  const source = buildKernel(program, plan, k, body, generic);
  // A kernel with more numbers than a uniform binding holds spells them out instead.
  return (source.params?.length ?? 0) > MAX_PARAM_WORDS ? buildKernel(program, plan, k, body, false) : source;
}

/** Identifies an adapter in the tile-tuning cache. */
export function adapterKey(ctx: GpuContext): string {
  return Object.values(ctx.adapterInfo).join(' / ') || 'unknown adapter';
}

/** A kernel for an empty output: nothing to compute, nothing to build. */
function emptyKernel(program: Program, root: number): KernelSource {
  return { label: `${program.name}/empty${root}`, wgsl: '', reads: [], writes: root, workgroups: 0, overused: new Set() };
}

export class WebGpuBackend implements Backend {
  readonly name = 'webgpu';
  readonly dtypes: ReadonlySet<DType> = new Set<DType>(['float32', 'int32', 'bool']);
  private readonly pool: BufferPool;
  private readonly pipelines: PipelineCache;
  private readonly tiles: readonly Tile[];
  readonly shapeGeneric: boolean;

  constructor(
    readonly ctx: GpuContext,
    options: WebGpuOptions = {},
  ) {
    this.pool = new BufferPool(ctx.device, 1 << 30);
    this.pipelines = new PipelineCache(ctx);
    this.tiles = options.tiles ?? cachedTiles(adapterKey(ctx)) ?? TILE_CANDIDATES;
    this.shapeGeneric = options.shapeGeneric ?? envVar('TESSERA_WEBGPU_SPECIALIZE') !== '1';
  }

  /** Distinct pipelines built (or being built) by this backend so far. */
  get pipelineCount(): number {
    return this.pipelines.size;
  }

  compile(program: Program): WebGpuExecutable {
    this.ctx.checkAlive(`compiling ${program.name}`);
    for (const nd of program.nodes) checkDType(nd.dtype, program.name);
    const sources = generateKernels(program, this.ctx.limits.maxStorageBuffersPerShaderStage, this.tiles, this.shapeGeneric);
    const maxBinding = this.ctx.limits.maxStorageBufferBindingSize;
    for (const s of sources) {
      for (const n of [...s.reads, ...writesOf(s)]) {
        const bytes = bindingBytes(sizeOf(program.nodes[n]!.shape));
        if (s.workgroups > 0 && bytes > maxBinding) {
          throw new BackendError(`${s.label}: a ${fmtShape(program.nodes[n]!.shape)} tensor needs ${bytes} bytes, over the device's binding limit of ${maxBinding}`);
        }
      }
    }
    const kernels: CompiledKernel[] = sources.map((source) => ({ source, pipeline: undefined }));
    // Every new pipeline of the program is requested before any is awaited, so they build side by side.
    let done = 0;
    const builds = kernels.map((k) =>
      k.source.workgroups === 0 ? undefined : this.pipelines.get(k.source.label, k.source.wgsl).then((p) => {
        k.pipeline = p;
        done++;
      }),
    );
    const total = builds.filter((b) => b !== undefined).length;
    const { params, paramOffsets } = this.uploadParams(program.name, sources);
    const exe: WebGpuExecutable = {
      program, kernels, params, paramOffsets, memory: planMemory(program, sources, (nd) => bindingBytes(sizeOf(nd.shape))), built: false,
      ready: Promise.all(builds).then(() => void (exe.built = true)),
      // A kernel whose pipeline an earlier program built counts as soon as its promise settles.
      progress: () => ({ done, total }),
    };
    // A build error reaches whoever awaits `ready`; it must not also crash the process as unhandled.
    exe.ready.catch(() => undefined);
    return exe;
  }

  /** Every kernel's numbers in one uniform buffer, written once: they are fixed per program. */
  private uploadParams(label: string, sources: readonly KernelSource[]): { params: GPUBuffer | undefined; paramOffsets: number[] } {
    let bytes = 0;
    const paramOffsets = sources.map((s) => {
      if (s.params === undefined || s.workgroups === 0) return -1;
      const at = bytes;
      bytes += Math.ceil(s.params.byteLength / UNIFORM_ALIGN) * UNIFORM_ALIGN;
      return at;
    });
    if (bytes === 0) return { params: undefined, paramOffsets };
    const all = new Uint32Array(bytes / 4);
    sources.forEach((s, i) => {
      if (paramOffsets[i]! >= 0) all.set(s.params!, paramOffsets[i]! / 4);
    });
    const device = this.ctx.device;
    // UNIFORM | COPY_DST
    const params = this.ctx.scoped(`numbers of ${label}`, () => device.createBuffer({ label: `${label} numbers`, size: bytes, usage: 0x40 | 0x08 }));
    device.queue.writeBuffer(params, 0, all.buffer, all.byteOffset, all.byteLength);
    return { params, paramOffsets };
  }

  upload(data: TypedArray, shape: Shape, dtype: DType): WebGpuBuffer {
    this.ctx.checkAlive('upload');
    checkDType(dtype, 'upload');
    const size = sizeOf(shape);
    if (data.length !== size) throw new BackendError(`upload: ${data.length} values for shape ${fmtShape(shape)}`);
    const buffer = new WebGpuBuffer(size, dtype, this.acquire(bindingBytes(size), `upload ${fmtShape(shape)}`));
    if (size > 0) {
      const words = dtype === 'bool' ? Uint32Array.from(data) : dtype === 'float32' ? Float32Array.from(data) : Int32Array.from(data);
      this.ctx.device.queue.writeBuffer(buffer.gpu, 0, words.buffer, words.byteOffset, words.byteLength);
    }
    return buffer;
  }

  async download(buffer: DeviceBuffer): Promise<TypedArray> {
    const b = this.own(buffer, 'download');
    this.ctx.checkAlive('download');
    const device = this.ctx.device;
    const bytes = bindingBytes(b.size);
    // MAP_READ | COPY_DST
    const staging = device.createBuffer({ size: bytes, usage: 0x01 | 0x08 });
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(b.gpu, 0, staging, 0, bytes);
    device.queue.submit([enc.finish()]);
    try {
      await staging.mapAsync(0x01);
    } catch (e) {
      await this.ctx.flushErrors();
      throw new BackendError(`download: mapping failed: ${(e as Error).message}`);
    }
    const raw = staging.getMappedRange().slice(0, b.size * 4);
    staging.unmap();
    staging.destroy();
    await this.ctx.flushErrors();
    switch (b.dtype) {
      case 'float32':
        return new Float32Array(raw);
      case 'int32':
        return new Int32Array(raw);
      case 'bool':
        return Uint8Array.from(new Uint32Array(raw));
      default:
        throw new BackendError(`download: ${b.dtype} is not supported`);
    }
  }

  run(executable: Executable, inputs: readonly DeviceBuffer[], donated: readonly boolean[]): DeviceBuffer[] {
    const exe = executable as WebGpuExecutable;
    const program = exe.program;
    this.ctx.checkAlive(`running ${program.name}`);
    if (!exe.built) throw new BackendError(`${program.name}: run before its pipelines were built; await the executable's ready (jit does)`);
    if (inputs.length !== program.inputs.length) throw new BackendError(`${program.name}: expected ${program.inputs.length} inputs, got ${inputs.length}`);
    const ins = inputs.map((b, i) => {
      const own = this.own(b, `${program.name} input ${i}`);
      const spec = program.inputs[i]!;
      if (own.size !== sizeOf(spec.shape) || own.dtype !== spec.dtype) {
        throw new BackendError(`${program.name}: input ${i} holds ${own.size} ${own.dtype}, the program expects ${spec.dtype} ${fmtShape(spec.shape)}`);
      }
      return own;
    });
    const nodes = program.nodes;
    const where = new Map<number, GPUBuffer>();
    nodes.forEach((nd, n) => {
      if (nd.prim.op === 'input') where.set(n, ins[nd.prim.index]!.gpu);
    });
    const mem = exe.memory;
    const slots = mem.slotBytes.map((bytes) => this.acquire(bytes, program.name));
    mem.slotOf.forEach((slot, n) => where.set(n, slots[slot]!));

    // Outputs: a donated input whose last reader runs before the writer, else a fresh buffer.
    const { outputs, unused } = assignOutputs(program, mem, donated, (i, n) => {
      const spare = ins[i]!.gpu.size - bindingBytes(sizeOf(nodes[n]!.shape));
      return spare >= 0 ? spare : undefined;
    });
    const copies: [GPUBuffer, GPUBuffer, number][] = [];
    const results = program.outputs.map((n, k) => {
      const nd = nodes[n]!;
      const size = sizeOf(nd.shape);
      const src = outputs[k]!;
      if (src.kind === 'input') return ins[src.input]!;
      const gpu = src.kind === 'reuse' ? ins[src.input]!.gpu : this.acquire(bindingBytes(size), program.name);
      if (src.kind === 'copy') copies.push([where.get(n)!, gpu, bindingBytes(size)]);
      else where.set(n, gpu);
      return new WebGpuBuffer(size, nd.dtype, gpu);
    });

    const device = this.ctx.device;
    const maxDim = this.ctx.limits.maxComputeWorkgroupsPerDimension;
    this.ctx.scoped(`program ${program.name}`, () => {
      const enc = device.createCommandEncoder({ label: program.name });
      const pass = enc.beginComputePass({ label: program.name });
      exe.kernels.forEach(({ source, pipeline }, i) => {
        if (pipeline === undefined) return;
        const entries: GPUBindGroupEntry[] = [...source.reads, ...writesOf(source)].map((n, binding) => ({
          binding,
          resource: { buffer: where.get(n)!, offset: 0, size: bindingBytes(sizeOf(nodes[n]!.shape)) },
        }));
        if (source.params !== undefined) {
          entries.push({ binding: entries.length, resource: { buffer: exe.params!, offset: exe.paramOffsets[i]!, size: source.params.byteLength } });
        }
        const group = device.createBindGroup({ label: source.label, layout: pipeline.getBindGroupLayout(0), entries });
        pass.setPipeline(pipeline);
        pass.setBindGroup(0, group);
        const [x, y, z] = foldGrid(source.workgroups, maxDim);
        pass.dispatchWorkgroups(x, y, z);
      });
      pass.end();
      for (const [src, dst, bytes] of copies) enc.copyBufferToBuffer(src, 0, dst, 0, bytes);
      device.queue.submit([enc.finish()]);
    });
    slots.forEach((s) => this.pool.release(s));
    unused.forEach((i) => this.pool.release(ins[i]!.gpu));
    return results;
  }

  free(buffer: DeviceBuffer): void {
    this.pool.release(this.own(buffer, 'free').gpu);
  }

  notDefaultBecause(): string | undefined {
    if (!this.ctx.software) return undefined;
    return `the adapter is a software rasteriser (${this.ctx.adapterInfo['description'] ?? this.ctx.adapterInfo['device'] ?? this.ctx.adapterInfo['architecture'] ?? 'unknown'}), slower than the cpu backend; pass --backend webgpu or set TESSERA_BACKEND=webgpu to use it anyway`;
  }

  describe(): Record<string, unknown> {
    return {
      backend: 'webgpu (Dawn)',
      software: this.ctx.software,
      adapter: this.ctx.adapterInfo,
      limits: this.ctx.limits,
      features: [...this.ctx.features].sort(),
      pipelinesCached: this.pipelines.size,
      shapeGeneric: this.shapeGeneric,
      gemmTiles: this.tiles,
    };
  }

  private own(buffer: DeviceBuffer, what: string): WebGpuBuffer {
    if (!(buffer instanceof WebGpuBuffer)) throw new BackendError(`${what}: the buffer belongs to backend '${buffer.backendName}', not webgpu`);
    return buffer;
  }

  private acquire(bytes: number, what: string): GPUBuffer {
    if (bytes > this.ctx.limits.maxBufferSize) throw new BackendError(`${what}: ${bytes} bytes exceed the device's maximum buffer size ${this.ctx.limits.maxBufferSize}`);
    return this.ctx.scoped(`allocation for ${what}`, () => this.pool.acquire(bytes));
  }
}

export async function createWebGpuBackend(options: WebGpuOptions = {}): Promise<WebGpuBackend> {
  return new WebGpuBackend(await acquireDevice(), options);
}

/** The names under /dev and /dev/dri. */
function deviceNodes(fs: NonNullable<typeof node>['fs']): string[] {
  return fs.readdirSync('/dev').concat(fs.existsSync('/dev/dri') ? fs.readdirSync('/dev/dri') : []);
}

/**
 * On Linux, a GPU that Vulkan can drive shows up as a device node: a DRM render node
 * (/dev/dri/renderD*, Mesa's hardware drivers), NVIDIA's /dev/nvidia*, or WSL's /dev/dxg. Without
 * any, the only adapters Dawn can find are software ones, which decline to be the default; asking
 * for one would also make Dawn print warnings about their limits. Elsewhere (other systems, a
 * browser) only the adapter can tell.
 */
export function noGpuDevice(devices?: () => readonly string[]): string | undefined {
  if (node === undefined || node.os.platform() !== 'linux') return undefined;
  const names = devices === undefined ? deviceNodes(node.fs) : devices();
  if (names.some((d) => /^renderD\d+$|^nvidia\d+$|^dxg$/.test(d))) return undefined;
  return 'this machine has no GPU device (/dev/dri/renderD*, /dev/nvidia*, /dev/dxg), so only a software adapter could start; pass --backend webgpu or set TESSERA_BACKEND=webgpu to use it anyway';
}

/** Registers 'webgpu' with a higher priority than 'cpu', so it is the default on a real GPU. */
export function registerWebGpuBackend(): void {
  registerBackend('webgpu', () => createWebGpuBackend(), 10, () => noGpuDevice());
}
