/**
 * Acquiring a WebGPU device (through Dawn's Node bindings, `webgpu`, on Node; `navigator.gpu` in a
 * browser), with the adapter's own limits and optional features, and turning every asynchronous GPU
 * failure (validation, out of memory, device loss) into a `BackendError` that names the program and
 * kernel it came from.
 */
import { BackendError } from '../../core/errors.ts';
import { node } from '../platform.ts';

/** The limits we need raised from WebGPU's defaults to what the adapter offers. */
const WANTED_LIMITS = [
  'maxStorageBuffersPerShaderStage',
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupsPerDimension',
  'maxBindingsPerBindGroup',
] as const;

const OPTIONAL_FEATURES: readonly GPUFeatureName[] = ['shader-f16', 'timestamp-query', 'subgroups'];

export const NO_ADAPTER_MESSAGE =
  'WebGPU: no adapter found. Dawn needs a Vulkan driver: on Debian 12 run `sudo sh scripts/setup-webgpu.sh` ' +
  "(it installs mesa-vulkan-drivers and libvulkan1 from bookworm-backports; bookworm's own Mesa 22 is too old), " +
  'or install your GPU vendor\'s Vulkan driver; or use TESSERA_BACKEND=cpu.';

export interface GpuContext {
  /** Dawn's instance and adapter: kept referenced, since collecting them tears down the device's instance. */
  readonly gpu: GPU;
  readonly adapter: GPUAdapter;
  readonly device: GPUDevice;
  readonly adapterInfo: Record<string, string>;
  /** A software rasteriser (lavapipe/llvmpipe, SwiftShader, Dawn's fallback adapter), not a GPU. */
  readonly software: boolean;
  readonly limits: Readonly<Record<(typeof WANTED_LIMITS)[number], number>>;
  readonly features: ReadonlySet<string>;
  /** Records a pending error check; `flushErrors` awaits them all. */
  watch(label: string, kind: string, check: Promise<GPUError | null>): void;
  /** Throws the first error recorded since the last flush (and device loss, forever after). */
  flushErrors(): Promise<void>;
  /** Throws at once if the device is known to be lost. */
  checkAlive(what: string): void;
  /** Runs `f` inside validation and out-of-memory error scopes, recorded under `label`. */
  scoped<T>(label: string, f: () => T): T;
}

const NO_BROWSER_ADAPTER_MESSAGE = 'WebGPU: the browser found no adapter (it may be disabled, or blocklisted for this GPU); the cpu backend runs everywhere';

/**
 * WebGPU's entry point: on Node, Dawn's, from the `webgpu` package (loaded only when a device is
 * wanted, so that a process on the cpu backend never loads the native module); elsewhere the
 * browser's `navigator.gpu`.
 */
async function gpuEntry(): Promise<GPU> {
  if (node !== undefined) {
    process.env['XDG_RUNTIME_DIR'] ??= node.os.tmpdir();
    const { create } = await node.dawn();
    return create([]);
  }
  const gpu = (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
  if (gpu === undefined) throw new BackendError('WebGPU: this browser has no navigator.gpu (WebGPU is not supported or not enabled here); the cpu backend runs everywhere');
  return gpu;
}

export async function acquireDevice(): Promise<GpuContext> {
  const gpu = await gpuEntry();
  const adapter = await gpu.requestAdapter();
  if (adapter === null) throw new BackendError(node === undefined ? NO_BROWSER_ADAPTER_MESSAGE : NO_ADAPTER_MESSAGE);
  const requiredLimits: Record<string, number> = {};
  for (const name of WANTED_LIMITS) {
    const v = adapter.limits[name];
    if (typeof v === 'number') requiredLimits[name] = v;
  }
  const requiredFeatures = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f));
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
  const limits = Object.fromEntries(WANTED_LIMITS.map((n) => [n, device.limits[n] as number])) as GpuContext['limits'];
  const info = adapter.info as unknown as Record<string, unknown>;
  const adapterInfo: Record<string, string> = {};
  for (const k of ['vendor', 'architecture', 'device', 'description']) {
    if (typeof info[k] === 'string' && info[k] !== '') adapterInfo[k] = info[k];
  }

  const software = info['isFallbackAdapter'] === true || adapterInfo['architecture'] === 'software' || /llvmpipe|lavapipe|swiftshader/i.test(Object.values(adapterInfo).join(' '));

  let lost: string | undefined;
  let pending: { label: string; kind: string; check: Promise<GPUError | null> }[] = [];
  const uncaptured: string[] = [];
  void device.lost.then((l) => {
    lost = `WebGPU device lost (${l.reason}): ${l.message}`;
  });
  device.addEventListener('uncapturederror', (e) => {
    uncaptured.push((e as GPUUncapturedErrorEvent).error.message);
  });

  const ctx: GpuContext = {
    gpu,
    adapter,
    device,
    adapterInfo,
    software,
    limits,
    features: new Set([...device.features]),
    watch(label, kind, check) {
      pending.push({ label, kind, check });
    },
    async flushErrors() {
      const todo = pending;
      pending = [];
      const results = await Promise.all(todo.map((p) => p.check.then((e) => ({ ...p, e }), (e: unknown) => ({ ...p, e: { message: String(e) } }))));
      if (lost !== undefined) throw new BackendError(lost);
      const bad = results.find((r) => r.e !== null);
      if (bad !== undefined) {
        throw new BackendError(`WebGPU ${bad.kind} in ${bad.label}: ${bad.e!.message}`);
      }
      if (uncaptured.length > 0) throw new BackendError(`WebGPU error: ${uncaptured.splice(0).join('; ')}`);
    },
    checkAlive(what) {
      if (lost !== undefined) throw new BackendError(`${what}: ${lost}`);
    },
    scoped(label, f) {
      device.pushErrorScope('out-of-memory');
      device.pushErrorScope('validation');
      try {
        return f();
      } finally {
        ctx.watch(label, 'validation error', device.popErrorScope());
        ctx.watch(label, 'out of memory', device.popErrorScope());
      }
    },
  };
  return ctx;
}
