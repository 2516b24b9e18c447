/**
 * `npm run build`: the package as users install it. tsc compiles the library (tsconfig.build.json)
 * into ESM JavaScript and declaration files under dist/; the sources keep their `.ts` import
 * specifiers and `rewriteRelativeImportExtensions` turns them into `.js` in the emitted JavaScript.
 * Then this script adds what tsc leaves out:
 *   - declaration files keep `.ts` specifiers (tsc does not rewrite them); they are rewritten to
 *     `.js`, so that a TypeScript project of any version or setting reads them;
 *   - files tsc does not compile but the code loads beside itself (`new URL('./x', import.meta.url)`):
 *     the CPU backend's plain-JavaScript worker and math imports, the evaluation classifier's
 *     weights, the configs;
 *   - dist/package.json: `"type": "module"` and the version, which `tessera --version` reads from
 *     the package.json one folder above train/cli.
 */
import { spawnSync } from 'node:child_process';
import { cp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';

const root = join(import.meta.dirname, '..');
const dist = join(root, 'dist');
const config = JSON.parse(await readFile(join(root, 'tsconfig.build.json'), 'utf8')) as { include: string[]; exclude: string[] };

/** A file the build copies as it is: hand-written JavaScript with its declarations, and data. */
const isAsset = (file: string) => /\.(js|d\.ts|json|safetensors)$/.test(file);

async function filesUnder(path: string): Promise<string[]> {
  const entries = await readdir(path, { withFileTypes: true, recursive: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

await rm(dist, { recursive: true, force: true });
const tsc = spawnSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
if (tsc.status !== 0) {
  console.error('build: tsc failed');
  process.exit(tsc.status ?? 1);
}

const excluded = config.exclude.map((e) => join(root, e));
let assets = 0;
for (const folder of config.include.filter((f) => !f.endsWith('.ts'))) {
  for (const file of await filesUnder(join(root, folder))) {
    if (!isAsset(file) || excluded.some((e) => file.startsWith(e + '/'))) continue;
    await cp(file, join(dist, relative(root, file)));
    assets++;
  }
}

const relativeTsSpecifier = /((?:from|import)\s*\(?\s*)(['"])(\.{1,2}\/[^'"]*)\.ts\2/g;
let declarations = 0;
for (const file of await filesUnder(dist)) {
  if (!file.endsWith('.d.ts')) continue;
  const text = await readFile(file, 'utf8');
  const rewritten = text.replace(relativeTsSpecifier, '$1$2$3.js$2');
  if (rewritten !== text) await writeFile(file, rewritten);
  declarations++;
}

const { version } = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { version: string };
await writeFile(join(dist, 'package.json'), `${JSON.stringify({ type: 'module', version }, null, 2)}\n`);
console.log(`build: dist/ has ${declarations} declaration files and ${assets} copied assets (version ${version})`);
