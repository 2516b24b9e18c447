/**
 * Tile shapes for the GEMM kernel, chosen per device: a small table of candidates, ranked per
 * adapter (a short tuning run, `npx tsx bench/tune.ts`, writes the ranking to a cache file that the
 * backend reads), then picked per problem so that small matrices do not pay for empty tiles.
 */
import { envVar, node, nodeOnly } from '../platform.ts';
import type { Tile } from './gemm.ts';

/**
 * Candidates (rows per workgroup x columns per lane), in the order measured best on lavapipe. 4x4
 * first: on the small-channel convolutions of a diffusion UNet (16-64 channels) it runs as fast as
 * 8x8 or faster (3x3 conv, 32x16x16x16 -> 16: 20.9 ms vs 14.3 ms; 64x32x8x8 -> 32: 36.6 ms vs
 * 60.7 ms), and its 16 accumulators keep LLVM's register allocation cheap: 8x8 kernels with a
 * fused epilogue took 10-25 s each to compile, 4x4 about 1 s. Re-measured on 2026-11-29 (packed
 * 16x16 demo step, alternated, cold shader cache, load 1.7-2.9): with 8x4, 8x8 first the steady step
 * was 454-495 ms against 480-606 ms, but the first step 11.1-11.5 s against 8.0-10.2 s, since
 * lavapipe compiles each kernel at its first dispatch, one at a time; so 4x4 stays first.
 */
export const TILE_CANDIDATES: readonly Tile[] = [
  { rm: 4, rn: 4 },
  { rm: 8, rn: 8, adjacent: true },
  { rm: 8, rn: 8 },
  { rm: 16, rn: 8, adjacent: true },
  { rm: 8, rn: 4 },
  { rm: 16, rn: 4, adjacent: true },
  { rm: 8, rn: 2 },
  { rm: 4, rn: 2 },
  { rm: 8, rn: 1 },
  { rm: 4, rn: 1 },
  { rm: 2, rn: 1 },
  { rm: 1, rn: 1 },
];

/** Where tuned rankings live, one entry per adapter description. */
export function tileCachePath(): string {
  const { os, path } = nodeOnly('the tile cache');
  return envVar('TESSERA_TILE_CACHE') ?? path.join(os.homedir(), '.cache', 'tessera', 'tiles.json');
}

/** The tuned ranking for `adapter`, if a tuning run has stored one (never in a browser, which has no cache file). */
export function cachedTiles(adapter: string): Tile[] | undefined {
  if (node === undefined) return undefined;
  const path = tileCachePath();
  if (!node.fs.existsSync(path)) return undefined;
  try {
    const all = JSON.parse(node.fs.readFileSync(path, 'utf8')) as Record<string, Tile[]>;
    const hit = all[adapter];
    return Array.isArray(hit) && hit.every((t) => Number.isInteger(t.rm) && Number.isInteger(t.rn)) ? hit : undefined;
  } catch {
    return undefined;
  }
}

/** Fraction of a tile grid's work that is real. */
function occupancy(t: Tile, m: number, n: number): number {
  return (m * n) / (Math.ceil(m / t.rm) * t.rm * Math.ceil(n / (64 * t.rn)) * 64 * t.rn);
}

/** The first tile in `ranked` that wastes little on an m x n output (else the least wasteful). */
export function chooseTile(ranked: readonly Tile[], m: number, n: number): Tile {
  for (const t of ranked) if (occupancy(t, m, n) >= 0.75) return t;
  return [...ranked].sort((a, b) => occupancy(b, m, n) - occupancy(a, m, n))[0]!;
}
