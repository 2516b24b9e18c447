/**
 * Tile shapes for the GEMM kernel, chosen per device: a small table of candidates, ranked once per
 * adapter by a short tuning run (see `tuneTiles`), then picked per problem so that small matrices
 * do not pay for mostly empty tiles.
 */
import type { Tile } from './gemm.ts';

/** Candidates, largest first; each satisfies the kernel's constraints (rn % 4 == 0, tk * tn % 4 == 0). */
export const TILE_CANDIDATES: readonly Tile[] = [
  { tm: 64, tn: 64, tk: 16, rm: 4, rn: 4 },
  { tm: 64, tn: 64, tk: 8, rm: 8, rn: 8 },
  { tm: 32, tn: 64, tk: 16, rm: 4, rn: 8 },
  { tm: 32, tn: 32, tk: 16, rm: 4, rn: 4 },
  { tm: 16, tn: 32, tk: 16, rm: 2, rn: 4 },
  { tm: 16, tn: 16, tk: 16, rm: 1, rn: 4 },
];

/** Fraction of a tile grid's work that is real. */
function occupancy(t: Tile, m: number, n: number): number {
  return (m * n) / (Math.ceil(m / t.tm) * t.tm * Math.ceil(n / t.tn) * t.tn);
}

/** The first tile in `ranked` that wastes little on an m x n output (falls back to the smallest). */
export function chooseTile(ranked: readonly Tile[], m: number, n: number): Tile {
  for (const t of ranked) if (occupancy(t, m, n) >= 0.7) return t;
  return [...ranked].sort((a, b) => occupancy(b, m, n) - occupancy(a, m, n))[0]!;
}
