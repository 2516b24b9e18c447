/**
 * The liveness memory plan both fast backends use: intermediates of one program share slots, a slot
 * being reused once the last kernel that reads its tensor has run. Sizes come from the backend (its
 * element sizes and binding minimums), so the plan itself knows nothing of devices.
 */
import type { Program, ProgramNode } from '../../core/program.ts';

export interface KernelUse {
  readonly reads: readonly number[];
  readonly writes: number;
  /** More nodes the kernel writes (a multi-output kernel). */
  readonly siblings?: readonly number[];
}

/** Every node a kernel writes, in binding order: `writes`, then its siblings. */
export const writesOf = (k: KernelUse): readonly number[] => (k.siblings === undefined ? [k.writes] : [k.writes, ...k.siblings]);

export interface MemoryPlan {
  /** Intermediate node -> slot. */
  readonly slotOf: ReadonlyMap<number, number>;
  /** Byte size of each slot (the largest tensor it holds). */
  readonly slotBytes: readonly number[];
  /** Program input index -> index of the last kernel that reads it (-1: none). */
  readonly inputLastRead: readonly number[];
  /** Output node -> index of the kernel that writes it. */
  readonly writtenAt: ReadonlyMap<number, number>;
}

/** A tensor's claim on memory: its bytes, from the kernel that writes it to the last that reads it. */
export interface Lifetime {
  readonly node: number;
  readonly bytes: number;
  /** Index of the writing kernel. */
  readonly start: number;
  /** Index of the last kernel that reads it (`start` when none does). */
  readonly end: number;
}

/**
 * Assigns every materialized node that is neither a program input nor a program output to a slot;
 * two tensors share a slot only when their lifetimes (writer to last reader, inclusive) are
 * disjoint, so a kernel never gets a slot that it also reads, and a multi-output kernel's writes
 * never share one.
 */
export function planMemory(program: Program, kernels: readonly KernelUse[], bytesOf: (node: ProgramNode) => number): MemoryPlan {
  const outputs = new Set(program.outputs);
  const lastRead = new Map<number, number>();
  kernels.forEach((k, t) => k.reads.forEach((n) => lastRead.set(n, t)));
  const inputLastRead = program.inputs.map(() => -1);
  program.nodes.forEach((nd, n) => {
    if (nd.prim.op === 'input') inputLastRead[nd.prim.index] = lastRead.get(n) ?? -1;
  });
  const writtenAt = new Map<number, number>();
  const lifetimes: Lifetime[] = [];
  kernels.forEach((k, t) => {
    for (const w of writesOf(k)) {
      writtenAt.set(w, t);
      if (!outputs.has(w)) lifetimes.push({ node: w, bytes: bytesOf(program.nodes[w]!), start: t, end: lastRead.get(w) ?? t });
    }
  });
  const { slotOf, slotBytes } = assignSlots(lifetimes);
  return { slotOf, slotBytes, inputLastRead, writtenAt };
}

/**
 * Shares slots among tensors whose lifetimes are disjoint: greedy by size (Pisarchyk and Lee 2020,
 * "Efficient memory management for deep neural net inference", greedy by size for shared objects).
 * The largest tensor goes first; each takes the smallest slot that is free over its whole
 * lifetime (every slot is at least its size, since larger tensors came first), else a new slot of
 * its size. Knowing every lifetime beforehand, it sizes a slot once, by its largest tensor; a plan
 * made in kernel order instead grows slots as larger tensors arrive, and a slot grown for one large
 * tensor then holds small ones (with rematerialisation, whose recomputed blocks die early, the
 * kernel-order plan was 1.6x the peak of live bytes; this one is 1.0-1.1x on the same step).
 */
export function assignSlots(lifetimes: readonly Lifetime[]): { slotOf: Map<number, number>; slotBytes: number[] } {
  const order = [...lifetimes].sort((a, b) => b.bytes - a.bytes || a.start - b.start || a.node - b.node);
  const slotBytes: number[] = [];
  /** Per slot, its tensors' [start, end] intervals sorted by start (disjoint, so also by end). */
  const busy: [number, number][][] = [];
  const slotOf = new Map<number, number>();
  for (const life of order) {
    // Slots are made in order of decreasing size and never grow, so the last that is free is the smallest.
    let best = -1;
    let at = 0;
    for (let s = busy.length - 1; s >= 0 && best < 0; s--) {
      const i = insertionPoint(busy[s]!, life.start);
      const before = busy[s]![i - 1];
      const after = busy[s]![i];
      if ((before === undefined || before[1] < life.start) && (after === undefined || after[0] > life.end)) [best, at] = [s, i];
    }
    if (best < 0) {
      best = slotBytes.length;
      slotBytes.push(life.bytes);
      busy.push([]);
      at = 0;
    }
    busy[best]!.splice(at, 0, [life.start, life.end]);
    slotOf.set(life.node, best);
  }
  return { slotOf, slotBytes };
}

/** The index of the first interval starting after `start` (intervals sorted by start). */
function insertionPoint(intervals: readonly [number, number][], start: number): number {
  let lo = 0;
  let hi = intervals.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (intervals[mid]![0] <= start) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Where a program output's buffer comes from. */
export type OutputSource =
  /** A donated input that is itself the output: returned as it is. */
  | { readonly kind: 'input'; readonly input: number }
  /** The same node as an earlier output, or an input that was not donated: a copy into a fresh buffer. */
  | { readonly kind: 'copy' }
  /** Written by its kernel into a donated input's buffer (the input's last reader ran before). */
  | { readonly kind: 'reuse'; readonly input: number }
  | { readonly kind: 'fresh' };

/**
 * Decides, for a run with `donated` inputs, which buffer each output lands in (see `OutputSource`)
 * and which donated inputs are left over for the backend to free. `waste(input, node)` is how many
 * bytes an input's buffer would waste holding the node, or undefined when it cannot hold it; an
 * output takes the donated buffer that wastes least (so a fold's state keeps landing in blocks of
 * its own size and memory stays flat). No buffer is handed out twice.
 */
export function assignOutputs(
  program: Program,
  plan: MemoryPlan,
  donated: readonly boolean[],
  waste: (input: number, node: number) => number | undefined,
): { readonly outputs: OutputSource[]; readonly unused: number[] } {
  const nodes = program.nodes;
  const taken = new Set<number>();
  const seen = new Set<number>();
  const returnedInputs = new Set(program.outputs.map((n) => nodes[n]!.prim).flatMap((p) => (p.op === 'input' ? [p.index] : [])));
  const outputs = program.outputs.map((n): OutputSource => {
    const prim = nodes[n]!.prim;
    const first = !seen.has(n);
    seen.add(n);
    if (prim.op === 'input') {
      if (first && donated[prim.index] === true && !taken.has(prim.index)) {
        taken.add(prim.index);
        return { kind: 'input', input: prim.index };
      }
      return { kind: 'copy' };
    }
    if (!first) return { kind: 'copy' };
    const t = plan.writtenAt.get(n)!;
    let d = -1;
    let least = Infinity;
    donated.forEach((isDonated, i) => {
      if (!isDonated || taken.has(i) || returnedInputs.has(i) || plan.inputLastRead[i]! >= t) return;
      const w = waste(i, n);
      if (w !== undefined && w < least) [d, least] = [i, w];
    });
    if (d < 0) return { kind: 'fresh' };
    taken.add(d);
    return { kind: 'reuse', input: d };
  });
  const unused = donated.flatMap((isDonated, i) => (isDonated && !taken.has(i) ? [i] : []));
  return { outputs, unused };
}
