/**
 * What a config's `model.kind` trains: its state, its compiled step, and how it samples. The run
 * loop (`run.ts`), resuming, and the `sample` and `eval` commands see only this interface, so a new
 * kind of model plugs in here and gets checkpoints, resume, progress, grids and metrics unchanged.
 *
 *   patch, edm   EDM's preconditioned SongUNet on patches or full images (`step.ts`), Heun sampling
 *   msdiff       multi-scale non-uniform diffusion (`msdiff.ts`), scale-by-scale Euler-Maruyama
 *   maskdm       MaskDM's U-ViT with masked score matching (`maskdm.ts`), DDIM
 */
import { type BackendName, type PyTree, type Tensor } from '../core/index.ts';
import { makeDenoiser } from '../models/precond.ts';
import { heunSampler } from '../models/samplers.ts';
import type { TrainingConfig } from './config.ts';
import { maskdmMethod } from './maskdm.ts';
import { msdiffMethod } from './msdiff.ts';
import { packedCarry } from './packed.ts';
import { buildModel, carryOptimizerState, compileStep, fullSize, initState, type StepBatch, type StepMetrics, type TrainState } from './step.ts';

/** One step's batch as the run loop makes it: the data, and the step it is for. */
export interface MethodBatch extends StepBatch {
  readonly step: number;
}

export interface TrainingMethod<P = unknown> {
  /** What is trained, for the command line's first line ("the EDM baseline"). */
  readonly description: string;
  /** The sampler `sample` runs, and its default number of steps. */
  readonly sampler: string;
  readonly defaultSampleSteps: number;
  /** A fresh state from `train.seed`; also the template a checkpoint is restored into. */
  initState(): TrainState<P>;
  /** The compiled step `state' = step(state, batch)`, the old state donated. */
  compileStep(backend?: BackendName): (state: TrainState<P>, batch: MethodBatch) => Promise<{ state: TrainState<P>; metrics: StepMetrics }>;
  /** `count` full-size images [count, C, H, W] from the parameters `params` (a run samples its EMA). */
  sample(params: P, count: number, steps: number, key: Tensor, backend?: BackendName): Promise<Tensor>;
  /** The optimizer state of a checkpoint written under `from`, for a run under `to` (`train.grad_clip` may change on resume). */
  carryOptimizerState(opt: PyTree<Tensor>, from: TrainingConfig, to: TrainingConfig): PyTree<Tensor>;
  /**
   * Where present, the run loop may carry the state between steps in another form and step it with
   * this compiled step instead: the EDM, patch and MaskDM methods pack theirs (`train/packed.ts`),
   * so that the optimizer is a few kernels, not a few per parameter. The loop does on WebGPU
   * (`usesPackedState`) or when `trainRun`'s `packState` asks. `to` runs when a run starts or
   * resumes; `from` gives the named state back, as views of the carried one, to checkpoints,
   * sample grids and the run's result.
   */
  readonly carry?: CarriedState<P>;
}

export interface CarriedState<P> {
  /** Values not computed yet (a fresh state's) are computed on `backend`. */
  to(state: TrainState<P>, backend?: BackendName): Promise<TrainState<unknown>>;
  from(carried: TrainState<unknown>): TrainState<P>;
  compileStep(backend?: BackendName): (state: TrainState<unknown>, batch: MethodBatch) => Promise<{ state: TrainState<unknown>; metrics: StepMetrics }>;
}

/** The method of a resolved config. */
export function trainingMethod(config: TrainingConfig): TrainingMethod<PyTree<Tensor>> {
  const kind = config.model.kind;
  switch (kind) {
    case 'patch':
    case 'edm':
      return edmMethod(config) as unknown as TrainingMethod<PyTree<Tensor>>;
    case 'msdiff':
      return msdiffMethod(config) as unknown as TrainingMethod<PyTree<Tensor>>;
    case 'maskdm':
      return maskdmMethod(config) as unknown as TrainingMethod<PyTree<Tensor>>;
    default:
      return kind satisfies never;
  }
}

function edmMethod(config: TrainingConfig): TrainingMethod<ReturnType<typeof initState>['params']> {
  const model = buildModel(config);
  const { height, width } = fullSize(config);
  const carry = packedCarry(() => initState(model, config), (layout, backend) => compileStep(model, config, backend, layout) as never);
  return {
    carry,
    description: config.model.kind === 'patch' ? 'the patch-conditioned model' : 'the EDM baseline',
    sampler: 'heun',
    defaultSampleSteps: 18,
    initState: () => initState(model, config),
    compileStep: (backend) => compileStep(model, config, backend),
    // Full resolution, on the full coordinate grid for the patch model (Patch Diffusion, Sec. 3.3).
    sample: (params, count, steps, key, backend) =>
      heunSampler(makeDenoiser(params, model), { key, shape: [count, config.model.img_channels, height, width], numSteps: steps, backend }),
    carryOptimizerState,
  };
}
