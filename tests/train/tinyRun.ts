/** A tiny training config on the CPU backend (8x8 MNIST, 4 channels): a step takes milliseconds. */
import { flatten, type Tensor } from '../../core/index.ts';
import { resolveConfig, type TrainingConfig } from '../../train/config.ts';
import { orThrow } from '../../train/errors.ts';

export const tinyUserConfig = (train: Record<string, unknown> = {}) => ({
  backend: 'cpu',
  model: { model_channels: 4, channel_mult: [1, 2], num_blocks: 1, attn_resolutions: [4], dropout: 0.1, channel_mult_emb: 2 },
  data: { name: 'mnist', resolution: 8, limit: 64 },
  train: {
    batch_size: 2, steps: 6, lr: 0.01, lr_rampup_images: 8, ema_halflife_images: 16, ema_rampup_ratio: 0.5,
    log_every: 1, sample_every: 1000, checkpoint_every: 3, keep_checkpoints: 5, ...train,
  },
});

export const tinyConfig = (train: Record<string, unknown> = {}): TrainingConfig => orThrow(resolveConfig(tinyUserConfig(train), {}));

/** Every leaf's values, for bit-for-bit comparisons. */
export async function leafValues(tree: unknown): Promise<number[][]> {
  return Promise.all((flatten(tree as never).leaves as Tensor[]).map(async (t) => Array.from(await t.data())));
}
