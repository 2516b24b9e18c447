/**
 * `tessera eval --checkpoint DIR --samples N [--out FILE.json] [--steps N] [--real N] [--seed 0]
 * [--backend cpu|webgpu|reference]`: samples N images from a checkpoint's EMA params and writes FD, KID and
 * precision/recall against the dataset's real images as JSON (to --out, and to stdout).
 * Sampling and features run on --backend, else the default backend (TESSERA_BACKEND, or WebGPU
 * when an adapter exists).
 */
import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { setDefaultBackend } from '../../index.ts';
import { UsageError } from '../errors.ts';
import { evaluateCheckpoint } from './evaluate.ts';

export const EVAL_USAGE = 'tessera eval --checkpoint DIR --samples N [--out FILE.json] [--steps N] [--real N] [--seed 0] [--backend cpu|webgpu|reference]';

function count(name: string, value: string | undefined, dflt?: number): number | undefined {
  if (value === undefined) return dflt;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`eval: --${name} expects an integer >= 1, got '${value}'\n  ${EVAL_USAGE}`);
  return n;
}

export async function evalCommand(argv: readonly string[]): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        checkpoint: { type: 'string' }, samples: { type: 'string' }, out: { type: 'string' }, steps: { type: 'string' },
        real: { type: 'string' }, seed: { type: 'string' }, backend: { type: 'string' },
      },
    }));
  } catch (e) {
    throw new UsageError(`eval: ${(e as Error).message}\n  ${EVAL_USAGE}`);
  }
  if (values.checkpoint === undefined) throw new UsageError(`eval: --checkpoint is required\n  ${EVAL_USAGE}`);
  const samples = count('samples', values.samples);
  if (samples === undefined) throw new UsageError(`eval: --samples is required\n  ${EVAL_USAGE}`);
  if (values.backend !== undefined) setDefaultBackend(values.backend);
  const { result } = await evaluateCheckpoint(values.checkpoint, {
    samples, steps: count('steps', values.steps), real: count('real', values.real), seed: values.seed === undefined ? 0 : count('seed', values.seed),
  });
  const json = JSON.stringify(result, null, 2) + '\n';
  if (values.out !== undefined) await writeFile(values.out, json);
  process.stdout.write(json);
}
