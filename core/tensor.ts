import type { DType, TypedArray } from './dtype.ts';
import type { Shape } from './shape.ts';
import type { TreeDef } from './pytree.ts';
import { sizeOf } from './shape.ts';
import { TesseraError, fmtShape } from './errors.ts';

/** Elementwise functions of one argument. `isFinite` gives bool; `uniformFromBits` maps int32 random bits to float32 in [0, 1). */
export type UnaryFn =
  | 'neg' | 'exp' | 'log' | 'sin' | 'cos' | 'sqrt' | 'rsqrt' | 'tanh' | 'sigmoid' | 'abs'
  | 'reciprocal' | 'floor' | 'sign' | 'logicalNot' | 'isFinite' | 'uniformFromBits';

/** Elementwise functions of two arguments of one shape and dtype. Comparisons give bool. */
export type BinaryFn =
  | 'add' | 'sub' | 'mul' | 'div' | 'pow' | 'max' | 'min'
  | 'lt' | 'le' | 'gt' | 'ge' | 'eq' | 'ne' | 'and' | 'or';

export const COMPARISONS: ReadonlySet<BinaryFn> = new Set(['lt', 'le', 'gt', 'ge', 'eq', 'ne']);

/** Convolution attributes (NCHW input, OIHW weight; symmetric padding). */
export interface ConvAttrs {
  readonly stride: readonly [number, number];
  readonly padding: readonly [number, number];
  readonly dilation: readonly [number, number];
  readonly groups: number;
}

/**
 * The primitive set. Every backend implements exactly these, and autodiff has one rule for each.
 * Shape conventions (checked by the op builders in ops.ts, so backends may rely on them):
 * - unary/binary/select: all inputs have the output's shape (builders insert broadcasts).
 * - reduce: removes `axes` (sorted, unique) from the input shape.
 * - broadcast: NumPy rule, input right-aligned against the output shape, size-1 dims expand.
 * - slice: out[i] = in[start + i * stride] per axis, strides >= 1.
 * - pad: out has lo + in + (in-1)*interior + hi per axis, filled with `value`; lo, hi, interior >= 0.
 * - matmul: [...b, m, k] x [...b, k, n] -> [...b, m, n], batch dims identical.
 * - conv2d: x [N,C,H,W], w [O, C/groups, KH, KW] -> [N, O, OH, OW].
 * - conv2dGradInput(dy, w): the adjoint of conv2d in x, giving `inputShape`; also the transposed convolution.
 * - conv2dGradWeight(x, dy): the adjoint of conv2d in w, giving `weightShape`.
 * - gather(x, idx): out = x.shape[:axis] + idx.shape + x.shape[axis+1:], indices clamped to range.
 * - iota: the index along `axis`, as the node's dtype.
 * - randomBits(key int32[2]): out[i] = word (i mod 2) of Threefry-2x32(key, (0, offset + floor(i / 2))), as int32 bits
 *   (the counter wraps modulo 2^32).
 * Value semantics (the CPU backend defines them; others match): float32 results are rounded once per
 * node; int32 add/sub/mul/neg/abs wrap, division truncates toward zero with x / 0 = x (as WGSL);
 * max/min propagate NaN; casts float -> int32 truncate and saturate, NaN -> 0; casts to bool are
 * x != 0; bool -> number is 0/1; iota as bool is index != 0; sum over an empty axis is 0.
 */
export type Prim =
  | { readonly op: 'input'; readonly index: number }
  | { readonly op: 'const' }
  | { readonly op: 'literal'; readonly value: number }
  | { readonly op: 'unary'; readonly fn: UnaryFn }
  | { readonly op: 'binary'; readonly fn: BinaryFn }
  | { readonly op: 'select' }
  | { readonly op: 'reduce'; readonly fn: 'sum' | 'max'; readonly axes: readonly number[] }
  | { readonly op: 'reshape' }
  | { readonly op: 'permute'; readonly perm: readonly number[] }
  | { readonly op: 'broadcast' }
  | { readonly op: 'slice'; readonly starts: readonly number[]; readonly strides: readonly number[] }
  | { readonly op: 'pad'; readonly lo: readonly number[]; readonly hi: readonly number[]; readonly interior: readonly number[]; readonly value: number }
  | { readonly op: 'concat'; readonly axis: number }
  | { readonly op: 'matmul' }
  | ({ readonly op: 'conv2d' } & ConvAttrs)
  | ({ readonly op: 'conv2dGradInput' } & ConvAttrs)
  | ({ readonly op: 'conv2dGradWeight' } & ConvAttrs)
  | { readonly op: 'gather'; readonly axis: number }
  | { readonly op: 'cast' }
  | { readonly op: 'iota'; readonly axis: number }
  | { readonly op: 'randomBits'; readonly offset: number };

/** The name of a primitive (`'unary'`, `'matmul'`, `'conv2d'`, ...). */
export type PrimOp = Prim['op'];

/**
 * An annotation on an identity node, for transformations (autodiff, vmap, jvp) to honour. A marked
 * node's value is its first input's value (same shape and dtype) and its `prim` is an identity
 * `reshape`, so a transformation that ignores the marker still computes the right values. Further
 * inputs record dependences (see each kind). `buildProgram` strips markers: a backend never sees one.
 * - `stopGradient`: inputs `[x]`; no cotangent (and no tangent) flows to `x`.
 * - `customVjp`: inputs `[o, ...a]`, `o` the `output`-th result leaf of `call.f` and `a` the call's
 *   tensor arguments (`call.argLeaves` that are tensors, in order); grad asks `call.bwd` for the
 *   cotangents of `a` instead of walking `o`'s graph.
 * - `remat`: inputs `[o, ...a]` as for customVjp; grad recomputes `call.f` on the arguments (behind
 *   `rematBarrier`s) in the backward pass instead of keeping the forward intermediates of `o`.
 * - `rematBarrier`: inputs `[x, ...after]`; the value is `x`, recomputed work hangs below it.
 *   Program building keeps it apart from `x` (no CSE across it) and schedules it after `after` (the
 *   cotangents that start the recomputation). No gradient flows to `after`.
 */
export type Marker =
  | { readonly kind: 'stopGradient' }
  | { readonly kind: 'customVjp'; readonly call: CustomVjpCall; readonly output: number }
  | { readonly kind: 'remat'; readonly call: MarkedCall; readonly output: number }
  | { readonly kind: 'rematBarrier' };

/** The kind of a marker node left by `stopGradient`, `customVjp` or `remat`. */
export type MarkerKind = Marker['kind'];

/** One call of a function wrapped by `customVjp` or `remat`: what a transformation needs to redo it. */
export interface MarkedCall {
  /** The wrapped function, called as `f(...unflatten(argDef, argLeaves))`. */
  readonly f: (...args: never[]) => unknown;
  /** The tree of the argument list (an array with one entry per argument). */
  readonly argDef: TreeDef;
  /** The argument leaves: tensors (the marked nodes' inputs after the first, in order) and static values. */
  readonly argLeaves: readonly unknown[];
  /** The tree of `f`'s result; its leaves are all tensors. */
  readonly outDef: TreeDef;
  /** The marked nodes, one per result leaf, in order. */
  readonly outputs: readonly Tensor[];
  /** The id of the first tensor `f` built in this call: tensors with smaller ids below the outputs were passed in or closed over. */
  readonly firstId: number;
}

/** A `customVjp` call: `fwd(...args)` gives `[output, residuals]`, `bwd(residuals, ct)` one cotangent tree per argument. */
export interface CustomVjpCall extends MarkedCall {
  readonly fwd: (...args: never[]) => unknown;
  readonly bwd: (residuals: never, cotangent: never) => unknown;
}

/** A value that lives on a backend. Opaque to core; each backend defines its own. */
export interface DeviceBuffer {
  readonly backendName: string;
  /** Number of elements (not bytes). */
  readonly size: number;
}

/** Where the data of a concrete tensor is: on the host, or on a backend. */
export type Storage =
  | { readonly kind: 'host'; readonly data: TypedArray }
  | { readonly kind: 'device'; readonly buffer: DeviceBuffer; readonly release: () => void };

/** Hooks set by the evaluation module (kept out of this file to avoid an import cycle). */
export const evaluation: {
  data: (t: Tensor) => Promise<TypedArray>;
  dispose: (t: Tensor) => void;
} = {
  data: () => Promise.reject(new TesseraError('evaluation is not initialised: import tessera from its index')),
  dispose: () => undefined,
};

let nextId = 0;

/**
 * The id the next tensor built will get (ids increase with creation).
 * @example
 * const before = nextTensorId();
 * const y = add(x, 1);
 * y.id >= before;                                     // true: y was built after
 */
export function nextTensorId(): number {
  return nextId;
}

/**
 * An immutable graph node. Op functions build these and never compute. A tensor is concrete when it
 * holds a storage (its `prim.op` is 'const'); anything else is evaluated on demand by `data()`.
 */
export class Tensor {
  readonly id = nextId++;
  /** Set once when a lazy tensor is evaluated, or when a concrete tensor is made; never changes its value. */
  private _storage: Storage | undefined;
  private _donated = false;

  constructor(
    readonly prim: Prim,
    readonly inputs: readonly Tensor[],
    readonly shape: Shape,
    readonly dtype: DType,
    storage?: Storage,
    /** Set on identity nodes that transformations treat specially (see `Marker`); prim is then `reshape`. */
    readonly marker?: Marker,
  ) {
    this._storage = storage;
  }

  get rank(): number {
    return this.shape.length;
  }

  get size(): number {
    return sizeOf(this.shape);
  }

  get storage(): Storage | undefined {
    if (this._donated) {
      throw new TesseraError(`tensor ${fmtShape(this.shape)} ${this.dtype} was donated to a jit call and can no longer be read`);
    }
    return this._storage;
  }

  /** Whether the tensor is concrete or already evaluated. */
  get isRealized(): boolean {
    return this._storage !== undefined;
  }

  /** Records the result of evaluating this node (memoisation; the value is fixed by the graph). */
  realize(storage: Storage): void {
    if (this._storage === undefined) this._storage = storage;
  }

  /** Marks the storage as given away to a computation that reused it. */
  markDonated(): void {
    this._donated = true;
  }

  get isDonated(): boolean {
    return this._donated;
  }

  /** Evaluates (if needed) and reads the values back to the host. */
  data(): Promise<TypedArray> {
    return evaluation.data(this);
  }

  /** Frees the tensor's device memory now (`using t = ...`); reading it afterwards fails. */
  [Symbol.dispose](): void {
    evaluation.dispose(this);
  }

  /** Reads a one-element tensor as a number. */
  async item(): Promise<number> {
    if (this.size !== 1) throw new TesseraError(`item: tensor has shape ${fmtShape(this.shape)}, not one element`);
    return (await this.data())[0]!;
  }

  /** Reads the values as a plain JS array (nested by shape). */
  async toArray(): Promise<unknown> {
    const flat = Array.from(await this.data());
    const nest = (offset: number, axis: number): unknown => {
      if (axis === this.shape.length) return flat[offset];
      const stride = sizeOf(this.shape.slice(axis + 1));
      return Array.from({ length: this.shape[axis]! }, (_, i) => nest(offset + i * stride, axis + 1));
    };
    return nest(0, 0);
  }

  toString(): string {
    return `Tensor(${this.prim.op}, ${fmtShape(this.shape)}, ${this.dtype})`;
  }

  /**
   * A tensor has no synchronous value, so JS arithmetic, comparisons and conditions on it
   * (`if (x > 0)`, `x + 1`, `x == y`) throw instead of silently comparing object strings. Template
   * strings still print it (`${x}`). Under jit or grad the value is not even known yet.
   */
  [Symbol.toPrimitive](hint: 'number' | 'string' | 'default'): string {
    if (hint === 'string') return this.toString();
    throw new TracedValueError(this);
  }

  /** Throws like `Symbol.toPrimitive` (some code calls valueOf directly). */
  valueOf(): never {
    throw new TracedValueError(this);
  }
}

/** A tensor was used where JS needs a number or boolean now (a condition, arithmetic, a comparison). */
export class TracedValueError extends TesseraError {
  override readonly name = 'TracedValueError';

  constructor(readonly tensor: Tensor) {
    const lazy = tensor.prim.op !== 'const';
    super(
      `${tensor.toString()} was used as a JS number or condition (e.g. \`if (x > 0)\`, \`x < y\`, \`x + 1\`); ` +
        (lazy ? 'its value is not known while the graph is built (under jit or grad it is a traced placeholder). ' : 'its value lives on a backend and is read asynchronously. ') +
        'Choose per element with where(cond, a, b) and compute with the op functions (add, greater, ...); ' +
        'for a choice fixed per compilation pass a plain number/boolean, or mark the argument static with jit(f, { staticArgnums }); ' +
        'outside a trace read the value with `await x.item()` or `await x.data()`.',
    );
  }
}

/**
 * Whether `x` is a Tensor (a pytree leaf that ops accept).
 * @example
 * const tensors = treeLeaves<unknown>(tree).filter(isTensor);
 */
export function isTensor(x: unknown): x is Tensor {
  return x instanceof Tensor;
}
