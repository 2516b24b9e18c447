/**
 * One trainer per run folder. A trainer holds `run/lock`, a small JSON file naming its process id,
 * host and start time. The file is written completely under a temporary name and then hard-linked
 * to `lock`: the link fails if `lock` exists (the same exclusivity as O_EXCL), and a lock that
 * exists is never half-written, even after a crash or `kill -9`.
 *
 * A lock left by a process that no longer runs on this host is stale: it is taken over, with a
 * message. A lock held by a live process, or by a process on another host (whose liveness cannot
 * be checked from here), stops the second trainer with a message naming both.
 */
import { randomBytes } from 'node:crypto';
import { unlinkSync, readFileSync } from 'node:fs';
import { link, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { TrainingError } from './errors.ts';

export const LOCK_FILE = 'lock';

interface LockOwner {
  readonly pid: number;
  readonly host: string;
  readonly started: string;
  /** Tells two holders with the same pid apart (a pid reused after a reboot). */
  readonly token: string;
}

export interface RunLock {
  readonly path: string;
  /** Removes the lock if it is still ours. */
  release(): Promise<void>;
}

/** Whether a process with this pid runs on this host (EPERM: it runs, as another user). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function parseOwner(text: string): LockOwner | undefined {
  try {
    const o = JSON.parse(text) as Partial<LockOwner>;
    return typeof o.pid === 'number' && typeof o.host === 'string' && typeof o.token === 'string'
      ? { pid: o.pid, host: o.host, started: String(o.started ?? '?'), token: o.token }
      : undefined;
  } catch {
    return undefined;
  }
}

const describe = (o: LockOwner) => `process ${o.pid} on host ${o.host}, since ${o.started}`;

/**
 * Takes the run folder's lock or throws a TrainingError naming its holder. `warn` hears about a
 * stale lock taken over.
 */
export async function acquireRunLock(runDir: string, warn: (message: string) => void): Promise<RunLock> {
  const path = join(runDir, LOCK_FILE);
  const me: LockOwner = { pid: process.pid, host: hostname(), started: new Date().toISOString(), token: randomBytes(8).toString('hex') };
  const temp = join(runDir, `.lock.${me.token}.tmp`);
  await writeFile(temp, `${JSON.stringify(me)}\n`);
  try {
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await link(temp, path);
        return ownLock(path, me);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      const text = await readFile(path, 'utf8').catch(() => undefined);
      if (text === undefined) continue; // released meanwhile: try again
      const owner = parseOwner(text);
      if (owner === undefined) {
        throw new TrainingError(`${path}: the run folder is locked, but the lock file is not one of ours (${JSON.stringify(text.slice(0, 80))}); remove it if no trainer uses ${runDir}`);
      }
      if (owner.host !== me.host) {
        throw new TrainingError(`${runDir} is in use by another trainer (${describe(owner)}); this host (${me.host}) cannot tell whether it still runs. Remove ${path} if it does not.`);
      }
      if (alive(owner.pid)) {
        throw new TrainingError(`${runDir} is in use by another trainer (${describe(owner)}); wait for it to finish or stop it first (one trainer per run folder).`);
      }
      // Stale. Move it aside, and make sure what we moved is the lock we judged (not a new one).
      const aside = join(runDir, `.lock.stale.${me.token}`);
      try {
        await rename(path, aside);
      } catch {
        continue;
      }
      const moved = parseOwner(await readFile(aside, 'utf8').catch(() => ''));
      if (moved?.token !== owner.token) {
        await rename(aside, path).catch(() => undefined);
        continue;
      }
      await rm(aside, { force: true });
      warn(`taking over the lock of ${runDir}: it was held by ${describe(owner)}, which no longer runs`);
    }
    throw new TrainingError(`${path}: could not take the run folder's lock (other trainers keep taking it)`);
  } finally {
    await rm(temp, { force: true });
  }
}

function ownLock(path: string, me: LockOwner): RunLock {
  const ours = (text: string) => parseOwner(text)?.token === me.token;
  // A process that exits without releasing (an uncaught error, a second Ctrl-C) still frees it.
  const onExit = () => {
    try {
      if (ours(readFileSync(path, 'utf8'))) unlinkSync(path);
    } catch {
      // Already gone.
    }
  };
  process.once('exit', onExit);
  return {
    path,
    release: async () => {
      process.removeListener('exit', onExit);
      if (ours(await readFile(path, 'utf8').catch(() => ''))) await rm(path, { force: true });
    },
  };
}
