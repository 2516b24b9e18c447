/**
 * Evaluation and `jit`. Both go through one path: build a Program from the graph, compile it once
 * per backend (cached by structural hash), run it, and wrap the results as concrete tensors whose
 * device memory is freed by `Symbol.dispose` or, failing that, by the garbage collector.
 */
import { resolveBackend, type Backend, type BackendName, type Executable } from './backend.ts';
import type { TypedArray } from './dtype.ts';
import { TesseraError, TreeError, fmtShape } from './errors.ts';
import { buildProgram } from './program.ts';
import { flatten, leafPaths, treeDefString, unflatten, type PyTree, type TreeDef } from './pytree.ts';
import { Tensor, evaluation, isTensor, type DeviceBuffer, type Storage } from './tensor.ts';
import { getBackend } from './backend.ts';

const finalizer = new FinalizationRegistry<() => void>((release) => release());

function deviceStorage(owner: object, backend: Backend, buffer: DeviceBuffer): Storage {
  let freed = false;
  const release = (): void => {
    if (!freed) {
      freed = true;
      backend.free(buffer);
    }
  };
  finalizer.register(owner, release, owner);
  return { kind: 'device', buffer, release };
}

/**
 * A concrete tensor owning `buffer` on `backend`.
 * @example
 * const b = await getBackend('cpu');
 * const t = fromDevice(b, b.upload(new Float32Array([1, 2]), [2], 'float32'), [2], 'float32');
 */
export function fromDevice(backend: Backend, buffer: DeviceBuffer, shape: readonly number[], dtype: Tensor['dtype']): Tensor {
  const t = new Tensor({ op: 'const' }, [], Object.freeze([...shape]), dtype);
  t.realize(deviceStorage(t, backend, buffer));
  return t;
}

/**
 * Frees a concrete tensor's device memory now (what `using` calls). Reading it afterwards fails.
 * @example
 * const y = await jit(f)(x);
 * console.log(await y.data());
 * dispose(y);                                         // or declare it with `using y = ...`
 */
export function dispose(t: Tensor): void {
  const s = t.storage;
  if (s?.kind === 'device') {
    finalizer.unregister(t);
    s.release();
    t.markDonated();
  }
  const up = uploads.get(t);
  if (up !== undefined) {
    finalizer.unregister(up);
    for (const r of up.releases.values()) r();
    uploads.delete(t);
  }
}

evaluation.dispose = dispose;

/** Host tensors uploaded to a backend, kept while the tensor lives. */
const uploads = new WeakMap<Tensor, { buffers: Map<string, DeviceBuffer>; releases: Map<string, () => void> }>();

async function bufferFor(t: Tensor, backend: Backend): Promise<DeviceBuffer> {
  if (!t.isRealized) await realize([t], backend);
  const s = t.storage!;
  if (s.kind === 'device' && s.buffer.backendName === backend.name) return s.buffer;
  let up = uploads.get(t);
  const cached = up?.buffers.get(backend.name);
  if (cached !== undefined) return cached;
  const data = s.kind === 'host' ? s.data : await (await getBackend(s.buffer.backendName)).download(s.buffer);
  if (!backend.dtypes.has(t.dtype)) throw new TesseraError(`backend '${backend.name}' cannot hold ${t.dtype} (tensor ${fmtShape(t.shape)})`);
  const buffer = backend.upload(data, t.shape, t.dtype);
  if (up === undefined) {
    up = { buffers: new Map(), releases: new Map() };
    uploads.set(t, up);
    const token = up;
    finalizer.register(t, () => token.releases.forEach((r) => r()), token);
  }
  let freed = false;
  up.buffers.set(backend.name, buffer);
  up.releases.set(backend.name, () => {
    if (!freed) {
      freed = true;
      backend.free(buffer);
    }
  });
  return buffer;
}

const compiled = new Map<string, Executable>();

/** What a compile-progress listener hears: the program, its pieces built so far of all, and the seconds waited. */
export interface CompileProgress {
  readonly program: string;
  readonly done: number;
  readonly total: number;
  readonly seconds: number;
  /** The executable is ready (the last report of this wait). */
  readonly finished: boolean;
}

const compileListeners = new Set<(p: CompileProgress) => void>();
/** How often a listener hears of a compile still running. */
const PROGRESS_EVERY_MS = 1000;

/**
 * Calls `listener` about once a second while `jit` or `realize` waits for a backend to build a
 * program's code (WebGPU compiles its pipelines asynchronously, which can take minutes on a software
 * adapter), and once more when it is ready; a wait shorter than a second is not reported. Returns
 * the function that removes the listener. The training CLI prints these as a progress line.
 * @example
 * const stop = onCompileProgress((p) => process.stderr.write(`\rcompiling ${p.program}: ${p.done}/${p.total}`));
 * await step(state, batch);                 // the first call compiles
 * stop();
 */
export function onCompileProgress(listener: (p: CompileProgress) => void): () => void {
  compileListeners.add(listener);
  return () => void compileListeners.delete(listener);
}

/** Waits already reporting on an executable: callers waiting on it together share one report. */
const reporting = new WeakMap<Executable, Promise<void>>();

/** Awaits `exe.ready`, reporting progress to the listeners while it takes longer than PROGRESS_EVERY_MS. */
async function awaitReady(exe: Executable): Promise<void> {
  if (exe.ready === undefined) return;
  const progress = exe.progress;
  if (progress === undefined || compileListeners.size === 0) {
    await exe.ready;
    return;
  }
  let wait = reporting.get(exe);
  if (wait === undefined) {
    wait = reportWhileWaiting(exe, exe.ready, progress);
    reporting.set(exe, wait);
  }
  await wait;
}

async function reportWhileWaiting(exe: Executable, ready: Promise<void>, progress: NonNullable<Executable['progress']>): Promise<void> {
  const began = performance.now();
  let reported = false;
  const report = (finished: boolean): void => {
    const { done, total } = progress();
    const p: CompileProgress = { program: exe.program.name, done, total, seconds: (performance.now() - began) / 1000, finished };
    for (const listener of compileListeners) listener(p);
  };
  const timer = setInterval(() => {
    reported = true;
    report(false);
  }, PROGRESS_EVERY_MS);
  try {
    await ready;
  } finally {
    clearInterval(timer);
    if (reported) report(true);
  }
}

function compileCached(backend: Backend, program: Parameters<Backend['compile']>[0]): Executable {
  const key = `${backend.name}:${program.hash}`;
  let exe = compiled.get(key);
  if (exe === undefined) {
    exe = backend.compile(program);
    compiled.set(key, exe);
  }
  return exe;
}

/**
 * Evaluates lazy tensors on a backend in one program; afterwards each holds its value.
 * @example
 * const [a, b] = [sum(x), mean(x)];
 * await realize([a, b], 'cpu');                       // one program computes both
 * console.log(await a.item(), await b.item());
 */
export async function realize(tensors: readonly Tensor[], backendOpt?: Backend | BackendName): Promise<void> {
  const todo = tensors.filter((t) => !t.isRealized);
  if (todo.length === 0) return;
  const backend = await resolveBackend(backendOpt);
  const { program, lifted } = buildProgram('eval', todo);
  const exe = compileCached(backend, program);
  await awaitReady(exe);
  const inputs = await Promise.all(lifted.map((t) => bufferFor(t, backend)));
  const outs = backend.run(exe, inputs, inputs.map(() => false));
  todo.forEach((t, i) => t.realize(deviceStorage(t, backend, outs[i]!)));
}

async function readData(t: Tensor): Promise<TypedArray> {
  if (t.isDonated) throw new TesseraError(`data: ${t.toString()} was donated to a jit call or disposed and can no longer be read`);
  if (!t.isRealized) await realize([t]);
  const s = t.storage!;
  if (s.kind === 'host') return s.data.slice();
  return (await getBackend(s.buffer.backendName)).download(s.buffer);
}

evaluation.data = readData;

// ---------------------------------------------------------------- jit

/** Options of `jit`: donation, backend, name, static arguments (see the README's first example). */
export interface JitOptions {
  /** Positions of arguments whose buffers the outputs may reuse; those arguments are unreadable after the call. */
  readonly donate?: readonly number[];
  /** Backend to run on; default: `defaultBackend()`. */
  readonly backend?: Backend | BackendName;
  /** Name used in messages and kernel labels; default: the function's name. */
  readonly name?: string;
  /**
   * Positions of static arguments: passed to `f` as they are (any value: a config record, a
   * function, a flag), never traced. The program is compiled once per distinct static value and
   * cached: plain data (numbers, strings, booleans, arrays, plain records) is compared by value,
   * anything else (functions, class instances) by identity. A tensor cannot be static.
   */
  readonly staticArgnums?: readonly number[];
}

interface CacheEntry {
  readonly exe: Executable;
  readonly lifted: readonly Tensor[];
  readonly outDef: TreeDef;
  readonly outIsTensor: readonly boolean[];
  /** Non-tensor output leaves, returned as they were traced. */
  readonly statics: readonly unknown[];
}

type Static = number | boolean | string | null | undefined;

function isStatic(x: unknown): x is Static {
  return x === null || x === undefined || typeof x === 'number' || typeof x === 'boolean' || typeof x === 'string';
}

const identities = new WeakMap<object, number>();
let nextIdentity = 0;

/** A cache key for a static argument: by value for plain data, by identity otherwise. */
function staticKey(name: string, x: unknown, path: string): string {
  if (isTensor(x)) throw new TreeError(`${name}: static argument ${path} is a Tensor; tensors are traced, so pass it outside staticArgnums`);
  if (x === undefined) return 'u';
  if (typeof x === 'number') return Object.is(x, -0) ? '-0' : String(x);
  if (x === null || typeof x === 'boolean' || typeof x === 'string') return JSON.stringify(x);
  if (typeof x === 'bigint') return `${x}n`;
  if (Array.isArray(x)) return `[${x.map((v, i) => staticKey(name, v, `${path}[${i}]`)).join(',')}]`;
  if (typeof x === 'object' && (Object.getPrototypeOf(x) === Object.prototype || Object.getPrototypeOf(x) === null)) {
    const rec = x as Record<string, unknown>;
    return `{${Object.keys(rec).sort().map((k) => `${JSON.stringify(k)}:${staticKey(name, rec[k], `${path}.${k}`)}`).join(',')}}`;
  }
  const obj = x as object;
  let id = identities.get(obj);
  if (id === undefined) identities.set(obj, (id = nextIdentity++));
  return `#${id}`;
}

/** Traces of one jitted function after which a new one is probably a mistake worth a warning. */
const RETRACE_WARNING = 16;

/**
 * Every distinct signature traces and compiles anew. A function traced this often is most likely
 * fed a number that changes between calls (a step counter in a batch record), which is static and
 * so retraces every time: the warning names the call's non-tensor arguments.
 */
function retraceWarning(name: string, def: TreeDef, leaves: readonly unknown[], staticSig: readonly string[]): string {
  const paths = leafPaths(def, 'args');
  const statics = leaves.flatMap((l, i) => (isTensor(l) || l === null ? [] : [`${paths[i]} = ${JSON.stringify(l)}`]));
  const listed = [...statics, ...staticSig.map((s) => `static argument ${s}`)];
  return `tessera: ${name} has been traced and compiled for ${RETRACE_WARNING + 1} different argument signatures; ` +
    `each new shape or non-tensor value traces again. ${listed.length > 0 ? `This call's non-tensor arguments: ${listed.slice(0, 6).join(', ')}${listed.length > 6 ? ', ...' : ''}; ` : ''}` +
    'pass values that change between calls as tensors, or leave them out of the arguments.';
}

/**
 * A jitted function: called, it runs; `compile(...args)` traces and compiles it for those arguments'
 * signature (and builds the backend's code) without running, so the first real call starts at once.
 */
export type Jitted<F extends (...args: never[]) => unknown> = ((...args: Parameters<F>) => Promise<ReturnType<F>>) & {
  /** Traces and compiles for the arguments' shapes, dtypes and static values; nothing runs and nothing is donated. */
  compile(...args: Parameters<F>): Promise<void>;
};

/**
 * Traces `f` once per input signature (tree structure, shapes, dtypes and the values of non-tensor
 * leaves, which are static) into one program, and runs it on a backend. Tensors that `f` closes over
 * are captured at trace time, as in JAX. Whole arguments can be made static with `staticArgnums`.
 * While tracing, tensors are placeholders: JS control flow on them (`if (x > 0)`) throws a
 * `TracedValueError`; use `where`, or make the deciding value static.
 * @example
 * const f = jit((x: Tensor) => sum(square(x)));
 * const y = await f(tensor([1, 2]));                  // a concrete tensor: 5
 * await f.compile(tensor([0, 0, 0]));                 // traces and compiles for [3] ahead of the call
 * const step = jit((p: Params, x: Tensor) => update(p, x), { donate: [0] });   // p's buffers are reused
 */
export function jit<F extends (...args: never[]) => unknown>(f: F, options: JitOptions = {}): Jitted<F> {
  const name = options.name ?? (f.name || 'jit');
  const cache = new Map<string, CacheEntry>();

  const staticArgs = new Set(options.staticArgnums ?? []);
  for (const n of staticArgs) {
    if (!Number.isInteger(n) || n < 0) throw new TreeError(`${name}: staticArgnums entry ${n} is not an argument position`);
  }
  /** The compiled entry for a call's signature (traced and compiled on first sight, built before it returns). */
  const entryFor = async (allArgs: readonly unknown[]) => {
    for (const n of staticArgs) {
      if (n >= allArgs.length) throw new TreeError(`${name}: staticArgnums names argument ${n}, but the call has ${allArgs.length} argument(s)`);
    }
    // Static arguments stay out of the traced tree (a null stands in) and join the cache key.
    const args = allArgs.map((a, i) => (staticArgs.has(i) ? null : a));
    const staticSig = [...staticArgs].sort((a, b) => a - b).map((n) => `${n}=${staticKey(name, allArgs[n], `args[${n}]`)}`);
    const { leaves, def } = flatten<unknown>(args as PyTree<unknown>);
    const sig: string[] = [...staticSig];
    leaves.forEach((leaf, i) => {
      if (isTensor(leaf)) {
        if (leaf.isDonated) throw new TesseraError(`${name}: argument ${leafPaths(def, 'args')[i]} was donated to an earlier call or disposed`);
        sig.push(`${leaf.shape.join('x')}:${leaf.dtype}`);
      } else if (isStatic(leaf)) {
        sig.push(`=${JSON.stringify(leaf)}`);
      } else {
        throw new TreeError(`${name}: argument ${leafPaths(def, 'args')[i]} is ${typeof leaf === 'object' ? (leaf as object).constructor?.name ?? 'object' : typeof leaf}, not a Tensor or a static number/boolean/string`);
      }
    });
    const backend = await resolveBackend(options.backend);
    const key = `${backend.name}|${treeDefString(def)}|${sig.join(';')}`;
    let entry = cache.get(key);
    if (entry === undefined) {
      // The cache only grows, so this warns once: at the 17th signature.
      if (cache.size === RETRACE_WARNING) console.warn(retraceWarning(name, def, leaves, staticSig));
      const params: Tensor[] = [];
      const traced = leaves.map((leaf) => {
        if (!isTensor(leaf)) return leaf;
        const p = new Tensor({ op: 'input', index: params.length }, [], leaf.shape, leaf.dtype);
        params.push(p);
        return p;
      });
      const tracedArgs = (unflatten(def, traced) as unknown[]).map((a, i) => (staticArgs.has(i) ? allArgs[i] : a));
      const out = (f as unknown as (...a: unknown[]) => unknown)(...tracedArgs);
      if (out instanceof Promise) throw new TesseraError(`${name}: the function returned a Promise; jit traces synchronous functions only`);
      const flat = flatten<unknown>(out as PyTree<unknown>);
      const outIsTensor = flat.leaves.map((l, i) => {
        if (isTensor(l)) return true;
        if (isStatic(l)) return false;
        throw new TreeError(`${name}: output ${leafPaths(flat.def, 'result')[i]} is ${typeof l}, not a Tensor`);
      });
      const outTensors = flat.leaves.filter(isTensor);
      const { program, lifted } = buildProgram(name, outTensors, params);
      const statics = flat.leaves.map((l) => (isTensor(l) ? undefined : l));
      entry = { exe: compileCached(backend, program), lifted, outDef: flat.def, outIsTensor, statics };
      cache.set(key, entry);
    }
    await awaitReady(entry.exe);
    return { entry, backend, args, leaves };
  };

  const call = async (...allArgs: unknown[]): Promise<unknown> => {
    const { entry, backend, args, leaves } = await entryFor(allArgs);

    const argTensors = leaves.filter(isTensor);
    const donateArgs = new Set(options.donate ?? []);
    const donatedLeaf = new Set<Tensor>();
    args.forEach((arg, i) => {
      if (donateArgs.has(i)) flatten<unknown>(arg as PyTree<unknown>).leaves.filter(isTensor).forEach((t) => donatedLeaf.add(t));
    });
    // Arguments not computed yet (views of a packed state, say) are computed in one program, not one each.
    await realize([...argTensors, ...entry.lifted], backend);
    const inputs = await Promise.all([...argTensors, ...entry.lifted].map((t) => bufferFor(t, backend)));
    const seen = new Map<DeviceBuffer, number>();
    inputs.forEach((b) => seen.set(b, (seen.get(b) ?? 0) + 1));
    const donated = argTensors
      .map((t, i) => {
        const s = t.storage;
        return donatedLeaf.has(t) && s?.kind === 'device' && s.buffer === inputs[i] && seen.get(inputs[i]!) === 1;
      })
      .concat(entry.lifted.map(() => false));
    const outs = backend.run(entry.exe, inputs, donated);
    argTensors.forEach((t, i) => {
      if (donated[i]) {
        finalizer.unregister(t);
        t.markDonated();
      }
    });
    const program = entry.exe.program;
    let k = 0;
    const outLeaves = entry.outIsTensor.map((isT, i) => {
      if (!isT) return entry.statics[i];
      const node = program.nodes[program.outputs[k]!]!;
      return fromDevice(backend, outs[k++]!, node.shape, node.dtype);
    });
    return unflatten(entry.outDef, outLeaves);
  };
  return Object.assign(call, { compile: async (...allArgs: unknown[]) => void (await entryFor(allArgs)) }) as unknown as Jitted<F>;
}
