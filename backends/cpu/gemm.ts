/**
 * Matmul for the CPU backend as one register-blocked WebAssembly SIMD GEMM over packed operands
 * (Goto & van de Geijn, "Anatomy of high-performance matrix multiplication", 2008), and the pieces
 * of it that the convolutions in conv.ts reuse: the gemm and packing kernels, the packed layouts,
 * and the scratch and launch helpers.
 *
 * The micro-kernel computes a 4 x 16 tile of C in sixteen f32x4 accumulators: per step of k it
 * loads 16 values of B as four vectors, splats each of 4 values of A, and multiplies then adds (no
 * FMA in Node 20's Wasm). The wide side of the tile (16) runs along C's columns, which for a
 * convolution are output positions, so 8-16 output channels still fill it. Both operands are packed
 * first so the inner loop reads contiguous memory: A into panels of 4 rows ([k][4]), B into panels
 * of 16 columns ([k][16]), zero-padded at the edges.
 *
 * Work is split over output tiles (a batch entry, a 16-column panel, a block of row panels); each
 * element of C is always summed by the same code in the same order (k ascending: passes of KC steps
 * only store and reload the partial sum), so results are bit-identical for any partition. Scratch
 * (packed operands) stays under SCRATCH_BYTES by processing the batch in chunks (at least one batch
 * entry per chunk); it is carved from the workspace the caller planned, or allocated per call.
 */
import { BackendError } from '../../core/errors.ts';
import type { Parallel } from './parallel.ts';
import { ModuleBuilder, type FunctionBody, type FunctionRef, type Local } from './wasm.ts';

/** Rows and columns of the micro-kernel's tile of C. */
export const MR = 4;
export const NR = 16;
/** Steps of k per pass over a column panel: its KC x 16 slice of packed B (16 KiB) stays in L1 while the row panels stream past. */
const KC = 256;
const SCRATCH_BYTES = 64 * 2 ** 20;
export const F32 = 4;
/** Bytes of one step of a packed A panel (4 floats) and of a packed B panel (16 floats). */
export const A_STEP = MR * F32;
export const B_STEP = NR * F32;
/** Below this many multiply-adds a contraction runs on the calling thread (waking workers costs more). */
const SERIAL_MACS = 1 << 16;

const I32 = 'i32' as const;

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** Pushes min(x, y) of two signed i32 operands. */
function min(f: FunctionBody, x: Local | number, y: Local | number): FunctionBody {
  return f.push(x).push(y).push(x).push(y).op('i32.lt_s').op('select');
}

/** How a micro-kernel meets C: see emitMicroKernel. */
type TileAccess = 'store' | 'accumulate' | 'edge';

/**
 * Visits the vectors of a 4 x 16 tile of C at `c` (rows `ldc` bytes apart) in the 4-column groups
 * `columns`: all of them, or for an edge tile only rows below `rows` and lanes below `cols`, lane
 * by lane at the right edge.
 */
function forEachTileVector(
  f: FunctionBody,
  t: { c: Local; ldc: Local; row: Local; rows: Local; cols: Local },
  edge: boolean,
  columns: readonly number[],
  vector: (i: number, j: number, offset: number) => void,
  lane: (i: number, j: number, l: number, offset: number) => void,
): void {
  f.get(t.c).set(t.row);
  for (const i of range(MR)) {
    if (!edge) columns.forEach((j) => vector(i, j, 16 * j));
    else {
      f.get(t.rows).i32(i).op('i32.gt_s').if(() => {
        for (const j of columns) {
          f.get(t.cols).i32(4 * j + 4).op('i32.ge_s').if(
            () => vector(i, j, 16 * j),
            () => range(4).forEach((l) => f.get(t.cols).i32(4 * j + l).op('i32.gt_s').if(() => lane(i, j, l, 16 * j + 4 * l))),
          );
        }
      });
    }
    f.get(t.row).get(t.ldc).op('i32.add').set(t.row);
  }
}

/**
 * Where a micro-kernel reads B: `packed` panels ([k][16], 64 bytes per step of k), or `direct`:
 * straight from zero-padded images, as a convolution's implicit patch matrix. There, step kk of k
 * (a tap: channel, ky, kx) is one byte offset from a table, and the 16 columns (output positions)
 * are four runs of 4 adjacent floats starting at four base addresses, so each step loads its four
 * vectors at base + offset: no patch matrix is written.
 */
type BSource = 'packed' | 'direct';

/**
 * micro_<access>(a, b, c, kc, ldc, rows, cols, accumulate): C[0:rows, 0:cols] (+)= A_panel[0:kc] ·
 * B_panel[0:kc] for packed panels at byte offsets a and b. Three variants of one kernel, because a
 * branch before or after the loop costs the loop a fifth of its speed (V8 then keeps fewer
 * accumulators in registers): `store` (a whole tile, C = A·B), `accumulate` (a whole tile,
 * C += A·B), and `edge` (any tile, masked to rows x cols, adding to C when `accumulate` is set).
 * The `direct` kernels, micro_direct_<access>(a, taps, b0, b1, b2, b3, c, kc, ldc, rows, cols,
 * accumulate), read step kk of B at b0..b3 + taps[kk] instead (see BSource).
 */
function emitMicroKernel(mod: ModuleBuilder, access: TileAccess, source: BSource): FunctionRef {
  const direct = source === 'direct';
  const params = range(direct ? 12 : 8).map(() => I32);
  return mod.func(direct ? `micro_direct_${access}` : `micro_${access}`, params, [], (f, ...p) => {
    const [a, b, bases, [c, kc, ldc, rows, cols, accumulate]] = direct ? [p[0]!, p[1]!, p.slice(2, 6), p.slice(6)] : [p[0]!, p[1]!, [], p.slice(2)];
    const acc = range(MR).map(() => range(NR / 4).map(() => f.local('v128')));
    const bv = range(NR / 4).map(() => f.local('v128'));
    const av = f.local('v128');
    const bEnd = f.local(I32);
    const off = f.local(I32);
    const tile = { c: c!, ldc: ldc!, rows: rows!, cols: cols!, row: f.local(I32) };
    const edge = access === 'edge';
    const aPos = f.local(I32);
    const bPos = f.local(I32);
    // The tile in two halves of 4 x 8, one pass over k each: a half's 8 accumulators, 2 vectors of
    // B, the splat of A and a product fit the 16 vector registers, where the whole tile's 16
    // accumulators did not (V8 spilled them to memory on every step). A is read twice, from L1.
    for (const half of [[0, 1], [2, 3]] as const) {
      const load = () =>
        forEachTileVector(
          f,
          tile,
          edge,
          half,
          (i, j, offset) => f.get(tile.row).mem('v128.load', offset).set(acc[i]![j]!),
          (i, j, l, offset) => f.get(tile.row).get(acc[i]![j]!).memLane('v128.load32_lane', l, offset).set(acc[i]![j]!),
        );
      if (access === 'accumulate') load();
      if (access === 'edge') f.get(accumulate!).if(load);
      f.get(a).set(aPos);
      f.get(b).set(bPos);
      // bPos walks the packed panel (64 bytes a step) or the tap table (4 bytes a step).
      f.get(b).get(kc!).i32(direct ? F32 : B_STEP).op('i32.mul').op('i32.add').set(bEnd);
      f.block((done) => {
        f.get(kc!).op('i32.eqz').brIf(done);
        f.loop((step) => {
          if (direct) {
            f.get(bPos).mem('i32.load').set(off);
            half.forEach((j) => f.get(bases[j]!).get(off).op('i32.add').mem('v128.load').set(bv[j]!));
          } else {
            half.forEach((j) => f.get(bPos).mem('v128.load', 16 * j).set(bv[j]!));
          }
          for (const i of range(MR)) {
            f.get(aPos).mem('v128.load32_splat', F32 * i).set(av);
            for (const j of half) f.get(acc[i]![j]!).get(av).get(bv[j]!).op('f32x4.mul').op('f32x4.add').set(acc[i]![j]!);
          }
          f.get(aPos).i32(A_STEP).op('i32.add').set(aPos);
          f.get(bPos).i32(direct ? F32 : B_STEP).op('i32.add').tee(bPos).get(bEnd).op('i32.ne').brIf(step);
        });
      });
      forEachTileVector(
        f,
        tile,
        edge,
        half,
        (i, j, offset) => f.get(tile.row).get(acc[i]![j]!).mem('v128.store', offset),
        (i, j, l, offset) => f.get(tile.row).get(acc[i]![j]!).memLane('v128.store32_lane', l, offset),
      );
    }
  }, { exported: false });
}

/**
 * gemm(start, end, aPacked, bPacked, c, m, n, k, aPeriod, bPeriod, blocksM, accumulate): for units
 * u in [start, end) = (t, column panel, block of row panels), C[t] (+)= A[t mod aPeriod] · B[t mod bPeriod]
 * with C contiguous [batch, m, n]. Each unit makes passes of KC steps of k over its column panel.
 *
 * gemm_direct(start, end, aPacked, images, c, m, n, k, aPeriod, imageBytes, blocksM, accumulate,
 * firsts, taps): the same with B read in place (BSource `direct`): batch entry t's B is the padded
 * image(s) at images + t imageBytes; column group g (4 adjacent positions) starts firsts[g] bytes
 * into it, and step kk of k is taps[kk] bytes further.
 */
function emitGemm(mod: ModuleBuilder, micro: Record<TileAccess, FunctionRef>, source: BSource): void {
  const direct = source === 'direct';
  const params = range(direct ? 14 : 12).map(() => I32);
  mod.func(direct ? 'gemm_direct' : 'gemm', params, [], (f, start, end, ap, bp, c, m, n, k, aPeriod, bPeriod, blocksM, accumulate, firsts, taps) => {
    const { u, t, jp, ip, ipStart, ipEnd, rows, cols, k0, kc, more } = f.locals(I32, 'u', 't', 'jp', 'ip', 'ipStart', 'ipEnd', 'rows', 'cols', 'k0', 'kc', 'more');
    const { panelsM, panelsN, perBlock, aT, bT, cT, aTile, bTile, cTile, ldc } = f.locals(I32, 'panelsM', 'panelsN', 'perBlock', 'aT', 'bT', 'cT', 'aTile', 'bTile', 'cTile', 'ldc');
    const bases = range(NR / 4).map(() => f.local(I32));
    f.get(m!).i32(MR - 1).op('i32.add').i32(2).op('i32.shr_u').set(panelsM);
    f.get(n!).i32(NR - 1).op('i32.add').i32(4).op('i32.shr_u').set(panelsN);
    f.get(panelsM).get(blocksM!).op('i32.add').i32(1).op('i32.sub').get(blocksM!).op('i32.div_u').set(perBlock);
    f.get(n!).i32(F32).op('i32.mul').set(ldc);
    f.for(u, start!, end!, () => {
      f.get(u).get(blocksM!).op('i32.rem_u').get(perBlock).op('i32.mul').tee(ipStart).get(perBlock).op('i32.add').set(ipEnd);
      min(f, ipEnd, panelsM).set(ipEnd);
      f.get(u).get(blocksM!).op('i32.div_u').tee(t).get(panelsN).op('i32.rem_u').set(jp);
      f.get(t).get(panelsN).op('i32.div_u').set(t);
      // Batch entry t's packed A is panelsM panels of k steps, its packed B panelsN panels.
      f.get(ap!).get(t).get(aPeriod!).op('i32.rem_u').get(panelsM).op('i32.mul').get(k!).op('i32.mul').i32(A_STEP).op('i32.mul').op('i32.add').set(aT);
      if (direct) {
        // B in place: the image(s) of entry t (bPeriod is their size in bytes), four column groups.
        f.get(bp!).get(t).get(bPeriod!).op('i32.mul').op('i32.add').set(bT);
        bases.forEach((base, g) => f.get(jp).i32(NR).op('i32.mul').i32(4 * g).op('i32.add').get(firsts!).op('i32.add').mem('i32.load').get(bT).op('i32.add').set(base));
      } else {
        f.get(bp!).get(t).get(bPeriod!).op('i32.rem_u').get(panelsN).op('i32.mul').get(jp).op('i32.add').get(k!).op('i32.mul').i32(B_STEP).op('i32.mul').op('i32.add').set(bT);
      }
      f.get(t).get(m!).op('i32.mul').get(n!).op('i32.mul').get(jp).i32(NR).op('i32.mul').op('i32.add').i32(F32).op('i32.mul').get(c!).op('i32.add').set(cT);
      f.get(n!).get(jp).i32(NR).op('i32.mul').op('i32.sub').set(cols);
      min(f, cols, NR).set(cols);
      f.i32(0).set(k0);
      // At least one pass, so that k = 0 stores zeros.
      f.loop((pass) => {
        f.get(k!).get(k0).op('i32.sub').set(kc);
        min(f, kc, KC).set(kc);
        f.for(ip, ipStart, ipEnd, () => {
          f.get(ip).get(k!).op('i32.mul').get(k0).op('i32.add').i32(A_STEP).op('i32.mul').get(aT).op('i32.add').set(aTile);
          if (direct) f.get(k0).i32(F32).op('i32.mul').get(taps!).op('i32.add').set(bTile);
          else f.get(k0).i32(B_STEP).op('i32.mul').get(bT).op('i32.add').set(bTile);
          f.get(ip).i32(MR).op('i32.mul').get(ldc).op('i32.mul').get(cT).op('i32.add').set(cTile);
          f.get(m!).get(ip).i32(MR).op('i32.mul').op('i32.sub').set(rows);
          min(f, rows, MR).set(rows);
          f.get(accumulate!).get(k0).op('i32.or').set(more);
          const call = (kernel: FunctionRef) => {
            f.get(aTile).get(bTile);
            if (direct) bases.forEach((base) => f.get(base));
            f.get(cTile).get(kc).get(ldc).get(rows).get(cols).get(more).call(kernel);
          };
          f.get(rows).i32(MR).op('i32.eq').get(cols).i32(NR).op('i32.eq').op('i32.and').if(
            () => f.get(more).if(() => call(micro.accumulate), () => call(micro.store)),
            () => call(micro.edge),
          );
        });
        f.get(k0).i32(KC).op('i32.add').tee(k0).get(k!).op('i32.lt_s').brIf(pass);
      });
    });
  }, { exported: true });
}

/**
 * Copies one panel of `width` lines (rows of A, columns of B) of `k` elements each: line l starts
 * at s + l across and steps by `along`; the panel lands at d as [k][width], `step` bytes per k, lines
 * from `extent` on as zeros. A full panel whose lines are adjacent floats (across = 4 bytes) copies
 * `width` contiguous floats per k with vector loads.
 */
function emitPanelCopy(
  f: FunctionBody,
  v: { readonly s: Local; readonly d: Local; readonly panel: Local; readonly extent: Local; readonly k: Local; readonly across: Local; readonly along: Local; readonly line: Local; readonly i: Local; readonly p: Local; readonly q: Local },
  width: number,
  step: number,
): void {
  f.get(v.across).i32(F32).op('i32.eq').get(v.panel).i32(width).op('i32.mul').i32(width).op('i32.add').get(v.extent).op('i32.le_s').op('i32.and').if(
    () =>
      f.for(v.i, 0, v.k, () => {
        range(width / 4).forEach((w) => f.get(v.d).get(v.s).mem('v128.load', 16 * w).mem('v128.store', 16 * w));
        f.get(v.s).get(v.along).op('i32.add').set(v.s).get(v.d).i32(step).op('i32.add').set(v.d);
      }),
    () =>
      f.for(v.line, 0, width, () => {
        f.get(v.line).i32(F32).op('i32.mul').get(v.d).op('i32.add').set(v.q);
        f.get(v.panel).i32(width).op('i32.mul').get(v.line).op('i32.add').get(v.extent).op('i32.lt_s').if(
          () => {
            f.get(v.line).get(v.across).op('i32.mul').get(v.s).op('i32.add').set(v.p);
            f.for(v.i, 0, v.k, () => {
              f.get(v.q).get(v.p).mem('f32.load').mem('f32.store');
              f.get(v.p).get(v.along).op('i32.add').set(v.p).get(v.q).i32(step).op('i32.add').set(v.q);
            });
          },
          () => f.for(v.i, 0, v.k, () => f.get(v.q).f32(0).mem('f32.store').get(v.q).i32(step).op('i32.add').set(v.q)),
        );
      }),
  );
}

/**
 * pack_a(start, end, src, dst, m, k, rs, cs, inner, s1, s2, d1, d2, dPanel): for units
 * u = (t1, t2, panel) with t2 < inner, copies rows [4 panel, 4 panel + 4) of the m x k matrix at
 * src + t1 s1 + t2 s2 (element (i, j) at i rs + j cs bytes) into the panel at
 * dst + t1 d1 + t2 d2 + panel dPanel as [k][4], rows past m as zeros.
 */
function emitPackA(mod: ModuleBuilder): void {
  const params = range(14).map(() => I32);
  mod.func('pack_a', params, [], (f, start, end, src, dst, m, k, rs, cs, inner, s1, s2, d1, d2, dPanel) => {
    const { u, t, ip, r, j, s, d, p, q, panelsM } = f.locals(I32, 'u', 't', 'ip', 'r', 'j', 's', 'd', 'p', 'q', 'panelsM');
    f.get(m).i32(MR - 1).op('i32.add').i32(2).op('i32.shr_u').set(panelsM);
    f.for(u, start, end, () => {
      f.get(u).get(panelsM).op('i32.rem_u').set(ip);
      f.get(u).get(panelsM).op('i32.div_u').set(t);
      f.get(src).get(t).get(inner).op('i32.div_u').get(s1).op('i32.mul').op('i32.add');
      f.get(t).get(inner).op('i32.rem_u').get(s2).op('i32.mul').op('i32.add');
      f.get(ip).i32(MR).op('i32.mul').get(rs).op('i32.mul').op('i32.add').set(s);
      f.get(dst).get(t).get(inner).op('i32.div_u').get(d1).op('i32.mul').op('i32.add');
      f.get(t).get(inner).op('i32.rem_u').get(d2).op('i32.mul').op('i32.add');
      f.get(ip).get(dPanel).op('i32.mul').op('i32.add').set(d);
      emitPanelCopy(f, { s, d, panel: ip, extent: m, k, across: rs, along: cs, line: r, i: j, p, q }, MR, A_STEP);
    });
  }, { exported: true });
}

/**
 * pack_b(start, end, src, dst, k, n, rs, cs, sBatch): for units u = (t, panel), copies columns
 * [16 panel, 16 panel + 16) of the k x n matrix at src + t sBatch (element (i, j) at i rs + j cs
 * bytes) into dst + u k 64 as [k][16], columns past n as zeros.
 */
function emitPackB(mod: ModuleBuilder): void {
  const params = range(9).map(() => I32);
  mod.func('pack_b', params, [], (f, start, end, src, dst, k, n, rs, cs, sBatch) => {
    const { u, jp, l, i, s, d, p, q, panelsN } = f.locals(I32, 'u', 'jp', 'l', 'i', 's', 'd', 'p', 'q', 'panelsN');
    f.get(n).i32(NR - 1).op('i32.add').i32(4).op('i32.shr_u').set(panelsN);
    f.for(u, start, end, () => {
      f.get(u).get(panelsN).op('i32.rem_u').set(jp);
      f.get(u).get(panelsN).op('i32.div_u').get(sBatch).op('i32.mul').get(src).op('i32.add');
      f.get(jp).i32(NR).op('i32.mul').get(cs).op('i32.mul').op('i32.add').set(s);
      f.get(u).get(k).op('i32.mul').i32(B_STEP).op('i32.mul').get(dst).op('i32.add').set(d);
      emitPanelCopy(f, { s, d, panel: jp, extent: n, k, across: cs, along: rs, line: l, i, p, q }, NR, B_STEP);
    });
  }, { exported: true });
}

/**
 * A Wasm module of kernels, built and compiled on first use (once per process) and registered with
 * each Parallel the first time it runs there.
 */
export interface KernelModule {
  /**
   * Runs `entry` over `units` work units; on the calling thread alone when the whole job is below
   * SERIAL_MACS multiply-adds (or copied floats), where waking the workers costs more than it saves.
   */
  launch(par: Parallel, entry: string, units: number, work: number, args: readonly number[]): void;
}

export function kernelModule(emit: (mod: ModuleBuilder) => void): KernelModule {
  let compiled: WebAssembly.Module | undefined;
  /** The module's id on each Parallel it was registered with. */
  const registered = new WeakMap<Parallel, number>();
  const kernels = (par: Parallel): number => {
    let id = registered.get(par);
    if (id === undefined) {
      if (!compiled) {
        const mod = new ModuleBuilder();
        emit(mod);
        compiled = new WebAssembly.Module(mod.encode());
      }
      id = par.registerWasm(compiled);
      registered.set(par, id);
    }
    return id;
  };
  return {
    launch: (par, entry, units, work, args) => par.run(kernels(par), entry, units, args, { serialBelow: work < SERIAL_MACS ? units + 1 : 2 }),
  };
}

/** gemm, pack_a and pack_b. */
export const gemmKernels = kernelModule((mod) => {
  for (const source of ['packed', 'direct'] as const) {
    emitGemm(mod, { store: emitMicroKernel(mod, 'store', source), accumulate: emitMicroKernel(mod, 'accumulate', source), edge: emitMicroKernel(mod, 'edge', source) }, source);
  }
  emitPackA(mod);
  emitPackB(mod);
});

/** Offsets of `bytes` buffers laid out one after another in one block, each 64-byte aligned, and the block's size. */
export function scratchLayout(bytes: readonly number[]): { readonly offsets: readonly number[]; readonly total: number } {
  const offsets: number[] = [];
  let total = 0;
  for (const b of bytes) {
    offsets.push(total);
    total += Math.ceil(Math.max(b, 64) / 64) * 64;
  }
  return { offsets, total };
}

/**
 * Runs `body` with scratch buffers of `bytes` bytes: carved from `arena` (a block of at least
 * `scratchLayout(bytes).total` bytes the caller planned) when given, else allocated and freed.
 */
export function withScratch(par: Parallel, bytes: readonly number[], arena: number | undefined, body: (...offsets: number[]) => void): void {
  if (arena !== undefined) {
    body(...scratchLayout(bytes).offsets.map((o) => arena + o));
    return;
  }
  const offsets: number[] = [];
  try {
    for (const b of bytes) offsets.push(par.alloc(Math.max(b, 64)));
    body(...offsets);
  } finally {
    for (const o of offsets) par.free(o);
  }
}

/**
 * Blocks of row panels per column panel: one, unless the batch and the column panels alone give
 * fewer than 4 units per thread (a tall, narrow C). Any blocking computes the same values.
 */
function rowBlocks(par: Parallel, batch: number, m: number, n: number): number {
  const panelsM = Math.ceil(m / MR);
  return Math.min(panelsM, Math.max(1, Math.ceil((4 * par.threads) / (batch * Math.ceil(n / NR)))));
}

/** C[t] (+)= A[t mod aPeriod] · B[t mod bPeriod] for t < batch, over packed operands. */
export function gemm(par: Parallel, g: { batch: number; m: number; n: number; k: number; aPacked: number; bPacked: number; c: number; aPeriod: number; bPeriod: number; accumulate: boolean }): void {
  const blocks = rowBlocks(par, g.batch, g.m, g.n);
  const units = g.batch * Math.ceil(g.n / NR) * blocks;
  gemmKernels.launch(par, 'gemm', units, g.batch * g.m * g.n * g.k, [g.aPacked, g.bPacked, g.c, g.m, g.n, g.k, g.aPeriod, g.bPeriod, blocks, g.accumulate ? 1 : 0]);
}

/**
 * C[t] (+)= A[t mod aPeriod] · B_t for t < batch, B_t read in place from the zero-padded images at
 * images + t imageBytes: column group g starts firsts[g] bytes in, step kk of k is taps[kk] bytes
 * further (BSource `direct`); firsts has one entry per 4 columns, whole 16-column panels.
 */
export function gemmDirect(par: Parallel, g: { batch: number; m: number; n: number; k: number; aPacked: number; images: number; imageBytes: number; firsts: number; taps: number; c: number; aPeriod: number; accumulate: boolean }): void {
  const blocks = rowBlocks(par, g.batch, g.m, g.n);
  const units = g.batch * Math.ceil(g.n / NR) * blocks;
  gemmKernels.launch(par, 'gemm_direct', units, g.batch * g.m * g.n * g.k, [g.aPacked, g.images, g.c, g.m, g.n, g.k, g.aPeriod, g.imageBytes, blocks, g.accumulate ? 1 : 0, g.firsts, g.taps]);
}

/** Bytes of packed A (panels of 4 rows) and packed B (panels of 16 columns) of one m x k or k x n operand. */
export const packedABytes = (m: number, k: number) => Math.ceil(m / MR) * k * A_STEP;
const packedBBytes = (k: number, n: number) => Math.ceil(n / NR) * k * B_STEP;

/** How many batch entries of `perEntry` scratch bytes fit the budget left after `fixed` (at least one). */
export function chunkOf(batch: number, perEntry: number, fixed = 0): number {
  return perEntry === 0 ? batch : Math.min(batch, Math.max(1, Math.floor((SCRATCH_BYTES - fixed) / perEntry)));
}

function checkSizes(op: string, sizes: Record<string, number>): void {
  for (const [name, v] of Object.entries(sizes)) {
    if (!Number.isInteger(v) || v < 0) throw new BackendError(`cpu ${op}: ${name} must be a non-negative integer, got ${v}`);
  }
}

export interface MatmulParams {
  readonly batch: number;
  readonly m: number;
  readonly n: number;
  readonly k: number;
  /** Byte offsets of A, B and C in the shared memory. */
  readonly a: number;
  readonly b: number;
  readonly c: number;
  /** Elements between consecutive batch entries of A and of B; 0 shares one operand across the batch. */
  readonly aBatchStride: number;
  readonly bBatchStride: number;
  /** A is stored [k, m] (else [m, k]); B is stored [n, k] (else [k, n]). */
  readonly transA: boolean;
  readonly transB: boolean;
  /** A block of at least `matmulScratchBytes` bytes for the packed operands (else allocated per call). */
  readonly scratch?: number;
}

type MatmulDims = Pick<MatmulParams, 'batch' | 'm' | 'n' | 'k' | 'aBatchStride' | 'bBatchStride'>;

/** The packed operands' scratch: sizes, whether each operand is shared by the batch, and the chunk of batch entries per pass. */
function matmulLayout({ batch, m, n, k, aBatchStride, bBatchStride }: MatmulDims) {
  const aShared = aBatchStride === 0 || batch === 1;
  const bShared = bBatchStride === 0 || batch === 1;
  const aBytes = packedABytes(m, k);
  const bBytes = packedBBytes(k, n);
  const chunk = chunkOf(batch, (aShared ? 0 : aBytes) + (bShared ? 0 : bBytes), (aShared ? aBytes : 0) + (bShared ? bBytes : 0));
  return { aShared, bShared, aBytes, chunk, scratch: [(aShared ? 1 : chunk) * aBytes, (bShared ? 1 : chunk) * bBytes] };
}

/** Bytes of scratch `matmul` needs for these sizes (0 when it has nothing to do). */
export function matmulScratchBytes(dims: MatmulDims): number {
  return dims.batch === 0 || dims.m === 0 || dims.n === 0 ? 0 : scratchLayout(matmulLayout(dims).scratch).total;
}

/** C[t] = op(A[t]) · op(B[t]) for t < batch, C contiguous [batch, m, n], float32. */
export function matmul(par: Parallel, p: MatmulParams): void {
  const { batch, m, n, k } = p;
  checkSizes('matmul', { batch, m, n, k, aBatchStride: p.aBatchStride, bBatchStride: p.bBatchStride });
  if (batch === 0 || m === 0 || n === 0) return;
  const { aShared, bShared, aBytes, chunk, scratch } = matmulLayout(p);
  // Byte strides of element (row, column) of op(A) (m x k) and of op(B) (k x n).
  const [aRow, aCol] = p.transA ? [F32, m * F32] : [k * F32, F32];
  const [bRow, bCol] = p.transB ? [F32, k * F32] : [n * F32, F32];
  const packA = (t0: number, count: number, dst: number) =>
    gemmKernels.launch(par, 'pack_a', count * Math.ceil(m / MR), count * m * k, [p.a + t0 * p.aBatchStride * F32, dst, m, k, aRow, aCol, 1, p.aBatchStride * F32, 0, aBytes, 0, k * A_STEP]);
  const packB = (t0: number, count: number, dst: number) =>
    gemmKernels.launch(par, 'pack_b', count * Math.ceil(n / NR), count * k * n, [p.b + t0 * p.bBatchStride * F32, dst, k, n, bRow, bCol, p.bBatchStride * F32]);
  withScratch(par, scratch, p.scratch, (aPacked, bPacked) => {
    if (aShared) packA(0, 1, aPacked);
    if (bShared) packB(0, 1, bPacked);
    for (let t0 = 0; t0 < batch; t0 += chunk) {
      const count = Math.min(chunk, batch - t0);
      if (!aShared) packA(t0, count, aPacked);
      if (!bShared) packB(t0, count, bPacked);
      gemm(par, { batch: count, m, n, k, aPacked: aPacked, bPacked: bPacked, c: p.c + t0 * m * n * F32, aPeriod: aShared ? 1 : count, bPeriod: bShared ? 1 : count, accumulate: false });
    }
  });
}
