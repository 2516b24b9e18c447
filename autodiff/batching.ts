/**
 * One batching rule per primitive, for `vmap`. A rule sees a node `y = op(inputs)` of the per-example
 * graph, and the batched replacements of its inputs, each with the position of its batch axis (or
 * null: the input is the same for every example). It builds, with the op builders of core, a node
 * holding every example's `y` along one batch axis, and says where that axis is.
 *
 * Rules keep the batch axis where it is when that is free (elementwise ops, reductions, slice, pad)
 * and otherwise move it to the front. Matrix products and convolutions fold the batch into a
 * dimension the primitive already loops over (rows, images, channel groups) instead of copying an
 * unbatched operand once per example. Only `randomBits` with a batched key has no such form: it is
 * unrolled into one draw per example.
 */
import { TesseraError } from '../core/errors.ts';
import {
  add, binary, broadcastTo, cast, concat, conv2d, conv2dGradInput, conv2dGradWeight, gather, iota, matmul, max, maximum,
  minimum, mul, pad, permute, randomBits, reshape, slice, stack, sum, unary, where, zeros,
} from '../core/ops.ts';
import type { Shape } from '../core/shape.ts';
import type { ConvAttrs, Tensor } from '../core/tensor.ts';

/** A value of the batched graph: a tensor and the axis along which examples are laid out (null: shared by all). */
export interface Batched {
  readonly t: Tensor;
  readonly bdim: number | null;
}

/** The shape with `size` inserted at `axis`. */
export function insertAxis(shape: Shape, axis: number, size: number): number[] {
  return [...shape.slice(0, axis), size, ...shape.slice(axis)];
}

/** Moves axis `from` of `t` to position `to` (other axes keep their order). */
export function moveAxis(t: Tensor, from: number, to: number): Tensor {
  if (from === to) return t;
  const rest = t.shape.map((_, i) => i).filter((i) => i !== from);
  return permute(t, insertAxis(rest, to, from));
}

/** The value with its batch axis at `axis`; a shared value is broadcast to every example. */
export function batchAt(b: Batched, axis: number, size: number): Tensor {
  if (b.bdim !== null) return moveAxis(b.t, b.bdim, axis);
  return broadcastTo(reshape(b.t, insertAxis(b.t.shape, axis, 1)), insertAxis(b.t.shape, axis, size));
}

const front = (b: Batched, size: number): Tensor => batchAt(b, 0, size);

/** Maps a per-example axis to the batched tensor's axis, given where the batch axis is. */
const lift = (axis: number, bdim: number): number => (axis < bdim ? axis : axis + 1);

/**
 * The batched form of `y`. Called only when at least one input is batched; `size` is the batch size.
 * The result has `y`'s shape with `size` inserted at the returned `bdim`, and `y`'s dtype.
 */
export function batchRule(y: Tensor, ins: readonly Batched[], size: number): Batched {
  const p = y.prim;
  const [a, b] = ins as [Batched, Batched];
  switch (p.op) {
    case 'input': case 'const': case 'literal': case 'iota':
      throw new TesseraError(`internal: vmap reached a ${p.op} node with batched inputs`);
    case 'unary':
      return { t: unary(p.fn, a.t), bdim: a.bdim };
    case 'cast':
      return { t: cast(a.t, y.dtype), bdim: a.bdim };
    case 'binary':
    case 'select': {
      const d = ins.find((x) => x.bdim !== null)!.bdim!;
      // Shared inputs get a size-1 batch axis; the builders broadcast it.
      const xs = ins.map((x) => (x.bdim === null ? reshape(x.t, insertAxis(x.t.shape, d, 1)) : moveAxis(x.t, x.bdim, d)));
      return { t: p.op === 'select' ? where(xs[0]!, xs[1]!, xs[2]!) : binary(p.fn, xs[0]!, xs[1]!), bdim: d };
    }
    case 'reduce': {
      const d = a.bdim!;
      const axes = p.axes.map((ax) => lift(ax, d));
      const t = p.fn === 'sum' ? sum(a.t, axes) : max(a.t, axes);
      return { t, bdim: d - p.axes.filter((ax) => ax < d).length };
    }
    case 'reshape':
      return { t: reshape(front(a, size), [size, ...y.shape]), bdim: 0 };
    case 'permute': {
      const d = a.bdim!;
      return { t: permute(a.t, [d, ...p.perm.map((ax) => lift(ax, d))]), bdim: 0 };
    }
    case 'broadcast': {
      const x = front(a, size);
      const lead = y.rank - (x.rank - 1);
      const aligned = reshape(x, [size, ...Array<number>(lead).fill(1), ...x.shape.slice(1)]);
      return { t: broadcastTo(aligned, [size, ...y.shape]), bdim: 0 };
    }
    case 'slice': {
      const d = a.bdim!;
      const ends = y.shape.map((n, i) => p.starts[i]! + (n > 0 ? (n - 1) * p.strides[i]! + 1 : 0));
      return {
        t: slice(a.t, insertAxis(p.starts, d, 0), insertAxis(ends, d, size), insertAxis(p.strides, d, 1)),
        bdim: d,
      };
    }
    case 'pad': {
      const d = a.bdim!;
      return { t: pad(a.t, insertAxis(p.lo, d, 0), insertAxis(p.hi, d, 0), p.value, insertAxis(p.interior, d, 0)), bdim: d };
    }
    case 'concat':
      return { t: concat(ins.map((x) => front(x, size)), p.axis + 1), bdim: 0 };
    case 'matmul':
      return batchMatmul(a, b, size);
    case 'conv2d':
      return batchConv2d(a, b, y, p, size);
    case 'conv2dGradInput': {
      const [n, c, h, w] = y.shape as [number, number, number, number];
      if (b.bdim === null) {
        // A shared weight: the examples are just more images.
        const dy = front(a, size);
        const images = reshape(dy, [size * n, ...dy.shape.slice(2)]);
        return { t: reshape(conv2dGradInput(images, b.t, [size * n, c, h, w], p), [size, ...y.shape]), bdim: 0 };
      }
      // dx_b = A(w_b)^T dy_b: the input adjoint of a convolution with one set of channel groups per example.
      const wt = front(b, size);
      const dx = conv2dGradInput(channels(a, size), reshape(wt, [size * wt.shape[1]!, ...wt.shape.slice(2)]), [n, size * c, h, w], perExampleGroups(p, size));
      return { t: reshape(dx, [n, size, c, h, w]), bdim: 1 };
    }
    case 'conv2dGradWeight': {
      // dw_b = B(x_b)^T dy_b: the weight adjoint of a convolution with one set of channel groups per example.
      const dw = conv2dGradWeight(channels(a, size), channels(b, size), [size * y.shape[0]!, ...y.shape.slice(1)], perExampleGroups(p, size));
      return { t: reshape(dw, [size, ...y.shape]), bdim: 0 };
    }
    case 'gather':
      return batchGather(a, b, p.axis, size);
    case 'randomBits': {
      // No primitive draws under several keys at once: one draw per example.
      const keys = front(a, size);
      if (size === 0) return { t: zeros([0, ...y.shape], 'int32'), bdim: 0 };
      const draws = Array.from({ length: size }, (_, i) => randomBits(reshape(slice(keys, [i, 0], [i + 1, 2]), [2]), y.shape, p.offset));
      return { t: stack(draws, 0), bdim: 0 };
    }
    default:
      return p satisfies never;
  }
}

/** Images [N, C, H, W] per example as one batch [N, size * C, H, W], example-major within the channels. */
function channels(b: Batched, size: number): Tensor {
  const t = batchAt(b, 1, size);
  return reshape(t, [t.shape[0]!, size * t.shape[2]!, ...t.shape.slice(3)]);
}

/** `size` independent copies of a grouped convolution, side by side as groups. */
function perExampleGroups(p: ConvAttrs, size: number): ConvAttrs {
  return { stride: p.stride, padding: p.padding, dilation: p.dilation, groups: size * p.groups };
}

function batchMatmul(a: Batched, b: Batched, size: number): Batched {
  if (a.bdim !== null && b.bdim !== null) return { t: matmul(front(a, size), front(b, size)), bdim: 0 };
  if (a.bdim !== null) {
    // The examples' rows stack: [..., size, m, k] -> [..., size * m, k].
    const r = a.t.rank - 1;
    const x = moveAxis(a.t, a.bdim, r - 2);
    const [m, k] = x.shape.slice(-2) as [number, number];
    const out = matmul(reshape(x, [...x.shape.slice(0, r - 2), size * m, k]), b.t);
    return { t: reshape(out, [...out.shape.slice(0, -2), size, m, out.shape[r - 1]!]), bdim: r - 2 };
  }
  // The examples' columns sit side by side: [..., k, n, size] -> [..., k, n * size].
  const r = b.t.rank - 1;
  const x = moveAxis(b.t, b.bdim!, r);
  const [k, n] = x.shape.slice(r - 2, r) as [number, number];
  const out = matmul(a.t, reshape(x, [...x.shape.slice(0, r - 2), k, n * size]));
  return { t: reshape(out, [...out.shape.slice(0, -1), n, size]), bdim: r };
}

function batchConv2d(a: Batched, b: Batched, y: Tensor, p: ConvAttrs, size: number): Batched {
  const [n, o, oh, ow] = y.shape as [number, number, number, number];
  if (b.bdim === null) {
    // A shared weight: the examples are just more images.
    const x = front(a, size);
    return { t: reshape(conv2d(reshape(x, [size * n, ...x.shape.slice(2)]), b.t, p), [size, ...y.shape]), bdim: 0 };
  }
  const w = front(b, size);
  const wRest = w.shape.slice(2);
  if (a.bdim !== null) {
    // One set of channel groups per example.
    const out = conv2d(channels(a, size), reshape(w, [size * o, ...wRest]), perExampleGroups(p, size));
    return { t: reshape(out, [n, size, o, oh, ow]), bdim: 1 };
  }
  // A shared input: each group's output channels grow to hold every example's filters of that group.
  const g = p.groups;
  const grouped = reshape(w, [size, g, o / g, ...wRest]);
  const wide = reshape(g === 1 ? grouped : permute(grouped, [1, 0, 2, 3, 4, 5]), [size * o, ...wRest]);
  const out = reshape(conv2d(a.t, wide, p), [n, g, size, o / g, oh, ow]);
  return { t: reshape(g === 1 ? out : permute(out, [0, 2, 1, 3, 4, 5]), [n, size, o, oh, ow]), bdim: 1 };
}

function batchGather(x: Batched, idx: Batched, axis: number, size: number): Batched {
  if (idx.bdim === null) return { t: gather(front(x, size), idx.t, axis + 1), bdim: 0 };
  if (x.bdim === null) return { t: gather(x.t, front(idx, size), axis), bdim: axis };
  // Both batched: lay the examples' axes end to end and offset each example's (clamped) indices.
  const xs = moveAxis(x.t, x.bdim, axis);
  const depth = xs.shape[axis + 1]!;
  const flat = reshape(xs, [...xs.shape.slice(0, axis), size * depth, ...xs.shape.slice(axis + 2)]);
  const i = front(idx, size);
  const offsets = mul(iota(i.shape, 0, 'int32'), depth);
  return { t: gather(flat, add(minimum(maximum(i, 0), depth - 1), offsets), axis), bdim: axis };
}
