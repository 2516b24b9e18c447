/**
 * The narrow interface every backend implements, and the registry that picks one. Core knows
 * backends only through this file; `backends/cpu` and `backends/webgpu` register themselves.
 */
import type { DType, TypedArray } from './dtype.ts';
import type { Program } from './program.ts';
import type { Shape } from './shape.ts';
import type { DeviceBuffer } from './tensor.ts';
import { TesseraError } from './errors.ts';

export interface Executable {
  readonly program: Program;
}

export interface Backend {
  readonly name: string;
  /** dtypes the backend can hold; the CPU backend also has float64. */
  readonly dtypes: ReadonlySet<DType>;
  /** Lowers a program once; the result is reused for every run of that program. */
  compile(program: Program): Executable;
  upload(data: TypedArray, shape: Shape, dtype: DType): DeviceBuffer;
  /** The only synchronisation point: resolves once every submitted run that writes `buffer` is done. */
  download(buffer: DeviceBuffer): Promise<TypedArray>;
  /**
   * Runs a compiled program. `donated[i]` says input i's buffer may be reused for an output. Every
   * returned buffer belongs to the caller: it is either fresh or a donated input's buffer, and no
   * buffer is returned twice. The backend frees donated inputs it does not return (the caller has
   * given up ownership of them).
   */
  run(executable: Executable, inputs: readonly DeviceBuffer[], donated: readonly boolean[]): DeviceBuffer[];
  free(buffer: DeviceBuffer): void;
  /** Facts for `tessera info` (adapter, limits, features). */
  describe(): Record<string, unknown>;
}

export type BackendName = 'cpu' | 'webgpu' | (string & {});

interface Registration {
  readonly factory: () => Promise<Backend>;
  /** Higher is preferred as the default. */
  readonly priority: number;
}

const registry = new Map<string, Registration>();
const instances = new Map<string, Promise<Backend>>();
let defaultName: string | undefined;
let resolvedDefault: Promise<Backend> | undefined;

export function registerBackend(name: string, factory: () => Promise<Backend>, priority = 0): void {
  registry.set(name, { factory, priority });
  resolvedDefault = undefined;
}

export function registeredBackends(): string[] {
  return [...registry.keys()];
}

/** The backend of that name, created once. */
export function getBackend(name: BackendName): Promise<Backend> {
  const reg = registry.get(name);
  if (reg === undefined) {
    return Promise.reject(new TesseraError(`unknown backend '${name}'; registered: ${[...registry.keys()].join(', ') || 'none'}`));
  }
  let inst = instances.get(name);
  if (inst === undefined) {
    inst = reg.factory();
    instances.set(name, inst);
    inst.catch(() => instances.delete(name));
  }
  return inst;
}

/** Sets the default backend for evaluation and jit (overrides TESSERA_BACKEND). */
export function setDefaultBackend(name: BackendName | undefined): void {
  if (name !== undefined && !registry.has(name)) throw new TesseraError(`setDefaultBackend: unknown backend '${name}'; registered: ${[...registry.keys()].join(', ')}`);
  defaultName = name;
  resolvedDefault = undefined;
}

function envBackend(): string | undefined {
  const v = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.['TESSERA_BACKEND'];
  return v === undefined || v === '' ? undefined : v;
}

/**
 * The default backend: the one set in code, else TESSERA_BACKEND, else the highest-priority
 * registered backend that starts (WebGPU when an adapter exists, with a warning when it does not).
 */
export function defaultBackend(): Promise<Backend> {
  const named = defaultName ?? envBackend();
  if (named !== undefined) return getBackend(named);
  resolvedDefault ??= (async () => {
    const ordered = [...registry.keys()].sort((a, b) => registry.get(b)!.priority - registry.get(a)!.priority);
    const failures: string[] = [];
    for (const name of ordered) {
      try {
        const b = await getBackend(name);
        if (name !== ordered[0]) {
          console.warn(`tessera: using the '${b.name}' backend (the preferred backend could not start; see \`tessera info\`)`);
        }
        return b;
      } catch (e) {
        failures.push(`${name}: ${(e as Error).message}`);
      }
    }
    throw new TesseraError(`no backend could start:\n${failures.join('\n')}`);
  })();
  return resolvedDefault;
}

export async function resolveBackend(b: Backend | BackendName | undefined): Promise<Backend> {
  if (b === undefined) return defaultBackend();
  return typeof b === 'string' ? getBackend(b) : b;
}
