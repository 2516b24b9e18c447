/** Runs `tessera train` in a child process, for tests of locks, signals and kills. */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';

export const repoRoot = resolve(import.meta.dirname, '..', '..');

export interface Trainer {
  readonly child: ChildProcess;
  /** Resolves with the exit code (or 128 + n for a signal) and everything printed. */
  readonly exited: Promise<{ code: number; stdout: string; stderr: string }>;
  /** Resolves once the trainer has printed text matching `pattern` (on stdout or stderr). */
  printed(pattern: RegExp, timeoutMs?: number): Promise<void>;
}

const SIGNALS: Readonly<Record<string, number>> = { SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

/** Starts `tessera train --config <config> --run <runDir> --grid 0 ...args`. */
export async function startTrainer(runDir: string, userConfig: unknown, args: readonly string[] = []): Promise<Trainer> {
  const configPath = `${runDir}.config.json`;
  await writeFile(configPath, JSON.stringify(userConfig));
  const child = spawn(process.execPath, [join(repoRoot, 'bin', 'tessera.js'), 'train', '--config', configPath, '--run', runDir, '--grid', '0', ...args], { cwd: repoRoot });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number; stdout: string; stderr: string }>((ok) => {
    child.on('exit', (code, signal) => ok({ code: code ?? 128 + (SIGNALS[signal ?? ''] ?? 0), stdout, stderr }));
  });
  const printed = async (pattern: RegExp, timeoutMs = 60_000) => {
    const until = Date.now() + timeoutMs;
    while (!pattern.test(stdout + stderr)) {
      if (Date.now() > until || child.exitCode !== null || child.signalCode !== null) throw new Error(`trainer did not print ${pattern}:\n${stdout}\n${stderr}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  return { child, exited, printed };
}

/** Waits until the run's log has at least `lines` lines (the trainer is inside its training loop). */
export async function waitForLogLines(runDir: string, lines: number, timeoutMs = 60_000): Promise<number> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const text = await readFile(join(runDir, 'log.jsonl'), 'utf8').catch(() => '');
    const n = text.split('\n').filter((l) => l.endsWith('}')).length;
    if (n >= lines) return n;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${runDir}: no ${lines} log lines after ${timeoutMs} ms`);
}
