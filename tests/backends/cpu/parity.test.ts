/**
 * Per-primitive parity of the compiled CPU backend against the reference oracle; the properties are
 * in ../parity/primitives.ts. Elementwise ops, transcendentals and reductions are held bit-exact.
 */
import { registerCpuBackend } from '../../../backends/cpu/index.ts';
import { primitiveSuite } from '../parity/primitives.ts';

registerCpuBackend();
primitiveSuite('cpu');
