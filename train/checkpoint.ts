/**
 * Checkpoints: one folder per step under a run folder,
 *
 *   run/checkpoint-000012000/{params,ema,optimizer}.safetensors
 *   run/checkpoint-000012000/manifest.json
 *
 * Each pytree (params, EMA, optimizer state, or any other named tree) is one safetensors file. The
 * manifest records everything else a resumed run needs to continue exactly (step, PRNG key, data
 * position), the config the run was started with, and each file's size and SHA-256.
 *
 * A checkpoint is complete exactly when its manifest exists. Every file is written atomically
 * (temp file, fsync, rename) and the manifest goes last, so a crash at any point leaves either the
 * previous checkpoints untouched plus an incomplete folder that is ignored and later removed, or
 * a complete new checkpoint. Older checkpoints are pruned only after the new manifest is on disk,
 * and pruning deletes a manifest before the files it points to. `writeCheckpointFiles` splits the
 * write from the commit (the manifest), so a trainer can hold a checkpoint back until it knows the
 * state is good; `setAsideCheckpoint` renames a bad one out of the way rather than deleting it.
 */
import { createHash } from 'node:crypto';
import { statfsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { left, right, type Either } from 'fp-ts/lib/Either.js';
import { tensor } from '../core/ops.ts';
import type { PyTree } from '../core/pytree.ts';
import type { Tensor } from '../core/tensor.ts';
import { writeFileAtomic, syncDir, writeAndSync, type FileWriter } from './atomicFile.ts';
import { jsonValue } from './codecs.ts';
import { formatDecodeErrors } from './decodeErrors.ts';
import { parseJsonBounded } from './jsonScan.ts';
import { CheckpointError } from './errors.ts';
import { FORMAT, Manifest, VERSION } from './manifest.ts';
import { treeFromSafetensors, treeToSafetensors } from './stateDict.ts';

export const MANIFEST = 'manifest.json';
const DIR_PATTERN = /^checkpoint-(\d+)$/;
const TREE_NAME = /^[A-Za-z][A-Za-z0-9_-]*$/;

/** What a checkpoint holds. `trees` is typically {params, ema, optimizer}. */
export interface CheckpointState {
  readonly step: number;
  readonly config: unknown;
  /** The run's PRNG key: an int32 tensor of shape [2]. */
  readonly prngKey: Tensor;
  /** Where the data stream stands (e.g. a `batches` position); any JSON. */
  readonly dataPosition: unknown;
  readonly trees: Readonly<Record<string, PyTree<Tensor>>>;
}

/** Options of `saveCheckpoint`: how many checkpoints to keep. */
export interface SaveOptions {
  /** How many complete checkpoints to keep, newest first (default 3; at least 1). */
  readonly keep?: number;
  /** Writes and flushes one new file; replaced in tests to simulate a crash. */
  readonly writeFile?: FileWriter;
}

/**
 * The folder of the checkpoint of `step` under `runDir`: `run/checkpoint-000012000`.
 * @example
 * checkpointDir('runs/mine', 12000);                  // 'runs/mine/checkpoint-000012000'
 */
export function checkpointDir(runDir: string, step: number): string {
  return join(runDir, `checkpoint-${String(step).padStart(9, '0')}`);
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

/**
 * A checkpoint whose files are on disk but whose manifest is not: invisible to `listCheckpoints`
 * until `commit` writes the manifest (and prunes older checkpoints). A run holds one back until the
 * next step has shown that the state it holds trains on (a finite loss).
 */
export interface PendingCheckpoint {
  readonly dir: string;
  readonly step: number;
  /** Writes the manifest, then prunes to the newest `keep`. Returns the folder. */
  commit(): Promise<string>;
  /** Removes the incomplete folder. */
  abandon(): Promise<void>;
}

/**
 * Writes a checkpoint for `state.step`, then prunes to the newest `keep`. Returns its folder.
 * @example
 * ```ts
 * await saveCheckpoint('runs/mine', { step, config, prngKey: key, dataPosition: batch.position, trees: { params, ema, optimizer: state } });
 * const last = await latestCheckpoint('runs/mine');
 * const loaded = last === undefined ? undefined : orThrow(await loadCheckpoint(last, { expectedConfig: config }));
 * ```
 */
export async function saveCheckpoint(runDir: string, state: CheckpointState, options: SaveOptions = {}): Promise<string> {
  return (await writeCheckpointFiles(runDir, state, options)).commit();
}

/**
 * Writes a checkpoint's tensor files but not its manifest. On a failed write (disk full, no
 * permission) the new folder and its temporary files are removed, earlier checkpoints are left as
 * they were, and the error names the folder and the bytes the checkpoint needs.
 * @example
 * const pending = await writeCheckpointFiles('runs/mine', { step, config, prngKey: key, dataPosition, trees: { params } });
 * if (await lossIsFinite()) await pending.commit(); else await pending.abandon();
 */
export async function writeCheckpointFiles(runDir: string, state: CheckpointState, options: SaveOptions = {}): Promise<PendingCheckpoint> {
  const keep = options.keep ?? 3;
  const write = options.writeFile ?? writeAndSync;
  if (!Number.isInteger(keep) || keep < 1) throw new CheckpointError(`saveCheckpoint: keep must be an integer >= 1, got ${keep}`);
  if (!Number.isInteger(state.step) || state.step < 0) throw new CheckpointError(`saveCheckpoint: step must be an integer >= 0, got ${state.step}`);
  if (state.prngKey.dtype !== 'int32' || state.prngKey.size !== 2) {
    throw new CheckpointError(`saveCheckpoint: the PRNG key must be an int32 tensor of shape [2], got ${state.prngKey.toString()}`);
  }
  for (const name of Object.keys(state.trees)) {
    if (!TREE_NAME.test(name)) throw new CheckpointError(`saveCheckpoint: tree name '${name}' must match ${TREE_NAME} (it becomes a file name)`);
  }
  for (const [what, value] of [['config', state.config], ['dataPosition', state.dataPosition]] as const) {
    if (!jsonValue.is(value)) throw new CheckpointError(`saveCheckpoint: ${what} is not plain JSON`);
  }

  const dir = checkpointDir(runDir, state.step);
  const treeNames = Object.keys(state.trees).sort();
  const files: { name: string; sha256: string; bytes: number }[] = [];
  const failed = async (e: unknown, what: string): Promise<never> => {
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    const written = files.reduce((n, f) => n + f.bytes, 0);
    let rest = 0;
    for (const name of treeNames.slice(files.length)) rest += (await treeToSafetensors(state.trees[name]!)).length;
    throw writeFailure(e, dir, what, written + rest + 4096);
  };

  try {
    await mkdir(dir, { recursive: true });
    // Re-saving a step: the old manifest must go before any file it vouches for is replaced.
    if (await exists(join(dir, MANIFEST))) {
      await rm(join(dir, MANIFEST));
      await syncDir(dir);
    }
  } catch (e) {
    return failed(e, dir);
  }
  for (const treeName of treeNames) {
    const bytes = await treeToSafetensors(state.trees[treeName]!, { format: FORMAT, tree: treeName, step: String(state.step) });
    const name = `${treeName}.safetensors`;
    try {
      await writeFileAtomic(join(dir, name), bytes, write);
    } catch (e) {
      return failed(e, join(dir, name));
    }
    files.push({ name, sha256: sha256(bytes), bytes: bytes.length });
  }
  const manifest: Manifest = {
    format: FORMAT,
    version: VERSION,
    step: state.step,
    config: state.config,
    prng_key: Array.from(await state.prngKey.data()) as [number, number],
    data_position: state.dataPosition,
    files,
    created: new Date().toISOString(),
  };
  const manifestBytes = new TextEncoder().encode(`${JSON.stringify(manifest, null, 2)}\n`);
  return {
    dir,
    step: state.step,
    commit: async () => {
      try {
        await writeFileAtomic(join(dir, MANIFEST), manifestBytes, write);
        await syncDir(runDir);
      } catch (e) {
        return failed(e, join(dir, MANIFEST));
      }
      await pruneCheckpoints(runDir, keep, state.step);
      return dir;
    },
    abandon: () => rm(dir, { recursive: true, force: true }),
  };
}

const WRITE_FAILURES: Readonly<Record<string, string>> = {
  ENOSPC: 'no space left on the device',
  EDQUOT: 'the disk quota is exhausted',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'the file system is read-only',
};

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** The error for a checkpoint that could not be written: the folder, the reason, the bytes needed. */
function writeFailure(e: unknown, dir: string, what: string, needed: number): CheckpointError {
  const err = e as NodeJS.ErrnoException;
  const reason = err.code !== undefined && err.code in WRITE_FAILURES ? `${WRITE_FAILURES[err.code]} (${err.code})` : (err.message ?? String(e));
  let free = '';
  try {
    const fs = statfsSync(dirname(dir));
    free = `, ${fs.bavail * fs.bsize} bytes (${mib(fs.bavail * fs.bsize)}) are free there`;
  } catch {
    // statfs is a courtesy; the reason above is what matters.
  }
  return new CheckpointError(
    `cannot write checkpoint ${dir} (at ${what}): ${reason}. The checkpoint needs about ${needed} bytes (${mib(needed)}) in ${dirname(dir)}${free}. ` +
    'Its incomplete folder and temporary files were removed; earlier checkpoints are intact.',
  );
}

/**
 * Moves a checkpoint out of the way, `checkpoint-N` -> `checkpoint-N.<why>` (or `.<why>-2`, ...),
 * so that it is kept for inspection but never listed, resumed, overwritten or pruned. `why` is
 * e.g. 'corrupt' (it fails to load) or 'diverged' (training from it gives a non-finite loss).
 */
export async function setAsideCheckpoint(dir: string, why: string): Promise<string> {
  for (let i = 1; ; i++) {
    const target = `${dir}.${why}${i === 1 ? '' : `-${i}`}`;
    if (await exists(target)) continue;
    await rename(dir, target);
    await syncDir(dirname(dir));
    return target;
  }
}

/**
 * Complete checkpoints (those with a manifest), oldest first.
 * @example
 * for (const { step, dir } of await listCheckpoints('runs/mine')) console.log(step, dir);
 */
export async function listCheckpoints(runDir: string): Promise<{ step: number; dir: string }[]> {
  const names = await readdir(runDir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[];
    throw e;
  });
  const found: { step: number; dir: string }[] = [];
  for (const name of names) {
    const m = DIR_PATTERN.exec(name);
    if (m !== null && (await exists(join(runDir, name, MANIFEST)))) found.push({ step: Number(m[1]), dir: join(runDir, name) });
  }
  return found.sort((a, b) => a.step - b.step);
}

/**
 * The folder of the newest complete checkpoint, or undefined if there is none.
 * @example
 * const last = await latestCheckpoint('runs/mine');   // undefined before the first checkpoint
 */
export async function latestCheckpoint(runDir: string): Promise<string | undefined> {
  return (await listCheckpoints(runDir)).at(-1)?.dir;
}

/**
 * Keeps the newest `keep` complete checkpoints, and removes incomplete folders older than
 * `newestStep` (left by crashes). Incomplete folders at or after it are left alone: they may be
 * in the middle of being written.
 */
async function pruneCheckpoints(runDir: string, keep: number, newestStep: number): Promise<void> {
  const complete = await listCheckpoints(runDir);
  const stale = complete.slice(0, Math.max(0, complete.length - keep));
  for (const { dir } of stale) {
    await rm(join(dir, MANIFEST));
    await syncDir(dir);
    await rm(dir, { recursive: true, force: true });
  }
  const completeDirs = new Set(complete.map((c) => c.dir));
  for (const name of await readdir(runDir)) {
    const m = DIR_PATTERN.exec(name);
    const dir = join(runDir, name);
    if (m !== null && Number(m[1]) < newestStep && !completeDirs.has(dir)) await rm(dir, { recursive: true, force: true });
  }
  await syncDir(runDir);
}

/** A checkpoint read back: its trees, step, config, PRNG key, data position and manifest. */
export interface LoadedCheckpoint {
  readonly dir: string;
  readonly step: number;
  readonly config: unknown;
  readonly prngKey: Tensor;
  readonly dataPosition: unknown;
  readonly trees: Readonly<Record<string, PyTree<Tensor>>>;
  readonly manifest: Manifest;
}

/** Options of `loadCheckpoint`. */
export interface LoadOptions {
  /** When given, the checkpoint's config must equal it (the first differing path is reported). */
  readonly expectedConfig?: unknown;
}

/** Why a folder has no manifest: it does not exist, is not a folder, is a run folder, or is incomplete. */
async function missingManifest(dir: string, manifestPath: string): Promise<string> {
  const info = await stat(dir).catch(() => undefined);
  if (info === undefined) return `${dir}: no such checkpoint folder`;
  if (!info.isDirectory()) return `${dir}: not a folder (a checkpoint is a checkpoint-<step> folder)`;
  const inside = await readdir(dir).catch(() => [] as string[]);
  if (inside.some((name) => DIR_PATTERN.test(name))) return `${dir}: a run folder, not a checkpoint folder (it holds checkpoint-<step> folders; pass one of them)`;
  return `${manifestPath}: missing (the checkpoint is incomplete: its writer stopped before finishing)`;
}

/**
 * Reads a checkpoint folder, verifying the manifest, each file's size and SHA-256, the
 * safetensors structure, and (optionally) the config.
 * @example
 * const loaded = orThrow(await loadCheckpoint('runs/mine/checkpoint-000012000', { expectedConfig: config }));
 * const params = loaded.trees['params'];
 */
export async function loadCheckpoint(dir: string, options: LoadOptions = {}): Promise<Either<CheckpointError, LoadedCheckpoint>> {
  const fail = (msg: string): Either<CheckpointError, LoadedCheckpoint> => left(new CheckpointError(msg));
  const manifestPath = join(dir, MANIFEST);
  let raw: unknown;
  try {
    // Depth-bounded: a hostile manifest must not overflow the stack of what walks it next.
    const parsed = parseJsonBounded(await readFile(manifestPath));
    if (parsed._tag === 'Left') return fail(`${manifestPath}: ${parsed.left}`);
    raw = parsed.right;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    return fail(err.code === 'ENOENT' || err.code === 'ENOTDIR' ? await missingManifest(dir, manifestPath) : `${manifestPath}: cannot be read (${err.message})`);
  }
  const decoded = Manifest.decode(raw);
  if (decoded._tag === 'Left') return fail(`${manifestPath}: ${formatDecodeErrors(decoded.left).join('; ')}`);
  const manifest = decoded.right;

  if ('expectedConfig' in options) {
    const diff = jsonDifference(manifest.config, options.expectedConfig);
    if (diff !== undefined) return fail(`${manifestPath}: the checkpoint was written with another config: ${diff}`);
  }

  const trees: Record<string, PyTree<Tensor>> = {};
  for (const file of manifest.files) {
    const path = join(dir, file.name);
    const treeName = file.name.replace(/\.safetensors$/, '');
    if (!TREE_NAME.test(treeName) || treeName === file.name) return fail(`${manifestPath}: file name '${file.name}' is not <tree>.safetensors`);
    let bytes: Uint8Array;
    try {
      bytes = await readFile(path);
    } catch (e) {
      return fail(`${path}: cannot be read (${(e as Error).message})`);
    }
    if (bytes.length !== file.bytes) return fail(`${path}: ${bytes.length} bytes, but the manifest records ${file.bytes} (truncated or replaced)`);
    const digest = sha256(bytes);
    if (digest !== file.sha256) return fail(`${path}: SHA-256 ${digest} does not match the manifest's ${file.sha256} (the file is corrupt or was modified)`);
    const decodedTree = treeFromSafetensors(bytes, path);
    if (decodedTree._tag === 'Left') return fail(decodedTree.left.message);
    trees[treeName] = decodedTree.right.tree;
  }
  return right({
    dir,
    step: manifest.step,
    config: manifest.config,
    prngKey: tensor(Int32Array.from(manifest.prng_key), [2], 'int32'),
    dataPosition: manifest.data_position,
    trees,
    manifest,
  });
}

function fmtJson(x: unknown): string {
  const s = JSON.stringify(x) ?? 'nothing';
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** The first path where two JSON values differ, e.g. `train.lr: 0.001 vs 0.0002`; undefined if equal. */
export function jsonDifference(actual: unknown, expected: unknown, path = ''): string | undefined {
  const here = path === '' ? '<root>' : path;
  if (Array.isArray(actual) && Array.isArray(expected)) {
    for (let i = 0; i < Math.max(actual.length, expected.length); i++) {
      if (i >= actual.length || i >= expected.length) return `${here}: ${actual.length} elements vs ${expected.length} expected`;
      const d = jsonDifference(actual[i], expected[i], `${path}[${i}]`);
      if (d !== undefined) return d;
    }
    return undefined;
  }
  const isObj = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);
  if (isObj(actual) && isObj(expected)) {
    for (const k of [...new Set([...Object.keys(actual), ...Object.keys(expected)])].sort()) {
      const d = jsonDifference(actual[k], expected[k], path === '' ? k : `${path}.${k}`);
      if (d !== undefined) return d;
    }
    return undefined;
  }
  return actual === expected ? undefined : `${here}: ${fmtJson(actual)} in the checkpoint, ${fmtJson(expected)} expected`;
}
