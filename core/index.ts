/** The core layer's public surface. */
export * from './dtype.ts';
export * from './errors.ts';
export * from './shape.ts';
export { Tensor, isTensor, nextTensorId, TracedValueError, type Marker, type MarkerKind, type MarkedCall, type CustomVjpCall, type Prim, type PrimOp, type UnaryFn, type BinaryFn, type ConvAttrs, type DeviceBuffer, type Storage } from './tensor.ts';
export * from './ops.ts';
export * from './composite.ts';
export * as random from './random.ts';
export * from './pytree.ts';
export { buildProgram, type Program, type ProgramNode, type ProgramInput, type TracedProgram } from './program.ts';
export * from './backend.ts';
export { jit, realize, dispose, fromDevice, onCompileProgress, type JitOptions, type Jitted, type CompileProgress } from './jit.ts';
