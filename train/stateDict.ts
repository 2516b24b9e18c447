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
 * cannot carry is an empty record or array (it has no tensors): such subtrees are dropped, and an
 * array index without names reads back as an empty record.
 */
import '../core/jit.ts';
import { left, right, type Either } from 'fp-ts/lib/Either.js';
import { fmtShape, TreeError } from '../core/errors.ts';
import { tensor } from '../core/ops.ts';
import { shapesEqual } from '../core/shape.ts';
import { flatten, leafPaths, unflatten, type PyTree, type TreeDef } from '../core/pytree.ts';
import { isTensor, type Tensor } from '../core/tensor.ts';
import { CheckpointError, SafetensorsError } from './errors.ts';
import { decodeSafetensors, encodeSafetensors, type HostTensor } from './safetensors.ts';

const ROOT = '<root>';

/** The most record keys and indices one name may hold; ours hold a handful, and the tree is rebuilt recursively. */
export const MAX_NAME_DEPTH = 64;

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

/**
 * Reads every leaf back to the host, keyed by its flat name.
 * @example
 * const entries = await treeToEntries({ enc: { weight: tensor([[1, 2]]) } });   // { 'enc.weight': { dtype, shape, data } }
 * const bytes = encodeSafetensors(entries);
 */
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
 * @example
 * const tree = orThrow(entriesToTree(decoded.tensors, 'model.safetensors'));   // { enc: { weight: Tensor } }
 */
export function entriesToTree(entries: Readonly<Record<string, HostTensor>>, fileName: string): Either<SafetensorsError, PyTree<Tensor>> {
  const fail = (msg: string): Either<SafetensorsError, PyTree<Tensor>> => left(new SafetensorsError(`${fileName}: ${msg}`));
  let root: Node | undefined;
  for (const name of Object.keys(entries).sort()) {
    const steps = parseTensorName(name);
    if (steps === undefined) return fail(`tensor name '${short(name)}' is not a path of record keys and [indices]`);
    if (steps.length > MAX_NAME_DEPTH) return fail(`tensor name '${short(name)}' is ${steps.length} keys and indices deep, more than the ${MAX_NAME_DEPTH} allowed`);
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
        // An empty subtree has no tensor to name, so an index with no names was an empty record
        // (an optimizer chain's stateless stage, e.g. clipping); at most as many as there are
        // elements with names, so that a hostile name like a[4000000000] cannot make a huge array.
        const out: PyTree<Tensor>[] = [];
        const length = Math.max(...node.children.keys()) + 1;
        if (length > 2 * node.children.size) {
          return `array ${path === '' ? ROOT : path} has ${node.children.size} elements with tensors but index [${length - 1}]: more empty elements than named ones`;
        }
        for (let i = 0; i < length; i++) {
          const child = node.children.get(i);
          if (child === undefined) {
            out.push({});
            continue;
          }
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

/**
 * A pytree of tensors as a safetensors file; tensor names are the tree's paths (`enc.conv0.weight`).
 * @example
 * ```ts
 * await writeFile('params.safetensors', await treeToSafetensors(params));
 * const { tree } = orThrow(treeFromSafetensors(await readFile('params.safetensors'), 'params.safetensors'));
 * ```
 */
export async function treeToSafetensors(tree: PyTree<Tensor>, metadata: Readonly<Record<string, string>> = {}): Promise<Uint8Array> {
  return encodeSafetensors(await treeToEntries(tree), metadata);
}

/** Options of `treeFromSafetensors`. */
export interface ReadTreeOptions {
  /** Accept NaN and infinite values (default false: weights, EMA and optimizer state must be finite). */
  readonly allowNonFinite?: boolean;
}

/**
 * A safetensors file (ours, or e.g. a converted EDM state_dict) as a pytree of host tensors. Every
 * floating-point tensor must be finite unless `allowNonFinite`: a NaN stored by a diverged run
 * must stop a resume or a sample at load time, naming the tensor, not later as NaN images.
 * @example
 * const { tree, metadata } = orThrow(treeFromSafetensors(await readFile('params.safetensors'), 'params.safetensors'));
 */
export function treeFromSafetensors(
  bytes: Uint8Array,
  fileName: string,
  options: ReadTreeOptions = {},
): Either<SafetensorsError, { tree: PyTree<Tensor>; metadata: Readonly<Record<string, string>> }> {
  const file = decodeSafetensors(bytes, fileName);
  if (file._tag === 'Left') return file;
  if (options.allowNonFinite !== true) {
    const finite = checkFinite(file.right.tensors, fileName);
    if (finite._tag === 'Left') return finite;
  }
  const tree = entriesToTree(file.right.tensors, fileName);
  return tree._tag === 'Left' ? tree : right({ tree: tree.right, metadata: file.right.metadata });
}

// ---------------------------------------------------------------- checks on load

/** A name as it appears in a message: long (hostile) names are cut. */
function short(name: string): string {
  return name.length > 120 ? `${name.slice(0, 117)}...` : name;
}

/** `a, b, c and 5 more`: a list for a message, at most `max` items. */
function listNames(names: readonly string[], max = 8): string {
  const shown = names.slice(0, max).map((n) => `'${short(n)}'`).join(', ');
  return names.length > max ? `${shown} and ${names.length - max} more` : shown;
}

/** How many NaN, +Inf and -Inf values `data` holds, and the index of the first of them (-1: none). */
export function countNonFinite(data: ArrayLike<number>): { nan: number; posInf: number; negInf: number; first: number } {
  let nan = 0;
  let posInf = 0;
  let negInf = 0;
  let first = -1;
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (v - v === 0) continue; // finite; NaN - NaN and Inf - Inf are NaN
    if (first < 0) first = i;
    if (v === Infinity) posInf++;
    else if (v === -Infinity) negInf++;
    else nan++;
  }
  return { nan, posInf, negInf, first };
}

/**
 * Right when every float32/float64 entry is finite; otherwise a Left naming `fileName`, each bad
 * tensor (the first few), how many of its values are NaN or infinite, and where the first is.
 */
export function checkFinite(entries: Readonly<Record<string, HostTensor>>, fileName: string): Either<SafetensorsError, void> {
  const bad: string[] = [];
  let badTensors = 0;
  for (const name of Object.keys(entries).sort()) {
    const e = entries[name]!;
    if (e.dtype !== 'float32' && e.dtype !== 'float64') continue;
    const c = countNonFinite(e.data);
    if (c.first < 0) continue;
    badTensors++;
    if (bad.length < 5) {
      const kinds = [[c.nan, 'NaN'], [c.posInf, '+Inf'], [c.negInf, '-Inf']].filter(([k]) => (k as number) > 0).map(([k, w]) => `${k} ${w}`).join(', ');
      bad.push(`tensor '${short(name)}' ${fmtShape(e.shape)} has ${c.nan + c.posInf + c.negInf} non-finite of ${e.data.length} values (${kinds}; the first at element ${c.first})`);
    }
  }
  if (badTensors === 0) return right(undefined);
  const more = badTensors > bad.length ? `; and ${badTensors - bad.length} more tensors` : '';
  return left(new SafetensorsError(`${fileName}: ${badTensors} tensor(s) hold non-finite values, so the weights are unusable (a run that diverged?): ${bad.join('; ')}${more}`));
}

/**
 * Compares the tensor names a model expects with those a file holds: undefined when they are the
 * same set, else a message listing the missing and the unknown names.
 */
export function nameSetDifference(expected: readonly string[], actual: readonly string[]): string | undefined {
  const want = new Set(expected);
  const have = new Set(actual);
  const missing = expected.filter((n) => !have.has(n));
  const unknown = actual.filter((n) => !want.has(n));
  if (missing.length === 0 && unknown.length === 0) return undefined;
  const parts = [
    missing.length === 0 ? '' : `${missing.length} missing (${listNames(missing)})`,
    unknown.length === 0 ? '' : `${unknown.length} unknown to the model (${listNames(unknown)})`,
  ].filter((p) => p !== '');
  return `the tensor names do not match the model's: ${parts.join('; ')}`;
}

/**
 * Rebuilds a tree shaped like `template` from a loaded tree, by tensor name: the names must be
 * exactly the template's (none missing, none unknown), and each tensor must have the template
 * leaf's dtype and shape. `what` (e.g. the file) starts every message.
 */
export function restoreTree<T extends PyTree<Tensor>>(template: T, loaded: PyTree<Tensor>, what: string): Either<CheckpointError, T> {
  const difference = nameSetDifference(tensorNames(flatten(template).def), tensorNames(flatten(loaded).def));
  if (difference !== undefined) return left(new CheckpointError(`${what}: ${difference}`));
  const r = restoreTreeByName(template, loaded, what);
  return r._tag === 'Left' ? r : right(r.right.tree);
}

/** What `restoreTreeByName` found: the tree, and the names on one side only. */
export interface PartialRestore<T> {
  readonly tree: T;
  /** The template's names the loaded tree lacks (their template values are kept). */
  readonly missing: readonly string[];
  /** The loaded tree's names the template lacks (ignored). */
  readonly unexpected: readonly string[];
  /** How many tensors were taken from the loaded tree. */
  readonly loaded: number;
}

/**
 * Rebuilds a tree shaped like `template` from the tensors of `loaded` that share its names, keeping
 * the template's value where a name is missing and ignoring names the template lacks (PyTorch's
 * `load_state_dict(strict=False)`, EDM's `copy_params_and_buffers(require_all=False)`). A tensor of
 * a shared name must still have the template's dtype and shape: a Left names each that differs with
 * both shapes.
 */
export function restoreTreeByName<T extends PyTree<Tensor>>(template: T, loaded: PyTree<Tensor>, what: string): Either<CheckpointError, PartialRestore<T>> {
  const t = flatten(template);
  const l = flatten(loaded);
  const names = tensorNames(t.def);
  const loadedNames = tensorNames(l.def);
  const byName = new Map(loadedNames.map((n, i) => [n, l.leaves[i]!]));
  const mismatched: string[] = [];
  const leaves = t.leaves.map((leaf, i) => {
    const got = byName.get(names[i]!);
    if (got === undefined) return leaf;
    if (got.dtype !== leaf.dtype || !shapesEqual(got.shape, leaf.shape)) {
      mismatched.push(`'${names[i]}' is ${got.dtype} ${fmtShape(got.shape)} in the checkpoint, the model expects ${leaf.dtype} ${fmtShape(leaf.shape)}`);
    }
    return got;
  });
  if (mismatched.length > 0) {
    const shown = mismatched.slice(0, 5).join('; ');
    return left(new CheckpointError(`${what}: ${shown}${mismatched.length > 5 ? `; and ${mismatched.length - 5} more` : ''}`));
  }
  const want = new Set(names);
  return right({
    tree: unflatten(t.def, leaves) as T,
    missing: names.filter((n) => !byName.has(n)),
    unexpected: loadedNames.filter((n) => !want.has(n)),
    loaded: names.filter((n) => byName.has(n)).length,
  });
}
