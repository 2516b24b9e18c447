/**
 * Where a resumed run starts: the newest checkpoint that loads intact. A checkpoint that fails to
 * load (missing or corrupt file, bad checksum, bad tensors) is named with the reason and set aside
 * as `checkpoint-N.corrupt` (kept, never deleted), and the next older one is tried, unless the run
 * is strict. A checkpoint that loads but was written with a config whose fixed fields differ is
 * refused by name (`resumeConfig.ts`): that is the user's mistake, not damage, so nothing older is
 * tried instead.
 */
import { flatten, leafPaths, unflatten, zerosLike, type PyTree, type Tensor } from '../core/index.ts';
import { FROZEN_PARAMETERS } from '../models/songunet.ts';
import { listCheckpoints, loadCheckpoint, setAsideCheckpoint } from './checkpoint.ts';
import type { TrainingConfig } from './config.ts';
import { CheckpointError, orThrow } from './errors.ts';
import { resumeChanges, type ConfigChange } from './resumeConfig.ts';
import { restoreTree } from './stateDict.ts';
import type { TrainingMethod } from './method.ts';
import type { TrainState } from './step.ts';

/**
 * Rebuilds a tree shaped like `template` from a loaded tree (exact tensor names, dtypes and shapes;
 * see `restoreTree`), throwing its CheckpointError.
 */
export function restoreLike<T extends PyTree<Tensor>>(template: T, loaded: PyTree<Tensor>, what: string): T {
  return orThrow(restoreTree(template, loaded, what));
}

export interface ResumePoint {
  readonly state: TrainState<PyTree<Tensor>>;
  readonly step: number;
  readonly position: number;
  /** The checkpoint resumed from. */
  readonly dir: string;
  /** Config fields that differ from the checkpoint's (all of them resumable). */
  readonly changes: readonly ConfigChange[];
  /** Newer checkpoints that failed to load, with where they were moved. */
  readonly setAside: readonly { readonly dir: string; readonly movedTo: string; readonly reason: string }[];
  /** Intact-looking checkpoints at or before the one resumed from, oldest first. */
  readonly older: readonly { readonly step: number; readonly dir: string }[];
}

export interface ResumeOptions {
  /** Stop at a corrupt newest checkpoint instead of falling back to an older one. */
  readonly strict?: boolean;
  readonly warn: (message: string) => void;
}

/** Loads the newest intact checkpoint of `runDir` as the state for `config`. */
export async function resumePoint(method: TrainingMethod<PyTree<Tensor>>, config: TrainingConfig, runDir: string, options: ResumeOptions): Promise<ResumePoint> {
  const all = await listCheckpoints(runDir);
  if (all.length === 0) throw new CheckpointError(`resume: no checkpoint in ${runDir}`);
  const corrupt: { dir: string; reason: string }[] = [];
  for (let i = all.length - 1; i >= 0; i--) {
    const { dir } = all[i]!;
    const loaded = await loadCheckpoint(dir);
    let point: Omit<ResumePoint, 'setAside' | 'older'> | undefined;
    let reason: string | undefined;
    if (loaded._tag === 'Left') {
      reason = loaded.left.message;
    } else {
      const ck = loaded.right;
      // A fixed field that differs is refused here, before any fallback: it is not damage.
      const changes = resumeChanges(ck.config, config, dir);
      try {
        point = { ...restoreState(method, config, ck.config as TrainingConfig, ck.trees, ck.prngKey, ck.dataPosition, dir), step: ck.step, dir, changes };
      } catch (e) {
        if (!(e instanceof CheckpointError)) throw e;
        reason = e.message;
      }
    }
    if (point === undefined) {
      if (options.strict === true) {
        const older = all.slice(0, i).at(-1);
        throw new CheckpointError(`${dir} cannot be resumed: ${reason}. Stopping (--strict)${older === undefined ? '' : `; without --strict the run would try the older ${older.dir}`}.`);
      }
      options.warn(`${dir} cannot be resumed: ${reason}`);
      corrupt.push({ dir, reason: reason ?? '?' });
      continue;
    }
    const setAside = [];
    for (const c of corrupt) {
      const movedTo = await setAsideCheckpoint(c.dir, 'corrupt');
      options.warn(`resuming from the older ${dir} (step ${point.step}); kept ${c.dir} as ${movedTo} for inspection`);
      setAside.push({ ...c, movedTo });
    }
    return { ...point, setAside, older: all.slice(0, i + 1) };
  }
  throw new CheckpointError(`resume: none of the ${all.length} checkpoint(s) in ${runDir} can be resumed (each is named above with its reason)`);
}

function restoreState(
  method: TrainingMethod<PyTree<Tensor>>, config: TrainingConfig, ckConfig: TrainingConfig, trees: Readonly<Record<string, PyTree<Tensor>>>,
  key: Tensor, dataPosition: unknown, dir: string,
): { state: TrainState<PyTree<Tensor>>; position: number } {
  const fresh = method.initState();
  const position = (dataPosition as { position?: unknown } | null)?.position;
  if (typeof position !== 'number') throw new CheckpointError(`${dir}: manifest data_position.position is not a number`);
  const opt = zeroFrozenMoments(restoreLike(method.carryOptimizerState(fresh.opt, config, ckConfig), trees['optimizer'] ?? {}, `${dir} optimizer`));
  return {
    state: {
      params: restoreLike(fresh.params, trees['params'] ?? {}, `${dir} params`),
      ema: restoreLike(fresh.ema, trees['ema'] ?? {}, `${dir} ema`),
      opt: method.carryOptimizerState(opt, ckConfig, config),
      imagesSeen: restoreLike({ imagesSeen: fresh.imagesSeen }, trees['counters'] ?? {}, `${dir} counters`).imagesSeen,
      key,
    },
    position,
  };
}

/**
 * Zeroes the optimizer state held for frozen parameters (`FROZEN_PARAMETERS`). Checkpoints written
 * while an update mask froze them (before `stopGradient` did) hold nonzero Adam moments there,
 * which would move them for a while after resuming; in newer checkpoints these are zero already,
 * so resuming stays bit-exact.
 */
export function zeroFrozenMoments(opt: PyTree<Tensor>): PyTree<Tensor> {
  const { leaves, def } = flatten<Tensor>(opt);
  const paths = leafPaths(def);
  return unflatten(def, leaves.map((leaf, i) => (FROZEN_PARAMETERS.some((f) => paths[i]!.endsWith(`.${f}`)) ? zerosLike(leaf) : leaf)));
}
