/** Every TypeScript snippet in the README runs as written (on the default backend) and exits cleanly. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const root = join(import.meta.dirname, '..');
const readme = await readFile(join(root, 'README.md'), 'utf8');
const snippets = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);

test('the README has runnable snippets', () => {
  assert.ok(snippets.length >= 4, `found ${snippets.length} snippets`);
});

snippets.forEach((code, i) => {
  const title = code.split('\n').find((l) => l.startsWith('import'))?.slice(0, 60) ?? '';
  test(`README snippet ${i + 1} runs: ${title}`, async () => {
    // Inside the package, so `import ... from 'tessera'` resolves to this checkout: to its sources
    // under the `tessera-source` condition (package.json's exports), not to a build in dist/.
    const dir = join(root, 'tests', '.readme');
    await mkdir(dir, { recursive: true });
    const file = join(dir, `snippet-${i + 1}.ts`);
    await writeFile(file, code);
    const { stdout } = await promisify(execFile)(process.execPath, ['--conditions=tessera-source', '--import', 'tsx', file], { cwd: root, timeout: 600_000 });
    assert.ok(stdout.trim().length > 0, 'the snippet printed its result');
    // The DPM-Solver-2 example: a denoiser that broadcast its per-sample sigma against x once made
    // the samples [4096, 4096] while the mean/std check still passed; the shape must be x's.
    if (code.includes('dpmSolver2')) assert.match(stdout, /^shape \[4096, 1\], mean /m);
  });
});
