/**
 * Compiled programs kept per owner (a score function) and per settings for as long as the owner
 * lives, so that a sampler called again with the same score and settings reuses its jitted steps
 * instead of tracing and compiling them anew. Used by the MSDiff and conditional samplers.
 */
import type { Backend, BackendName } from '../core/backend.ts';

export class ProgramCache<Owner extends object, Programs> {
  readonly #byOwner = new WeakMap<Owner, Map<string, Programs>>();

  /** The programs of `owner` under `settings` (compared as JSON), built by `build` the first time. */
  get(owner: Owner, settings: unknown, build: () => Programs): Programs {
    const key = JSON.stringify(settings);
    let perOwner = this.#byOwner.get(owner);
    if (perOwner === undefined) this.#byOwner.set(owner, (perOwner = new Map()));
    let programs = perOwner.get(key);
    if (programs === undefined) perOwner.set(key, (programs = build()));
    return programs;
  }
}

/** A backend option as part of a cache key: its name (the default backend: undefined). */
export function backendKey(backend: Backend | BackendName | undefined): string | undefined {
  return typeof backend === 'object' ? backend.name : backend;
}
