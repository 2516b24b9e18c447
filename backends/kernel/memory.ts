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

/**
 * Assigns every materialized node that is neither a program input nor a program output to a slot;
 * a slot is reused once the last kernel reading its tensor has run. A kernel never gets a slot that
 * it also reads (slots are freed only after the kernel that last reads them).
 */
export function planMemory(program: Program, kernels: readonly KernelUse[], bytesOf: (node: ProgramNode) => number): MemoryPlan {
  const outputs = new Set(program.outputs);
  const lastRead = new Map<number, number>();
  kernels.forEach((k, t) => k.reads.forEach((n) => lastRead.set(n, t)));
  const inputLastRead = program.inputs.map(() => -1);
  program.nodes.forEach((nd, n) => {
    if (nd.prim.op === 'input') inputLastRead[nd.prim.index] = lastRead.get(n) ?? -1;
  });
  const slotOf = new Map<number, number>();
  const slotBytes: number[] = [];
  const free: number[] = [];
  const writtenAt = new Map<number, number>();
  const dying = new Map<number, number[]>();
  kernels.forEach((k, t) => {
    // A multi-output kernel's writes all take slots before any slot it frees is reused.
    for (const w of writesOf(k)) {
      writtenAt.set(w, t);
      if (outputs.has(w)) continue;
      const need = bytesOf(program.nodes[w]!);
      // Best fit among free slots, else the largest free slot grown, else a new slot.
      let best = -1;
      for (let i = 0; i < free.length; i++) {
        const b = slotBytes[free[i]!]!;
        if (b >= need && (best < 0 || b < slotBytes[free[best]!]!)) best = i;
      }
      if (best < 0 && free.length > 0) best = free.reduce((bi, s, i) => (slotBytes[s]! > slotBytes[free[bi]!]! ? i : bi), 0);
      let slot: number;
      if (best >= 0) {
        slot = free.splice(best, 1)[0]!;
        slotBytes[slot] = Math.max(slotBytes[slot]!, need);
      } else {
        slot = slotBytes.length;
        slotBytes.push(need);
      }
      slotOf.set(w, slot);
      const end = lastRead.get(w) ?? t;
      dying.set(end, [...(dying.get(end) ?? []), slot]);
    }
    for (const s of dying.get(t) ?? []) free.push(s);
  });
  return { slotOf, slotBytes, inputLastRead, writtenAt };
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
