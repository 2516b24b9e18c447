/**
 * Device memory: binding sizes and the pool of device buffers that runs, uploads and freed arrays
 * draw from (the liveness plan itself is shared, in `backends/kernel/memory.ts`). Reusing a buffer
 * right after a submission is safe: the queue runs submissions in order, so later work sees earlier
 * work done.
 */

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
