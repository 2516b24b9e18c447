/**
 * A training state packed into one flat float32 tensor per parameter-shaped tree: the params, the
 * EMA and each of the optimizer's per-parameter moments. The model reads its parameters as views of
 * the flat tensor (a slice and a reshape each, which fusion folds into the kernels that read them),
 * autodiff gives the gradient of the flat tensor, and the optimizer, the EMA and the non-finite
 * counts, written for any pytree, then run over one leaf: a handful of kernels instead of a few per
 * parameter. The values are those of the unpacked step, element for element (the gradient of the
 * flat tensor is each parameter's gradient with zeros added, which changes no bits).
 *
 * Checkpoints keep their named tensors: `unpack` gives the named tree back as views.
 */
import { flatten, realize, reshape, slice, tensor, treeDefString, unflatten, type BackendName, type PyTree, type Shape, type Tensor, type TreeDef } from '../core/index.ts';
import { sizeOf } from '../core/shape.ts';
import type { CarriedState } from './method.ts';
import type { TrainState } from './step.ts';

/**
 * Whether a run on `backend` carries its state packed. On WebGPU every kernel is a dispatch and
 * packing takes the demo step from 624 to 416 of them (first step 10.7 -> 8.3 s on lavapipe). The
 * cpu backend launches a kernel for next to nothing, and there the flat gradient costs more: it is
 * summed from each parameter's gradient padded to the flat length, one branch per parameter for
 * every element (5 ms of a 35 ms demo step, 2026-11-29). So cpu and reference runs stay unpacked.
 */
export function usesPackedState(backend: BackendName): boolean {
  return backend === 'webgpu';
}

/** Where each leaf of a parameter tree sits in its flat tensor. */
export interface PackLayout {
  readonly def: TreeDef;
  /** `treeDefString(def)`: a tree is parameter-shaped when its own string is this. */
  readonly signature: string;
  readonly shapes: readonly Shape[];
  readonly offsets: readonly number[];
  /** Elements of the flat tensor. */
  readonly total: number;
}

/** The layout of `params`, whose leaves must all be float32. */
export function packLayout(params: PyTree<Tensor>): PackLayout {
  const { leaves, def } = flatten(params);
  const offsets: number[] = [];
  let total = 0;
  leaves.forEach((leaf, i) => {
    if (leaf.dtype !== 'float32') throw new TypeError(`packLayout: leaf ${i} is ${leaf.dtype}; a packed state holds float32 leaves only`);
    offsets.push(total);
    total += sizeOf(leaf.shape);
  });
  return { def, signature: treeDefString(def), shapes: leaves.map((l) => l.shape), offsets, total };
}

const isParameterShaped = (layout: PackLayout, tree: PyTree<Tensor>): boolean => treeDefString(flatten(tree).def) === layout.signature;

/** The named tree of a flat tensor: each leaf a view (a slice and a reshape, not yet computed). */
export function unpack(layout: PackLayout, flat: Tensor): PyTree<Tensor> {
  if (flat.shape.length !== 1 || flat.shape[0] !== layout.total) throw new TypeError(`unpack: expected a flat tensor of ${layout.total} elements, got shape [${flat.shape.join(', ')}]`);
  return unflatten(layout.def, layout.shapes.map((shape, i) => reshape(slice(flat, [layout.offsets[i]!], [layout.offsets[i]! + sizeOf(shape)]), shape)));
}

/**
 * The flat tensor of a parameter-shaped tree, assembled on the host (once, when a run starts or
 * resumes); leaves not computed yet are computed on `backend` (the default one when absent).
 */
export async function pack(layout: PackLayout, tree: PyTree<Tensor>, backend?: BackendName): Promise<Tensor> {
  const { leaves, def } = flatten(tree);
  if (treeDefString(def) !== layout.signature) throw new TypeError('pack: the tree is not shaped like the parameters it was laid out from');
  await realize(leaves, backend);
  const data = new Float32Array(layout.total);
  for (let i = 0; i < leaves.length; i++) {
    const leaf = leaves[i]!;
    if (leaf.dtype !== 'float32' || leaf.shape.join(',') !== layout.shapes[i]!.join(',')) throw new TypeError(`pack: leaf ${i} is ${leaf.dtype} [${leaf.shape.join(', ')}], the layout has float32 [${layout.shapes[i]!.join(', ')}]`);
    data.set(await leaf.data(), layout.offsets[i]!);
  }
  return tensor(data, [layout.total]);
}

/** `tree` with every parameter-shaped subtree packed (an optimizer state: its moments; counters stay). */
export async function packTree(layout: PackLayout, tree: PyTree<Tensor>, backend?: BackendName): Promise<PyTree<Tensor>> {
  if (isParameterShaped(layout, tree)) return pack(layout, tree, backend);
  if (Array.isArray(tree)) return Promise.all(tree.map((t) => packTree(layout, t, backend)));
  if (isRecord(tree)) return Object.fromEntries(await Promise.all(Object.entries(tree).map(async ([k, t]) => [k, await packTree(layout, t, backend)] as const)));
  return tree;
}

/** The inverse of `packTree`, guided by `template`, a tree of the unpacked structure. */
export function unpackTree(layout: PackLayout, packed: PyTree<Tensor>, template: PyTree<Tensor>): PyTree<Tensor> {
  if (isParameterShaped(layout, template)) return unpack(layout, packed as Tensor);
  if (Array.isArray(template)) return template.map((t, i) => unpackTree(layout, (packed as readonly PyTree<Tensor>[])[i]!, t));
  if (isRecord(template)) return Object.fromEntries(Object.entries(template).map(([k, t]) => [k, unpackTree(layout, (packed as Record<string, PyTree<Tensor>>)[k]!, t)]));
  return packed;
}

function isRecord(tree: PyTree<Tensor>): tree is { readonly [key: string]: PyTree<Tensor> } {
  return typeof tree === 'object' && tree !== null && !Array.isArray(tree) && Object.getPrototypeOf(tree) === Object.prototype;
}

/**
 * A method's packed carry (`TrainingMethod.carry`): `fresh` makes a state of the method (lazy,
 * nothing computed), which gives the layout and the unpacked optimizer state's structure; it is
 * called once, when the carry is first used (never, for a run that does not pack). `compile` makes
 * the method's compiled step over the packed state, given the layout.
 */
export function packedCarry<P extends PyTree<Tensor>>(fresh: () => TrainState<P>, compile: (layout: PackLayout, backend?: BackendName) => ReturnType<CarriedState<P>['compileStep']>): CarriedState<P> {
  let made: { readonly layout: PackLayout; readonly opt: PyTree<Tensor> } | undefined;
  const template = () => {
    if (made === undefined) {
      const f = fresh();
      made = { layout: packLayout(f.params), opt: f.opt };
    }
    return made;
  };
  return {
    to: async (state, backend) => {
      const { layout } = template();
      return { ...state, params: await pack(layout, state.params, backend), ema: await pack(layout, state.ema, backend), opt: await packTree(layout, state.opt, backend) };
    },
    from: (c) => {
      const { layout, opt } = template();
      return { ...c, params: unpack(layout, c.params as Tensor) as P, ema: unpack(layout, c.ema as Tensor) as P, opt: unpackTree(layout, c.opt, opt) };
    },
    compileStep: (backend) => compile(template().layout, backend),
  };
}
