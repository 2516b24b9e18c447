/**
 * Pytrees: nested plain records and arrays whose leaves are tensors (or other values). Record keys
 * are visited in sorted order, so flattening is stable whatever order the keys were written in.
 */
import { TreeError } from './errors.ts';
import { Tensor } from './tensor.ts';

/**
 * Nested arrays and plain records with leaves `L` (tensors by default): params, optimizer state, batches.
 * For example `{ w: Tensor, layers: [{ b: Tensor }] }` is a `PyTree<Tensor>`.
 */
export type PyTree<L = Tensor> = L | readonly PyTree<L>[] | { readonly [key: string]: PyTree<L> };

/** The shape of a tree without its leaves. */
export type TreeDef =
  | { readonly kind: 'leaf' }
  | { readonly kind: 'array'; readonly children: readonly TreeDef[] }
  | { readonly kind: 'record'; readonly keys: readonly string[]; readonly children: readonly TreeDef[] };

function isRecord(x: unknown): x is Record<string, unknown> {
  if (x === null || typeof x !== 'object' || x instanceof Tensor || ArrayBuffer.isView(x)) return false;
  const proto = Object.getPrototypeOf(x);
  return proto === Object.prototype || proto === null;
}

/**
 * Leaves in a stable order, with the structure needed to rebuild the tree.
 * @example
 * const { leaves, def } = flatten({ w: tensor([1, 2]), b: tensor([0]) });   // leaves [b, w]: keys sorted
 * const doubled = unflatten(def, leaves.map((l) => mul(l, 2)));
 */
export function flatten<L = Tensor>(tree: PyTree<L>): { leaves: L[]; def: TreeDef } {
  const leaves: L[] = [];
  const walk = (x: unknown): TreeDef => {
    if (Array.isArray(x)) return { kind: 'array', children: x.map(walk) };
    if (isRecord(x)) {
      const keys = Object.keys(x).sort();
      return { kind: 'record', keys, children: keys.map((k) => walk(x[k])) };
    }
    leaves.push(x as L);
    return { kind: 'leaf' };
  };
  const def = walk(tree);
  return { leaves, def };
}

/**
 * Rebuilds a tree from `flatten`'s structure and a list of leaves in its order.
 * @example
 * const { leaves, def } = flatten(params);
 * const zeroed = unflatten(def, leaves.map(zerosLike));
 */
export function unflatten<L>(def: TreeDef, leaves: readonly L[]): PyTree<L> {
  let i = 0;
  const build = (d: TreeDef): unknown => {
    switch (d.kind) {
      case 'leaf':
        if (i >= leaves.length) throw new TreeError(`unflatten: the tree has more leaves than the ${leaves.length} given`);
        return leaves[i++];
      case 'array':
        return d.children.map(build);
      case 'record':
        return Object.fromEntries(d.keys.map((k, j) => [k, build(d.children[j]!)]));
      default:
        return d satisfies never;
    }
  };
  const out = build(def);
  if (i !== leaves.length) throw new TreeError(`unflatten: ${leaves.length} leaves given, the tree has ${i}`);
  return out as PyTree<L>;
}

/**
 * The path of each leaf, e.g. `params.layers[0].w`, in flatten order.
 * @example
 * const { def } = flatten({ layers: [{ w: tensor([1]) }], b: tensor([0]) });
 * leafPaths(def);                                     // ['b', 'layers[0].w']
 * leafPaths(def, 'params');                           // ['params.b', 'params.layers[0].w']
 */
export function leafPaths(def: TreeDef, root = ''): string[] {
  switch (def.kind) {
    case 'leaf':
      return [root === '' ? '<root>' : root];
    case 'array':
      return def.children.flatMap((c, i) => leafPaths(c, `${root}[${i}]`));
    case 'record':
      return def.children.flatMap((c, i) => leafPaths(c, root === '' ? def.keys[i]! : `${root}.${def.keys[i]}`));
    default:
      return def satisfies never;
  }
}

/**
 * A tree's structure as text, for messages (e.g. `{b: *, w: *}`).
 * @example
 * treeDefString(flatten({ w: tensor([1]), b: [tensor([0])] }).def);   // '{"b":[*],"w":*}'
 */
export function treeDefString(def: TreeDef): string {
  switch (def.kind) {
    case 'leaf':
      return '*';
    case 'array':
      return `[${def.children.map(treeDefString).join(',')}]`;
    case 'record':
      return `{${def.keys.map((k, i) => `${JSON.stringify(k)}:${treeDefString(def.children[i]!)}`).join(',')}}`;
    default:
      return def satisfies never;
  }
}

/**
 * Explains the first difference between two tree structures, or returns undefined if they match.
 * @example
 * const a = flatten({ w: tensor([1]) }).def;
 * const b = flatten({ w: tensor([1]), b: tensor([0]) }).def;
 * treeMismatch(a, b);                                 // 'at <root>: keys {w} vs {b,w}'
 * treeMismatch(a, a);                                 // undefined
 */
export function treeMismatch(a: TreeDef, b: TreeDef, path = ''): string | undefined {
  const here = path === '' ? '<root>' : path;
  if (a.kind !== b.kind) return `at ${here}: ${a.kind} vs ${b.kind}`;
  if (a.kind === 'record' && b.kind === 'record') {
    const ka = a.keys.join(',');
    const kb = b.keys.join(',');
    if (ka !== kb) return `at ${here}: keys {${ka}} vs {${kb}}`;
  }
  if (a.kind !== 'leaf' && b.kind !== 'leaf') {
    if (a.children.length !== b.children.length) return `at ${here}: ${a.children.length} vs ${b.children.length} children`;
    for (let i = 0; i < a.children.length; i++) {
      const sub = a.kind === 'record' ? (path === '' ? a.keys[i]! : `${path}.${a.keys[i]}`) : `${path}[${i}]`;
      const m = treeMismatch(a.children[i]!, (b as typeof a).children[i]!, sub);
      if (m !== undefined) return m;
    }
  }
  return undefined;
}

/**
 * Maps `f` over the leaves of one or more trees of the same structure.
 * @example
 * const halved = treeMap((p: Tensor) => mul(p, 0.5), params);
 * const next = treeMap((p: Tensor, g: Tensor) => sub(p, mul(g, 0.01)), params, grads);
 */
export function treeMap<L, R>(f: (leaf: L, ...rest: L[]) => R, tree: PyTree<L>, ...rest: PyTree<L>[]): PyTree<R> {
  const { leaves, def } = flatten(tree);
  const others = rest.map((r, i) => {
    const fr = flatten(r);
    const m = treeMismatch(def, fr.def);
    if (m !== undefined) throw new TreeError(`treeMap: tree ${i + 1} does not match tree 0 ${m}`);
    return fr.leaves;
  });
  return unflatten(def, leaves.map((l, j) => f(l, ...others.map((o) => o[j]!))));
}

/**
 * The leaves of a tree in a stable order (records by sorted key), e.g. to sum the squares of all params.
 * @example
 * const norm2 = treeLeaves(params).reduce((s: Tensor, p) => add(s, sumOfSquares(p)), scalar(0));
 */
export function treeLeaves<L = Tensor>(tree: PyTree<L>): L[] {
  return flatten(tree).leaves;
}
