/** The command line's manners: help and version on stdout with exit 0, usage errors on stderr with exit 2, plain progress lines in a log. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { repoRoot, startTrainer } from './trainerProcess.ts';
import { tinyUserConfig } from './tinyRun.ts';

async function tessera(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [join(repoRoot, 'bin', 'tessera.js'), ...args], { cwd: repoRoot, timeout: 120_000 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

test('tessera --help, -h, <command> --help and --version answer on stdout and exit 0', { timeout: 120_000 }, async () => {
  for (const flag of ['--help', '-h', 'help']) {
    const r = await tessera(flag);
    assert.equal(r.code, 0, flag);
    assert.match(r.stdout, /^usage:$/m);
    assert.match(r.stdout, /^ {2}tessera train \[--config FILE\]/m);
    assert.match(r.stdout, /Exit codes: 0 done, 1 failed/);
  }
  for (const command of ['train', 'sample', 'eval', 'info']) {
    const r = await tessera(command, '--help');
    assert.equal(r.code, 0, command);
    assert.match(r.stdout, new RegExp(`^usage: tessera ${command}`));
  }
  const version = JSON.parse(await readFile(join(repoRoot, 'package.json'), 'utf8')).version as string;
  assert.equal((await tessera('--version')).stdout, `tessera ${version}\n`);
});

test('a wrong command line is named on stderr with the usage, exit code 2; a failure exits 1', { timeout: 120_000 }, async () => {
  const none = await tessera();
  assert.equal(none.code, 2);
  assert.match(none.stderr, /^tessera: usage:/);
  const unknown = await tessera('trian');
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /^tessera: unknown command 'trian'$/m);
  const flag = await tessera('train', '--epochs', '3');
  assert.equal(flag.code, 2);
  assert.match(flag.stderr, /^tessera: unknown argument '--epochs'$/m);
  const badNumber = await tessera('train', '--stop-after', 'x', '--run', join(tmpdir(), 'tessera-cli-never-made'));
  assert.equal(badNumber.code, 2);
  assert.match(badNumber.stderr, /^tessera: --stop-after: expected an integer >= 0, got 'x'$/m);
  assert.equal(badNumber.stdout, '', 'nothing starts before the numbers are checked');
  const missing = await tessera('eval', '--samples', '4');
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /eval: --checkpoint is required/);
  const failed = await tessera('sample', '--checkpoint', join(tmpdir(), 'tessera-no-such-checkpoint-cli'));
  assert.equal(failed.code, 1);
});

test('progress into a pipe is plain lines (no carriage returns), the first at once and the last at the end', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tessera-cli-'));
  try {
    const trainer = await startTrainer(join(dir, 'run'), tinyUserConfig({ steps: 4 }));
    const { code, stderr } = await trainer.exited;
    assert.equal(code, 0, stderr);
    assert.ok(!stderr.includes('\r'), JSON.stringify(stderr));
    assert.match(stderr, /^step 1\/4 \| loss [\d.e+-]+ \| [\d.]+ img\/s \| patch \d+x\d+ \| ETA /m);
    assert.match(stderr, /^step 4\/4 \| /m);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
