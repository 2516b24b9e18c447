/**
 * One vector-Jacobian rule per primitive. A rule maps a node `y = op(inputs)` and the cotangent `g`
 * of `y` to one cotangent per input (undefined: no gradient flows there). Rules are written with the
 * op builders of core, so the backward pass is itself a graph and `grad(grad(f))` works.
 *
 * The walker in grad.ts only calls a rule for float nodes and only keeps cotangents of float inputs,
 * so `g` is always float and of `y`'s shape and dtype.
 */
import { isFloat } from '../core/dtype.ts';
import {
  add, binary, broadcastTo, cast, conv2d, conv2dGradInput, conv2dGradWeight, cos, div, equal, greater, log, logicalAnd, matmul,
  mul, neg, pad, permute, pow, reshape, sign, sin, slice, sub, sum, transpose, where,
} from '../core/ops.ts';
import { clip, oneHot, split } from '../core/composite.ts';
import { sizeOf } from '../core/shape.ts';
import type { BinaryFn, Tensor, UnaryFn } from '../core/tensor.ts';

/** One cotangent per input of a node (`undefined`: no gradient flows to that input). */
export type Cotangents = readonly (Tensor | undefined)[];

/**
 * The cotangents of `y`'s inputs given the cotangent `g` of `y`: one rule per primitive, used by `grad`.
 * @example
 * const y = mul(a, b);                                // a and b of one shape
 * const [da, db] = vjpRule(y, onesLike(y));           // b and a: the cotangents of y.inputs
 */
export function vjpRule(y: Tensor, g: Tensor): Cotangents {
  const p = y.prim;
  const [a, b, c] = y.inputs as readonly Tensor[] as [Tensor, Tensor, Tensor];
  switch (p.op) {
    case 'input': case 'const': case 'literal': case 'iota': case 'randomBits':
      return [];
    case 'unary':
      return [unaryRule(p.fn, a, y, g)];
    case 'binary':
      return binaryRule(p.fn, a, b, y, g);
    case 'select':
      return [undefined, where(a, g, 0), where(a, 0, g)];
    case 'reduce': {
      const kept = a.shape.map((d, i) => (p.axes.includes(i) ? 1 : d));
      const spread = (t: Tensor) => broadcastTo(reshape(t, kept), a.shape);
      if (p.fn === 'sum') return [spread(g)];
      // Every maximal entry gets an equal share (JAX's convention for ties).
      const hit = cast(equal(a, spread(y)), g.dtype);
      return [div(mul(spread(g), hit), broadcastTo(sum(hit, p.axes, true), a.shape))];
    }
    case 'reshape':
      return [reshape(g, a.shape)];
    case 'permute': {
      const inverse = p.perm.map((_, i) => p.perm.indexOf(i));
      return [permute(g, inverse)];
    }
    case 'broadcast': {
      const lead = y.rank - a.rank;
      const expanded = y.shape.flatMap((d, i) => (i < lead || (a.shape[i - lead] === 1 && d !== 1) ? [i] : []));
      return [reshape(sum(g, expanded), a.shape)];
    }
    case 'slice': {
      // Scatter back: the kept entries sit `stride - 1` apart, the rest of the input gets zero.
      const hi = a.shape.map((d, i) => d - p.starts[i]! - y.shape[i]! - Math.max(y.shape[i]! - 1, 0) * (p.strides[i]! - 1));
      return [pad(g, p.starts, hi, 0, p.strides.map((s) => s - 1))];
    }
    case 'pad': {
      const step = p.interior.map((n) => n + 1);
      const ends = a.shape.map((d, i) => p.lo[i]! + (d > 0 ? (d - 1) * step[i]! + 1 : 0));
      return [slice(g, p.lo, ends, step)];
    }
    case 'concat':
      return split(g, y.inputs.map((x) => x.shape[p.axis]!), p.axis);
    case 'matmul':
      return [matmul(g, transpose(b)), matmul(transpose(a), g)];
    case 'conv2d': // y = conv2d(x, w)
      return [conv2dGradInput(g, b, a.shape, p), conv2dGradWeight(a, g, b.shape, p)];
    case 'conv2dGradInput': // y = A_w^T dy, so <g, y> = <conv2d(g, w), dy>
      return [conv2d(g, b, p), conv2dGradWeight(g, a, b.shape, p)];
    case 'conv2dGradWeight': // y = B_x^T dy with conv2d(x, w) = B_x w, so <g, y> = <conv2d(x, g), dy>
      return [conv2dGradInput(b, g, a.shape, p), conv2d(a, g, p)];
    case 'gather': {
      // dx[pre, k, post] = sum_j [clamp(idx_j) = k] g[pre, j, post]: a one-hot matrix times g.
      const depth = a.shape[p.axis]!;
      const hot = transpose(oneHot(clip(reshape(b, [b.size]), 0, depth - 1), depth, g.dtype));
      const pre = sizeOf(a.shape.slice(0, p.axis));
      const post = sizeOf(a.shape.slice(p.axis + 1));
      return [reshape(matmul(hot, reshape(g, [pre, b.size, post])), a.shape), undefined];
    }
    case 'cast':
      return [isFloat(a.dtype) ? cast(g, a.dtype) : undefined];
    default:
      return p satisfies never;
  }
}

function unaryRule(fn: UnaryFn, x: Tensor, y: Tensor, g: Tensor): Tensor | undefined {
  switch (fn) {
    case 'neg': return neg(g);
    case 'exp': return mul(g, y);
    case 'log': return div(g, x);
    case 'sin': return mul(g, cos(x));
    case 'cos': return neg(mul(g, sin(x)));
    case 'sqrt': return div(g, mul(y, 2));
    case 'rsqrt': return mul(g, mul(mul(y, mul(y, y)), -0.5));
    case 'tanh': return mul(g, sub(1, mul(y, y)));
    case 'sigmoid': return mul(g, mul(y, sub(1, y)));
    case 'abs': return mul(g, sign(x));
    case 'reciprocal': return neg(mul(g, mul(y, y)));
    case 'floor': case 'sign': case 'logicalNot': case 'isFinite': case 'uniformFromBits': return undefined;
    default: return fn satisfies never;
  }
}

function binaryRule(fn: BinaryFn, a: Tensor, b: Tensor, y: Tensor, g: Tensor): Cotangents {
  switch (fn) {
    case 'add': return [g, g];
    case 'sub': return [g, neg(g)];
    case 'mul': return [mul(g, b), mul(g, a)];
    case 'div': return [div(g, b), neg(mul(g, div(y, b)))];
    case 'pow': {
      // d/da at 0^0 is 0 (not 0 * inf). d/db = y log a is defined for a > 0 only; the inner where keeps
      // log (and its own gradient) finite.
      const positive = greater(a, 0);
      const da = where(logicalAnd(equal(a, 0), equal(b, 0)), 0, mul(g, mul(b, pow(a, sub(b, 1)))));
      return [da, where(positive, mul(g, mul(y, log(where(positive, a, 1)))), 0)];
    }
    case 'max': case 'min': {
      // Ties split the gradient in half, as in JAX.
      const wins = cast(binary(fn === 'max' ? 'gt' : 'lt', a, b), g.dtype);
      const share = add(wins, mul(cast(equal(a, b), g.dtype), 0.5));
      return [mul(g, share), mul(g, sub(1, share))];
    }
    case 'lt': case 'le': case 'gt': case 'ge': case 'eq': case 'ne': case 'and': case 'or':
      return [undefined, undefined];
    default:
      return fn satisfies never;
  }
}
