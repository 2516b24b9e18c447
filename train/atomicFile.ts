/**
 * Crash-safe file replacement: write a temporary file in the same folder, flush it to disk, rename
 * it over the target (atomic on POSIX within one file system), then flush the folder so the rename
 * itself survives a power loss. A reader sees the old file or the new one, never a partial one.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Creates `path` holding `bytes` and flushes it to disk. Replaceable in tests to simulate failures. */
export type FileWriter = (path: string, bytes: Uint8Array) => Promise<void>;

export const writeAndSync: FileWriter = async (path, bytes) => {
  const handle = await open(path, 'wx');
  try {
    await handle.writeFile(bytes);
    await handle.sync();
  } finally {
    await handle.close();
  }
};

/** Flushes a folder's entries (new names, renames, deletions). */
export async function syncDir(dir: string): Promise<void> {
  let handle;
  try {
    handle = await open(dir, 'r');
    await handle.sync();
  } catch (e) {
    // Some platforms (Windows) cannot open or flush a folder; the rename is still atomic there.
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EISDIR' && code !== 'EPERM' && code !== 'EINVAL' && code !== 'EBADF') throw e;
  } finally {
    await handle?.close();
  }
}

export async function writeFileAtomic(path: string, bytes: Uint8Array, write: FileWriter = writeAndSync): Promise<void> {
  const temp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    await write(temp, bytes);
    await rename(temp, path);
  } catch (e) {
    await rm(temp, { force: true });
    throw e;
  }
  await syncDir(dirname(path));
}
