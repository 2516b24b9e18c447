/**
 * Fusion: which nodes get a buffer, and which kernel computes each of them. Every materialized node
 * is the root of one kernel; the nodes below it that are not materialized are recomputed inside it
 * by the expression generator. A reduction, matmul or convolution whose only use is a chain of
 * same-index elementwise ops ending at a root is hosted by that root's kernel: the chain becomes
 * its epilogue (bias, activation, residual add), and elementwise producers of a reduction become
 * its prologue.
 */
import type { Program, ProgramNode } from '../../core/program.ts';
import type { PrimOp } from '../../core/tensor.ts';

export type HeavyOp = 'reduce' | 'matmul' | 'conv2d' | 'conv2dGradInput' | 'conv2dGradWeight';

export interface KernelPlan {
  /** The materialized node this kernel writes. */
  readonly root: number;
  /** The reduction or contraction the kernel is built around, if any (may be `root` itself). */
  readonly heavy: number | undefined;
}

export interface FusionPlan {
  /** Nodes that live in buffers (program inputs included). */
  readonly materialized: ReadonlySet<number>;
  /** In execution order. */
  readonly kernels: readonly KernelPlan[];
}

export function isHeavy(op: PrimOp): op is HeavyOp {
  return op === 'reduce' || isContraction(op);
}

/** The heavy ops that are products (GEMMs), as opposed to reductions. */
export type Contraction = Exclude<HeavyOp, 'reduce'>;

export function isContraction(op: PrimOp): op is Contraction {
  return op === 'matmul' || op === 'conv2d' || op === 'conv2dGradInput' || op === 'conv2dGradWeight';
}

/** Ops that read their inputs at the element they write (so a hosted reduction stays at one index). */
const SAME_INDEX: ReadonlySet<PrimOp> = new Set(['unary', 'binary', 'select', 'cast', 'reshape']);
/** Ops whose only cost is index arithmetic. */
const MOVEMENT: ReadonlySet<PrimOp> = new Set(['reshape', 'permute', 'broadcast', 'slice']);
/** Inlined op count above which a node used by several kernels gets a buffer instead. */
const RECOMPUTE_LIMIT = 4;

/**
 * Plans kernels for `program`. `forced` nodes are materialized regardless (the kernel generators
 * add to it when a kernel would bind too many buffers or recompute a node too often).
 */
export function planFusion(program: Program, forced: ReadonlySet<number>): FusionPlan {
  const nodes = program.nodes;
  const consumers = nodes.map((): number[] => []);
  nodes.forEach((nd, i) => nd.inputs.forEach((j) => consumers[j]!.push(i)));
  const outputs = new Set(program.outputs);

  // Forward facts, assuming nothing below is materialized (fusion only ever makes things cheaper).
  const computes: boolean[] = [];
  const opCount: number[] = [];
  nodes.forEach((nd, i) => {
    const op = nd.prim.op;
    const inlineInputs = nd.inputs.filter((j) => !isHeavy(nodes[j]!.prim.op) && nodes[j]!.prim.op !== 'input');
    computes[i] = !(op === 'input' || op === 'literal' || op === 'iota' || isHeavy(op)) && (!MOVEMENT.has(op) || inlineInputs.some((j) => computes[j]));
    opCount[i] = Math.min(1000, (op === 'input' || isHeavy(op) ? 0 : 1) + inlineInputs.reduce((s, j) => s + opCount[j]!, 0));
  });

  const materialized = new Set<number>();
  const heavyOf = new Map<number, number>();
  const rootsOf: Set<number>[] = nodes.map(() => new Set());
  /** Reached from its single root through same-index ops only. */
  const spine: boolean[] = nodes.map(() => false);

  const rootsVia = (c: number): Set<number> => (materialized.has(c) ? new Set([c]) : rootsOf[c]!);
  const onSpine = (c: number): boolean => materialized.has(c) || spine[c]!;

  for (let n = nodes.length - 1; n >= 0; n--) {
    const nd: ProgramNode = nodes[n]!;
    const op = nd.prim.op;
    if (op === 'input') {
      materialized.add(n);
      continue;
    }
    const cs = consumers[n]!;
    if (outputs.has(n) || forced.has(n)) {
      materialized.add(n);
      continue;
    }
    if (cs.length === 0) continue;
    const roots = new Set<number>();
    cs.forEach((c) => rootsVia(c).forEach((r) => roots.add(r)));
    if (isHeavy(op)) {
      const c = cs[0]!;
      const root = [...roots][0]!;
      const hostable =
        cs.length === 1 && SAME_INDEX.has(nodes[c]!.prim.op) && roots.size === 1 && onSpine(c) && !heavyOf.has(root) && !isHeavy(nodes[root]!.prim.op);
      if (hostable) {
        heavyOf.set(root, n);
        rootsOf[n] = roots;
        spine[n] = true;
      } else {
        materialized.add(n);
      }
      continue;
    }
    const feedsContraction = cs.some((c) => isContraction(nodes[c]!.prim.op));
    const shared = roots.size > 1 && opCount[n]! > RECOMPUTE_LIMIT;
    if (computes[n] && (feedsContraction || shared)) {
      materialized.add(n);
      continue;
    }
    rootsOf[n] = roots;
    spine[n] = roots.size === 1 && cs.every((c) => SAME_INDEX.has(nodes[c]!.prim.op) && onSpine(c));
  }

  const kernels: KernelPlan[] = [];
  for (let n = 0; n < nodes.length; n++) {
    if (!materialized.has(n) || nodes[n]!.prim.op === 'input') continue;
    kernels.push({ root: n, heavy: isHeavy(nodes[n]!.prim.op) ? n : heavyOf.get(n) });
  }
  return { materialized, kernels };
}

/**
 * Inlined nodes of a kernel to materialize so that it binds at most `maxReads` buffers: repeatedly
 * the largest inner subexpression that reads at most `maxReads` buffers itself (so the piece split
 * off fits at once), else the one that takes the most bindings away. Empty when no inner node helps.
 */
export function splitCandidates(program: Program, plan: FusionPlan, kernel: KernelPlan, maxReads: number): number[] {
  const nodes = program.nodes;
  const cut = new Set<number>();
  const out: number[] = [];
  for (let round = 0; round < nodes.length; round++) {
    const leaves = new Map<number, Set<number>>();
    const leafSet = (n: number): Set<number> => {
      const hit = leaves.get(n);
      if (hit !== undefined) return hit;
      const s = new Set<number>();
      if ((plan.materialized.has(n) || cut.has(n)) && n !== kernel.root) s.add(n);
      else for (const j of nodes[n]!.inputs) leafSet(j).forEach((x) => s.add(x));
      leaves.set(n, s);
      return s;
    };
    const total = leafSet(kernel.root).size;
    if (total <= maxReads) break;
    let fit: number | undefined;
    let fitSize = 1;
    let best: number | undefined;
    let bestSize = 1;
    for (const [n, s] of leaves) {
      if (n === kernel.root || n === kernel.heavy || plan.materialized.has(n) || cut.has(n)) continue;
      if (s.size > fitSize && s.size <= maxReads && s.size < total) {
        fit = n;
        fitSize = s.size;
      }
      if (s.size > bestSize && s.size < total) {
        best = n;
        bestSize = s.size;
      }
    }
    const c = fit ?? best;
    if (c === undefined) break;
    cut.add(c);
    out.push(c);
    if (fit === undefined) break; // the piece split off is itself too wide: the next attempt splits it
  }
  return out;
}
