/**
 * Pytrees of tensors <-> flat tensor names, the way a safetensors file (or PyTorch's state_dict)
 * names them: `enc.32x32_conv.weight`, and `layers[0].w` for arrays, as core/pytree.ts `leafPaths`
 * writes paths.
 *
 * Record keys may themselves contain dots, so a name alone would be ambiguous. We escape, with a
 * backslash, the characters that build paths (`\` `.` `[` `]`) and `<` (so a key can never read as
 * the root marker `<root>`). Ordinary names, like every name in EDM's state_dict, contain none of
 * these and are written unchanged, so converted checkpoints load without renaming and files we write
 * read naturally in other tools. The structure is recovered from the names alone; the one thing names
 * cannot carry is an empty record or array (it has no tensors), and such subtrees are dropped.
 */
import '../core/jit.ts';
import { left, right, type Either } from 'fp-ts/lib/Either.js';
import { TreeError } from '../core/errors.ts';
import { tensor } from '../core/ops.ts';
import { flatten, leafPaths, type PyTree, type TreeDef } from '../core/pytree.ts';
import { isTensor, type Tensor } from '../core/tensor.ts';
import { SafetensorsError } from './errors.ts';
import { decodeSafetensors, encodeSafetensors, type HostTensor } from './safetensors.ts';

const ROOT = '<root>';

export function escapeKey(key: string): string {
  if (key === '') throw new TreeError('state dict: an empty record key cannot be written as a tensor name');
  return key.replace(/[\\.[\]<]/g, (c) => `\\${c}`);
}

function escapeDef(def: TreeDef): TreeDef {
  switch (def.kind) {
    case 'leaf':
      return def;
    case 'array':
      return { kind: 'array', children: def.children.map(escapeDef) };
    case 'record':
      return { kind: 'record', keys: def.keys.map(escapeKey), children: def.children.map(escapeDef) };
    default:
      return def satisfies never;
  }
}

/** The flat name of every leaf, in flatten order. */
export function tensorNames(def: TreeDef): string[] {
  return leafPaths(escapeDef(def));
}

/** Reads every leaf back to the host, keyed by its flat name. */
export async function treeToEntries(tree: PyTree<Tensor>): Promise<Record<string, HostTensor>> {
  const { leaves, def } = flatten(tree);
  const names = tensorNames(def);
  const pairs = await Promise.all(leaves.map(async (leaf, i): Promise<[string, HostTensor]> => {
    const name = names[i]!;
    if (!isTensor(leaf)) throw new TreeError(`state dict: the leaf at ${name} is not a Tensor`);
    return [name, { dtype: leaf.dtype, shape: leaf.shape, data: await leaf.data() }];
  }));
  return Object.fromEntries(pairs);
}

type Step = { readonly kind: 'key'; readonly key: string } | { readonly kind: 'index'; readonly index: number };

/** Splits a flat name into record keys and array indices; undefined if it is not a well-formed name. */
export function parseTensorName(name: string): Step[] | undefined {
  if (name === ROOT) return [];
  const steps: Step[] = [];
  let i = 0;
  let expectKey = true;
  while (i < name.length || expectKey) {
    if (name[i] === '[') {
      const close = name.indexOf(']', i);
      const digits = close < 0 ? '' : name.slice(i + 1, close);
      if (!/^(0|[1-9]\d*)$/.test(digits)) return undefined;
      steps.push({ kind: 'index', index: Number(digits) });
      i = close + 1;
      expectKey = false;
    } else if (expectKey) {
      let key = '';
      while (i < name.length && name[i] !== '.' && name[i] !== '[') {
        const c = name[i]!;
        if (c === '\\') {
          const next = name[i + 1];
          if (next === undefined || !'\\.[]<'.includes(next)) return undefined;
          key += next;
          i += 2;
        } else if (c === ']' || c === '<') {
          return undefined;
        } else {
          key += c;
          i += 1;
        }
      }
      if (key === '') return undefined;
      steps.push({ kind: 'key', key });
      expectKey = false;
    } else if (name[i] === '.') {
      i += 1;
      expectKey = true;
    } else {
      return undefined;
    }
  }
  return steps;
}

type Node =
  | { kind: 'leaf'; value: Tensor }
  | { kind: 'record'; children: Map<string, Node> }
  | { kind: 'array'; children: Map<number, Node> };

/**
 * Rebuilds the pytree from flat names. `fileName` is for messages: a malformed name, a name used
 * both as a tensor and as a prefix of others, or an array with missing indices is a Left.
 */
export function entriesToTree(entries: Readonly<Record<string, HostTensor>>, fileName: string): Either<SafetensorsError, PyTree<Tensor>> {
  const fail = (msg: string): Either<SafetensorsError, PyTree<Tensor>> => left(new SafetensorsError(`${fileName}: ${msg}`));
  let root: Node | undefined;
  for (const name of Object.keys(entries).sort()) {
    const steps = parseTensorName(name);
    if (steps === undefined) return fail(`tensor name '${name}' is not a path of record keys and [indices]`);
    const e = entries[name]!;
    const leaf: Node = { kind: 'leaf', value: tensor(e.data, e.shape, e.dtype) };
    if (steps.length === 0) {
      if (root !== undefined) return fail(`tensor '${name}' makes the whole tree one tensor, but other tensors are named too`);
      root = leaf;
      continue;
    }
    const container = (step: Step): Node => (step.kind === 'key' ? { kind: 'record', children: new Map() } : { kind: 'array', children: new Map() });
    root ??= container(steps[0]!);
    let node: Node = root;
    for (let s = 0; s < steps.length; s++) {
      const step = steps[s]!;
      const last = s === steps.length - 1;
      if (node.kind === 'leaf' || (node.kind === 'record') !== (step.kind === 'key')) {
        return fail(`tensor '${name}' does not fit the tree the other names build: step ${s + 1} of it needs ${step.kind === 'key' ? 'a record' : 'an array'} where there is ${node.kind === 'array' ? 'an array' : `a ${node.kind}`}`);
      }
      const children = node.children as Map<string | number, Node>;
      const k = step.kind === 'key' ? step.key : step.index;
      const existing = children.get(k);
      if (last) {
        if (existing !== undefined) return fail(`tensor '${name}' names a tensor and also a prefix of other tensors`);
        children.set(k, leaf);
      } else {
        const next = existing ?? container(steps[s + 1]!);
        children.set(k, next);
        node = next;
      }
    }
  }
  if (root === undefined) return right({});
  const build = (node: Node, path: string): PyTree<Tensor> | string => {
    switch (node.kind) {
      case 'leaf':
        return node.value;
      case 'record': {
        const out: [string, PyTree<Tensor>][] = [];
        for (const [k, child] of node.children) {
          const sub = build(child, path === '' ? escapeKey(k) : `${path}.${escapeKey(k)}`);
          if (typeof sub === 'string') return sub;
          out.push([k, sub]);
        }
        return Object.fromEntries(out);
      }
      case 'array': {
        const out: PyTree<Tensor>[] = [];
        for (let i = 0; i < node.children.size; i++) {
          const child = node.children.get(i);
          if (child === undefined) return `array ${path === '' ? ROOT : path} has ${node.children.size} elements but no index [${i}]`;
          const sub = build(child, `${path}[${i}]`);
          if (typeof sub === 'string') return sub;
          out.push(sub);
        }
        return out;
      }
      default:
        return node satisfies never;
    }
  };
  const tree = build(root, '');
  return typeof tree === 'string' ? fail(tree) : right(tree);
}

/** A pytree of tensors as a safetensors file. */
export async function treeToSafetensors(tree: PyTree<Tensor>, metadata: Readonly<Record<string, string>> = {}): Promise<Uint8Array> {
  return encodeSafetensors(await treeToEntries(tree), metadata);
}

/** A safetensors file (ours, or e.g. a converted EDM state_dict) as a pytree of host tensors. */
export function treeFromSafetensors(bytes: Uint8Array, fileName: string): Either<SafetensorsError, { tree: PyTree<Tensor>; metadata: Readonly<Record<string, string>> }> {
  const file = decodeSafetensors(bytes, fileName);
  if (file._tag === 'Left') return file;
  const tree = entriesToTree(file.right.tensors, fileName);
  return tree._tag === 'Left' ? tree : right({ tree: tree.right, metadata: file.right.metadata });
}
