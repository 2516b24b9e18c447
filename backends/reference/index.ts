/**
 * The reference backend: an interpreter that runs a program's nodes in order with plain loops over
 * typed arrays. It defines the semantics of every primitive (see the files beside this one); the
 * fast backends (compiled `cpu`, `webgpu`) are tested against it. float32 nodes are stored in Float32Array, so every node
 * is rounded to float32 exactly once; float64 nodes compute in double (for gradient checks).
 */
import { registerBackend, type Backend, type Executable } from '../../core/backend.ts';
import { allocate, matchesDType, type DType, type TypedArray } from '../../core/dtype.ts';
import { BackendError, fmtShape } from '../../core/errors.ts';
import type { Program, ProgramNode } from '../../core/program.ts';
import { sizeOf, type Shape } from '../../core/shape.ts';
import type { DeviceBuffer } from '../../core/tensor.ts';
import { randomBitsHost } from '../../core/threefry.ts';
import { binaryScalar, castScalar, map1, map2, select, unaryScalar } from './elementwise.ts';
import { conv2d, conv2dGradInput, conv2dGradWeight, matmul } from './linalg.ts';
import { broadcast, concat, gather, pad, permute, slice } from './movement.ts';
import { reduce } from './reduce.ts';
import { iota } from './sources.ts';

const DTYPES: ReadonlySet<DType> = new Set(['float32', 'float64', 'int32', 'bool']);

/** A host array owned by the CPU backend. `size` counts elements. */
export class ReferenceBuffer implements DeviceBuffer {
  readonly backendName = 'reference';
  readonly size: number;
  #data: TypedArray | undefined;

  constructor(
    data: TypedArray,
    readonly dtype: DType,
  ) {
    this.size = data.length;
    this.#data = data;
  }

  get data(): TypedArray {
    if (this.#data === undefined) throw new BackendError(`reference: a ${this.dtype} buffer of ${this.size} elements was used after it was freed or donated`);
    return this.#data;
  }

  get isFreed(): boolean {
    return this.#data === undefined;
  }

  release(): void {
    this.#data = undefined;
  }
}

/** A program with, per node, the index of the last node that reads it (outputs: never freed). */
class ReferenceExecutable implements Executable {
  readonly lastUse: readonly number[];

  constructor(readonly program: Program) {
    const lastUse = program.nodes.map(() => -1);
    program.nodes.forEach((node, i) => node.inputs.forEach((j) => (lastUse[j] = i)));
    for (const o of program.outputs) lastUse[o] = Infinity;
    this.lastUse = lastUse;
  }
}

function asReferenceBuffer(b: DeviceBuffer, what: string): ReferenceBuffer {
  if (!(b instanceof ReferenceBuffer)) throw new BackendError(`reference: ${what} is a buffer of backend '${b.backendName}', not of 'reference'`);
  return b;
}

/** Computes one node from its inputs' arrays. The result is fresh, except for reshape and input nodes, which pass an array through. */
function evaluate(node: ProgramNode, ins: readonly TypedArray[], inNodes: readonly ProgramNode[], inputs: readonly ReferenceBuffer[]): TypedArray {
  const p = node.prim;
  if (p.op === 'input') return inputs[p.index]!.data;
  if (p.op === 'reshape') return ins[0]!;
  if (p.op === 'randomBits') return randomBitsHost(ins[0]![0]!, ins[0]![1]!, sizeOf(node.shape), p.offset);
  const out = allocate(node.dtype, sizeOf(node.shape));
  const x = ins[0]!;
  const xShape: Shape = inNodes[0]?.shape ?? [];
  switch (p.op) {
    case 'literal':
      out[0] = p.value;
      break;
    case 'unary':
      map1(unaryScalar(p.fn), x, out);
      break;
    case 'binary':
      map2(binaryScalar(p.fn, inNodes[0]!.dtype), x, ins[1]!, out);
      break;
    case 'select':
      select(x, ins[1]!, ins[2]!, out);
      break;
    case 'cast':
      map1(castScalar(inNodes[0]!.dtype, node.dtype), x, out);
      break;
    case 'reduce':
      reduce(p.fn, x, xShape, p.axes, node.dtype, out);
      break;
    case 'permute':
      permute(x, xShape, p.perm, out);
      break;
    case 'broadcast':
      broadcast(x, xShape, node.shape, out);
      break;
    case 'slice':
      slice(x, xShape, p.starts, p.strides, node.shape, out);
      break;
    case 'pad':
      pad(x, xShape, p.lo, p.interior, p.value, node.shape, out);
      break;
    case 'concat':
      concat(ins, inNodes.map((n) => n.shape), p.axis, node.shape, out);
      break;
    case 'gather':
      gather(x, xShape, ins[1]!, p.axis, out);
      break;
    case 'iota':
      iota(node.shape, p.axis, node.dtype === 'bool', out);
      break;
    case 'matmul':
      matmul(x, ins[1]!, xShape, inNodes[1]!.shape, out);
      break;
    case 'conv2d':
      conv2d(x, ins[1]!, xShape, inNodes[1]!.shape, node.shape, p, out);
      break;
    case 'conv2dGradInput':
      conv2dGradInput(x, ins[1]!, xShape, inNodes[1]!.shape, node.shape, p, out);
      break;
    case 'conv2dGradWeight':
      conv2dGradWeight(x, ins[1]!, xShape, inNodes[1]!.shape, node.shape, p, out);
      break;
    case 'const':
      throw new BackendError(`reference: a program has a 'const' node; concrete tensors must be program inputs`);
    default:
      return p satisfies never;
  }
  return out;
}

export class ReferenceBackend implements Backend {
  readonly name = 'reference';
  readonly dtypes = DTYPES;

  compile(program: Program): ReferenceExecutable {
    for (const node of [...program.nodes, ...program.inputs]) {
      if (!DTYPES.has(node.dtype)) throw new BackendError(`reference: program '${program.name}' uses dtype ${node.dtype}`);
    }
    return new ReferenceExecutable(program);
  }

  upload(data: TypedArray, shape: Shape, dtype: DType): ReferenceBuffer {
    if (!matchesDType(data, dtype) || data.length !== sizeOf(shape)) {
      throw new BackendError(`reference: upload of ${data.constructor.name}(${data.length}) as ${dtype} ${fmtShape(shape)}`);
    }
    return new ReferenceBuffer(data.slice(), dtype);
  }

  async download(buffer: DeviceBuffer): Promise<TypedArray> {
    return asReferenceBuffer(buffer, 'download').data.slice();
  }

  /**
   * Interprets the nodes in order, dropping each array after its last reader. An output is returned
   * in a fresh buffer, except that an output whose array is a donated input's (the input itself, or
   * a reshape of it) returns that input's buffer. Donated inputs not returned are freed. An input
   * counts as donated only if its buffer appears once among the inputs.
   */
  run(executable: Executable, inputBuffers: readonly DeviceBuffer[], donated: readonly boolean[]): ReferenceBuffer[] {
    if (!(executable instanceof ReferenceExecutable)) throw new BackendError(`reference: run was given an executable compiled by another backend`);
    const { program, lastUse } = executable;
    if (inputBuffers.length !== program.inputs.length) {
      throw new BackendError(`reference: program '${program.name}' takes ${program.inputs.length} inputs, got ${inputBuffers.length}`);
    }
    const inputs = inputBuffers.map((b, i) => {
      const buf = asReferenceBuffer(b, `input ${i}`);
      const want = program.inputs[i]!;
      if (buf.dtype !== want.dtype || buf.size !== sizeOf(want.shape)) {
        throw new BackendError(`reference: program '${program.name}' input ${i} is ${want.dtype} ${fmtShape(want.shape)}, got a ${buf.dtype} buffer of ${buf.size} elements`);
      }
      return buf;
    });

    const values: (TypedArray | undefined)[] = new Array(program.nodes.length);
    program.nodes.forEach((node, i) => {
      values[i] = evaluate(node, node.inputs.map((j) => values[j]!), node.inputs.map((j) => program.nodes[j]!), inputs);
      for (const j of node.inputs) if (lastUse[j] === i) values[j] = undefined;
    });

    const donatable = new Map<TypedArray, ReferenceBuffer>();
    inputs.forEach((b, i) => {
      if (donated[i] === true && inputs.indexOf(b) === inputs.lastIndexOf(b)) donatable.set(b.data, b);
    });
    const inputArrays = new Set(inputs.map((b) => b.data));
    const handedOut = new Set<TypedArray>();
    const outs = program.outputs.map((o) => {
      const data = values[o]!;
      const dtype = program.nodes[o]!.dtype;
      const reuse = donatable.get(data);
      if (reuse !== undefined) {
        donatable.delete(data);
        handedOut.add(data);
        return reuse;
      }
      if (inputArrays.has(data) || handedOut.has(data)) return new ReferenceBuffer(data.slice(), dtype);
      handedOut.add(data);
      return new ReferenceBuffer(data, dtype);
    });
    for (const b of donatable.values()) b.release();
    return outs;
  }

  free(buffer: DeviceBuffer): void {
    asReferenceBuffer(buffer, 'free').release();
  }

  describe(): Record<string, unknown> {
    return { backend: 'reference', dtypes: [...DTYPES], note: 'reference interpreter: plain loops, one thread' };
  }
}

let instance: ReferenceBackend | undefined;

/** The process-wide CPU backend (the one the registry hands out). */
export function referenceBackend(): ReferenceBackend {
  instance ??= new ReferenceBackend();
  return instance;
}

/** Makes 'reference' available to `getBackend`, `setDefaultBackend` and `jit` (the lowest priority: the default only where neither WebGPU nor the compiled CPU backend starts). */
export function registerReferenceBackend(): void {
  registerBackend('reference', async () => referenceBackend(), 0);
}
