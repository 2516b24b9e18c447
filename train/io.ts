/**
 * `tessera/io`: values in and out of files. Safetensors (the format PyTorch and JAX users exchange
 * weights in) for host tensors and for whole pytrees, checkpoints (one folder per step, written
 * atomically, verified by checksums on load), and sample grids as PNG. Readers return an fp-ts
 * `Either` whose Left names the file and what was wrong. In a browser, bundlers pick `ioBrowser.ts`
 * (the `browser` export condition): the same minus what needs files or Node.
 *
 * @module tessera/io
 */
export * from './ioBrowser.ts';
export {
  saveCheckpoint, writeCheckpointFiles, loadCheckpoint, latestCheckpoint, listCheckpoints, checkpointDir,
  type CheckpointState, type LoadedCheckpoint, type LoadOptions, type PendingCheckpoint, type SaveOptions,
} from './checkpoint.ts';
export { imageGridPng, type GridOptions } from './images.ts';
