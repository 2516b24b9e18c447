/**
 * Memory: the liveness plan that lets intermediates of one program share buffers, and the pool of
 * device buffers that runs, uploads and freed arrays draw from. Reusing a buffer right after a
 * submission is safe: the queue runs submissions in order, so later work sees earlier work done.
 */
import type { Program } from '../../core/program.ts';
import { sizeOf } from '../../core/shape.ts';

/** Every element is 4 bytes (f32, i32, and bool as u32). */
export const ELEMENT_BYTES = 4;

/** Bytes bound for a tensor of `size` elements (bindings cannot be empty). */
export function bindingBytes(size: number): number {
  return Math.max(ELEMENT_BYTES, size * ELEMENT_BYTES);
}

/** Pool size classes: 256-byte steps when small, then 1/8 of the enclosing power of two. */
export function sizeClass(bytes: number): number {
  if (bytes <= 1 << 16) return Math.ceil(bytes / 256) * 256;
  const step = 2 ** (Math.ceil(Math.log2(bytes)) - 3);
  return Math.ceil(bytes / step) * step;
}

export interface KernelUse {
  readonly reads: readonly number[];
  readonly writes: number;
}

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
export function planMemory(program: Program, kernels: readonly KernelUse[]): MemoryPlan {
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
    writtenAt.set(k.writes, t);
    if (!outputs.has(k.writes)) {
      const need = bindingBytes(sizeOf(program.nodes[k.writes]!.shape));
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
      slotOf.set(k.writes, slot);
      const end = lastRead.get(k.writes) ?? t;
      dying.set(end, [...(dying.get(end) ?? []), slot]);
    }
    for (const s of dying.get(t) ?? []) free.push(s);
  });
  return { slotOf, slotBytes, inputLastRead, writtenAt };
}

/** Device buffers by size class, reused across runs, uploads and frees. */
export class BufferPool {
  private readonly free = new Map<number, GPUBuffer[]>();
  private pooledBytes = 0;

  constructor(
    private readonly device: GPUDevice,
    /** Bytes kept for reuse before freed buffers are destroyed. */
    private readonly capacity: number,
  ) {}

  acquire(bytes: number): GPUBuffer {
    const cls = sizeClass(bytes);
    const hit = this.free.get(cls)?.pop();
    if (hit !== undefined) {
      this.pooledBytes -= cls;
      return hit;
    }
    // STORAGE | COPY_SRC | COPY_DST
    return this.device.createBuffer({ size: cls, usage: 0x80 | 0x04 | 0x08 });
  }

  release(buffer: GPUBuffer): void {
    const cls = buffer.size;
    if (this.pooledBytes + cls > this.capacity) {
      buffer.destroy();
      return;
    }
    let list = this.free.get(cls);
    if (list === undefined) this.free.set(cls, (list = []));
    list.push(buffer);
    this.pooledBytes += cls;
  }

  /** Destroys every pooled buffer. */
  trim(): void {
    for (const list of this.free.values()) list.forEach((b) => b.destroy());
    this.free.clear();
    this.pooledBytes = 0;
  }
}
