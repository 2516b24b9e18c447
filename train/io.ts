/**
 * `tessera/io`: values in and out of files. Safetensors (the format PyTorch and JAX users exchange
 * weights in) for host tensors and for whole pytrees, checkpoints (one folder per step, written
 * atomically, verified by checksums on load), and sample grids as PNG. Readers return an fp-ts
 * `Either` whose Left names the file and what was wrong.
 *
 * @module tessera/io
 */
export { encodeSafetensors, decodeSafetensors, type HostTensor, type Safetensors } from './safetensors.ts';
export { treeToSafetensors, treeFromSafetensors, treeToEntries, entriesToTree, type ReadTreeOptions } from './stateDict.ts';
export {
  saveCheckpoint, writeCheckpointFiles, loadCheckpoint, latestCheckpoint, listCheckpoints, checkpointDir, Manifest,
  type CheckpointState, type LoadedCheckpoint, type LoadOptions, type PendingCheckpoint, type SaveOptions,
} from './checkpoint.ts';
export { imageGridPng, type GridOptions } from './images.ts';
export { SafetensorsError, CheckpointError, orThrow } from './errors.ts';
