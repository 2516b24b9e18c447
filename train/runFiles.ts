/**
 * The run folder's plain files: whole files (config.json, loss.svg, sample grids) are replaced
 * atomically; JSON-lines files (log.jsonl, history.jsonl) are appended one line at a time, so a
 * crash can only tear their final line. Reading drops a torn final line with a warning; any other
 * problem is an error naming the file and the line.
 */
import { appendFile, readFile } from 'node:fs/promises';
import { writeFileAtomic } from './atomicFile.ts';
import { TrainingError } from './errors.ts';

/** Replaces a text file atomically (temp file, fsync, rename). */
export async function writeTextAtomic(path: string, text: string): Promise<void> {
  await writeFileAtomic(path, new TextEncoder().encode(text));
}

/** Appends one JSON value as a line. */
export async function appendJsonLine(path: string, value: unknown): Promise<void> {
  await appendFile(path, `${JSON.stringify(value)}\n`);
}

/** Reads a JSON file; an error names the file. */
export async function readJsonFile(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new TrainingError(`${path}: cannot be read (${(e as Error).message})`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new TrainingError(`${path}: not valid JSON (${text.trim() === '' ? 'the file is empty' : (e as Error).message})`);
  }
}

/**
 * Reads a JSON-lines file written by `appendJsonLine`; a missing file reads as no lines. The final
 * line is torn when a writer stopped in the middle of it (no newline after it, or not JSON): it is
 * dropped, and `warn` says so. Any earlier line that is not JSON is an error naming file and line.
 */
export async function readJsonLines(path: string, warn: (message: string) => void): Promise<unknown[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new TrainingError(`${path}: cannot be read (${(e as Error).message})`);
  }
  const lines = text.split('\n');
  const complete = lines.slice(0, -1);
  const tail = lines.at(-1)!;
  const out: unknown[] = [];
  complete.forEach((line, i) => {
    if (line.trim() === '') return;
    try {
      out.push(JSON.parse(line));
    } catch (e) {
      if (i === complete.length - 1 && tail === '') {
        warn(`${path}: dropping its last line ${i + 1}, torn by an interrupted write (${(e as Error).message})`);
        return;
      }
      throw new TrainingError(`${path}: line ${i + 1} is not valid JSON (${(e as Error).message})`);
    }
  });
  if (tail.trim() !== '') warn(`${path}: dropping its last line ${lines.length}, torn by an interrupted write (no newline at its end)`);
  return out;
}
