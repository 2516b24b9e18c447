/**
 * Fusion: which nodes get a buffer, and which kernel computes each of them. Every materialized node
 * is the root of one kernel; the nodes below it that are not materialized are recomputed inside it
 * by the expression generator. A reduction, matmul or convolution whose only use is a chain of
 * same-index elementwise ops ending at a root is hosted by that root's kernel: the chain becomes
 * its epilogue (bias, activation, residual add), and elementwise producers of a reduction become
 * its prologue.
 */
import { BackendError } from '../../core/errors.ts';
import type { Program, ProgramNode } from '../../core/program.ts';
import { sizeOf } from '../../core/shape.ts';
import type { PrimOp } from '../../core/tensor.ts';

export type HeavyOp = 'reduce' | 'matmul' | 'conv2d' | 'conv2dGradInput' | 'conv2dGradWeight';

export interface KernelPlan {
  /** The materialized node this kernel writes. */
  readonly root: number;
  /** The reduction or contraction the kernel is built around, if any (may be `root` itself). */
  readonly heavy: number | undefined;
  /**
   * More materialized nodes the kernel writes (`groupSiblings`), each of the root's size and
   * computed at the root's index in the same pass: elementwise, or (with `siblingHeavies`) each the
   * root of another reduction over the same index space. Absent for a kernel with one output.
   */
  readonly siblings?: readonly number[];
  /** A multi-output reduction's other reductions: `siblings[i]` is hosted on `siblingHeavies[i]`. */
  readonly siblingHeavies?: readonly number[];
}

/** Every node a kernel writes: its root, then its siblings. */
export const kernelWrites = (k: KernelPlan): readonly number[] => (k.siblings === undefined ? [k.root] : [k.root, ...k.siblings]);

/**
 * The reductions of a reduction kernel, in the order of `kernelWrites`: each output with the
 * reduction it hosts (one for a plain reduction kernel, more for a multi-output one).
 */
export function reductionMembers(k: KernelPlan): { readonly root: number; readonly heavy: number }[] {
  if (k.heavy === undefined) throw new BackendError(`reductionMembers: kernel ${k.root} hosts no reduction`);
  return [{ root: k.root, heavy: k.heavy }, ...(k.siblings ?? []).map((root, i) => ({ root, heavy: k.siblingHeavies![i]! }))];
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
/** How far apart in the plan's order (in kernels) two kernels joined for a common read may stand. */
const NEARBY = 32;
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
    // A broadcast shared by several kernels stays inline: its input is the one worth a buffer (as
    // small or smaller), and materialized at the broadcast size it would tie unrelated kernels
    // together as readers of one buffer of their size.
    const shared = roots.size > 1 && opCount[n]! > RECOMPUTE_LIMIT && op !== 'broadcast';
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

/**
 * The materialized nodes a kernel reads (those its inline expressions reach, its own outputs
 * excluded), each with whether every path to it reads it at the kernel's own flat index.
 */
export function kernelReads(program: Program, plan: FusionPlan, k: KernelPlan): Map<number, boolean> {
  const nodes = program.nodes;
  const own = new Set(kernelWrites(k));
  const reads = new Map<number, boolean>();
  const seen = new Map<number, boolean>();
  const visit = (n: number, sameIndex: boolean): void => {
    if (!own.has(n) && plan.materialized.has(n)) {
      reads.set(n, (reads.get(n) ?? true) && sameIndex);
      return;
    }
    // A node already walked at the same index adds nothing new; one walked at another index
    // only needs walking again when this visit is the first at another index.
    const before = seen.get(n);
    if (before !== undefined && (before === sameIndex || !before)) return;
    seen.set(n, before === undefined ? sameIndex : false);
    const keeps = sameIndex && SAME_INDEX.has(nodes[n]!.prim.op);
    for (const j of nodes[n]!.inputs) visit(j, keeps);
  };
  for (const w of own) visit(w, true);
  return reads;
}

/**
 * Multi-output fusion. An elementwise kernel that reads, at its own index only, the output of an
 * earlier elementwise kernel of the same size takes that kernel in: one pass computes both and
 * writes both (the earlier value is computed in registers, not read back). Chains close over
 * (an optimizer's new moments, the parameter from them and its EMA from that: one kernel per
 * parameter instead of four). Elementwise kernels of one size that read a common buffer join too
 * (two parameters' updates reading the same learning rate), and so do reductions of one structure
 * that read a common buffer and not one another (one loop, an accumulator each: a group norm's
 * backward sums). A group is kept only where it binds at most `maxBuffers` buffers (reads and
 * writes) and leaves the kernels acyclic: no path from one part to the other through a kernel
 * outside it (a reduction of the first part that feeds the second, say). The kernels are then
 * ordered again, each group as early as its inputs allow and otherwise in the plan's order.
 */
export function groupSiblings(program: Program, plan: FusionPlan, maxBuffers: number): FusionPlan {
  const nodes = program.nodes;
  const position = new Map<number, number>();
  plan.kernels.forEach((k, t) => position.set(k.root, t));
  const reads = plan.kernels.map((k) => kernelReads(program, plan, k));
  /** Kernels reading each kernel's output. */
  const readers: number[][] = plan.kernels.map(() => []);
  reads.forEach((r, t) => r.forEach((_, n) => {
    const w = position.get(n);
    if (w !== undefined) readers[w]!.push(t);
  }));
  const elementwise = (t: number) => plan.kernels[t]!.heavy === undefined && sizeOf(nodes[plan.kernels[t]!.root]!.shape) > 0;
  /** Each kernel's group: the positions of its members, ascending (one array shared by the members). */
  const groupOf: number[][] = plan.kernels.map((_, t) => [t]);
  /** Whether a kernel outside both groups lies on a path from group `from` to group `to`. */
  const pathVia = (from: readonly number[], to: readonly number[]): boolean => {
    const target = new Set(to);
    const seen = new Set<readonly number[]>([from, to]);
    const stack = from.flatMap((t) => readers[t]!).filter((r) => !target.has(r)).map((r) => groupOf[r]!);
    while (stack.length > 0) {
      const g = stack.pop()!;
      if (seen.has(g)) continue;
      seen.add(g);
      for (const t of g) {
        for (const r of readers[t]!) {
          if (target.has(r)) return true;
          stack.push(groupOf[r]!);
        }
      }
    }
    return false;
  };
  const canMerge = (ga: readonly number[], gb: readonly number[]): boolean => {
    const members = [...ga, ...gb];
    const roots = new Set(members.map((t) => plan.kernels[t]!.root));
    const bound = new Set<number>();
    for (const t of members) {
      for (const [n, sameIndex] of reads[t]!) {
        if (roots.has(n)) {
          if (!sameIndex) return false;
        } else {
          bound.add(n);
        }
      }
    }
    return bound.size + roots.size <= maxBuffers && !pathVia(ga, gb) && !pathVia(gb, ga);
  };
  /**
   * Whether two groups sit within NEARBY kernels of each other in the plan's order. Joining kernels
   * that read a common buffer but stand far apart would run the later one early (the group runs as
   * soon as all of its inputs are ready): a rematerialised block's recomputation pulled into the
   * forward pass, say, its outputs then held until the backward pass needs them.
   */
  const near = (ga: readonly number[], gb: readonly number[]): boolean => ga.some((x) => gb.some((y) => Math.abs(x - y) <= NEARBY));
  const merge = (ga: readonly number[], gb: readonly number[]): void => {
    const merged = [...ga, ...gb].sort((x, y) => x - y);
    for (const t of merged) groupOf[t] = merged;
  };
  plan.kernels.forEach((k, b) => {
    if (!elementwise(b)) return;
    for (const [n, sameIndex] of reads[b]!) {
      const a = position.get(n);
      if (!sameIndex || a === undefined || !elementwise(a) || sizeOf(nodes[n]!.shape) !== sizeOf(nodes[k.root]!.shape)) continue;
      const [ga, gb] = [groupOf[a]!, groupOf[b]!];
      if (ga === gb || !canMerge(ga, gb)) continue;
      merge(ga, gb);
    }
  });
  // Sibling reductions: reductions of one structure (function, type, input shape, axes) that share
  // a buffer they read (a group norm's backward sums of dy and of dy * x, a bias's and a scale's
  // gradient) become one kernel: one loop over the shared index space, an accumulator each. They must
  // not read one another (a reduction is only known once its loop is done), directly or through
  // kernels outside the group.
  const reductionKey = (t: number): string | undefined => {
    const k = plan.kernels[t]!;
    const h = k.heavy === undefined ? undefined : nodes[k.heavy]!;
    if (h === undefined || h.prim.op !== 'reduce' || sizeOf(nodes[k.root]!.shape) === 0) return undefined;
    return `${h.prim.fn} ${h.dtype} ${nodes[h.inputs[0]!]!.shape.join('x')} ${h.prim.axes.join(',')}`;
  };
  const independent = (ga: readonly number[], gb: readonly number[]): boolean => {
    const roots = new Set([...ga, ...gb].map((t) => plan.kernels[t]!.root));
    return [...ga, ...gb].every((t) => [...reads[t]!.keys()].every((n) => !roots.has(n)));
  };
  const buckets = new Map<string, number[][]>();
  plan.kernels.forEach((_, t) => {
    const key = reductionKey(t);
    if (key === undefined) return;
    const groups = buckets.get(key) ?? [];
    buckets.set(key, groups);
    const shares = (g: readonly number[]) => g.some((m) => [...reads[m]!.keys()].some((n) => reads[t]!.has(n)));
    const g = groups.find((g) => near(g, [t]) && shares(g) && independent(g, [t]) && canMerge(g, [t]));
    if (g === undefined) {
      groups.push([t]);
      return;
    }
    merge(g, [t]);
    groups[groups.indexOf(g)] = groupOf[t]!;
  });
  // Elementwise groups of one size that read a common buffer (horizontal): one pass reads it once.
  // Each candidate group is kept with the buffers it reads; a joined group moves to the end.
  const bySize = new Map<number, { readonly group: readonly number[]; readonly reads: ReadonlySet<number> }[]>();
  plan.kernels.forEach((k, t) => {
    if (!elementwise(t)) return;
    const size = sizeOf(nodes[k.root]!.shape);
    let list = bySize.get(size) ?? [];
    const gt = groupOf[t]!;
    if (list.some((e) => e.group === gt)) return;
    const mine = new Set(gt.flatMap((m) => [...reads[m]!.keys()]));
    const hit = list.find((e) => near(e.group, gt) && [...e.reads].some((n) => mine.has(n)) && canMerge(e.group, gt));
    if (hit !== undefined) {
      merge(hit.group, gt);
      list = list.filter((e) => e !== hit);
      hit.reads.forEach((n) => mine.add(n));
    }
    bySize.set(size, [...list, { group: groupOf[t]!, reads: mine }]);
  });
  // Kahn's order over the groups, the ready group with the earliest member first.
  const groups = [...new Set(groupOf)];
  const indeg = new Map<readonly number[], number>();
  const succ = new Map<readonly number[], Set<readonly number[]>>();
  for (const g of groups) {
    const out = new Set<readonly number[]>();
    for (const t of g) for (const r of readers[t]!) if (groupOf[r] !== g) out.add(groupOf[r]!);
    succ.set(g, out);
  }
  for (const g of groups) indeg.set(g, 0);
  for (const out of succ.values()) for (const h of out) indeg.set(h, indeg.get(h)! + 1);
  const ready = new MinHeap<readonly number[]>((g) => g[0]!);
  for (const g of groups) if (indeg.get(g) === 0) ready.push(g);
  const kernels: KernelPlan[] = [];
  while (ready.size > 0) {
    const g = ready.pop();
    const last = plan.kernels[g[g.length - 1]!]!;
    const others = g.slice(0, -1).map((m) => plan.kernels[m]!);
    if (g.length === 1) kernels.push(last);
    else if (last.heavy === undefined) kernels.push({ root: last.root, heavy: undefined, siblings: others.map((m) => m.root) });
    else kernels.push({ root: last.root, heavy: last.heavy, siblings: others.map((m) => m.root), siblingHeavies: others.map((m) => m.heavy!) });
    for (const h of succ.get(g)!) {
      const d = indeg.get(h)! - 1;
      indeg.set(h, d);
      if (d === 0) ready.push(h);
    }
  }
  if (kernels.length !== groups.length) throw new BackendError(`groupSiblings: the grouped kernels of ${program.name} form a cycle`);
  return { materialized: plan.materialized, kernels };
}

/** A binary min-heap by `key`. */
class MinHeap<T> {
  private readonly items: T[] = [];
  constructor(private readonly key: (x: T) => number) {}
  get size(): number {
    return this.items.length;
  }
  push(x: T): void {
    const a = this.items;
    a.push(x);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.key(a[p]!) <= this.key(a[i]!)) break;
      [a[p], a[i]] = [a[i]!, a[p]!];
      i = p;
    }
  }
  pop(): T {
    const a = this.items;
    const top = a[0]!;
    const end = a.pop()!;
    if (a.length > 0) {
      a[0] = end;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.key(a[l]!) < this.key(a[m]!)) m = l;
        if (r < a.length && this.key(a[r]!) < this.key(a[m]!)) m = r;
        if (m === i) break;
        [a[m], a[i]] = [a[i]!, a[m]!];
        i = m;
      }
    }
    return top;
  }
}
