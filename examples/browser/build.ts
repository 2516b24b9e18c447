/**
 * Bundles the browser example's page (page/main.ts) and its worker (page/sampler.ts) with esbuild
 * into examples/browser/dist/. They import `tessera` and `tessera/io` from the built package
 * (`npm run build` first); for a browser, esbuild picks `tessera/io`'s `browser` condition, the part
 * without files. `serve.ts` runs this before it serves.
 *
 *   npm run build && npx tsx examples/browser/build.ts
 */
import { build } from 'esbuild';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = import.meta.dirname;

/** Writes dist/main.js and dist/sampler.js beside index.html; returns the folder. */
export async function buildPage(): Promise<string> {
  if (!existsSync(join(here, '..', '..', 'dist', 'index.js'))) throw new Error('the package is not built: run `npm run build` first (the page imports tessera from dist/)');
  const outdir = join(here, 'dist');
  await build({
    entryPoints: [join(here, 'page', 'main.ts'), join(here, 'page', 'sampler.ts')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    outdir,
    sourcemap: true,
    logLevel: 'warning',
  });
  return outdir;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) console.log(`wrote ${await buildPage()}`);
