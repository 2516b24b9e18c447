/**
 * What a resumed run may change. A run is a sequence of segments; each segment may change the
 * fields that steer training from here on without invalidating the state already learned (the
 * learning rate and its schedule, clipping, length, cadences, EMA length, the backend). Fields that
 * define the model, the data stream or the experiment (the network, the data, batch size, seed, patch
 * schedule, noise distribution, MaskDM's mask, the weights a run started from) are fixed for the
 * run's life: changing them would make the checkpoint's tensors or the data position mean something
 * else.
 */
import { CheckpointError } from './errors.ts';

/** Config paths that may differ between a checkpoint and the run that resumes it. */
export const RESUMABLE_FIELDS: readonly string[] = [
  'backend',
  'train.lr',
  'train.lr_rampup_images',
  'train.lr_schedule',
  'train.warmup_images',
  'train.grad_clip',
  'train.steps',
  'train.duration_images',
  'train.checkpoint_every',
  'train.sample_every',
  'train.log_every',
  'train.keep_checkpoints',
  'train.ema_halflife_images',
  'train.ema_rampup_ratio',
];

/** One field that differs; `from`/`to` are undefined where the field is absent. */
export interface ConfigChange {
  readonly path: string;
  readonly from: unknown;
  readonly to: unknown;
}

const isRecord = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);

/** Every path where two JSON configs differ (arrays compare whole), in sorted order. */
export function configChanges(from: unknown, to: unknown, path = ''): ConfigChange[] {
  if (isRecord(from) && isRecord(to)) {
    return [...new Set([...Object.keys(from), ...Object.keys(to)])].sort()
      .flatMap((k) => configChanges(from[k], to[k], path === '' ? k : `${path}.${k}`));
  }
  return JSON.stringify(from) === JSON.stringify(to) ? [] : [{ path: path === '' ? '<root>' : path, from, to }];
}

const show = (x: unknown) => (x === undefined ? '(unset)' : JSON.stringify(x));

/** `train.lr: 0.01 -> 0.001` */
export function describeChange(c: ConfigChange): string {
  return `${c.path}: ${show(c.from)} -> ${show(c.to)}`;
}

/**
 * The changes from a checkpoint's config to the resuming run's config; throws a CheckpointError
 * naming every field that may not change (and which ones may).
 */
export function resumeChanges(checkpointConfig: unknown, config: unknown, checkpointDir: string): ConfigChange[] {
  const changes = configChanges(checkpointConfig, config);
  const refused = changes.filter((c) => !RESUMABLE_FIELDS.includes(c.path));
  if (refused.length > 0) {
    throw new CheckpointError(
      `${checkpointDir}: resuming cannot change ${refused.map(describeChange).join(', ')} ` +
      `(it defines the model, the data stream or the experiment; start a new run folder for it). ` +
      `Fields a resume may change: ${RESUMABLE_FIELDS.join(', ')}.`,
    );
  }
  return changes;
}
