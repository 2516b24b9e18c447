/**
 * DDPM's discrete forward process (Ho et al. 2020, Sec. 4: linear betas from 1e-4 to 0.02 over
 * T = 1000 steps, epsilon prediction), the DDIM sampler for an epsilon network (Song et al. 2021,
 * "Denoising Diffusion Implicit Models", eq. 12 with eta as in eq. 16), and the same network as an
 * EDM denoiser through VP preconditioning (Karras et al. 2022, Table 1), so that EDM's samplers
 * (Heun, Euler, a user's own) sample it too.
 *
 * Time steps are DDPM's indices t = 0..T-1 (t = 0 is the least noisy), passed to the network as
 * float32. In EDM's variables x~ = x / sqrt(abar) and sigma = sqrt((1 - abar) / abar), step t is the
 * noise level sigma_t and x_t = sqrt(abar_t) (x0 + sigma_t eps).
 */
import {
  add, cast, clip, div, gather, greater, jit, less, log, maximum, minimum, mul, reshape, sqrt, sub, sum, tensor,
  random, TesseraError, type Backend, type BackendName, type Shape, type Tensor,
} from '../core/index.ts';
import { checkedDenoiser, sigmaPerSample, type Denoiser, type DenoiserExtra } from './precond.ts';
import { perSample } from './samplers.ts';

/** `linearSchedule`'s options: the number of steps and the first and last beta. */
export interface DdpmScheduleOptions {
  /** T (1000). */
  readonly numSteps?: number;
  readonly betaStart?: number;
  readonly betaEnd?: number;
}

/** The schedule's per-step constants, computed on the host in float64. */
export interface DdpmSchedule {
  readonly numSteps: number;
  readonly betas: Float64Array;
  /** abar_t = prod_{s <= t} (1 - beta_s) (DDPM eq. 4). */
  readonly alphasCumprod: Float64Array;
  /** sigma_t = sqrt((1 - abar_t) / abar_t), increasing in t: EDM's VP noise levels of the steps. */
  readonly sigmas: Float64Array;
}

/**
 * DDPM's linear schedule: beta_t = betaStart + t (betaEnd - betaStart) / (T - 1). Defaults 1e-4, 0.02, T = 1000.
 * @example
 * const schedule = linearSchedule();                  // T = 1000, beta from 1e-4 to 0.02
 * schedule.sigmas[999];                               // 157.4: sqrt((1 - abar) / abar) at the last step
 */
export function linearSchedule(options: DdpmScheduleOptions = {}): DdpmSchedule {
  const n = options.numSteps ?? 1000;
  const [b0, b1] = [options.betaStart ?? 1e-4, options.betaEnd ?? 0.02];
  if (!Number.isInteger(n) || n < 2) throw new TesseraError(`linearSchedule: numSteps must be an integer >= 2, got ${n}`);
  if (!(b0 > 0 && b1 < 1 && b0 <= b1)) throw new TesseraError(`linearSchedule: need 0 < betaStart <= betaEnd < 1, got ${b0}, ${b1}`);
  const betas = Float64Array.from({ length: n }, (_, t) => b0 + (t * (b1 - b0)) / (n - 1));
  const alphasCumprod = new Float64Array(n);
  betas.reduce((acc, b, t) => (alphasCumprod[t] = acc * (1 - b)), 1);
  const sigmas = alphasCumprod.map((a) => Math.sqrt((1 - a) / a));
  return { numSteps: n, betas, alphasCumprod, sigmas };
}

/** abar at int32 steps t [B] (a gather from the schedule's table): [B] float32. */
export function alphaBarAt(schedule: DdpmSchedule, t: Tensor): Tensor {
  return gather(tensor(Float32Array.from(schedule.alphasCumprod)), t);
}

/** DDPM's q(x_t | x_0) (eq. 4): sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, with abar [B] per sample. */
export function diffuse(x0: Tensor, alphaBar: Tensor, noise: Tensor): Tensor {
  const a = reshape(alphaBar, [x0.shape[0]!, ...x0.shape.slice(1).map(() => 1)]);
  return add(mul(sqrt(a), x0), mul(sqrt(sub(1, a)), noise));
}

/** An epsilon network: the noise in x_t at time steps t ([N] float32, possibly fractional). */
export type EpsModel = (x: Tensor, t: Tensor, extra?: DenoiserExtra) => Tensor;

/**
 * DDIM's time steps for S sampling steps: the "uniform" skip, t_i = floor(i T / S), i < S,
 * ascending (the sampler walks them from the last down).
 * @example
 * ddimTimesteps(linearSchedule(), 5);                 // [0, 200, 400, 600, 800]
 */
export function ddimTimesteps(schedule: DdpmSchedule, steps: number): number[] {
  if (!Number.isInteger(steps) || steps < 1 || steps > schedule.numSteps) throw new TesseraError(`ddimTimesteps: steps must be an integer in [1, ${schedule.numSteps}], got ${steps}`);
  return Array.from({ length: steps }, (_, i) => Math.floor((i * schedule.numSteps) / steps));
}

/**
 * EDM-style noise levels for the same steps: sigma_{t_i} from the last step down, then 0. With a
 * `vpDenoiser`, `ddimSampler(denoiser, { sigmas: vpSigmas(...) })` takes the same steps as
 * `ddimSample` with eta 0 (EDM Sec. 3: deterministic DDIM is Euler's method on the ODE in x~).
 * @example
 * const s = linearSchedule();
 * vpSigmas(s, ddimTimesteps(s, 5));                   // [25.736, 6.1735, 2.0411, 0.7236, 0.01, 0]
 */
export function vpSigmas(schedule: DdpmSchedule, timesteps: readonly number[]): number[] {
  return [...[...timesteps].reverse().map((t) => schedule.sigmas[t]!), 0];
}

/** `ddimSample`'s options: the schedule, the steps, eta, clipping, and the noise to start from. */
export interface DdimOptions {
  readonly schedule: DdpmSchedule;
  /** Sampling steps S (uniform skip), or explicit ascending time steps. */
  readonly steps?: number;
  readonly timesteps?: readonly number[];
  /** DDIM's eta (eq. 16): 0 deterministic, 1 DDPM's ancestral variance. Default 0. */
  readonly eta?: number;
  /**
   * Clip each step's x0 to [-1, 1] and take eps from the clipped x0 (MaskDM's reference samples so,
   * for data in [-1, 1]). Default false.
   */
  readonly clipDenoised?: boolean;
  /** Key of the initial noise (when `latents` is absent) and of the per-step noise. */
  readonly key?: Tensor;
  readonly shape?: Shape;
  /** Standard normal x_T. */
  readonly latents?: Tensor;
  readonly extra?: DenoiserExtra;
  readonly backend?: Backend | BackendName;
}

/** DDIM's eq. 16: sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s); at eta 1 DDPM's posterior variance. */
export function ddimSigma(alphaBarT: number, alphaBarS: number, eta: number): number {
  return eta * Math.sqrt((1 - alphaBarS) / (1 - alphaBarT)) * Math.sqrt(1 - alphaBarT / alphaBarS);
}

/**
 * DDIM (eq. 12) from x_T ~ N(0, I): at each step t -> s (the previous time step, or abar_s = 1
 * after the first), x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) and
 * x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z (`ddimSigma`). One compiled program serves
 * every step (the constants enter as scalar tensors).
 * @example
 * const images = await ddimSample(eps, { schedule: linearSchedule(), steps: 100, key: random.key(0), shape: [16, 1, 32, 32] });
 * const stochastic = await ddimSample(eps, { schedule: linearSchedule(), steps: 100, eta: 1, key: random.key(1), shape: [16, 1, 32, 32] });
 */
export async function ddimSample(eps: EpsModel, options: DdimOptions): Promise<Tensor> {
  const { schedule } = options;
  const timesteps = options.timesteps ?? ddimTimesteps(schedule, options.steps ?? 50);
  const eta = options.eta ?? 0;
  if (!(eta >= 0)) throw new TesseraError(`ddimSample: eta must be >= 0, got ${eta}`);
  if (timesteps.some((t, i) => !Number.isInteger(t) || t < 0 || t >= schedule.numSteps || (i > 0 && t <= timesteps[i - 1]!))) {
    throw new TesseraError(`ddimSample: time steps must be increasing integers in [0, ${schedule.numSteps}), got [${timesteps.join(', ')}]`);
  }
  if (eta > 0 && options.key === undefined) throw new TesseraError('ddimSample: eta > 0 needs a key');
  let latents = options.latents;
  if (latents === undefined) {
    if (options.key === undefined || options.shape === undefined) throw new TesseraError('ddimSample: give latents, or a key and a shape');
    latents = random.normal(random.foldIn(options.key, 0), options.shape);
  }
  const noiseKey = options.key ?? random.key(0);
  const step = jit(
    (x: Tensor, t: Tensor, aT: Tensor, aS: Tensor, sigma: Tensor, key: Tensor, stochastic: boolean): Tensor => {
      const predicted = eps(x, perSample(t, x), options.extra);
      const raw = div(sub(x, mul(sqrt(sub(1, aT)), predicted)), sqrt(aT));
      const x0 = options.clipDenoised ? clip(raw, -1, 1) : raw;
      const e = options.clipDenoised ? div(sub(x, mul(sqrt(aT), x0)), sqrt(sub(1, aT))) : predicted;
      const dir = mul(sqrt(maximum(sub(sub(1, aS), mul(sigma, sigma)), 0)), e);
      const mean = add(mul(sqrt(aS), x0), dir);
      return stochastic ? add(mean, mul(sigma, random.normal(key, x.shape))) : mean;
    },
    { name: 'ddimStep', backend: options.backend },
  );
  let x = latents;
  for (let i = timesteps.length - 1; i >= 0; i--) {
    const t = timesteps[i]!;
    const aT = schedule.alphasCumprod[t]!;
    const aS = i > 0 ? schedule.alphasCumprod[timesteps[i - 1]!]! : 1;
    const sigma = ddimSigma(aT, aS, eta);
    x = await step(x, tensor(t), tensor(aT), tensor(aS), tensor(sigma), random.foldIn(noiseKey, i + 1), sigma > 0);
  }
  return x;
}

/** How a VP denoiser maps a noise level to the network's time step. */
export type TimestepMapping = 'nearest' | 'continuous';

/**
 * The time step of noise levels sigma [N]: 'nearest' is the discrete step whose sigma_t is nearest
 * in log sigma (the midpoints between neighbours split the line), 'continuous' interpolates t
 * linearly in log sigma between neighbouring steps (exact at every sigma_t), clamped to [0, T - 1].
 * @example
 * timestepOf(linearSchedule(), tensor([0.01, 1, 80]));   // [0, 258, 930]
 * timestepOf(linearSchedule(), tensor([1]), 'continuous');   // [258.09]
 */
export function timestepOf(schedule: DdpmSchedule, sigma: Tensor, mapping: TimestepMapping = 'nearest'): Tensor {
  const n = sigma.size;
  const T = schedule.numSteps;
  const logTable = Array.from(schedule.sigmas, Math.log);
  const ls = reshape(log(cast(sigma, 'float32')), [n, 1]);
  if (mapping === 'nearest') {
    const mids = tensor(logTable.slice(1).map((v, i) => (v + logTable[i]!) / 2), [1, T - 1]);
    return sum(cast(greater(ls, mids), 'float32'), 1);
  }
  const table = tensor(logTable);
  // i: the last step with log sigma_i <= log sigma, kept in [0, T - 2] so that i + 1 exists.
  const below = sum(cast(less(tensor(logTable, [1, T]), ls), 'int32'), 1);
  const i = minimum(maximum(sub(below, 1), 0), T - 2);
  const lo = gather(table, i);
  const hi = gather(table, add(i, 1));
  const frac = div(sub(reshape(ls, [n]), lo), sub(hi, lo));
  return minimum(maximum(add(cast(i, 'float32'), frac), 0), T - 1);
}

/** `vpDenoiser`'s options: the schedule and how a noise level maps to a time step. */
export interface VpDenoiserOptions {
  readonly schedule: DdpmSchedule;
  readonly timestep?: TimestepMapping;
}

/**
 * An epsilon network as EDM's denoiser through VP preconditioning (EDM Table 1, "VP"): c_skip = 1,
 * c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1) (= sqrt(abar)), c_noise = the time step of sigma:
 * D(x~; sigma) = x~ - sigma eps(x~ / sqrt(1 + sigma^2), t(sigma)).
 * @example
 * const schedule = linearSchedule();
 * const D = vpDenoiser(eps, { schedule });            // eps: an EpsModel, e.g. uvitEps(model, params)
 * const images = await ddimSampler(D, { key: random.key(0), shape: [16, 1, 32, 32], sigmas: vpSigmas(schedule, ddimTimesteps(schedule, 50)) });
 */
export function vpDenoiser(eps: EpsModel, options: VpDenoiserOptions): Denoiser {
  const mapping = options.timestep ?? 'nearest';
  const denoise: Denoiser = (x, sigmaIn, extra) => {
    const n = x.shape[0]!;
    const sigma = sigmaPerSample(sigmaIn, n);
    const s = reshape(sigma, [n, ...x.shape.slice(1).map(() => 1)]);
    const cIn = div(1, sqrt(add(mul(s, s), 1)));
    return sub(x, mul(s, eps(mul(x, cIn), timestepOf(options.schedule, sigma, mapping), extra)));
  };
  return checkedDenoiser(denoise, 'vpDenoiser');
}
