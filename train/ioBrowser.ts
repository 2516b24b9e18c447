/**
 * `tessera/io` in a browser (the `browser` condition of the package's exports): the part of it that
 * works on bytes and touches no file system. Safetensors and pytrees in and out of bytes, the
 * checkpoint manifest's codec, the errors. `io.ts` re-exports all of it, with files beside.
 */
export { encodeSafetensors, decodeSafetensors, type HostTensor, type Safetensors } from './safetensors.ts';
export { treeToSafetensors, treeFromSafetensors, treeToEntries, entriesToTree, type ReadTreeOptions } from './stateDict.ts';
export { Manifest } from './manifest.ts';
export { SafetensorsError, CheckpointError, orThrow } from './errors.ts';
