/**
 * The CPU backend's kernels, from the shared fusion plan: every materialized node is one step.
 * Elementwise and reduction kernels (with their fused prologues, epilogues and movement ops) are
 * rendered as JavaScript by the shared expression generator; contractions (matmul, conv2d and its
 * adjoints) are WebAssembly SIMD GEMMs on contiguous operands. A contraction's operands are found
 * through reshapes, a transpose of the last two axes and a broadcast over batch axes without
 * copying; anything else feeding it, and any epilogue after it, is materialized by the plan.
 */
import { BackendError } from '../../core/errors.ts';
import type { Program, ProgramNode } from '../../core/program.ts';
import { sizeOf } from '../../core/shape.ts';
import type { ConvAttrs } from '../../core/tensor.ts';
import { Emitter, outputBinding as outName, readBindings } from '../kernel/emitter.ts';
import { groupSiblings, isContraction, kernelWrites, planFusion, reductionMembers, splitCandidates, type FusionPlan, type KernelPlan } from '../kernel/fusion.ts';
import { reductionRuns, runOffset } from '../kernel/reduce.ts';
import type { DType } from '../../core/dtype.ts';
import type { Dialect } from '../kernel/emitter.ts';
import { JS, helpersFor, viewOf } from './js.ts';
import { MAX_ARGS } from './runtime.ts';
import { type KernelText, Unsupported, WASM } from './kernelText.ts';

/** Buffers one fused kernel may bind (reads and output): the runtime's argument slots. */
export const MAX_KERNEL_BUFFERS = MAX_ARGS;

/** A contraction operand as the GEMM reads it: a materialized node, maybe transposed or shared by the batch. */
export interface Operand {
  readonly node: number;
  /** The last two axes are swapped. */
  readonly transposed: boolean;
  /** One matrix for every batch entry (a broadcast over the batch axes). */
  readonly shared: boolean;
}

export type Step =
  | {
      readonly kind: 'js';
      readonly label: string;
      /** The kernel as JavaScript: always there, the fallback for what the Wasm compiler cannot do. */
      readonly source: string;
      /** The kernel as text for the WebAssembly compiler (simd.ts), when the dialect can spell it. */
      readonly wasm: KernelText | undefined;
      /** Elements (outputs) the kernel loops over. */
      readonly total: number;
      /** Rough work per element, to decide whether threads pay off. */
      readonly cost: number;
      readonly reads: readonly number[];
      readonly writes: number;
      /** More nodes the kernel writes at the same index (a multi-output kernel), bound after `writes`. */
      readonly siblings?: readonly number[];
    }
  | {
      readonly kind: 'matmul';
      readonly label: string;
      readonly a: Operand;
      readonly b: Operand;
      readonly batch: number;
      readonly m: number;
      readonly n: number;
      readonly k: number;
      readonly reads: readonly number[];
      readonly writes: number;
    }
  | {
      readonly kind: 'conv2d' | 'conv2dGradInput' | 'conv2dGradWeight';
      readonly label: string;
      readonly attrs: ConvAttrs;
      readonly reads: readonly number[];
      readonly writes: number;
    };

/** The materialized node under `n`'s reshapes, when there is one. */
function throughReshapes(nodes: readonly ProgramNode[], plan: FusionPlan, n: number): number | undefined {
  let m = n;
  while (!plan.materialized.has(m)) {
    const nd = nodes[m]!;
    if (nd.prim.op !== 'reshape') return undefined;
    m = nd.inputs[0]!;
  }
  return m;
}

/** Swaps the last two axes and nothing else. */
function isLastTwoSwap(perm: readonly number[]): boolean {
  const r = perm.length;
  return r >= 2 && perm[r - 1] === r - 2 && perm[r - 2] === r - 1 && perm.slice(0, r - 2).every((p, i) => p === i);
}

/** How the GEMM can read operand `n` of a matmul in place, or undefined when it must be materialized. */
export function matmulOperand(nodes: readonly ProgramNode[], plan: FusionPlan, n: number): Operand | undefined {
  let m = n;
  let shared = false;
  let transposed = false;
  for (;;) {
    const direct = throughReshapes(nodes, plan, m);
    if (direct !== undefined) return { node: direct, transposed, shared };
    const nd = nodes[m]!;
    const p = nd.prim;
    if (p.op === 'permute' && !transposed && isLastTwoSwap(p.perm)) {
      transposed = true;
      m = nd.inputs[0]!;
      continue;
    }
    if (p.op === 'broadcast' && !shared) {
      const from = nodes[nd.inputs[0]!]!.shape;
      const r = nd.shape.length;
      const matrixKept = from.length >= 2 && from[from.length - 1] === nd.shape[r - 1] && from[from.length - 2] === nd.shape[r - 2];
      if (matrixKept && sizeOf(from) === nd.shape[r - 1]! * nd.shape[r - 2]!) {
        shared = true;
        m = nd.inputs[0]!;
        continue;
      }
    }
    return undefined;
  }
}

/** Operands of contraction `n` that the GEMM cannot read in place. */
function unreadableOperands(nodes: readonly ProgramNode[], plan: FusionPlan, n: number): number[] {
  const nd = nodes[n]!;
  if (nd.prim.op === 'matmul') return nd.inputs.filter((i) => matmulOperand(nodes, plan, i) === undefined);
  return nd.inputs.filter((i) => throughReshapes(nodes, plan, i) === undefined);
}

/**
 * The steps of `program`: plans fusion with every contraction materialized on its own, then adds
 * to the materialized set until each contraction reads its operands in place and no kernel
 * recomputes a node at too many indices.
 */
export function planSteps(program: Program): { plan: FusionPlan; steps: Step[] } {
  const nodes = program.nodes;
  const forced = new Set<number>();
  nodes.forEach((nd, n) => {
    if (isContraction(nd.prim.op)) forced.add(n);
  });
  for (let attempt = 0; attempt <= nodes.length; attempt++) {
    const plan = groupSiblings(program, planFusion(program, forced), MAX_KERNEL_BUFFERS);
    const before = forced.size;
    const steps: Step[] = [];
    for (const k of plan.kernels) {
      if (sizeOf(nodes[k.root]!.shape) === 0) continue;
      const op = nodes[k.root]!.prim.op;
      if (isContraction(op)) {
        const unreadable = unreadableOperands(nodes, plan, k.root);
        unreadable.forEach((i) => forced.add(i));
        if (unreadable.length === 0) steps.push(contractionStep(program, plan, k.root));
        continue;
      }
      const { step, overused } = jsStep(program, plan, k);
      overused.forEach((n) => forced.add(n));
      // A kernel's buffers (its reads and its outputs) travel as arguments, of which the runtime has MAX_ARGS.
      if (step.reads.length + kernelWrites(k).length > MAX_KERNEL_BUFFERS) {
        const cs = splitCandidates(program, plan, k, MAX_KERNEL_BUFFERS - 1);
        if (cs.length === 0) throw new BackendError(`${step.label}: reads ${step.reads.length} buffers, more than the ${MAX_KERNEL_BUFFERS - 1} a kernel may take, and cannot be split`);
        cs.forEach((c) => forced.add(c));
      }
      steps.push(step);
    }
    if (forced.size === before) return { plan, steps };
  }
  throw new BackendError(`${program.name}: kernel fusion did not converge`);
}

function contractionStep(program: Program, plan: FusionPlan, n: number): Step {
  const nodes = program.nodes;
  const nd = nodes[n]!;
  const p = nd.prim;
  const label = `${program.name}/${p.op}${n}`;
  if (p.op === 'matmul') {
    const a = matmulOperand(nodes, plan, nd.inputs[0]!)!;
    const b = matmulOperand(nodes, plan, nd.inputs[1]!)!;
    const r = nd.shape.length;
    return {
      kind: 'matmul',
      label,
      a,
      b,
      batch: sizeOf(nd.shape.slice(0, r - 2)),
      m: nd.shape[r - 2]!,
      n: nd.shape[r - 1]!,
      k: nodes[nd.inputs[0]!]!.shape[r - 1]!,
      reads: [a.node, b.node],
      writes: n,
    };
  }
  if (p.op === 'conv2d' || p.op === 'conv2dGradInput' || p.op === 'conv2dGradWeight') {
    const reads = nd.inputs.map((i) => throughReshapes(nodes, plan, i)!);
    return { kind: p.op, label, attrs: p, reads, writes: n };
  }
  throw new BackendError(`${label}: not a contraction`);
}

/**
 * How a kernel language spells the parts of a fused kernel that the expression generator does not:
 * the store of an output element and a reduction's accumulator and loops.
 */
interface Skeleton {
  readonly dialect: Dialect;
  /** Stores an element of the output bound as `out` (`out1`, `out2`, ... for a kernel's siblings). */
  store(dtype: DType, index: string, value: string, out: string): string;
  /** Declares accumulator `a` for a reduction of `fn` over `dtype` values. */
  accInit(fn: 'sum' | 'max', dtype: DType, a: string): string;
  /** Adds value `v` to accumulator `a`. */
  accStep(fn: 'sum' | 'max', dtype: DType, v: string, a: string): string;
  /** The reduction's result (of `dtype`) from accumulator `a`. */
  accResult(fn: 'sum' | 'max', dtype: DType, a: string): string;
  /** A loop header: `i` over [0, size). */
  loop(i: string, size: number): string;
  /** A loop header: `i` over [from, to). */
  loopRange(i: string, from: number, to: number): string;
  /** Declares the partial sums of accumulator `a`'s unrolled float reduction (f64 zeros). */
  lanesInit(em: Emitter, a: string): void;
  /** A loop header: `i` over [0, count) in steps of SUM_LANES (count is a multiple of it). */
  lanesLoop(i: string, count: number): string;
  /** Adds the SUM_LANES float32 elements from flat index `at` on to `a`'s partial sums. */
  lanesStep(em: Emitter, at: string, value: (index: string) => string, a: string): void;
  /** a = (a's partial sums, merged in one fixed order) + a, in f64. */
  lanesMerge(a: string): string;
}

/**
 * Partial sums of an unrolled float reduction. A float sum over a contiguous run is bound by its one
 * f64 accumulator (an add per element, each waiting on the last); here element r of the innermost
 * run goes to partial sum r mod 8 (the run's tail past its last multiple of 8 to the main
 * accumulator), which WebAssembly keeps as two vectors of four f64 lanes fed by f32x4 loads. The
 * partial sums merge in one fixed order, (((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))) + acc,
 * so results stay independent of the partition and identical in JavaScript and WebAssembly. They
 * may differ from the reference's one sequential f64 sum in the last bit of the float32 result
 * (where the double sums round differently, rarely).
 */
const SUM_LANES = 8;
const range8 = [0, 1, 2, 3, 4, 5, 6, 7];

const JS_SKELETON: Skeleton = {
  dialect: JS,
  store: (dtype, index, value, out) => `${viewOf(dtype)}[${out} + ${index}] = ${value};`,
  accInit: (fn, dtype, a) => `let ${a} = ${fn === 'sum' ? '0' : dtype === 'float32' ? '-Infinity' : '-2147483648'};`,
  // As the reference: float sums accumulate in double, int32 sums wrap, max propagates NaN.
  accStep: (fn, dtype, v, a) => (fn === 'max' ? `if (${v} > ${a} || ${v} !== ${v}) ${a} = ${v};` : dtype === 'float32' ? `${a} += ${v};` : `${a} = (${a} + ${v}) | 0;`),
  accResult: (fn, dtype, a) => (dtype === 'float32' ? `Math.fround(${a})` : a),
  loop: (i, size) => `for (let ${i} = 0; ${i} < ${size}; ${i}++)`,
  loopRange: (i, from, to) => `for (let ${i} = ${from}; ${i} < ${to}; ${i}++)`,
  lanesInit: (em, a) => em.line(`let ${range8.map((l) => `${a}_${l} = 0`).join(', ')};`),
  lanesLoop: (i, count) => `for (let ${i} = 0; ${i} < ${count}; ${i} += ${SUM_LANES})`,
  lanesStep: (em, at, value, a) => range8.forEach((l) => em.line(`${a}_${l} += ${value(em.index(l === 0 ? at : `${at} + ${l}`))};`)),
  lanesMerge: (a) => `${a} = (((${a}_0 + ${a}_1) + (${a}_2 + ${a}_3)) + ((${a}_4 + ${a}_5) + (${a}_6 + ${a}_7))) + ${a};`,
};

const WASM_SKELETON: Skeleton = {
  dialect: WASM,
  store: (dtype, index, value, out) => `@store.${dtype}(${out}, ${index}, ${value});`,
  accInit: (fn, dtype, a) =>
    fn === 'sum' ? (dtype === 'float32' ? `let ${a}:f64 = $f0;` : `let ${a}:int32 = $i0;`) : dtype === 'float32' ? `let ${a}:float32 = ${WASM.constant(-Infinity, 'float32')};` : `let ${a}:int32 = $i-2147483648;`,
  accStep: (fn, dtype, v, a) => `${a} = @acc.${fn}.${dtype}(${a}, ${v});`,
  accResult: (fn, dtype, a) => (fn === 'sum' && dtype === 'float32' ? `@fround(${a})` : a),
  loop: (i, size) => `for (${i} in 0 .. ${size})`,
  loopRange: (i, from, to) => `for (${i} in ${from} .. ${to})`,
  // Partial sums 0-3 and 4-7 as two accumulators of four f64 lanes; `by` binds the loop variable
  // to four consecutive indices (simd.ts), so each step is two f32x4 loads.
  lanesInit: (em, a) => [`${a}A`, `${a}B`].forEach((l) => em.line(`let ${l}:f64x4 = $f0;`)),
  lanesLoop: (i, count) => `for (${i} in 0 .. ${count} by ${SUM_LANES})`,
  lanesStep: (em, at, value, a) => {
    em.line(`${a}A = @acc.sum.float32(${a}A, ${value(at)});`);
    em.line(`${a}B = @acc.sum.float32(${a}B, ${value(em.index(`${at} + 4`))});`);
  },
  lanesMerge: (a) => `${a} = @acc.add.f64(@acc.add.f64(@acc.lanes.f64(${a}A), @acc.lanes.f64(${a}B)), ${a});`,
};

/**
 * The body of the fused kernel rooted at `k.root`, in `sk`'s language: the statements for output
 * index `gi` (elementwise) or `o` (a reduction and its epilogue), the buffers it reads, and the nodes
 * the generator found recomputed at too many indices.
 */
function kernelBody(program: Program, plan: FusionPlan, k: KernelPlan, sk: Skeleton, unrollSums = true) {
  const nodes = program.nodes;
  const writes = kernelWrites(k);
  const { reads, name } = readBindings(plan.materialized, writes, 'b');
  const em = new Emitter(nodes, name, sk.dialect);
  const root = nodes[k.root]!;
  let total = sizeOf(root.shape);
  let rowSize = 1;
  let index = 'gi';
  let unrolled = false;
  if (k.heavy === undefined) {
    // Siblings first: the root may be computed from them, and each is computed once at this index.
    for (const [i, n] of writes.entries()) if (i > 0) em.line(sk.store(nodes[n]!.dtype, 'gi', em.value(n, 'gi'), outName(i)));
    em.line(sk.store(root.dtype, 'gi', em.value(k.root, 'gi'), outName(0)));
  } else {
    // One reduction, or several of one structure (`groupSiblings`): one set of loops, an accumulator each.
    const members = reductionMembers(k);
    const h = nodes[k.heavy]!;
    if (h.prim.op !== 'reduce') throw new BackendError(`${program.name}: ${h.prim.op} node ${k.heavy} cannot be fused into an elementwise kernel`);
    index = 'o';
    const { fn, axes } = h.prim;
    const inShape = nodes[h.inputs[0]!]!.shape;
    const inputs = members.map((m) => nodes[m.heavy]!.inputs[0]!);
    const accs = members.map((_, i) => (members.length === 1 ? 'acc' : `acc${i}`));
    rowSize = sizeOf(axes.map((a) => inShape[a]!));
    const { kept, reduced } = reductionRuns(inShape, axes);
    total = sizeOf(h.shape);
    const base = em.index(runOffset(em, 'o', kept));
    accs.forEach((a) => em.line(sk.accInit(fn, h.dtype, a)));
    const innermost = reduced[reduced.length - 1];
    // Not where the summed expression branches on the index (a concat or a pad: the branch would
    // differ between the vector lanes of the partial sums).
    unrolled = unrollSums && fn === 'sum' && h.dtype === 'float32' && innermost !== undefined && innermost.inStride === 1 && innermost.size >= 2 * SUM_LANES &&
      !inputs.some((input) => branchesOnIndex(nodes, plan, input));
    if (unrolled) accs.forEach((a) => sk.lanesInit(em, a));
    // One loop per reduced run, outermost first: the reference's row-major order, without a
    // division per element (a float sum's innermost run over SUM_LANES partial sums).
    const accumulate = (level: number, at: string): void => {
      const run = reduced[level];
      if (run === undefined) {
        inputs.forEach((input, i) => em.line(sk.accStep(fn, h.dtype, em.value(input, at), accs[i]!)));
        return;
      }
      if (unrolled && level === reduced.length - 1) {
        const whole = run.size - (run.size % SUM_LANES);
        em.block(sk.lanesLoop(`r${level}`, whole), () => {
          const from = em.index(`${at} + r${level}`);
          inputs.forEach((input, i) => sk.lanesStep(em, from, (j) => em.value(input, j), accs[i]!));
        });
        if (run.size % SUM_LANES !== 0) {
          em.block(sk.loopRange(`s${level}`, whole, run.size), () => {
            const j = em.index(`${at} + s${level}`);
            inputs.forEach((input, i) => em.line(sk.accStep(fn, h.dtype, em.value(input, j), accs[i]!)));
          });
        }
        return;
      }
      em.block(sk.loop(`r${level}`, run.size), () => {
        accumulate(level + 1, em.index(run.inStride === 1 ? `${at} + r${level}` : `${at} + r${level} * ${run.inStride}`));
      });
    };
    accumulate(0, base);
    if (unrolled) accs.forEach((a) => em.line(sk.lanesMerge(a)));
    members.forEach((m, i) => em.define(m.heavy, 'o', sk.accResult(fn, h.dtype, accs[i]!)));
    for (let i = members.length - 1; i >= 0; i--) em.line(sk.store(nodes[members[i]!.root]!.dtype, 'o', em.value(members[i]!.root, 'o'), outName(i)));
  }
  return { code: em.code(), reads, writes, index, total, rowSize, reduce: k.heavy !== undefined, unrolled, overused: em.overused };
}

/** Whether the expression a kernel inlines for `n` (down to buffers) branches on the index (a concat or a pad). */
function branchesOnIndex(nodes: Program['nodes'], plan: FusionPlan, n: number): boolean {
  const seen = new Set<number>();
  const visit = (m: number): boolean => {
    if (seen.has(m) || plan.materialized.has(m)) return false;
    seen.add(m);
    return nodes[m]!.prim.op === 'concat' || nodes[m]!.prim.op === 'pad' || nodes[m]!.inputs.some(visit);
  };
  return visit(n);
}

/** The JavaScript kernel for an elementwise or reduction root, with the nodes it found overused. */
function jsStep(program: Program, plan: FusionPlan, k: KernelPlan): { step: Step; overused: ReadonlySet<number> } {
  const body = kernelBody(program, plan, k, JS_SKELETON);
  // Which nodes are recomputed at too many indices is judged on the kernel as written, before a
  // float sum is unrolled (the unrolled loop reads its input at more indices, not more often).
  const { overused } = body.unrolled ? kernelBody(program, plan, k, JS_SKELETON, false) : body;
  const loop = `for (let ${body.index} = start; ${body.index} < end; ${body.index}++) {\n${body.code}\n}`;
  const source = [
    helpersFor(body.code),
    'const f32 = heap.f32, i32 = heap.i32, u8 = heap.u8;',
    ...body.reads.map((_, i) => `const b${i} = args[${i}];`),
    ...body.writes.map((_, i) => `const ${outName(i)} = args[${body.reads.length + i}];`),
    loop,
  ].join('\n');
  const label = `${program.name}/${body.reduce ? 'reduce' : 'elementwise'}${k.root}${body.writes.length > 1 ? `+${body.writes.length - 1}` : ''}`;
  const cost = Math.max(1, body.rowSize) * Math.max(1, body.code.split('\n').length);
  const wasm = wasmText(program, plan, k);
  const siblings = k.siblings === undefined ? {} : { siblings: k.siblings };
  return { step: { kind: 'js', label, source, wasm, total: body.total, cost, reads: body.reads, writes: k.root, ...siblings }, overused };
}

/** The same kernel in the WebAssembly dialect (compiled by simd.ts), or undefined where it cannot be written. */
function wasmText(program: Program, plan: FusionPlan, k: KernelPlan): KernelText | undefined {
  try {
    const body = kernelBody(program, plan, k, WASM_SKELETON);
    return { body: body.code, index: body.index, buffers: [...body.reads.map((_, i) => `b${i}`), ...body.writes.map((_, i) => outName(i))], vectorize: true, gathers: !body.reduce };
  } catch (e) {
    if (e instanceof Unsupported) return undefined;
    throw e;
  }
}
