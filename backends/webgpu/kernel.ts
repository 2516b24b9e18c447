/**
 * What every generated kernel shares: its bindings (materialized nodes read, one node written), the
 * module around its body, and a linear workgroup count that the dispatch folds into as many grid
 * dimensions as the 65,535-per-dimension limit needs.
 */
import type { Program } from '../../core/program.ts';
import { THREEFRY_WGSL } from '../../core/threefry.ts';
import { Emitter, outputBinding as outName, readBindings } from '../kernel/emitter.ts';
import { kernelWrites, type FusionPlan, type KernelPlan } from '../kernel/fusion.ts';
import { KernelParams, WGSL, genericWgsl, helpersFor, storageType, toStorage } from './wgsl.ts';

export interface KernelSource {
  readonly label: string;
  readonly wgsl: string;
  /** Nodes bound read-only, binding i holds reads[i]. */
  readonly reads: readonly number[];
  /** The node written, bound after the reads. */
  readonly writes: number;
  /** More nodes written at the same index (a multi-output kernel), bound after `writes` as out1, out2, ... */
  readonly siblings?: readonly number[];
  /** Linear number of workgroups (0: nothing to do). */
  readonly workgroups: number;
  /**
   * A shape-generic kernel's numbers (u32 words, a multiple of four), bound as the uniform `P` after
   * the outputs; absent when the kernel spells every number (or has none).
   */
  readonly params?: Uint32Array;
  /** Nodes the generator wants materialized before it can produce this kernel within limits. */
  readonly overused: ReadonlySet<number>;
  /**
   * Every node whose materialization the generator looked at: the source depends on the fusion plan
   * only through these, so a later plan that agrees on them yields the same kernel.
   */
  readonly touched?: readonly number[];
}

/** The body of a kernel, written against an emitter whose materialized nodes are bound. */
export interface KernelBody {
  readonly kind: string;
  readonly workgroupSize: number;
  readonly workgroups: number;
  /** Defines `one`, a 1 the shader compiler cannot fold, for loop bounds it should not unroll. */
  readonly opaqueOne?: boolean;
  /** Module-scope declarations (workgroup memory). */
  readonly decls?: string;
  /**
   * Emits the body; `wid` is the linear workgroup id, `li` the local invocation index. `store`
   * writes output `output` (0, the root, by default; 1, 2, ... the kernel's siblings).
   */
  emit(em: Emitter, store: (index: string, value: string, output?: number) => void): void;
}

/**
 * Builds the module for one kernel: shape-generic (`generic`: its sizes, strides and literal values
 * read from a uniform, so kernels of one structure share a module) or with every number spelled out.
 */
export function buildKernel(program: Program, plan: FusionPlan, k: KernelPlan, body: KernelBody, generic: boolean): KernelSource {
  const nodes = program.nodes;
  const writes = kernelWrites(k);
  const { reads, name } = readBindings(plan.materialized, writes, 'in');
  const touched = new Set<number>();
  const params = new KernelParams();
  const em = new Emitter(
    nodes,
    (n) => {
      touched.add(n);
      return name(n);
    },
    generic ? genericWgsl(params) : WGSL,
  );
  em.line(`let wid = wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y;`);
  em.line(`if (wid >= ${em.dialect.uint(body.workgroups)}) { return; }`);
  // A 1 that the shader compiler cannot see through (the output binding is never empty): loop
  // bounds multiplied by it are not constants, so LLVM (lavapipe) does not unroll long loops.
  if (body.opaqueOne === true) em.line('let one = min(arrayLength(&out), 1u);');
  body.emit(em, (index, value, output = 0) => em.line(`${outName(output)}[${index}] = ${toStorage(nodes[writes[output]!]!.dtype, value)};`));
  const code = em.code();
  const decl = [
    ...reads.map((n, i) => `@group(0) @binding(${i}) var<storage, read> in${i}: array<${storageType(nodes[n]!.dtype)}>;`),
    ...writes.map((n, i) => `@group(0) @binding(${reads.length + i}) var<storage, read_write> ${outName(i)}: array<${storageType(nodes[n]!.dtype)}>;`),
    params.declaration(reads.length + writes.length),
  ].join('\n');
  const wgsl = [
    decl,
    body.decls ?? '',
    helpersFor(code),
    code.includes('threefry2x32(') ? THREEFRY_WGSL : '',
    `@compute @workgroup_size(${body.workgroupSize})`,
    `fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {`,
    code,
    '}',
    '',
  ].join('\n');
  const label = `${program.name}/${body.kind}${k.root}${writes.length > 1 ? `+${writes.length - 1}` : ''}`;
  const siblings = k.siblings === undefined ? {} : { siblings: k.siblings };
  const numbers = params.words.length === 0 ? {} : { params: params.data() };
  return { label, wgsl, reads, writes: k.root, ...siblings, ...numbers, workgroups: body.workgroups, overused: em.overused, touched: [...touched] };
}

/** Splits a linear workgroup count into a grid within `maxPerDim` per dimension. */
export function foldGrid(count: number, maxPerDim: number): [number, number, number] {
  if (count <= maxPerDim) return [count, 1, 1];
  const y = Math.ceil(count / maxPerDim);
  if (y <= maxPerDim) return [Math.ceil(count / y), y, 1];
  const z = Math.ceil(y / maxPerDim);
  return [maxPerDim, Math.ceil(y / z), z];
}
