/**
 * The command line: `tessera train | sample | eval | info`. Configs are JSON files plus
 * `--section.key=value` flags, decoded with io-ts; errors name the path of what was wrong.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import '../index.ts';
import { defaultChoice, getBackend, registeredBackends, TesseraError } from '../core/index.ts';
import { latestCheckpoint, loadCheckpoint } from './checkpoint.ts';
import { resolveConfig, loadConfig, type TrainingConfig } from './config.ts';
import { orThrow } from './errors.ts';
import { EVAL_USAGE, evalCommand } from './eval/cli.ts';
import { restoreLike, sampleGrid, trainRun } from './run.ts';
import { buildModel, initState } from './step.ts';

const USAGE = `usage:
  tessera train [--config FILE] [--run DIR] [--resume] [--stop-after STEPS] [--minutes M] [--backend cpu|webgpu|reference] [--section.key=value ...]
  tessera sample --run DIR [--checkpoint DIR] [--n 16] [--steps 18] [--seed 0] [--out FILE.png] [--backend cpu|webgpu|reference]
  ${EVAL_USAGE}
  tessera info`;

/** Splits `--flag value` / `--flag=value` options from config overrides (`--a.b=v`, which contain a dot). */
function parseArgs(argv: readonly string[], flags: readonly string[], switches: readonly string[] = []) {
  const opts = new Map<string, string>();
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (m !== null && switches.includes(m[1]!)) {
      opts.set(m[1]!, 'true');
    } else if (m !== null && flags.includes(m[1]!)) {
      const value = m[2] ?? argv[++i];
      if (value === undefined) throw new TesseraError(`--${m[1]} needs a value\n${USAGE}`);
      opts.set(m[1]!, value);
    } else if (arg.startsWith('--') && (arg.includes('.') || arg.startsWith('--backend='))) {
      rest.push(arg);
    } else {
      throw new TesseraError(`unknown argument '${arg}'\n${USAGE}`);
    }
  }
  return { opts, rest };
}

function positiveInt(name: string, value: string | undefined, dflt: number): number {
  if (value === undefined) return dflt;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new TesseraError(`--${name}: expected an integer >= 0, got '${value}'`);
  return n;
}

async function train(argv: readonly string[]): Promise<void> {
  const { opts, rest } = parseArgs(argv, ['config', 'run', 'stop-after', 'minutes', 'grid', 'backend'], ['resume']);
  if (opts.has('backend')) rest.push(`--backend=${opts.get('backend')}`);
  const resume = opts.get('resume') === 'true';
  const runDir = resolve(opts.get('run') ?? join('runs', new Date().toISOString().replace(/[:.]/g, '-')));
  let config: TrainingConfig;
  if (resume && opts.get('config') === undefined) {
    // A resumed run reads its own resolved config; flags may not change it (the checkpoint checks).
    const saved = JSON.parse(await readFile(join(runDir, 'config.json'), 'utf8')) as unknown;
    config = orThrow(resolveConfig(saved, {}));
  } else {
    config = orThrow(await loadConfig(opts.get('config'), rest));
  }
  console.log(`tessera: training ${config.model.kind === 'patch' ? 'the patch-conditioned model' : 'the EDM baseline'} on ${config.data.name}, run folder ${runDir}`);
  const result = await trainRun({
    runDir, config, resume, progress: true,
    stopAfter: opts.has('stop-after') ? positiveInt('stop-after', opts.get('stop-after'), 0) : undefined,
    stopAfterSeconds: opts.has('minutes') ? 60 * positiveInt('minutes', opts.get('minutes'), 0) : undefined,
    gridSamples: positiveInt('grid', opts.get('grid'), 16),
  });
  const last = result.log.at(-1);
  console.log(`tessera: ${result.step} steps on ${result.backend}; last loss ${last?.loss.toPrecision(4) ?? '?'}, ${last?.images_per_s.toFixed(1) ?? '?'} img/s`);
  console.log(`tessera: samples and loss plot in ${runDir} (samples-*.png, loss.svg), log in ${join(runDir, 'log.jsonl')}`);
}

async function sample(argv: readonly string[]): Promise<void> {
  const { opts } = parseArgs(argv, ['run', 'checkpoint', 'n', 'steps', 'seed', 'out', 'backend']);
  const run = opts.get('run');
  const dir = opts.get('checkpoint') ?? (run === undefined ? undefined : await latestCheckpoint(resolve(run)));
  if (dir === undefined) throw new TesseraError(`sample: give --run DIR (with a checkpoint) or --checkpoint DIR\n${USAGE}`);
  const ck = orThrow(await loadCheckpoint(dir));
  const config = orThrow(resolveConfig(ck.config, {}));
  const model = buildModel(config);
  const ema = restoreLike(initState(model, config).ema, ck.trees['ema'] ?? {}, `${dir} ema`);
  const png = await sampleGrid(model, ema, config, positiveInt('n', opts.get('n'), 16), positiveInt('steps', opts.get('steps'), 18), positiveInt('seed', opts.get('seed'), 0), opts.get('backend') ?? config.backend);
  const out = resolve(opts.get('out') ?? join(dir, '..', `samples-step${ck.step}.png`));
  await writeFile(out, png);
  console.log(`tessera: wrote ${out}`);
}

async function info(): Promise<void> {
  try {
    const choice = await defaultChoice();
    console.log(`default backend: ${choice.backend.name}\n${choice.reasons.map((r) => `  ${r}`).join('\n')}`);
  } catch (e) {
    console.log(`default backend: none (${(e as Error).message})`);
  }
  for (const name of registeredBackends()) {
    try {
      const b = await getBackend(name);
      console.log(`${name}: ${JSON.stringify(b.describe(), null, 2)}`);
    } catch (e) {
      console.log(`${name}: unavailable: ${(e as Error).message}`);
    }
  }
}

async function main(argv: readonly string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'train':
      return train(rest);
    case 'sample':
      return sample(rest);
    case 'eval':
      return evalCommand(rest);
    case 'info':
      return info();
    default:
      throw new TesseraError(command === undefined ? USAGE : `unknown command '${command}'\n${USAGE}`);
  }
}

try {
  await main(process.argv.slice(2));
  process.exit(0);
} catch (e) {
  console.error(`tessera: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
}
