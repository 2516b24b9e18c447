/**
 * Training is a fold: `state' = step(state, batch)` over an async iterable of immutable batches.
 * Observers (logging, sampling, checkpoints) see each new state and never change it; the fold
 * awaits them before the next step, because the step donates the state it is given.
 */
export interface FoldEvent<S, B, M> {
  /** Steps completed, counting from the run's start (a resumed run continues its count). */
  readonly step: number;
  readonly state: S;
  readonly batch: B;
  readonly metrics: M;
  /** This is the fold's last step (the step count or the stop condition was reached). */
  readonly last: boolean;
}

export type Observer<S, B, M> = (event: FoldEvent<S, B, M>) => void | Promise<void>;

export interface FoldOptions<S, B, M> {
  /** Count of steps already done (0 for a fresh run). */
  readonly startStep?: number;
  /** Stop after this many steps in total. */
  readonly totalSteps: number;
  readonly observers?: readonly Observer<S, B, M>[];
  /** Checked after each step: true ends the fold there (e.g. a wall-clock budget). */
  readonly stopWhen?: () => boolean;
}

export async function fold<S, B, M>(
  step: (state: S, batch: B) => Promise<{ state: S; metrics: M }>,
  init: S,
  batches: AsyncIterable<B>,
  options: FoldOptions<S, B, M>,
): Promise<{ state: S; step: number }> {
  let state = init;
  let done = options.startStep ?? 0;
  if (done >= options.totalSteps) return { state, step: done };
  for await (const batch of batches) {
    const out = await step(state, batch);
    state = out.state;
    done++;
    const last = done >= options.totalSteps || options.stopWhen?.() === true;
    for (const observe of options.observers ?? []) await observe({ step: done, state, batch, metrics: out.metrics, last });
    if (last) break;
  }
  return { state, step: done };
}
