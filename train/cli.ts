/**
 * The command line: `tessera train | sample | eval | info`. Configs are JSON files plus
 * `--section.key=value` flags, decoded with io-ts; errors name the path of what was wrong.
 * `--help` (or `-h`) after a command explains it; exit codes: 0 done, 1 failed, 2 the command line
 * was wrong, 130/143 stopped by SIGINT/SIGTERM (after writing a checkpoint).
 */
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import '../index.ts';
import { defaultChoice, getBackend, registeredBackends } from '../core/index.ts';
import { latestCheckpoint, loadCheckpoint } from './checkpoint.ts';
import { loadConfig, parseOverrides, resolveConfig, type TrainingConfig } from './config.ts';
import { orThrow, UsageError } from './errors.ts';
import { EVAL_USAGE, evalCommand } from './eval/cli.ts';
import { trainingMethod } from './method.ts';
import { restoreLike, sampleGrid, trainRun } from './run.ts';
import { readJsonFile } from './runFiles.ts';

const COMMANDS = {
  train: {
    usage: 'tessera train [--config FILE] [--run DIR] [--resume [--strict]] [--stop-after STEPS] [--minutes M] [--backend cpu|webgpu|reference] [--section.key=value ...]',
    about: `Trains a model from a JSON config (train/configs/demo.json is the demo's) and --section.key=value flags, in the
run folder DIR: config.json, log.jsonl, samples-*.png, loss.svg and checkpoints. --resume continues the newest intact
checkpoint of DIR (--strict: stop at a corrupt one instead); flags may change the learning rate, clipping, length,
cadences, EMA and backend of a resumed run. --stop-after and --minutes end the run early, with a checkpoint.
Ctrl-C finishes the current step and writes a checkpoint; a second Ctrl-C exits at once.`,
  },
  sample: {
    usage: 'tessera sample --run DIR [--checkpoint DIR] [--n 16] [--steps N] [--seed 0] [--out FILE.png] [--backend cpu|webgpu|reference]',
    about: `Samples a grid of n images with the EMA weights of a checkpoint (the newest of --run, or --checkpoint) with the model's
sampler: EDM's Heun sampler (default 18 steps) for patch and edm models, the scale-by-scale Euler-Maruyama sampler
(default 20 steps per scale) for msdiff models, DDIM (eta 0, default 100 steps) for maskdm models.`,
  },
  eval: {
    usage: EVAL_USAGE,
    about: 'Samples N images from a checkpoint and writes FD, KID, precision and recall against real images (classifier features) as JSON.',
  },
  info: {
    usage: 'tessera info',
    about: 'Lists the backends, which one is the default and why, and what each reports (adapter, limits, threads).',
  },
} as const;

const USAGE = `usage:\n${Object.values(COMMANDS).map((c) => `  ${c.usage}`).join('\n')}
  tessera --version
Run 'tessera <command> --help' for what a command does.`;

/** `tessera --help`: the commands, the exit codes. */
const HELP = `Tessera: diffusion models on a pure-functional tensor library (CPU and WebGPU).

${USAGE}

Exit codes: 0 done, 1 failed (the message says what and where), 2 the command line was wrong,
130/143 stopped by SIGINT/SIGTERM after writing a checkpoint.`;

const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

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
      if (value === undefined) throw new UsageError(`--${m[1]} needs a value\n${USAGE}`);
      opts.set(m[1]!, value);
    } else if (arg.startsWith('--') && (arg.includes('.') || arg.startsWith('--backend='))) {
      rest.push(arg);
    } else {
      throw new UsageError(`unknown argument '${arg}'\n${USAGE}`);
    }
  }
  return { opts, rest };
}

/** An integer option within [min, max] (inclusive; max may be Infinity), or its default when absent. */
function intInRange(name: string, value: string | undefined, dflt: number, min: number, max = Infinity): number {
  if (value === undefined) return dflt;
  const n = value.trim() === '' ? NaN : Number(value);
  const range = max === Infinity ? `>= ${min}` : `in [${min}, ${max}]`;
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name}: expected an integer ${range}, got '${value}'`);
  return n;
}

/**
 * The config of a run: a new run's from `--config` and flags; a resumed run's from `--config` and
 * flags if a file is given, else from the run's own config.json with the flags applied on top.
 * Either way the run compares it with the checkpoint's: the fields a resume may change are taken
 * (and recorded in history.jsonl), the others are refused by name.
 */
async function trainingConfig(runDir: string, resume: boolean, file: string | undefined, flags: readonly string[]): Promise<TrainingConfig> {
  if (!resume || file !== undefined) return orThrow(await loadConfig(file, flags));
  const saved = await readJsonFile(join(runDir, 'config.json'));
  return orThrow(resolveConfig(saved, orThrow(parseOverrides(flags))));
}

/** Exit codes after a signal, by the shell's convention (128 + the signal's number). */
const SIGNAL_EXIT: Readonly<Record<string, number>> = { SIGINT: 130, SIGTERM: 143 };

async function train(argv: readonly string[]): Promise<void> {
  const { opts, rest } = parseArgs(argv, ['config', 'run', 'stop-after', 'minutes', 'grid', 'backend'], ['resume', 'strict']);
  if (opts.has('backend')) rest.push(`--backend=${opts.get('backend')}`);
  const resume = opts.get('resume') === 'true';
  if (opts.has('strict') && !resume) throw new UsageError(`--strict: only means something with --resume (stop at a corrupt newest checkpoint)\n${USAGE}`);
  // Checked before anything is loaded or printed.
  const stopAfter = opts.has('stop-after') ? intInRange('stop-after', opts.get('stop-after'), 0, 0) : undefined;
  const stopAfterSeconds = opts.has('minutes') ? 60 * intInRange('minutes', opts.get('minutes'), 0, 0) : undefined;
  const gridSamples = intInRange('grid', opts.get('grid'), 16, 0);
  const runDir = resolve(opts.get('run') ?? join('runs', new Date().toISOString().replace(/[:.]/g, '-')));
  const config = await trainingConfig(runDir, resume, opts.get('config'), rest);

  // The first SIGINT/SIGTERM finishes the step in progress, writes a checkpoint and exits with
  // 130/143; a second one exits at once (the newest complete checkpoint is intact either way).
  const stop = new AbortController();
  let received: string | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    if (received !== undefined) {
      console.error(`\ntessera: ${signal} again: exiting at once; the newest complete checkpoint in ${runDir} is intact`);
      process.exit(SIGNAL_EXIT[signal] ?? 1);
    }
    received = signal;
    console.error(`\ntessera: ${signal} received: finishing the current step and writing a checkpoint (send ${signal === 'SIGINT' ? 'Ctrl-C' : signal} again to exit at once)`);
    stop.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  console.log(`tessera: training ${trainingMethod(config).description} on ${config.data.name}, run folder ${runDir}`);
  const result = await trainRun({
    runDir, config, resume, progress: true, signal: stop.signal, strict: opts.get('strict') === 'true',
    stopAfter, stopAfterSeconds, gridSamples,
  });
  const last = result.log.at(-1);
  console.log(`tessera: ${result.step} steps on ${result.backend}; last loss ${last?.loss.toPrecision(4) ?? '?'}, ${last?.images_per_s.toFixed(1) ?? '?'} img/s`);
  if (result.stoppedEarly === 'signal' && received !== undefined) {
    console.log(`tessera: stopped by ${received} after step ${result.step}; checkpoint ${result.checkpoint ?? '(none)'}. Continue with: tessera train --run ${runDir} --resume`);
    process.exit(SIGNAL_EXIT[received] ?? 1);
  }
  console.log(`tessera: samples and loss plot in ${runDir} (samples-*.png, loss.svg), log in ${join(runDir, 'log.jsonl')}`);
}


async function sample(argv: readonly string[]): Promise<void> {
  const { opts } = parseArgs(argv, ['run', 'checkpoint', 'n', 'steps', 'seed', 'out', 'backend']);
  // Checked before anything is loaded: a bad number should not cost a checkpoint read to report.
  const count = intInRange('n', opts.get('n'), 16, 1, 1024);
  const steps = opts.has('steps') ? intInRange('steps', opts.get('steps'), 0, 1, 1000) : undefined;
  const seed = intInRange('seed', opts.get('seed'), 0, 0, 2 ** 31 - 1);
  const run = opts.get('run');
  const dir = opts.get('checkpoint') ?? (run === undefined ? undefined : await latestCheckpoint(resolve(run)));
  if (dir === undefined) throw new UsageError(`sample: give --run DIR (with a checkpoint) or --checkpoint DIR\n${USAGE}`);
  const ck = orThrow(await loadCheckpoint(dir));
  const config = orThrow(resolveConfig(ck.config, {}));
  const method = trainingMethod(config);
  const ema = restoreLike(method.initState().ema, ck.trees['ema'] ?? {}, `${dir} ema`);
  const png = await sampleGrid(method, ema, config, count, steps ?? method.defaultSampleSteps, seed, opts.get('backend') ?? config.backend);
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

const wantsHelp = (args: readonly string[]) => args.includes('--help') || args.includes('-h');

async function main(argv: readonly string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === undefined) throw new UsageError(USAGE);
  if (command === '--help' || command === '-h' || command === 'help') return void console.log(HELP);
  if (command === '--version' || command === '-V') return void console.log(`tessera ${VERSION}`);
  if (command in COMMANDS && wantsHelp(rest)) {
    const c = COMMANDS[command as keyof typeof COMMANDS];
    return void console.log(`usage: ${c.usage}\n\n${c.about}`);
  }
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
      throw new UsageError(`unknown command '${command}'\n${USAGE}`);
  }
}

try {
  await main(process.argv.slice(2));
  process.exit(0);
} catch (e) {
  console.error(`tessera: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(e instanceof UsageError ? 2 : 1);
}
