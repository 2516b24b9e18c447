/**
 * 2-D convolution and both its adjoints for the CPU backend, lowered onto the GEMM of gemm.ts:
 * per image and group, conv2d is W · im2col(x), conv2dGradInput is Wᵀ · dY added back onto the
 * input planes by col2im (the adjoint of im2col), and conv2dGradWeight is dY · im2col(x)ᵀ
 * contracted over the positions of every image.
 *
 * Where the horizontal stride and dilation are 1 and output rows are whole groups of 4 positions
 * (readsInPlace: every 3x3 or 1x1 convolution of the UNets at 4x4 and up), no patch matrix is
 * written: conv2d's GEMM reads B straight from the zero-padded images through a table of tap
 * offsets (gemmDirect); conv2dGradInput, when its strides are 1, is that same forward convolution
 * of dY with the kernel turned half a turn (gradInputAsConv); conv2dGradWeight is dot products of
 * dY's rows with the patch rows, read in place (gw_direct).
 *
 * Elsewhere the patch matrix is written straight in packed B's layout, from a zero-padded copy of
 * x, so the gather needs no bounds checks; its columns are output positions, the wide side of the
 * GEMM's tile. A table gives each group of 4 output positions its input offsets, and a group whose
 * inputs are adjacent moves as one vector. These kernels (pad, im2col, im2col_t, col2im, gw_direct)
 * are a module of their own; packing and the contraction run gemm.ts's. Every kernel keeps a fixed
 * order per element, so results are bit-identical for any partition. Scratch (padded images, patch
 * matrices, packed operands) stays within gemm.ts's budget (chunkOf) by processing the images in
 * chunks (at least one image per chunk).
 */
import { BackendError } from '../../core/errors.ts';
import type { ConvAttrs } from '../../core/tensor.ts';
import { A_STEP, B_STEP, F32, MR, NR, chunkOf, gemm, gemmDirect, gemmKernels, kernelModule, packedABytes, scratchLayout, withScratch } from './gemm.ts';
import type { Parallel } from './parallel.ts';
import type { FunctionBody, Local, ModuleBuilder } from './wasm.ts';

/** An entry of the im2col position table: adjacency, then 4 byte offsets (see writePositionTable). */
const GROUP_BYTES = 32;

const I32 = 'i32' as const;

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

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

/**
 * gw_direct(start, end, xp, dy, dw, firsts, taps, og, K, positions, images, imageBytes, groupBytes,
 * dyImageBytes, accumulate): conv2dGradWeight reading its patches in place (readsInPlace). For
 * units u = (group, panel of 4 output channels, panel of 4 taps), dW[o, tap] is the dot product of
 * dY's row o with the tap's patch row over the positions of every image, positions 4 at a time:
 * an accumulator of 4 lanes per (o, tap) (lane l sums positions l mod 4, images in order), summed
 * across its lanes as (l0 + l1) + (l2 + l3) at the end and stored (added to dW when `accumulate` is
 * set); the 4 x 4 tile runs as two passes of 4 x 2.
 * Rows past og and taps past K compute on a clamped neighbour and are not stored. xp holds the
 * images' zero-padded planes (imageBytes each, a group's first plane groupBytes on), dy
 * [images, groups og, positions]; firsts and taps are gemmDirect's tables.
 */
function emitGradWeightDirect(mod: ModuleBuilder): void {
  const params = range(15).map(() => I32);
  mod.func('gw_direct', params, [], (f, start, end, xp, dy, dw, firsts, taps, og, kTaps, positions, images, imageBytes, groupBytes, dyImageBytes, accumulate) => {
    const { u, gi, op, tp, img, v, fo, vo, vend, xImg, dyImg, tapPanels, oPanels } = f.locals(I32, 'u', 'gi', 'op', 'tp', 'img', 'v', 'fo', 'vo', 'vend', 'xImg', 'dyImg', 'tapPanels', 'oPanels');
    const rowOff = range(4).map(() => f.local(I32));
    const tapOff = range(4).map(() => f.local(I32));
    const dyRow = range(4).map(() => f.local(I32));
    const xTap = range(4).map(() => f.local(I32));
    const acc = range(4).map(() => range(4).map(() => f.local('v128')));
    const xv = range(4).map(() => f.local('v128'));
    const dv = f.local('v128');
    const at = f.local(I32);
    const sum = f.local('f32');
    f.get(kTaps).i32(3).op('i32.add').i32(2).op('i32.shr_u').set(tapPanels);
    f.get(og).i32(3).op('i32.add').i32(2).op('i32.shr_u').set(oPanels);
    f.get(positions).i32(F32).op('i32.mul').set(vend);
    f.for(u, start, end, () => {
      f.get(u).get(tapPanels).op('i32.rem_u').set(tp);
      f.get(u).get(tapPanels).op('i32.div_u').tee(op).get(oPanels).op('i32.div_u').set(gi);
      f.get(op).get(oPanels).op('i32.rem_u').set(op);
      range(4).forEach((i) => {
        // Row gi og + min(4 op + i, og - 1) of an image's dY, in bytes.
        f.get(op).i32(4).op('i32.mul').i32(i).op('i32.add').get(og).i32(1).op('i32.sub');
        f.get(op).i32(4).op('i32.mul').i32(i).op('i32.add').get(og).op('i32.lt_s').op('select');
        f.get(gi).get(og).op('i32.mul').op('i32.add').get(positions).op('i32.mul').i32(F32).op('i32.mul').set(rowOff[i]!);
        // Tap min(4 tp + i, K - 1)'s offset, from group gi's first plane.
        f.get(tp).i32(4).op('i32.mul').i32(i).op('i32.add').get(kTaps).i32(1).op('i32.sub');
        f.get(tp).i32(4).op('i32.mul').i32(i).op('i32.add').get(kTaps).op('i32.lt_s').op('select');
        f.i32(F32).op('i32.mul').get(taps).op('i32.add').mem('i32.load').get(gi).get(groupBytes).op('i32.mul').op('i32.add').set(tapOff[i]!);
      });
      // Two passes of 4 rows x 2 taps, stored after each: 8 accumulators, 2 patch vectors, a dY
      // vector and a product fit the 16 vector registers (all 16 accumulators at once spilled).
      for (const half of [[0, 1], [2, 3]] as const) {
        range(4).forEach((i) => half.forEach((j) => f.f32x4([0, 0, 0, 0]).set(acc[i]![j]!)));
        f.for(img, 0, images, () => {
          f.get(img).get(imageBytes).op('i32.mul').get(xp).op('i32.add').set(xImg);
          f.get(img).get(dyImageBytes).op('i32.mul').get(dy).op('i32.add').set(dyImg);
          range(4).forEach((i) => f.get(dyImg).get(rowOff[i]!).op('i32.add').set(dyRow[i]!));
          half.forEach((j) => f.get(xImg).get(tapOff[j]!).op('i32.add').set(xTap[j]!));
          f.get(firsts).set(fo);
          // vo: the byte offset of positions 4v .. 4v + 3 in a dY row.
          f.for(vo, 0, vend, () => {
            f.get(fo).mem('i32.load').set(v);
            half.forEach((j) => f.get(xTap[j]!).get(v).op('i32.add').mem('v128.load').set(xv[j]!));
            range(4).forEach((i) => {
              f.get(dyRow[i]!).get(vo).op('i32.add').mem('v128.load').set(dv);
              half.forEach((j) => f.get(acc[i]![j]!).get(dv).get(xv[j]!).op('f32x4.mul').op('f32x4.add').set(acc[i]![j]!));
            });
            f.get(fo).i32(F32).op('i32.add').set(fo);
          }, 16);
        });
        range(4).forEach((i) =>
          half.forEach((j) => {
            // Row 4 op + i < og and tap 4 tp + j < K: dW[gi og + 4 op + i, 4 tp + j].
            f.get(op).i32(4).op('i32.mul').i32(i).op('i32.add').get(og).op('i32.lt_s');
            f.get(tp).i32(4).op('i32.mul').i32(j).op('i32.add').get(kTaps).op('i32.lt_s').op('i32.and').if(() => {
              f.get(gi).get(og).op('i32.mul').get(op).i32(4).op('i32.mul').op('i32.add').i32(i).op('i32.add').get(kTaps).op('i32.mul');
              f.get(tp).i32(4).op('i32.mul').op('i32.add').i32(j).op('i32.add').i32(F32).op('i32.mul').get(dw).op('i32.add').set(at);
              const a = acc[i]![j]!;
              f.get(a).lane('f32x4.extract_lane', 0).get(a).lane('f32x4.extract_lane', 1).op('f32.add');
              f.get(a).lane('f32x4.extract_lane', 2).get(a).lane('f32x4.extract_lane', 3).op('f32.add').op('f32.add').set(sum);
              f.get(accumulate).if(() => f.get(at).mem('f32.load').get(sum).op('f32.add').set(sum));
              f.get(at).get(sum).mem('f32.store');
            });
          }),
        );
      }
    });
  }, { exported: true });
}

/** pad, im2col, im2col_t, col2im and gw_direct. */
const convKernels = kernelModule((mod) => {
  emitPad(mod);
  emitIm2col(mod);
  emitIm2colTransposed(mod);
  emitCol2im(mod);
  emitGradWeightDirect(mod);
});

/**
 * A convolution's operands, in the reference interpreter's order: conv2d(a = x, b = w) -> out = y,
 * conv2dGradInput(a = dy, b = w) -> out = dx, conv2dGradWeight(a = x, b = dy) -> out = dw; byte
 * offsets of float32 tensors, x NCHW, w OIHW.
 */
/** The sizes of a convolution: its attributes and the shapes of its operands and result. */
export interface ConvShapes extends ConvAttrs {
  readonly aShape: readonly number[];
  readonly bShape: readonly number[];
  readonly outShape: readonly number[];
}

export interface ConvParams extends ConvShapes {
  /** Byte offsets of the operands and the result. */
  readonly a: number;
  readonly b: number;
  readonly out: number;
  /** A block of at least `convScratchBytes` bytes for the scratch buffers (else allocated per call). */
  readonly scratch?: number;
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

/** The byte offset, in a padded plane, of the input that output position `pos` reads for the tap (0, 0). */
const inputOffset = (g: ConvGeometry, pos: number) => Math.floor(pos / g.ow) * g.sh * (g.w + 2 * g.pw) * F32 + (pos % g.ow) * g.sw * F32;

function writePositionTable(par: Parallel, g: ConvGeometry, table: number): void {
  const groups = g.panels * (NR / 4);
  const i32 = par.heap().i32;
  for (let v = 0; v < groups; v++) {
    const offsets = range(4).map((l) => {
      const pos = 4 * v + l;
      return pos < g.positions ? inputOffset(g, pos) : -1;
    });
    const adjacent = offsets.every((off, l) => off >= 0 && off === offsets[0]! + l * F32);
    i32.set([adjacent ? 1 : 0, ...offsets], (table + v * GROUP_BYTES) / F32);
  }
}

/** Pads images [n0, n0 + count) of x into zero-bordered planes at xp. */
function padImages(par: Parallel, g: ConvGeometry, x: number, n0: number, count: number, xp: number): void {
  const planes = count * g.c;
  convKernels.launch(par, 'pad', planes, planes * g.planeBytes, [x + n0 * g.c * g.h * g.w * F32, xp, g.h, g.w, g.ph, g.pw]);
}

/**
 * Whether a convolution can read its patch matrix in place (gemmDirect): every run of 4 output
 * positions that the GEMM loads as one vector reads 4 adjacent inputs for every tap, that is, unit
 * horizontal stride and dilation and rows of whole groups of 4.
 */
const readsInPlace = (g: ConvGeometry) => g.sw === 1 && g.tapX === F32 && g.ow % 4 === 0;

/** The direct path's tables: a byte offset per group of 4 positions (whole panels), then one per tap. */
const directTableBytes = (g: ConvGeometry) => (g.panels * (NR / 4) + g.taps) * F32;

/**
 * Writes gemmDirect's tables at `at`: for each group of 4 output positions (whole 16-position
 * panels) the byte offset of its first input in a padded plane (0 past the last position, whose
 * columns the GEMM never stores), then for each tap (c, ky, kx) its offset from there.
 */
function writeDirectTables(par: Parallel, g: ConvGeometry, at: number): { firsts: number; taps: number } {
  const i32 = par.heap().i32;
  const groups = g.panels * (NR / 4);
  const base = at / F32;
  for (let v = 0; v < groups; v++) i32[base + v] = 4 * v < g.positions ? inputOffset(g, 4 * v) : 0;
  let kk = base + groups;
  for (let c = 0; c < g.cg; c++) for (let ky = 0; ky < g.kh; ky++) for (let kx = 0; kx < g.kw; kx++) i32[kk++] = c * g.planeBytes + ky * g.tapY + kx * g.tapX;
  return { firsts: at, taps: at + groups * F32 };
}

/**
 * y = conv2d(x, w): per image and group, Y = W · im2col(x), with W packed once; the patch matrix is
 * read in place from the padded images where it can be (readsInPlace), else written in packed-B
 * layout, one chunk of images at a time.
 */
function conv2dLayout(p: ConvShapes) {
  const g = convGeometry('conv2d', p.aShape, p.bShape, p.outShape, p);
  const weightBytes = packedABytes(g.og, g.taps);
  if (readsInPlace(g)) {
    const chunk = chunkOf(g.n, g.c * g.planeBytes, g.groups * weightBytes + directTableBytes(g));
    return { g, weightBytes, chunk, direct: true, scratch: [directTableBytes(g), g.groups * weightBytes, chunk * g.c * g.planeBytes] };
  }
  const colBytes = g.groups * g.panels * g.taps * B_STEP;
  const chunk = chunkOf(g.n, g.c * g.planeBytes + colBytes, g.groups * weightBytes + tableBytes(g));
  return { g, weightBytes, chunk, direct: false, scratch: [tableBytes(g), g.groups * weightBytes, chunk * g.c * g.planeBytes, chunk * colBytes] };
}

export function conv2d(par: Parallel, p: ConvParams): void {
  const { g, weightBytes, chunk, direct, scratch } = conv2dLayout(p);
  if (g.n === 0) return;
  withScratch(par, scratch, p.scratch, (table, wPacked, xp, cols) => {
    const panelsM = Math.ceil(g.og / MR);
    gemmKernels.launch(par, 'pack_a', g.groups * panelsM, g.o * g.taps, [p.b, wPacked, g.og, g.taps, g.taps * F32, F32, g.groups, 0, g.og * g.taps * F32, 0, weightBytes, g.taps * A_STEP]);
    const tables = direct ? writeDirectTables(par, g, table) : (writePositionTable(par, g, table), undefined);
    for (let n0 = 0; n0 < g.n; n0 += chunk) {
      const count = Math.min(chunk, g.n - n0);
      padImages(par, g, p.a, n0, count, xp);
      const c = p.out + n0 * g.o * g.positions * F32;
      if (tables !== undefined) {
        gemmDirect(par, { batch: count * g.groups, m: g.og, n: g.positions, k: g.taps, aPacked: wPacked, images: xp, imageBytes: g.cg * g.planeBytes, ...tables, c, aPeriod: g.groups, accumulate: false });
        continue;
      }
      const units = count * g.groups * g.panels;
      convKernels.launch(par, 'im2col', units, units * g.taps * NR, [xp, cols!, table, g.planeBytes, g.cg, g.kh, g.kw, g.tapY, g.tapX, g.panels]);
      gemm(par, { batch: count * g.groups, m: g.og, n: g.positions, k: g.taps, aPacked: wPacked, bPacked: cols!, c, aPeriod: g.groups, bPeriod: count * g.groups, accumulate: false });
    }
  });
}

/**
 * conv2dGradInput as a forward convolution, where the strides are 1: dx = conv2d(dy, w') with w'
 * the kernel turned half a turn with its in and out channels swapped (w'[g cg + c, o, ky, kx] =
 * w[g og + o, c, kh - 1 - ky, kw - 1 - kx]) and padding (k - 1) d - p each side (when that is not
 * negative), whose patch matrix it reads in place (readsInPlace) instead of scattering columns back
 * with col2im. Undefined where that does not apply.
 */
function gradInputAsConv(p: ConvShapes): ConvShapes | undefined {
  const [n, o, oh, ow] = p.aShape as [number, number, number, number];
  const [, cg, kh, kw] = p.bShape as [number, number, number, number];
  const [dh, dw] = p.dilation;
  const pad: [number, number] = [(kh - 1) * dh - p.padding[0], (kw - 1) * dw - p.padding[1]];
  if (p.stride[0] !== 1 || p.stride[1] !== 1 || pad[0] < 0 || pad[1] < 0 || p.aShape.length !== 4) return undefined;
  const shapes: ConvShapes = {
    aShape: [n, o, oh, ow], bShape: [cg * p.groups, o / p.groups, kh, kw], outShape: p.outShape,
    stride: [1, 1], padding: pad, dilation: p.dilation, groups: p.groups,
  };
  const g = convGeometry('conv2dGradInput', shapes.aShape, shapes.bShape, shapes.outShape, shapes);
  return readsInPlace(g) ? shapes : undefined;
}

/**
 * dx = conv2dGradInput(dy, w): a forward convolution of dy where the strides allow it
 * (gradInputAsConv), else per image and group the column matrix Wᵀ · dy (taps x positions), added
 * back onto zero-padded input planes by col2im, whose interiors are dx.
 */
function conv2dGradInputLayout(p: ConvShapes) {
  const asConv = gradInputAsConv(p);
  if (asConv !== undefined) {
    const forward = conv2dLayout(asConv);
    const turnedBytes = p.bShape.reduce((a, b) => a * b, 1) * F32;
    return { asConv, forward, turnedBytes, scratch: [turnedBytes, scratchLayout(forward.scratch).total] } as const;
  }
  const g = convGeometry('conv2dGradInput', p.outShape, p.bShape, p.aShape, p);
  const weightBytes = packedABytes(g.taps, g.og);
  const dyBytes = g.groups * g.panels * g.og * B_STEP;
  const colBytes = g.groups * g.taps * g.positions * F32;
  const chunk = chunkOf(g.n, dyBytes + colBytes + g.c * g.planeBytes, g.groups * weightBytes + tableBytes(g));
  return { g, weightBytes, chunk, scratch: [tableBytes(g), g.groups * weightBytes, chunk * dyBytes, chunk * colBytes, chunk * g.c * g.planeBytes] } as const;
}

/** Writes w' of gradInputAsConv (w [groups og, cg, kh, kw] at `w`) to `at`: [groups cg, og, kh, kw]. */
function turnKernel(par: Parallel, wShape: readonly number[], groups: number, w: number, at: number): void {
  const [o, cg, kh, kw] = wShape as [number, number, number, number];
  const og = o / groups;
  const f32 = par.heap().f32;
  const src = w / F32;
  let d = at / F32;
  for (let gi = 0; gi < groups; gi++) {
    for (let c = 0; c < cg; c++) {
      for (let oi = 0; oi < og; oi++) {
        const from = src + (((gi * og + oi) * cg + c) * kh) * kw;
        for (let ky = 0; ky < kh; ky++) for (let kx = 0; kx < kw; kx++) f32[d++] = f32[from + (kh - 1 - ky) * kw + (kw - 1 - kx)]!;
      }
    }
  }
}

export function conv2dGradInput(par: Parallel, p: ConvParams): void {
  const layout = conv2dGradInputLayout(p);
  if (p.aShape[0] === 0) return;
  if ('asConv' in layout) {
    const shapes: ConvShapes = layout.asConv!;
    withScratch(par, layout.scratch, p.scratch, (turned, rest) => {
      turnKernel(par, p.bShape, p.groups, p.b, turned);
      conv2d(par, { ...shapes, a: p.a, b: turned, out: p.out, scratch: rest });
    });
    return;
  }
  const { g, weightBytes, chunk, scratch } = layout;
  withScratch(par, scratch, p.scratch, (table, wPacked, dyPacked, cols, dxp) => {
    writePositionTable(par, g, table);
    // A = Wᵀ (taps x og): element (tap, o) of group g is w[g og + o, tap].
    gemmKernels.launch(par, 'pack_a', g.groups * Math.ceil(g.taps / MR), g.o * g.taps, [p.b, wPacked, g.taps, g.og, F32, g.taps * F32, g.groups, 0, g.og * g.taps * F32, 0, weightBytes, g.og * A_STEP]);
    for (let n0 = 0; n0 < g.n; n0 += chunk) {
      const count = Math.min(chunk, g.n - n0);
      const dy = p.a + n0 * g.o * g.positions * F32;
      gemmKernels.launch(par, 'pack_b', count * g.groups * g.panels, count * g.o * g.positions, [dy, dyPacked, g.og, g.positions, g.positions * F32, F32, g.og * g.positions * F32]);
      gemm(par, { batch: count * g.groups, m: g.taps, n: g.positions, k: g.og, aPacked: wPacked, bPacked: dyPacked, c: cols, aPeriod: g.groups, bPeriod: count * g.groups, accumulate: false });
      const planes = count * g.c;
      const dx = p.out + n0 * g.c * g.h * g.w * F32;
      convKernels.launch(par, 'col2im', planes, planes * g.kh * g.kw * g.positions, [cols, dx, dxp, table, g.planeBytes, g.cg, g.kh, g.kw, g.tapY, g.tapX, g.positions, g.h, g.w, g.ph, g.pw]);
    }
  });
}

/**
 * dw = conv2dGradWeight(x, dy): per group, dW = dY · im2col(x)ᵀ contracted over the positions of
 * every image: dot products over patches read in place (gw_direct) where readsInPlace, else with dY
 * packed as A and the transposed patch matrix as B. Each chunk of images after the first adds onto
 * dw, so every element is still summed in one fixed order.
 */
function conv2dGradWeightLayout(p: ConvShapes) {
  const g = convGeometry('conv2dGradWeight', p.aShape, p.outShape, p.bShape, p);
  const tapPanels = Math.ceil(g.taps / NR);
  const panelsM = Math.ceil(g.og / MR);
  if (readsInPlace(g)) {
    const chunk = chunkOf(g.n, g.c * g.planeBytes, directTableBytes(g));
    return { g, tapPanels, panelsM, chunk, direct: true, scratch: [directTableBytes(g), chunk * g.c * g.planeBytes] };
  }
  const colBytes = g.groups * tapPanels * g.positions * B_STEP;
  const dyBytes = g.groups * panelsM * g.positions * A_STEP;
  const chunk = chunkOf(g.n, g.c * g.planeBytes + colBytes + dyBytes, tableBytes(g));
  return { g, tapPanels, panelsM, chunk, direct: false, scratch: [tableBytes(g), chunk * g.c * g.planeBytes, chunk * colBytes, chunk * dyBytes] };
}

export function conv2dGradWeight(par: Parallel, p: ConvParams): void {
  const { g, tapPanels, panelsM, chunk, direct, scratch } = conv2dGradWeightLayout(p);
  // No images: a contraction of depth 0, which stores zeros.
  if (g.n === 0) return gemm(par, { batch: g.groups, m: g.og, n: g.taps, k: 0, aPacked: 0, bPacked: 0, c: p.out, aPeriod: 1, bPeriod: 1, accumulate: false });
  withScratch(par, scratch, p.scratch, (table, xp, cols, dyPacked) => {
    const tables = direct ? writeDirectTables(par, g, table) : (writePositionTable(par, g, table), undefined);
    for (let n0 = 0; n0 < g.n; n0 += chunk) {
      const count = Math.min(chunk, g.n - n0);
      padImages(par, g, p.a, n0, count, xp);
      const dy = p.b + n0 * g.o * g.positions * F32;
      if (tables !== undefined) {
        const units = g.groups * Math.ceil(g.og / 4) * Math.ceil(g.taps / 4);
        convKernels.launch(par, 'gw_direct', units, g.o * g.taps * count * g.positions, [
          xp, dy, p.out, tables.firsts, tables.taps, g.og, g.taps, g.positions, count, g.c * g.planeBytes, g.cg * g.planeBytes, g.o * g.positions * F32, n0 > 0 ? 1 : 0,
        ]);
        continue;
      }
      const depth = count * g.positions;
      const units = count * g.groups * tapPanels;
      convKernels.launch(par, 'im2col_t', units, units * NR * g.positions, [xp, cols!, table, g.planeBytes, g.cg, g.kh, g.kw, g.tapY, g.tapX, g.positions, g.groups, depth]);
      // A = dY of group g (og x depth): image i fills steps [i positions, (i + 1) positions) of each panel.
      const panelBytes = depth * A_STEP;
      const dyArgs = [dy, dyPacked!, g.og, g.positions, g.positions * F32, F32, g.groups, g.o * g.positions * F32, g.og * g.positions * F32, g.positions * A_STEP, panelsM * panelBytes, panelBytes];
      gemmKernels.launch(par, 'pack_a', count * g.groups * panelsM, count * g.o * g.positions, dyArgs);
      gemm(par, { batch: g.groups, m: g.og, n: g.taps, k: depth, aPacked: dyPacked!, bPacked: cols!, c: p.out, aPeriod: g.groups, bPeriod: g.groups, accumulate: n0 > 0 });
    }
  });
}

/** Bytes of scratch a convolution of these sizes needs (0 when it has no images). */
export function convScratchBytes(kind: 'conv2d' | 'conv2dGradInput' | 'conv2dGradWeight', p: ConvShapes): number {
  if (p.aShape[0] === 0) return 0;
  const layout = kind === 'conv2d' ? conv2dLayout(p) : kind === 'conv2dGradInput' ? conv2dGradInputLayout(p) : conv2dGradWeightLayout(p);
  return scratchLayout(layout.scratch).total;
}
