/**
 * The narrow interface every backend implements, and the registry that picks one. Core knows
 * backends only through this file; `backends/cpu` and `backends/webgpu` register themselves.
 */
import type { DType, TypedArray } from './dtype.ts';
import type { Program } from './program.ts';
import type { Shape } from './shape.ts';
import type { DeviceBuffer } from './tensor.ts';
import { TesseraError } from './errors.ts';

/** A program compiled by a backend, run by `Backend.run`; `jit` makes and caches these. */
export interface Executable {
  readonly program: Program;
  /**
   * Resolves when the executable can run, for a backend that builds its code asynchronously (WebGPU
   * builds all of a program's new pipelines at once); rejects with the build's error. `jit` awaits
   * it before the first run.
   */
  readonly ready?: Promise<void>;
  /** While `ready` is pending: how many of the executable's new pieces of code (WebGPU pipelines) are built, of how many. */
  readonly progress?: () => { readonly done: number; readonly total: number };
}

/**
 * What a backend implements: compile programs, hold buffers, run and read back.
 * The built-in backends are `cpu`, `webgpu` and `reference`; `registerBackend` adds another.
 */
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
  /**
   * Why this backend, though it started, should not be the default (WebGPU on a software adapter
   * such as lavapipe is slower than the CPU backend); undefined when it may be.
   */
  notDefaultBecause?(): string | undefined;
}

/** A registered backend's name: `'cpu'`, `'webgpu'`, `'reference'` or one added with `registerBackend`. */
export type BackendName = 'cpu' | 'webgpu' | 'reference' | (string & {});

interface Registration {
  readonly factory: () => Promise<Backend>;
  /** Higher is preferred as the default. */
  readonly priority: number;
  /**
   * Why this backend cannot be the default, known without starting it (a WebGPU backend on a
   * machine with no GPU device at all); undefined when only starting it can tell.
   */
  readonly notDefaultUnstarted?: () => string | undefined;
}

const registry = new Map<string, Registration>();
const instances = new Map<string, Promise<Backend>>();
let defaultName: string | undefined;
let resolvedDefault: Promise<DefaultChoice> | undefined;

/**
 * Adds a backend under `name`, created by `factory` on first use. The highest `priority` that starts becomes the
 * default, unless `notDefaultUnstarted` says why not without starting it.
 * @example
 * registerBackend('mine', async () => createMyBackend(), 5);   // preferred over cpu when it starts
 * setDefaultBackend('mine');
 */
export function registerBackend(name: string, factory: () => Promise<Backend>, priority = 0, notDefaultUnstarted?: () => string | undefined): void {
  registry.set(name, { factory, priority, notDefaultUnstarted });
  resolvedDefault = undefined;
}

/**
 * The names of the registered backends, e.g. `['reference', 'cpu', 'webgpu']`.
 * @example
 * registeredBackends();                               // ['reference', 'cpu', 'webgpu']
 */
export function registeredBackends(): string[] {
  return [...registry.keys()];
}

/**
 * The backend of that name, created once.
 * @example
 * const cpu = await getBackend('cpu');
 * const y = await jit(f, { backend: cpu })(x);
 */
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

/**
 * Sets the default backend for evaluation and jit (overrides TESSERA_BACKEND).
 * @example
 * setDefaultBackend('reference');                     // float64 and plain loops, e.g. to debug
 * setDefaultBackend(undefined);                       // back to TESSERA_BACKEND or the automatic choice
 */
export function setDefaultBackend(name: BackendName | undefined): void {
  if (name !== undefined && !registry.has(name)) throw new TesseraError(`setDefaultBackend: unknown backend '${name}'; registered: ${[...registry.keys()].join(', ')}`);
  defaultName = name;
  resolvedDefault = undefined;
}

function envBackend(): string | undefined {
  const v = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.['TESSERA_BACKEND'];
  return v === undefined || v === '' ? undefined : v;
}

/** The default backend and, for `tessera info`, why it was chosen over each preferred one. */
export interface DefaultChoice {
  readonly backend: Backend;
  readonly reasons: readonly string[];
}

/**
 * The default backend: the one set in code, else TESSERA_BACKEND, else the highest-priority
 * registered backend that starts and does not decline (WebGPU on a real GPU, else the compiled CPU
 * backend), with a warning when a preferred backend failed to start.
 * @example
 * const b = await defaultBackend();
 * console.log(b.name);                                // 'webgpu' or 'cpu'
 */
export function defaultBackend(): Promise<Backend> {
  return defaultChoice().then((c) => c.backend);
}

/**
 * The default backend with the reasons it was chosen (what `tessera info` prints).
 * @example
 * const { backend, reasons } = await defaultChoice();
 * console.log(backend.name, reasons.join('; '));
 */
export function defaultChoice(): Promise<DefaultChoice> {
  const named = defaultName ?? envBackend();
  if (named !== undefined) {
    const why = defaultName !== undefined ? 'set with setDefaultBackend' : 'set by TESSERA_BACKEND';
    return getBackend(named).then((backend) => ({ backend, reasons: [why] }));
  }
  resolvedDefault ??= (async () => {
    const ordered = [...registry.keys()].sort((a, b) => registry.get(b)!.priority - registry.get(a)!.priority);
    const failures: string[] = [];
    const reasons: string[] = [];
    let declinedFirst: Backend | undefined;
    const passedOver: string[] = [];
    for (const name of ordered) {
      // Not started at all when its own check already rules it out (starting it can be slow and noisy).
      const unstarted = registry.get(name)!.notDefaultUnstarted?.();
      if (unstarted !== undefined) {
        reasons.push(`${name}: ${unstarted} (not started)`);
        passedOver.push(name);
        continue;
      }
      try {
        const b = await getBackend(name);
        const declined = b.notDefaultBecause?.();
        if (declined !== undefined) {
          reasons.push(`${name}: ${declined}`);
          declinedFirst ??= b;
          continue;
        }
        if (failures.length > 0) {
          console.warn(`tessera: using the '${b.name}' backend (a preferred backend could not start; see \`tessera info\`)`);
        }
        return { backend: b, reasons: [...reasons, ...failures, `${name}: the highest-priority backend that started`] };
      } catch (e) {
        failures.push(`${name}: could not start: ${(e as Error).message}`);
      }
    }
    // A backend that declined is still better than none.
    for (const name of passedOver) {
      try {
        declinedFirst ??= await getBackend(name);
      } catch (e) {
        failures.push(`${name}: could not start: ${(e as Error).message}`);
      }
    }
    if (declinedFirst !== undefined) return { backend: declinedFirst, reasons: [...reasons, ...failures, `${declinedFirst.name}: no other backend started`] };
    throw new TesseraError(`no backend could start:\n${failures.join('\n')}`);
  })();
  return resolvedDefault;
}

/**
 * A backend from a name, a backend, or `undefined` (the default).
 * @example
 * const b = await resolveBackend(options.backend);    // a Backend, a name, or undefined for the default
 */
export async function resolveBackend(b: Backend | BackendName | undefined): Promise<Backend> {
  if (b === undefined) return defaultBackend();
  return typeof b === 'string' ? getBackend(b) : b;
}
