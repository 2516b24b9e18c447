/**
 * The page's Web Worker: fetches a checkpoint (its manifest and EMA weights), builds the model its
 * config describes, and samples it with EDM's Heun sampler, reporting each step. Sampling runs
 * here, off the page's thread, so the page stays responsive (and the CPU backend's synchronous
 * kernels may block this thread freely).
 */
import { defaultChoice, getBackend, heunSampler, makeDenoiser, patchModel, random, type PatchModelParams } from 'tessera';
import { Manifest, orThrow, treeFromSafetensors } from 'tessera/io';
import type { SampleRequest, WorkerMessage } from './protocol.ts';

const scope = self as unknown as { onmessage: ((e: MessageEvent<SampleRequest>) => void) | null; postMessage(message: WorkerMessage, transfer?: Transferable[]): void };
const report = (message: WorkerMessage, transfer: Transferable[] = []) => scope.postMessage(message, transfer);

/** The fields of a training config (train/config.ts, resolved, as a manifest stores it) that describe an EDM or patch model. */
interface ModelConfig {
  readonly model: {
    readonly kind: string; readonly img_resolution: number | [number, number]; readonly img_channels: number; readonly use_coords: boolean; readonly label_dim: number;
    readonly model_channels: number; readonly channel_mult: number[]; readonly num_blocks: number; readonly attn_resolutions: number[]; readonly dropout: number;
    readonly channel_mult_emb: number; readonly channel_mult_noise: number; readonly embedding_type: 'positional' | 'fourier';
    readonly encoder_type: 'standard' | 'skip' | 'residual'; readonly decoder_type: 'standard' | 'skip'; readonly resample_filter: number[]; readonly augment_dim: number;
  };
  readonly train: { readonly sigma_data: number };
}

/** The model of a patch or EDM checkpoint's config, as the training run built it (train/step.ts, buildModel). */
function modelOf(config: ModelConfig) {
  const m = config.model;
  if (m.kind !== 'patch' && m.kind !== 'edm') throw new Error(`this page samples patch and edm checkpoints; this one is '${m.kind}'`);
  const [height] = typeof m.img_resolution === 'number' ? [m.img_resolution] : m.img_resolution;
  return patchModel({
    imgResolution: height,
    imgChannels: m.img_channels,
    useCoords: m.kind === 'patch' && m.use_coords,
    sigmaData: config.train.sigma_data,
    labelDim: m.label_dim,
    network: {
      modelChannels: m.model_channels, channelMult: m.channel_mult, numBlocks: m.num_blocks, attnResolutions: m.attn_resolutions,
      dropout: m.dropout, channelMultEmb: m.channel_mult_emb, channelMultNoise: m.channel_mult_noise, embeddingType: m.embedding_type,
      encoderType: m.encoder_type, decoderType: m.decoder_type, resampleFilter: m.resample_filter, augmentDim: m.augment_dim,
    },
  });
}

async function fetchBytes(url: URL): Promise<Uint8Array> {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function sha256(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function sample(request: SampleRequest): Promise<void> {
  report({ kind: 'status', text: 'loading the checkpoint' });
  const manifestUrl = new URL('manifest.json', request.checkpoint);
  const manifest = Manifest.decode(JSON.parse(new TextDecoder().decode(await fetchBytes(manifestUrl))));
  if (manifest._tag === 'Left') throw new Error(`${manifestUrl}: not a tessera checkpoint manifest`);
  const ema = manifest.right.files.find((f) => f.name === 'ema.safetensors');
  if (ema === undefined) throw new Error(`${manifestUrl}: the checkpoint has no ema.safetensors`);
  const bytes = await fetchBytes(new URL(ema.name, request.checkpoint));
  if (bytes.length !== ema.bytes || (await sha256(bytes)) !== ema.sha256) throw new Error(`${ema.name}: its size or SHA-256 differs from the manifest's`);
  const params = orThrow(treeFromSafetensors(bytes, ema.name)).tree as PatchModelParams;
  const config = manifest.right.config as unknown as ModelConfig;
  const model = modelOf(config);

  report({ kind: 'status', text: 'starting the backend' });
  const { backend, reasons } = request.backend === undefined
    ? await defaultChoice()
    : { backend: await getBackend(request.backend), reasons: [`${request.backend}: asked for by the page's backend parameter`] };
  report({ kind: 'status', text: `sampling on ${backend.name}` });
  const [height, width] = typeof config.model.img_resolution === 'number' ? [config.model.img_resolution, config.model.img_resolution] : config.model.img_resolution;
  const shape = [request.count, config.model.img_channels, height, width] as const;
  const start = performance.now();
  const images = await heunSampler(makeDenoiser(params, model), {
    key: random.key(request.seed), shape, numSteps: request.steps, backend,
    onStep: (step, steps) => report({ kind: 'progress', step, steps }),
  });
  const pixels = Float32Array.from(await images.data());
  report({ kind: 'done', pixels, shape, backend: backend.name, reasons, seconds: (performance.now() - start) / 1000 }, [pixels.buffer]);
}

scope.onmessage = (e) => {
  sample(e.data).catch((error: unknown) => report({ kind: 'error', message: error instanceof Error ? `${error.name}: ${error.message}` : String(error) }));
};
