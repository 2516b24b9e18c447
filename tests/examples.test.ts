/**
 * Every runnable example (examples/*.ts, models/examples/*.ts) runs as its header says and exits
 * cleanly; the examples check their own results (a loop against vmap, dense against matrix-free
 * Hessian products, a sampler's moments) and throw when they disagree.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';

const root = join(import.meta.dirname, '..');
const files = [
  ...(await readdir(join(root, 'examples'))).map((f) => join('examples', f)),
  ...(await readdir(join(root, 'models', 'examples'))).map((f) => join('models', 'examples', f)),
].filter((f) => f.endsWith('.ts'));

test('there are examples to run', () => assert.ok(files.length >= 4, `found ${files}`));

for (const file of files) {
  test(`example ${file} runs`, async () => {
    const { stdout } = await promisify(execFile)(process.execPath, ['--conditions=tessera-source', '--import', 'tsx', file], { cwd: root, timeout: 300_000 });
    assert.ok(stdout.trim().length > 0, 'the example printed its result');
  });
}
