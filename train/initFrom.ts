/**
 * Starting a run from another run's weights (MaskDM's fine-tuning after masked pre-training, or
 * transfer to other data): `train.init_from` names a checkpoint folder, or a run folder whose newest
 * checkpoint is taken. Its EMA weights become the new run's params and EMA, as EDM's `--transfer`
 * copies a snapshot's EMA network into both (training/training_loop.py), loaded by tensor name and
 * non-strictly (MaskDM loads pre-trained weights non-strictly; `restoreTreeByName`): names the
 * checkpoint lacks keep their fresh values, names the model lacks are ignored, and a shape that
 * differs is refused. The optimizer state, image count and key are the fresh run's.
 */
import { resolve } from 'node:path';
import type { PyTree, Tensor } from '../core/index.ts';
import { latestCheckpoint, listCheckpoints, loadCheckpoint } from './checkpoint.ts';
import { CheckpointError, orThrow } from './errors.ts';
import { restoreTreeByName } from './stateDict.ts';
import type { TrainState } from './step.ts';

/** What a run took from `train.init_from`, for the run's messages and history.jsonl. */
export interface InitFromReport {
  /** The checkpoint folder read. */
  readonly checkpoint: string;
  readonly step: number;
  /** Tensors taken from it, of the model's `total`. */
  readonly loaded: number;
  readonly total: number;
  /** The model's names the checkpoint lacks: they keep their initial values. */
  readonly missing: readonly string[];
  /** The checkpoint's names the model lacks: ignored. */
  readonly unexpected: readonly string[];
}

/** The checkpoint folder `path` means: itself when it is one, else the newest checkpoint of the run folder. */
async function checkpointFolder(path: string): Promise<string> {
  const dir = resolve(path);
  if ((await listCheckpoints(dir)).length > 0) return (await latestCheckpoint(dir))!;
  return dir;
}

/** `fresh` with its params and EMA replaced by the EMA weights of the checkpoint at `path`. */
export async function initFrom<P extends PyTree<Tensor>>(fresh: TrainState<P>, path: string): Promise<{ state: TrainState<P>; report: InitFromReport }> {
  const dir = await checkpointFolder(path);
  const ck = orThrow(await loadCheckpoint(dir));
  const ema = ck.trees['ema'];
  if (ema === undefined) throw new CheckpointError(`train.init_from: ${dir} holds no EMA weights (ema.safetensors)`);
  const r = orThrow(restoreTreeByName(fresh.params, ema, `train.init_from: ${dir} ema`));
  const total = r.loaded + r.missing.length;
  if (r.loaded === 0) {
    throw new CheckpointError(`train.init_from: none of the ${total} tensors of the model is in ${dir} (${r.unexpected.length} tensors of other names): a checkpoint of another kind of model?`);
  }
  return {
    state: { ...fresh, params: r.tree, ema: r.tree },
    report: { checkpoint: dir, step: ck.step, loaded: r.loaded, total, missing: r.missing, unexpected: r.unexpected },
  };
}

/** One line for the run's messages: what was loaded, what is missing, what was ignored. */
export function describeInitFrom(r: InitFromReport): string {
  const list = (names: readonly string[]) => (names.length <= 12 ? names.join(', ') : `${names.slice(0, 12).join(', ')} and ${names.length - 12} more`);
  return [
    `initialised from ${r.checkpoint} (step ${r.step}): ${r.loaded} of the model's ${r.total} tensors loaded`,
    ...(r.missing.length === 0 ? [] : [`${r.missing.length} missing from the checkpoint, kept at their initial values: ${list(r.missing)}`]),
    ...(r.unexpected.length === 0 ? [] : [`${r.unexpected.length} in the checkpoint not used by the model, ignored: ${list(r.unexpected)}`]),
  ].join('; ');
}
