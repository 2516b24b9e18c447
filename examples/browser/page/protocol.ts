/** The messages between the page (main.ts) and its sampling worker (sampler.ts). */

/** What the page asks for: a checkpoint folder's URL, and how to sample it. */
export interface SampleRequest {
  /** The folder holding manifest.json and ema.safetensors, ending in '/'. */
  readonly checkpoint: string;
  /** 'cpu', 'webgpu' or 'reference'; absent: tessera's default (WebGPU on a real GPU, else cpu). */
  readonly backend: string | undefined;
  readonly count: number;
  readonly steps: number;
  readonly seed: number;
}

/** What the worker reports, in order: status lines and progress, then done or error. */
export type WorkerMessage =
  | { readonly kind: 'status'; readonly text: string }
  | { readonly kind: 'progress'; readonly step: number; readonly steps: number }
  | {
      readonly kind: 'done';
      /** Samples [N, C, H, W] in [-1, 1] (roughly), row-major. */
      readonly pixels: Float32Array;
      readonly shape: readonly [number, number, number, number];
      readonly backend: string;
      /** Why that backend: tessera's reasons for its default choice, or the page's `backend` parameter. */
      readonly reasons: readonly string[];
      readonly seconds: number;
    }
  | { readonly kind: 'error'; readonly message: string };
