/**
 * Matmul and 2-D convolution with both adjoints for the CPU backend, as one register-blocked
 * WebAssembly SIMD GEMM over packed operands (Goto & van de Geijn, "Anatomy of high-performance
 * matrix multiplication", 2008).
 *
 * The micro-kernel computes a 4 x 16 tile of C in sixteen f32x4 accumulators: per step of k it
 * loads 16 values of B as four vectors, splats each of 4 values of A, and multiplies then adds (no
 * FMA in Node 20's Wasm). The wide side of the tile (16) runs along C's columns, which for a
 * convolution are output positions, so 8-16 output channels still fill it. Both operands are packed
 * first so the inner loop reads contiguous memory: A into panels of 4 rows ([k][4]), B into panels
 * of 16 columns ([k][16]), zero-padded at the edges. A convolution writes its patch matrix (im2col)
 * straight in B's packed layout, from a zero-padded copy of x, so the gather needs no bounds checks.
 *
 * Work is split over output tiles (a batch entry, a 16-column panel, a block of row panels); each
 * element of C is always summed by the same code in the same order (k ascending: passes of KC steps
 * only store and reload the partial sum), so results are bit-identical for any partition. Scratch
 * (packed operands, patch matrices) comes from `par.alloc` and stays under SCRATCH_BYTES by
 * processing the batch in chunks (at least one batch entry or image per chunk).
 */
import { BackendError } from '../../core/errors.ts';
import type { ConvAttrs } from '../../core/tensor.ts';
import type { Parallel } from './parallel.ts';
import { ModuleBuilder, type FunctionBody, type FunctionRef, type Local } from './wasm.ts';

/** Rows and columns of the micro-kernel's tile of C. */
const MR = 4;
const NR = 16;
/** Steps of k per pass over a column panel: its KC x 16 slice of packed B (16 KiB) stays in L1 while the row panels stream past. */
const KC = 256;
const SCRATCH_BYTES = 64 * 2 ** 20;
const F32 = 4;
/** Bytes of one step of a packed A panel (4 floats) and of a packed B panel (16 floats). */
const A_STEP = MR * F32;
const B_STEP = NR * F32;
/** An entry of the im2col position table: adjacency, then 4 byte offsets (see writePositionTable). */
const GROUP_BYTES = 32;
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
 * Visits the vectors of a 4 x 16 tile of C at `c` (rows `ldc` bytes apart): all of them, or for
 * an edge tile only rows below `rows` and lanes below `cols`, lane by lane at the right edge.
 */
function forEachTileVector(
  f: FunctionBody,
  t: { c: Local; ldc: Local; row: Local; rows: Local; cols: Local },
  edge: boolean,
  vector: (i: number, j: number, offset: number) => void,
  lane: (i: number, j: number, l: number, offset: number) => void,
): void {
  f.get(t.c).set(t.row);
  for (const i of range(MR)) {
    if (!edge) range(NR / 4).forEach((j) => vector(i, j, 16 * j));
    else {
      f.get(t.rows).i32(i).op('i32.gt_s').if(() => {
        for (const j of range(NR / 4)) {
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
 * micro_<access>(a, b, c, kc, ldc, rows, cols, accumulate): C[0:rows, 0:cols] (+)= A_panel[0:kc] ·
 * B_panel[0:kc] for packed panels at byte offsets a and b. Three variants of one kernel, because a
 * branch before or after the loop costs the loop a fifth of its speed (V8 then keeps fewer
 * accumulators in registers): `store` (a whole tile, C = A·B), `accumulate` (a whole tile,
 * C += A·B), and `edge` (any tile, masked to rows x cols, adding to C when `accumulate` is set).
 */
function emitMicroKernel(mod: ModuleBuilder, access: TileAccess): FunctionRef {
  return mod.func(`micro_${access}`, [I32, I32, I32, I32, I32, I32, I32, I32], [], (f, a, b, c, kc, ldc, rows, cols, accumulate) => {
    const acc = range(MR).map(() => range(NR / 4).map(() => f.local('v128')));
    const bv = range(NR / 4).map(() => f.local('v128'));
    const av = f.local('v128');
    const bEnd = f.local(I32);
    const tile = { c, ldc, rows, cols, row: f.local(I32) };
    const edge = access === 'edge';
    const load = () =>
      forEachTileVector(
        f,
        tile,
        edge,
        (i, j, offset) => f.get(tile.row).mem('v128.load', offset).set(acc[i]![j]!),
        (i, j, l, offset) => f.get(tile.row).get(acc[i]![j]!).memLane('v128.load32_lane', l, offset).set(acc[i]![j]!),
      );
    if (access === 'accumulate') load();
    if (access === 'edge') f.get(accumulate).if(load);
    f.get(b).get(kc).i32(B_STEP).op('i32.mul').op('i32.add').set(bEnd);
    f.block((done) => {
      f.get(kc).op('i32.eqz').brIf(done);
      f.loop((step) => {
        range(NR / 4).forEach((j) => f.get(b).mem('v128.load', 16 * j).set(bv[j]!));
        for (const i of range(MR)) {
          f.get(a).mem('v128.load32_splat', F32 * i).set(av);
          for (const j of range(NR / 4)) f.get(acc[i]![j]!).get(av).get(bv[j]!).op('f32x4.mul').op('f32x4.add').set(acc[i]![j]!);
        }
        f.get(a).i32(A_STEP).op('i32.add').set(a);
        f.get(b).i32(B_STEP).op('i32.add').tee(b).get(bEnd).op('i32.ne').brIf(step);
      });
    });
    forEachTileVector(
      f,
      tile,
      edge,
      (i, j, offset) => f.get(tile.row).get(acc[i]![j]!).mem('v128.store', offset),
      (i, j, l, offset) => f.get(tile.row).get(acc[i]![j]!).memLane('v128.store32_lane', l, offset),
    );
  }, { exported: false });
}

/**
 * gemm(start, end, aPacked, bPacked, c, m, n, k, aPeriod, bPeriod, blocksM, accumulate): for units
 * u in [start, end) = (t, column panel, block of row panels), C[t] (+)= A[t mod aPeriod] · B[t mod bPeriod]
 * with C contiguous [batch, m, n]. Each unit makes passes of KC steps of k over its column panel.
 */
function emitGemm(mod: ModuleBuilder, micro: Record<TileAccess, FunctionRef>): void {
  const params = [I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32];
  mod.func('gemm', params, [], (f, start, end, ap, bp, c, m, n, k, aPeriod, bPeriod, blocksM, accumulate) => {
    const { u, t, jp, ip, ipStart, ipEnd, rows, cols, k0, kc, more } = f.locals(I32, 'u', 't', 'jp', 'ip', 'ipStart', 'ipEnd', 'rows', 'cols', 'k0', 'kc', 'more');
    const { panelsM, panelsN, perBlock, aT, bT, cT, aTile, bTile, cTile, ldc } = f.locals(I32, 'panelsM', 'panelsN', 'perBlock', 'aT', 'bT', 'cT', 'aTile', 'bTile', 'cTile', 'ldc');
    f.get(m).i32(MR - 1).op('i32.add').i32(2).op('i32.shr_u').set(panelsM);
    f.get(n).i32(NR - 1).op('i32.add').i32(4).op('i32.shr_u').set(panelsN);
    f.get(panelsM).get(blocksM).op('i32.add').i32(1).op('i32.sub').get(blocksM).op('i32.div_u').set(perBlock);
    f.get(n).i32(F32).op('i32.mul').set(ldc);
    f.for(u, start, end, () => {
      f.get(u).get(blocksM).op('i32.rem_u').get(perBlock).op('i32.mul').tee(ipStart).get(perBlock).op('i32.add').set(ipEnd);
      min(f, ipEnd, panelsM).set(ipEnd);
      f.get(u).get(blocksM).op('i32.div_u').tee(t).get(panelsN).op('i32.rem_u').set(jp);
      f.get(t).get(panelsN).op('i32.div_u').set(t);
      // Batch entry t's packed A is panelsM panels of k steps, its packed B panelsN panels.
      f.get(ap).get(t).get(aPeriod).op('i32.rem_u').get(panelsM).op('i32.mul').get(k).op('i32.mul').i32(A_STEP).op('i32.mul').op('i32.add').set(aT);
      f.get(bp).get(t).get(bPeriod).op('i32.rem_u').get(panelsN).op('i32.mul').get(jp).op('i32.add').get(k).op('i32.mul').i32(B_STEP).op('i32.mul').op('i32.add').set(bT);
      f.get(t).get(m).op('i32.mul').get(n).op('i32.mul').get(jp).i32(NR).op('i32.mul').op('i32.add').i32(F32).op('i32.mul').get(c).op('i32.add').set(cT);
      f.get(n).get(jp).i32(NR).op('i32.mul').op('i32.sub').set(cols);
      min(f, cols, NR).set(cols);
      f.i32(0).set(k0);
      // At least one pass, so that k = 0 stores zeros.
      f.loop((pass) => {
        f.get(k).get(k0).op('i32.sub').set(kc);
        min(f, kc, KC).set(kc);
        f.for(ip, ipStart, ipEnd, () => {
          f.get(ip).get(k).op('i32.mul').get(k0).op('i32.add').i32(A_STEP).op('i32.mul').get(aT).op('i32.add').set(aTile);
          f.get(k0).i32(B_STEP).op('i32.mul').get(bT).op('i32.add').set(bTile);
          f.get(ip).i32(MR).op('i32.mul').get(ldc).op('i32.mul').get(cT).op('i32.add').set(cTile);
          f.get(m).get(ip).i32(MR).op('i32.mul').op('i32.sub').set(rows);
          min(f, rows, MR).set(rows);
          f.get(accumulate).get(k0).op('i32.or').set(more);
          const call = (kernel: FunctionRef) => f.get(aTile).get(bTile).get(cTile).get(kc).get(ldc).get(rows).get(cols).get(more).call(kernel);
          f.get(rows).i32(MR).op('i32.eq').get(cols).i32(NR).op('i32.eq').op('i32.and').if(
            () => f.get(more).if(() => call(micro.accumulate), () => call(micro.store)),
            () => call(micro.edge),
          );
        });
        f.get(k0).i32(KC).op('i32.add').tee(k0).get(k).op('i32.lt_s').brIf(pass);
      });
    });
  }, { exported: true });
}

/** Copies `count` floats from `s` to `d`, advancing both: whole vectors, then the rest one by one. */
function emitCopy(f: FunctionBody, d: Local, s: Local, count: Local, tmp: { i: Local; end: Local }): void {
  f.get(count).i32(-4).op('i32.and').set(tmp.end);
  f.for(tmp.i, 0, tmp.end, () => {
    f.get(d).get(s).mem('v128.load').mem('v128.store');
    f.get(d).i32(16).op('i32.add').set(d).get(s).i32(16).op('i32.add').set(s);
  }, 4);
  f.for(tmp.i, tmp.end, count, () => {
    f.get(d).get(s).mem('f32.load').mem('f32.store');
    f.get(d).i32(F32).op('i32.add').set(d).get(s).i32(F32).op('i32.add').set(s);
  });
}

/** Zeroes `count` floats at `d`, advancing it. */
function emitZero(f: FunctionBody, d: Local, count: Local, tmp: { i: Local; end: Local }): void {
  f.get(count).i32(-4).op('i32.and').set(tmp.end);
  f.for(tmp.i, 0, tmp.end, () => f.get(d).f32x4([0, 0, 0, 0]).mem('v128.store').get(d).i32(16).op('i32.add').set(d), 4);
  f.for(tmp.i, tmp.end, count, () => f.get(d).f32(0).mem('f32.store').get(d).i32(F32).op('i32.add').set(d));
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
      // A full panel of a matrix stored by columns (transposed): each step copies 4 contiguous floats.
      f.get(rs).i32(F32).op('i32.eq').get(ip).i32(MR).op('i32.mul').i32(MR).op('i32.add').get(m).op('i32.le_s').op('i32.and').if(
        () =>
          f.for(j, 0, k, () => {
            f.get(d).get(s).mem('v128.load').mem('v128.store');
            f.get(s).get(cs).op('i32.add').set(s).get(d).i32(A_STEP).op('i32.add').set(d);
          }),
        () =>
          f.for(r, 0, MR, () => {
            f.get(r).i32(F32).op('i32.mul').get(d).op('i32.add').set(q);
            f.get(ip).i32(MR).op('i32.mul').get(r).op('i32.add').get(m).op('i32.lt_s').if(
              () => {
                f.get(r).get(rs).op('i32.mul').get(s).op('i32.add').set(p);
                f.for(j, 0, k, () => {
                  f.get(q).get(p).mem('f32.load').mem('f32.store');
                  f.get(p).get(cs).op('i32.add').set(p).get(q).i32(A_STEP).op('i32.add').set(q);
                });
              },
              () => f.for(j, 0, k, () => f.get(q).f32(0).mem('f32.store').get(q).i32(A_STEP).op('i32.add').set(q)),
            );
          }),
      );
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
      // A full panel of a row-major matrix: each step copies 16 contiguous floats.
      f.get(cs).i32(F32).op('i32.eq').get(jp).i32(NR).op('i32.mul').i32(NR).op('i32.add').get(n).op('i32.le_s').op('i32.and').if(
        () =>
          f.for(i, 0, k, () => {
            range(NR / 4).forEach((v) => f.get(d).get(s).mem('v128.load', 16 * v).mem('v128.store', 16 * v));
            f.get(s).get(rs).op('i32.add').set(s).get(d).i32(B_STEP).op('i32.add').set(d);
          }),
        () =>
          f.for(l, 0, NR, () => {
            f.get(l).i32(F32).op('i32.mul').get(d).op('i32.add').set(q);
            f.get(jp).i32(NR).op('i32.mul').get(l).op('i32.add').get(n).op('i32.lt_s').if(
              () => {
                f.get(l).get(cs).op('i32.mul').get(s).op('i32.add').set(p);
                f.for(i, 0, k, () => {
                  f.get(q).get(p).mem('f32.load').mem('f32.store');
                  f.get(p).get(rs).op('i32.add').set(p).get(q).i32(B_STEP).op('i32.add').set(q);
                });
              },
              () => f.for(i, 0, k, () => f.get(q).f32(0).mem('f32.store').get(q).i32(B_STEP).op('i32.add').set(q)),
            );
          }),
      );
    });
  }, { exported: true });
}

/** pad(start, end, src, dst, h, w, ph, pw): copies planes u of h x w floats into zero-bordered (h + 2ph) x (w + 2pw) planes. */
function emitPad(mod: ModuleBuilder): void {
  const params = range(8).map(() => I32);
  mod.func('pad', params, [], (f, start, end, src, dst, h, w, ph, pw) => {
    const { u, r, s, d, border } = f.locals(I32, 'u', 'r', 's', 'd', 'border');
    const tmp = f.locals(I32, 'i', 'end');
    // The rows above and below: ph (w + 2pw) floats each side.
    f.get(w).get(pw).i32(2).op('i32.mul').op('i32.add').get(ph).op('i32.mul').set(border);
    f.get(h).get(w).op('i32.mul').i32(F32).op('i32.mul').get(start).op('i32.mul').get(src).op('i32.add').set(s);
    f.for(u, start, end, () => {
      f.get(h).get(ph).i32(2).op('i32.mul').op('i32.add').get(w).get(pw).i32(2).op('i32.mul').op('i32.add').op('i32.mul').i32(F32).op('i32.mul').get(u).op('i32.mul').get(dst).op('i32.add').set(d);
      emitZero(f, d, border, tmp);
      f.for(r, 0, h, () => {
        emitZero(f, d, pw, tmp);
        emitCopy(f, d, s, w, tmp);
        emitZero(f, d, pw, tmp);
      });
      emitZero(f, d, border, tmp);
    });
  }, { exported: true });
}

/**
 * Pushes the value the patch matrix holds for lane `lane` of the position group whose table entry
 * is at `entry` + `group` bytes, for the kernel tap whose padded-plane address is `tap`: the float
 * at tap + offset, or 0 for a position past the end (offset -1). Sets `off` to the offset.
 */
function emitGatherLane(f: FunctionBody, entry: Local, group: number, lane: number, tap: Local, off: Local): void {
  f.get(entry).mem('i32.load', group + 4 + 4 * lane).set(off);
  f.get(tap).get(off).i32(0).get(off).i32(0).op('i32.ge_s').op('select').op('i32.add').mem('f32.load');
  f.f32(0).get(off).i32(0).op('i32.ge_s').op('select');
}

/**
 * im2col(start, end, xp, dst, table, planeBytes, cg, kh, kw, tapY, tapX, panels): for units
 * u = (t, panel) with t = (image, group), writes the patch matrix of 16 output positions into
 * dst + u K 64 as [K][16] (K = cg kh kw taps, row (c, ky, kx)), reading the zero-padded planes at
 * xp + t cg planeBytes. The table gives each group of 4 positions its byte offsets in a plane;
 * a group whose 4 inputs are adjacent is copied as one vector.
 */
function emitIm2col(mod: ModuleBuilder): void {
  const params = range(12).map(() => I32);
  mod.func('im2col', params, [], (f, start, end, xp, dst, table, planeBytes, cg, kh, kw, tapY, tapX, panels) => {
    const { u, c, ky, kx, plane, row, tap, d, entry, off, patchRows } = f.locals(I32, 'u', 'c', 'ky', 'kx', 'plane', 'row', 'tap', 'd', 'entry', 'off', 'patchRows');
    const groups = range(4).map(() => f.locals(I32, 'adjacent', 'first'));
    f.get(cg).get(kh).op('i32.mul').get(kw).op('i32.mul').set(patchRows);
    f.for(u, start, end, () => {
      f.get(u).get(panels).op('i32.div_u').get(cg).op('i32.mul').get(planeBytes).op('i32.mul').get(xp).op('i32.add').set(plane);
      f.get(u).get(patchRows).op('i32.mul').i32(B_STEP).op('i32.mul').get(dst).op('i32.add').set(d);
      f.get(u).get(panels).op('i32.rem_u').i32(4 * GROUP_BYTES).op('i32.mul').get(table).op('i32.add').set(entry);
      groups.forEach((g, v) => {
        f.get(entry).mem('i32.load', v * GROUP_BYTES).set(g.adjacent);
        f.get(entry).mem('i32.load', v * GROUP_BYTES + 4).set(g.first);
      });
      f.for(c, 0, cg, () => {
        f.for(ky, 0, kh, () => {
          f.get(ky).get(tapY).op('i32.mul').get(plane).op('i32.add').set(row);
          f.for(kx, 0, kw, () => {
            f.get(kx).get(tapX).op('i32.mul').get(row).op('i32.add').set(tap);
            groups.forEach((g, v) =>
              f.get(g.adjacent).if(
                () => f.get(d).get(tap).get(g.first).op('i32.add').mem('v128.load').mem('v128.store', 16 * v),
                () =>
                  range(4).forEach((l) => {
                    f.get(d);
                    emitGatherLane(f, entry, v * GROUP_BYTES, l, tap, off);
                    f.mem('f32.store', 16 * v + 4 * l);
                  }),
              ),
            );
            f.get(d).i32(B_STEP).op('i32.add').set(d);
          });
        });
        f.get(plane).get(planeBytes).op('i32.add').set(plane);
      });
    });
  }, { exported: true });
}

/**
 * im2col_t(start, end, xp, dst, table, planeBytes, cg, kh, kw, tapY, tapX, positions, groups, depth):
 * the transposed patch matrix that conv2dGradWeight contracts over positions. For units
 * u = (t, tap panel) with t = (image, group), writes the 16 taps [16 panel, 16 panel + 16) of each
 * of the image's positions into dst + ((group tapPanels + panel) depth + image positions) 64, that
 * is, B packed as [k = (image, position)][16 taps] per group; taps past K as zeros.
 */
function emitIm2colTransposed(mod: ModuleBuilder): void {
  const params = range(14).map(() => I32);
  mod.func('im2col_t', params, [], (f, start, end, xp, dst, table, planeBytes, cg, kh, kw, tapY, tapX, positions, groups, depth) => {
    const { u, t, jp, l, kk, v, p, img, col, tap, d, entry, off, window, panelsT, posGroups } = f.locals(I32, 'u', 't', 'jp', 'l', 'kk', 'v', 'p', 'img', 'col', 'tap', 'd', 'entry', 'off', 'window', 'panelsT', 'posGroups');
    const vec = f.local('v128');
    f.get(kh).get(kw).op('i32.mul').set(window);
    f.get(window).get(cg).op('i32.mul').i32(NR - 1).op('i32.add').i32(4).op('i32.shr_u').set(panelsT);
    f.get(positions).i32(3).op('i32.add').i32(2).op('i32.shr_u').set(posGroups);
    f.for(u, start, end, () => {
      f.get(u).get(panelsT).op('i32.rem_u').set(jp);
      f.get(u).get(panelsT).op('i32.div_u').set(t);
      f.get(t).get(cg).op('i32.mul').get(planeBytes).op('i32.mul').get(xp).op('i32.add').set(img);
      f.get(t).get(groups).op('i32.rem_u').get(panelsT).op('i32.mul').get(jp).op('i32.add').get(depth).op('i32.mul');
      f.get(t).get(groups).op('i32.div_u').get(positions).op('i32.mul').op('i32.add').i32(B_STEP).op('i32.mul').get(dst).op('i32.add').set(col);
      f.for(l, 0, NR, () => {
        f.get(l).i32(F32).op('i32.mul').get(col).op('i32.add').set(d);
        f.get(jp).i32(NR).op('i32.mul').get(l).op('i32.add').tee(kk).get(window).get(cg).op('i32.mul').op('i32.lt_s').if(
          () => {
            // The tap (c, ky, kx) = (kk / window, (kk mod window) / kw, kk mod kw), window = kh kw.
            f.get(kk).get(window).op('i32.div_u').get(planeBytes).op('i32.mul').get(img).op('i32.add');
            f.get(kk).get(window).op('i32.rem_u').get(kw).op('i32.div_u').get(tapY).op('i32.mul').op('i32.add');
            f.get(kk).get(kw).op('i32.rem_u').get(tapX).op('i32.mul').op('i32.add').set(tap);
            f.get(table).set(entry);
            f.for(v, 0, posGroups, () => {
              f.get(entry).mem('i32.load').if(
                () => {
                  f.get(tap).get(entry).mem('i32.load', 4).op('i32.add').mem('v128.load').set(vec);
                  range(4).forEach((i) => f.get(d).get(vec).memLane('v128.store32_lane', i, B_STEP * i));
                },
                () =>
                  range(4).forEach((i) => {
                    f.get(entry).mem('i32.load', 4 + 4 * i).tee(off).i32(0).op('i32.ge_s').if(() => {
                      f.get(d).get(tap).get(off).op('i32.add').mem('f32.load').mem('f32.store', B_STEP * i);
                    });
                  }),
              );
              f.get(entry).i32(GROUP_BYTES).op('i32.add').set(entry);
              f.get(d).i32(4 * B_STEP).op('i32.add').set(d);
            });
          },
          () => f.for(p, 0, positions, () => f.get(d).f32(0).mem('f32.store').get(d).i32(B_STEP).op('i32.add').set(d)),
        );
      });
    });
  }, { exported: true });
}

/**
 * col2im(start, end, cols, dx, dxp, table, planeBytes, cg, kh, kw, tapY, tapX, positions, h, w, ph, pw):
 * the adjoint of im2col. For planes u = (image, channel) (t = u / cg, c = u mod cg), adds each row
 * (c, ky, kx) of the column matrix at cols + t K positions 4 back onto the zero-padded plane at
 * dxp + u planeBytes, taps in order, then copies the plane's interior to dx + u h w 4.
 */
function emitCol2im(mod: ModuleBuilder): void {
  const params = range(17).map(() => I32);
  mod.func('col2im', params, [], (f, start, end, cols, dx, dxp, table, planeBytes, cg, kh, kw, tapY, tapX, positions, h, w, ph, pw) => {
    const { u, ky, kx, v, r, plane, row, tap, src, s, d, a, entry, off, window, posGroups, planeFloats, rowBytes } = f.locals(
      I32, 'u', 'ky', 'kx', 'v', 'r', 'plane', 'row', 'tap', 'src', 's', 'd', 'a', 'entry', 'off', 'window', 'posGroups', 'planeFloats', 'rowBytes',
    );
    const tmp = f.locals(I32, 'i', 'end');
    f.get(kh).get(kw).op('i32.mul').set(window);
    f.get(positions).i32(3).op('i32.add').i32(2).op('i32.shr_u').set(posGroups);
    f.get(planeBytes).i32(2).op('i32.shr_u').set(planeFloats);
    f.get(pw).i32(2).op('i32.mul').get(w).op('i32.add').i32(F32).op('i32.mul').set(rowBytes);
    f.for(u, start, end, () => {
      f.get(u).get(planeBytes).op('i32.mul').get(dxp).op('i32.add').tee(plane).set(d);
      emitZero(f, d, planeFloats, tmp);
      // Rows (c, 0, 0) of image-group t: t K + c kh kw = u kh kw.
      f.get(u).get(window).op('i32.mul').get(positions).op('i32.mul').i32(F32).op('i32.mul').get(cols).op('i32.add').set(src);
      f.for(ky, 0, kh, () => {
        f.get(ky).get(tapY).op('i32.mul').get(plane).op('i32.add').set(row);
        f.for(kx, 0, kw, () => {
          f.get(kx).get(tapX).op('i32.mul').get(row).op('i32.add').set(tap);
          f.get(table).set(entry);
          f.get(src).set(s);
          f.for(v, 0, posGroups, () => {
            f.get(entry).mem('i32.load').if(
              () => {
                f.get(tap).get(entry).mem('i32.load', 4).op('i32.add').tee(a);
                f.get(a).mem('v128.load').get(s).mem('v128.load').op('f32x4.add').mem('v128.store');
              },
              () =>
                range(4).forEach((i) => {
                  f.get(entry).mem('i32.load', 4 + 4 * i).tee(off).i32(0).op('i32.ge_s').if(() => {
                    f.get(tap).get(off).op('i32.add').tee(a);
                    f.get(a).mem('f32.load').get(s).mem('f32.load', 4 * i).op('f32.add').mem('f32.store');
                  });
                }),
            );
            f.get(entry).i32(GROUP_BYTES).op('i32.add').set(entry);
            f.get(s).i32(16).op('i32.add').set(s);
          });
          f.get(src).get(positions).i32(F32).op('i32.mul').op('i32.add').set(src);
        });
      });
      f.get(u).get(h).op('i32.mul').get(w).op('i32.mul').i32(F32).op('i32.mul').get(dx).op('i32.add').set(d);
      f.for(r, 0, h, () => {
        f.get(r).get(ph).op('i32.add').get(rowBytes).op('i32.mul').get(pw).i32(F32).op('i32.mul').op('i32.add').get(plane).op('i32.add').set(s);
        emitCopy(f, d, s, w, tmp);
      });
    });
  }, { exported: true });
}

/** The module of every kernel above, compiled once per process. */
let compiled: WebAssembly.Module | undefined;
/** Its id on each Parallel it was registered with. */
const registered = new WeakMap<Parallel, number>();

function kernels(par: Parallel): number {
  let id = registered.get(par);
  if (id === undefined) {
    if (!compiled) {
      const mod = new ModuleBuilder();
      emitGemm(mod, { store: emitMicroKernel(mod, 'store'), accumulate: emitMicroKernel(mod, 'accumulate'), edge: emitMicroKernel(mod, 'edge') });
      emitPackA(mod);
      emitPackB(mod);
      emitPad(mod);
      emitIm2col(mod);
      emitIm2colTransposed(mod);
      emitCol2im(mod);
      compiled = new WebAssembly.Module(mod.encode());
    }
    id = par.registerWasm(compiled);
    registered.set(par, id);
  }
  return id;
}

/**
 * Runs `entry` over `units` work units; on the calling thread alone when the whole job is below
 * SERIAL_MACS multiply-adds (or copied floats), where waking the workers costs more than it saves.
 */
function launch(par: Parallel, entry: string, units: number, work: number, args: readonly number[]): void {
  par.run(kernels(par), entry, units, args, { serialBelow: work < SERIAL_MACS ? units + 1 : 2 });
}

/** Allocates blocks of the given sizes, runs `body` with their offsets, and frees them. */
function withScratch(par: Parallel, bytes: readonly number[], body: (...offsets: number[]) => void): void {
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
function gemm(par: Parallel, g: { batch: number; m: number; n: number; k: number; aPacked: number; bPacked: number; c: number; aPeriod: number; bPeriod: number; accumulate: boolean }): void {
  const blocks = rowBlocks(par, g.batch, g.m, g.n);
  const units = g.batch * Math.ceil(g.n / NR) * blocks;
  launch(par, 'gemm', units, g.batch * g.m * g.n * g.k, [g.aPacked, g.bPacked, g.c, g.m, g.n, g.k, g.aPeriod, g.bPeriod, blocks, g.accumulate ? 1 : 0]);
}

/** Bytes of packed A (panels of 4 rows) and packed B (panels of 16 columns) of one m x k or k x n operand. */
const packedABytes = (m: number, k: number) => Math.ceil(m / MR) * k * A_STEP;
const packedBBytes = (k: number, n: number) => Math.ceil(n / NR) * k * B_STEP;

/** How many batch entries of `perEntry` scratch bytes fit the budget left after `fixed` (at least one). */
function chunkOf(batch: number, perEntry: number, fixed = 0): number {
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
}

/** C[t] = op(A[t]) · op(B[t]) for t < batch, C contiguous [batch, m, n], float32. */
export function matmul(par: Parallel, p: MatmulParams): void {
  const { batch, m, n, k } = p;
  checkSizes('matmul', { batch, m, n, k, aBatchStride: p.aBatchStride, bBatchStride: p.bBatchStride });
  if (batch === 0 || m === 0 || n === 0) return;
  const aShared = p.aBatchStride === 0 || batch === 1;
  const bShared = p.bBatchStride === 0 || batch === 1;
  const aBytes = packedABytes(m, k);
  const bBytes = packedBBytes(k, n);
  const chunk = chunkOf(batch, (aShared ? 0 : aBytes) + (bShared ? 0 : bBytes), (aShared ? aBytes : 0) + (bShared ? bBytes : 0));
  // Byte strides of element (row, column) of op(A) (m x k) and of op(B) (k x n).
  const [aRow, aCol] = p.transA ? [F32, m * F32] : [k * F32, F32];
  const [bRow, bCol] = p.transB ? [F32, k * F32] : [n * F32, F32];
  const packA = (t0: number, count: number, dst: number) =>
    launch(par, 'pack_a', count * Math.ceil(m / MR), count * m * k, [p.a + t0 * p.aBatchStride * F32, dst, m, k, aRow, aCol, 1, p.aBatchStride * F32, 0, aBytes, 0, k * A_STEP]);
  const packB = (t0: number, count: number, dst: number) =>
    launch(par, 'pack_b', count * Math.ceil(n / NR), count * k * n, [p.b + t0 * p.bBatchStride * F32, dst, k, n, bRow, bCol, p.bBatchStride * F32]);
  withScratch(par, [(aShared ? 1 : chunk) * aBytes, (bShared ? 1 : chunk) * bBytes], (aPacked, bPacked) => {
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

/**
 * A convolution's operands, in the reference interpreter's order: conv2d(a = x, b = w) -> out = y,
 * conv2dGradInput(a = dy, b = w) -> out = dx, conv2dGradWeight(a = x, b = dy) -> out = dw; byte
 * offsets of float32 tensors, x NCHW, w OIHW.
 */
export interface ConvParams extends ConvAttrs {
  readonly a: number;
  readonly b: number;
  readonly out: number;
  readonly aShape: readonly number[];
  readonly bShape: readonly number[];
  readonly outShape: readonly number[];
}

interface ConvGeometry {
  readonly n: number;
  readonly c: number;
  readonly h: number;
  readonly w: number;
  readonly o: number;
  readonly groups: number;
  /** Input and output channels per group. */
  readonly cg: number;
  readonly og: number;
  readonly kh: number;
  readonly kw: number;
  /** Taps per output channel (cg kh kw): the contraction's depth. */
  readonly taps: number;
  /** Output positions per image (oh ow), per output row, and 16-position panels per image. */
  readonly positions: number;
  readonly ow: number;
  readonly panels: number;
  readonly sh: number;
  readonly sw: number;
  /** Bytes of one zero-padded input plane, of one padded row times the vertical dilation, and the horizontal dilation. */
  readonly planeBytes: number;
  readonly tapY: number;
  readonly tapX: number;
  readonly ph: number;
  readonly pw: number;
}

function convGeometry(op: string, x: readonly number[], w: readonly number[], y: readonly number[], p: ConvAttrs): ConvGeometry {
  const [n, c, h, wd] = x as [number, number, number, number];
  const [o, cg, kh, kw] = w as [number, number, number, number];
  const [sh, sw] = p.stride;
  const [ph, pw] = p.padding;
  const [dh, dw] = p.dilation;
  const oh = Math.floor((h + 2 * ph - dh * (kh - 1) - 1) / sh) + 1;
  const ow = Math.floor((wd + 2 * pw - dw * (kw - 1) - 1) / sw) + 1;
  const fits = x.length === 4 && w.length === 4 && y.length === 4 && cg * p.groups === c && o % p.groups === 0;
  if (!fits || y[0] !== n || y[1] !== o || y[2] !== oh || y[3] !== ow) {
    throw new BackendError(`cpu ${op}: shapes x [${x}], w [${w}], y [${y}] do not fit stride [${p.stride}], padding [${p.padding}], dilation [${p.dilation}], groups ${p.groups}`);
  }
  const wp = wd + 2 * pw;
  return {
    n, c, h, w: wd, o, groups: p.groups, cg, og: o / p.groups, kh, kw, taps: cg * kh * kw, positions: oh * ow, ow, panels: Math.ceil((oh * ow) / NR), sh, sw,
    planeBytes: (h + 2 * ph) * wp * F32, tapY: dh * wp * F32, tapX: dw * F32, ph, pw,
  };
}

/**
 * The table behind im2col, im2col_t and col2im: for each group of 4 output positions (padded to
 * whole 16-position panels), an entry of GROUP_BYTES: whether the 4 inputs a tap reads are
 * adjacent (one vector load), then the byte offset of each position's input in a padded plane
 * for the tap (0, 0), or -1 past the last position.
 */
const tableBytes = (g: ConvGeometry) => g.panels * (NR / 4) * GROUP_BYTES;

function writePositionTable(par: Parallel, g: ConvGeometry, table: number): void {
  const groups = g.panels * (NR / 4);
  const i32 = par.heap().i32;
  const rowBytes = (g.w + 2 * g.pw) * F32;
  for (let v = 0; v < groups; v++) {
    const offsets = range(4).map((l) => {
      const pos = 4 * v + l;
      return pos < g.positions ? Math.floor(pos / g.ow) * g.sh * rowBytes + (pos % g.ow) * g.sw * F32 : -1;
    });
    const adjacent = offsets.every((off, l) => off >= 0 && off === offsets[0]! + l * F32);
    i32.set([adjacent ? 1 : 0, ...offsets], (table + v * GROUP_BYTES) / F32);
  }
}

/** Pads images [n0, n0 + count) of x into zero-bordered planes at xp. */
function padImages(par: Parallel, g: ConvGeometry, x: number, n0: number, count: number, xp: number): void {
  const planes = count * g.c;
  launch(par, 'pad', planes, planes * g.planeBytes, [x + n0 * g.c * g.h * g.w * F32, xp, g.h, g.w, g.ph, g.pw]);
}

/**
 * y = conv2d(x, w): per image and group, Y = W · im2col(x), with W packed once and the patch
 * matrix written in packed-B layout, one chunk of images at a time.
 */
export function conv2d(par: Parallel, p: ConvParams): void {
  const g = convGeometry('conv2d', p.aShape, p.bShape, p.outShape, p);
  if (g.n === 0) return;
  const weightBytes = packedABytes(g.og, g.taps);
  const colBytes = g.groups * g.panels * g.taps * B_STEP;
  const chunk = chunkOf(g.n, g.c * g.planeBytes + colBytes, g.groups * weightBytes + tableBytes(g));
  withScratch(par, [tableBytes(g), g.groups * weightBytes, chunk * g.c * g.planeBytes, chunk * colBytes], (table, wPacked, xp, cols) => {
    writePositionTable(par, g, table);
    const panelsM = Math.ceil(g.og / MR);
    launch(par, 'pack_a', g.groups * panelsM, g.o * g.taps, [p.b, wPacked, g.og, g.taps, g.taps * F32, F32, g.groups, 0, g.og * g.taps * F32, 0, weightBytes, g.taps * A_STEP]);
    for (let n0 = 0; n0 < g.n; n0 += chunk) {
      const count = Math.min(chunk, g.n - n0);
      padImages(par, g, p.a, n0, count, xp);
      const units = count * g.groups * g.panels;
      launch(par, 'im2col', units, units * g.taps * NR, [xp, cols, table, g.planeBytes, g.cg, g.kh, g.kw, g.tapY, g.tapX, g.panels]);
      gemm(par, { batch: count * g.groups, m: g.og, n: g.positions, k: g.taps, aPacked: wPacked, bPacked: cols, c: p.out + n0 * g.o * g.positions * F32, aPeriod: g.groups, bPeriod: count * g.groups, accumulate: false });
    }
  });
}

/**
 * dx = conv2dGradInput(dy, w): per image and group, the column matrix Wᵀ · dy (taps x positions),
 * added back onto zero-padded input planes by col2im, whose interiors are dx.
 */
export function conv2dGradInput(par: Parallel, p: ConvParams): void {
  const g = convGeometry('conv2dGradInput', p.outShape, p.bShape, p.aShape, p);
  if (g.n === 0) return;
  const weightBytes = packedABytes(g.taps, g.og);
  const dyBytes = g.groups * g.panels * g.og * B_STEP;
  const colBytes = g.groups * g.taps * g.positions * F32;
  const chunk = chunkOf(g.n, dyBytes + colBytes + g.c * g.planeBytes, g.groups * weightBytes + tableBytes(g));
  const scratch = [tableBytes(g), g.groups * weightBytes, chunk * dyBytes, chunk * colBytes, chunk * g.c * g.planeBytes];
  withScratch(par, scratch, (table, wPacked, dyPacked, cols, dxp) => {
    writePositionTable(par, g, table);
    // A = Wᵀ (taps x og): element (tap, o) of group g is w[g og + o, tap].
    launch(par, 'pack_a', g.groups * Math.ceil(g.taps / MR), g.o * g.taps, [p.b, wPacked, g.taps, g.og, F32, g.taps * F32, g.groups, 0, g.og * g.taps * F32, 0, weightBytes, g.og * A_STEP]);
    for (let n0 = 0; n0 < g.n; n0 += chunk) {
      const count = Math.min(chunk, g.n - n0);
      const dy = p.a + n0 * g.o * g.positions * F32;
      launch(par, 'pack_b', count * g.groups * g.panels, count * g.o * g.positions, [dy, dyPacked, g.og, g.positions, g.positions * F32, F32, g.og * g.positions * F32]);
      gemm(par, { batch: count * g.groups, m: g.taps, n: g.positions, k: g.og, aPacked: wPacked, bPacked: dyPacked, c: cols, aPeriod: g.groups, bPeriod: count * g.groups, accumulate: false });
      const planes = count * g.c;
      const dx = p.out + n0 * g.c * g.h * g.w * F32;
      launch(par, 'col2im', planes, planes * g.kh * g.kw * g.positions, [cols, dx, dxp, table, g.planeBytes, g.cg, g.kh, g.kw, g.tapY, g.tapX, g.positions, g.h, g.w, g.ph, g.pw]);
    }
  });
}

/**
 * dw = conv2dGradWeight(x, dy): per group, dW = dY · im2col(x)ᵀ contracted over the positions of
 * every image, with dY packed as A and the transposed patch matrix as B; each chunk of images
 * after the first adds onto dw, so every element is still summed in one fixed order.
 */
export function conv2dGradWeight(par: Parallel, p: ConvParams): void {
  const g = convGeometry('conv2dGradWeight', p.aShape, p.outShape, p.bShape, p);
  // No images: a contraction of depth 0, which stores zeros.
  if (g.n === 0) return gemm(par, { batch: g.groups, m: g.og, n: g.taps, k: 0, aPacked: 0, bPacked: 0, c: p.out, aPeriod: 1, bPeriod: 1, accumulate: false });
  const tapPanels = Math.ceil(g.taps / NR);
  const panelsM = Math.ceil(g.og / MR);
  const colBytes = g.groups * tapPanels * g.positions * B_STEP;
  const dyBytes = g.groups * panelsM * g.positions * A_STEP;
  const chunk = chunkOf(g.n, g.c * g.planeBytes + colBytes + dyBytes, tableBytes(g));
  withScratch(par, [tableBytes(g), chunk * g.c * g.planeBytes, chunk * colBytes, chunk * dyBytes], (table, xp, cols, dyPacked) => {
    writePositionTable(par, g, table);
    for (let n0 = 0; n0 < g.n; n0 += chunk) {
      const count = Math.min(chunk, g.n - n0);
      const depth = count * g.positions;
      padImages(par, g, p.a, n0, count, xp);
      const units = count * g.groups * tapPanels;
      launch(par, 'im2col_t', units, units * NR * g.positions, [xp, cols, table, g.planeBytes, g.cg, g.kh, g.kw, g.tapY, g.tapX, g.positions, g.groups, depth]);
      // A = dY of group g (og x depth): image i fills steps [i positions, (i + 1) positions) of each panel.
      const dy = p.b + n0 * g.o * g.positions * F32;
      const panelBytes = depth * A_STEP;
      const dyArgs = [dy, dyPacked, g.og, g.positions, g.positions * F32, F32, g.groups, g.o * g.positions * F32, g.og * g.positions * F32, g.positions * A_STEP, panelsM * panelBytes, panelBytes];
      launch(par, 'pack_a', count * g.groups * panelsM, count * g.o * g.positions, dyArgs);
      gemm(par, { batch: g.groups, m: g.og, n: g.taps, k: depth, aPacked: dyPacked, bPacked: cols, c: p.out, aPeriod: g.groups, bPeriod: g.groups, accumulate: n0 > 0 });
    }
  });
}
