/**
 * A small seeded generator for host-side choices (data order, subsets). This is not the tensor
 * PRNG (core/random.ts, Threefry on the device): data order only needs to be reproducible from a
 * seed and cheap, and must not depend on any backend.
 *
 * splitmix32: one 32-bit state, a Weyl increment and an avalanche mix (the 32-bit variant of
 * Steele, Lea and Flood's SplitMix). Good statistical quality for shuffling, and any seed works.
 */

/** A function returning uniform 32-bit unsigned integers, deterministic from `seed`. */
export function splitmix32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
    z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
    return (z ^ (z >>> 15)) >>> 0;
  };
}

/** Mixes several integers (seed, epoch, ...) into one 32-bit seed, so nearby inputs give unrelated streams. */
export function mixSeed(...parts: readonly number[]): number {
  let h = 0x811c9dc5;
  for (const p of parts) {
    // Feed both 32-bit halves so seeds above 2^32 still matter.
    for (const word of [p >>> 0, Math.floor(p / 2 ** 32) >>> 0]) h = splitmix32(h ^ word)();
  }
  return h;
}

/** A uniform integer in [0, n) without modulo bias. */
export function below(next: () => number, n: number): number {
  const limit = 2 ** 32 - (2 ** 32 % n);
  for (;;) {
    const x = next();
    if (x < limit) return x % n;
  }
}

/** A uniformly random permutation of 0..n-1 (Fisher-Yates). */
export function permutation(n: number, seed: number): Uint32Array {
  const next = splitmix32(seed);
  const p = new Uint32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = below(next, i + 1);
    const tmp = p[i]!;
    p[i] = p[j]!;
    p[j] = tmp;
  }
  return p;
}
