/**
 * The package as a user gets it: `npm pack`'s tarball installed into a fresh project, imported
 * from plain JavaScript (no tsx, no TypeScript) and from a strict TypeScript project made by
 * `tsc --init` (module nodenext), which brings its own fast-check for `tessera/testing`.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';

const root = join(import.meta.dirname, '..');
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
const run = promisify(execFile);
const npm = (args: readonly string[], cwd: string) => run('npm', [...args], { cwd, timeout: 180_000, maxBuffer: 64 << 20 });
const node = (args: readonly string[], cwd: string) => run(process.execPath, [...args], { cwd, timeout: 120_000 });

const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { version: string; devDependencies: Record<string, string> };
let work = '';
let project = '';
let packed: { filename: string; size: number; files: { path: string }[] };

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'tessera-package-'));
  project = join(work, 'project');
  await npm(['run', 'build'], root);
  const { stdout } = await npm(['pack', '--ignore-scripts', '--json', '--pack-destination', work], root);
  packed = (JSON.parse(stdout) as (typeof packed)[])[0]!;
  await run('mkdir', [project]);
  await writeFile(join(project, 'package.json'), JSON.stringify({ name: 'user-project', private: true, type: 'module' }));
  await npm(['install', '--no-audit', '--no-fund', '--prefer-offline', join(work, packed.filename), `fast-check@${pkg.devDependencies['fast-check']}`], project);
});

after(async () => {
  if (work !== '') await rm(work, { recursive: true, force: true });
});

test('the tarball holds the compiled package, not the sources or the tests', () => {
  const paths = packed.files.map((f) => f.path);
  for (const required of ['dist/index.js', 'dist/index.d.ts', 'dist/autodiff/arbitraries.d.ts', 'dist/train/cli.js', 'dist/backends/cpu/worker.js', 'bin/tessera.js']) {
    assert.ok(paths.includes(required), `${required} is packed`);
  }
  const unexpected = paths.filter((p) => !(p.startsWith('dist/') || ['bin/tessera.js', 'package.json', 'README.md', 'LICENSE'].includes(p)));
  assert.deepEqual(unexpected, [], 'only dist/, the command and the package files');
  assert.deepEqual(paths.filter((p) => p.endsWith('.ts') && !p.endsWith('.d.ts')), [], 'no TypeScript sources');
  assert.ok(packed.size < 2_000_000, `the tarball is ${packed.size} bytes`);
});

test('installing it brings no development tools, and one fast-check', () => {
  for (const tool of ['tsx', 'typescript', 'typedoc', 'esbuild']) assert.ok(!existsSync(join(project, 'node_modules', tool)), `${tool} is not installed`);
  assert.ok(!existsSync(join(project, 'node_modules', 'tessera', 'node_modules', 'fast-check')), 'tessera/testing uses the project\'s fast-check');
});

test('plain node imports every public entry point and computes with it', async () => {
  await writeFile(join(project, 'app.mjs'), `
import { grad, random, square, sum, tensor } from 'tessera';
import { adam, applyUpdates, chain, clipByGlobalNorm } from 'tessera/optim';
import { edmLoss } from 'tessera/losses';
import { pixelDataset, takeBatch } from 'tessera/data';
import { treeFromSafetensors, treeToSafetensors } from 'tessera/io';

const loss = (p) => sum(square(p.w));
const dx = await grad((x) => sum(square(x)))(tensor([3])).item();
const opt = chain(clipByGlobalNorm(10), adam({ lr: 0.1 }));
const params = { w: tensor([1, 2]) };
const [updates] = opt.update(grad(loss)(params), opt.init(params), params);
const stepped = Array.from(await applyUpdates(params, updates).w.data());
const edm = await edmLoss((x) => x, tensor([[[[0.5]]]]), random.key(7)).item();
const ds = pixelDataset({ count: 2, channels: 1, height: 1, width: 2, pixels: new Uint8Array([0, 255, 255, 0]) });
const batch = takeBatch(ds, { seed: 1, position: 0, batchSize: 2 });
const file = await treeToSafetensors({ a: { b: tensor([1.5, -2]) } });
const back = treeFromSafetensors(file, 'memory');
if (back._tag === 'Left') throw back.left;
const restored = Array.from(await back.right.tree.a.b.data());
console.log(JSON.stringify({ dx, stepped, edm, shape: batch.shape, restored }));
`);
  const { stdout } = await node(['app.mjs'], project);
  const out = JSON.parse(stdout) as { dx: number; stepped: number[]; edm: number; shape: number[]; restored: number[] };
  assert.equal(out.dx, 6, 'd/dx x^2 at 3');
  // Adam's first step moves each weight by lr against the sign of its gradient.
  out.stepped.forEach((w, i) => assert.ok(Math.abs(w - [0.9, 1.9][i]!) < 1e-5, `adam stepped to ${out.stepped}`));
  assert.ok(Number.isFinite(out.edm) && out.edm > 0, `edm loss ${out.edm}`);
  assert.deepEqual(out.shape, [2, 1, 1, 2]);
  assert.deepEqual(out.restored, [1.5, -2]);
});

test('the tessera command runs the compiled command line', async () => {
  const { stdout } = await node([join(project, 'node_modules', 'tessera', 'bin', 'tessera.js'), '--version'], project);
  assert.equal(stdout.trim(), `tessera ${pkg.version}`);
});

test('a strict TypeScript project (tsc --init) typechecks against the declarations and runs', async () => {
  await node([tsc, '--init'], project);
  await writeFile(join(project, 'app.ts'), `
import fc from 'fast-check';
import { checkGrad, grad, square, sum, tensor, type Tensor } from 'tessera';
import { arbShape, arbTensor } from 'tessera/testing';
import { adam, chain, clipByGlobalNorm, type GradientTransformation } from 'tessera/optim';
import { edmLoss, type EdmLossOptions } from 'tessera/losses';
import { batches, type Dataset } from 'tessera/data';
import { loadCheckpoint, type CheckpointState } from 'tessera/io';

const dx: Tensor = grad((x: Tensor) => sum(square(x)))(tensor([3]));
const opt: GradientTransformation = chain(clipByGlobalNorm(1), adam({ lr: 1e-3 }));
const options: EdmLossOptions = { pMean: -1.2, pStd: 1.2, sigmaData: 0.5 };
const uses = [opt, options, edmLoss, batches, loadCheckpoint] as const;
const typesOnly: [Dataset?, CheckpointState?] = [];
await fc.assert(
  fc.asyncProperty(arbTensor({ shapeArb: arbShape({ maxRank: 2 }) }), async (x) => {
    await checkGrad((t: Tensor) => sum(square(t)), [x]);
  }),
  { numRuns: 3 },
);
console.log(JSON.stringify({ dx: await dx.item(), uses: uses.length, typesOnly: typesOnly.length }));
`);
  // Declarations are checked too (tsc --init skips them), so a broken .d.ts cannot hide.
  await node([tsc, '-p', '.', '--skipLibCheck', 'false'], project);
  const { stdout } = await node(['app.js'], project);
  assert.deepEqual(JSON.parse(stdout), { dx: 6, uses: 5, typesOnly: 0 });
});
