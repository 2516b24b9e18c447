/**
 * A traced program: the graph below some output tensors, in topological order, with every concrete
 * tensor lifted to a program input so that data never gets baked into generated code.
 */
import type { DType } from './dtype.ts';
import type { Shape } from './shape.ts';
import type { Prim, Tensor } from './tensor.ts';
import { TesseraError } from './errors.ts';

/** One node of a program: a primitive, its inputs (indices of earlier nodes), shape and dtype. */
export interface ProgramNode {
  /** Never 'const': concrete tensors are inputs. 'input' nodes carry their input index. */
  readonly prim: Prim;
  /** Indices of earlier nodes. */
  readonly inputs: readonly number[];
  readonly shape: Shape;
  readonly dtype: DType;
}

/** The shape and dtype of a program input. */
export interface ProgramInput {
  readonly shape: Shape;
  readonly dtype: DType;
}

/** A traced function as a flat list of primitive nodes: what a backend compiles. */
export interface Program {
  /** A human name for messages and kernel labels (e.g. the traced function's name). */
  readonly name: string;
  readonly nodes: readonly ProgramNode[];
  readonly inputs: readonly ProgramInput[];
  /** Node indices; the same node may appear more than once. */
  readonly outputs: readonly number[];
  /** A structural hash: equal programs (up to node numbering) hash equally. */
  readonly hash: string;
}

/** A program from `buildProgram`, with the concrete tensors it lifted to inputs. */
export interface TracedProgram {
  readonly program: Program;
  /** The concrete tensors lifted to inputs, in order, after the `params` given to `buildProgram`. */
  readonly lifted: readonly Tensor[];
}

/** 53-bit string hash (cyrb53); collisions are guarded by also comparing lengths in the key. */
export function hashString(str: string): string {
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < str.length; i++) {
    const ch = str.charCodeAt(i);
    h1 = Math.imul(h1 ^ ch, 2654435761);
    h2 = Math.imul(h2 ^ ch, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(36) + '-' + str.length.toString(36);
}

function primKey(p: Prim): string {
  return JSON.stringify(p);
}

/**
 * Builds the program computing `outputs`. `params` are the jit placeholders (prim 'input', index i
 * = position in `params`); realized tensors met on the way become further inputs. Identical nodes
 * are merged (common-subexpression elimination), so the hash is structural. Markers (see `Marker`)
 * do not reach the program: a marked node is its first input, a remat barrier a plain identity.
 * @example
 * const x = tensor([1, 2]);
 * const { program, lifted } = buildProgram('f', [sum(square(x))]);   // x becomes lifted[0], an input
 */
export function buildProgram(name: string, outputs: readonly Tensor[], params: readonly Tensor[] = []): TracedProgram {
  const nodes: ProgramNode[] = [];
  const inputs: ProgramInput[] = params.map((p) => ({ shape: p.shape, dtype: p.dtype }));
  const lifted: Tensor[] = [];
  const index = new Map<number, number>(); // tensor id -> node index
  const byKey = new Map<string, number>();
  const keys: string[] = [];

  const emit = (prim: Prim, ins: number[], t: Tensor, after = ''): number => {
    const key = `${primKey(prim)}|${ins.join(',')}|${t.shape.join('x')}|${t.dtype}${after}`;
    const existing = byKey.get(key);
    if (existing !== undefined) return existing;
    nodes.push({ prim, inputs: ins, shape: t.shape, dtype: t.dtype });
    byKey.set(key, nodes.length - 1);
    keys.push(key);
    return nodes.length - 1;
  };

  params.forEach((p, i) => {
    if (p.prim.op !== 'input' || p.prim.index !== i) throw new TesseraError(`buildProgram: parameter ${i} is not input placeholder ${i}`);
    index.set(p.id, emit(p.prim, [], p));
  });

  // Iterative post-order DFS: graphs of deep networks are far deeper than the JS call stack.
  const stack: { t: Tensor; expanded: boolean }[] = outputs.map((t) => ({ t, expanded: false })).reverse();
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    const t = top.t;
    if (index.has(t.id)) {
      stack.pop();
      continue;
    }
    if (t.isRealized) {
      stack.pop();
      lifted.push(t);
      const k = inputs.length;
      inputs.push({ shape: t.shape, dtype: t.dtype });
      index.set(t.id, emit({ op: 'input', index: k }, [], t));
      continue;
    }
    if (t.prim.op === 'input') {
      throw new TesseraError(
        `${name}: a traced value ${t.toString()} from another trace was used here; jit and grad inputs cannot escape their function`,
      );
    }
    // A marker is stripped: the node is its first input. Only a remat barrier follows its other
    // inputs too, for order, and stays a distinct identity node so that the recomputation hanging
    // below it is not merged with the forward pass.
    const follow = t.marker === undefined || t.marker.kind === 'rematBarrier' ? t.inputs : t.inputs.slice(0, 1);
    if (!top.expanded) {
      top.expanded = true;
      for (let i = follow.length - 1; i >= 0; i--) {
        const inp = follow[i]!;
        if (!index.has(inp.id)) stack.push({ t: inp, expanded: false });
      }
      continue;
    }
    stack.pop();
    const ins = follow.map((inp) => index.get(inp.id)!);
    if (t.marker === undefined) index.set(t.id, emit(t.prim, ins, t));
    else if (t.marker.kind === 'rematBarrier') index.set(t.id, emit({ op: 'reshape' }, ins.slice(0, 1), t, `|barrier after ${ins.slice(1).join(',')}`));
    else index.set(t.id, ins[0]!);
  }

  const outs = outputs.map((t) => index.get(t.id)!);
  const sig = inputs.map((i) => `${i.shape.join('x')}:${i.dtype}`).join(';');
  const hash = hashString(`${sig}#${keys.join('\n')}#${outs.join(',')}`);
  return { program: { name, nodes, inputs, outputs: outs, hash }, lifted };
}
