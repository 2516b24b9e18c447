/**
 * The one place the backends meet the platform they run on, so that the same modules load in
 * Node.js and in a browser (a page or a Web Worker): environment variables, Node's built-in
 * modules, and Dawn's native WebGPU package. Those are imported dynamically, only on Node, and
 * through a specifier that is not a literal, so that neither the static import graph of `tessera`
 * nor a bundler targeting the browser meets them (tests/browser/imports.test.ts guards the first).
 * In a browser `node` is undefined: the CPU backend then runs on the calling thread, and WebGPU
 * comes from `navigator.gpu`.
 */
import { BackendError } from '../core/errors.ts';

type NodeProcess = { readonly versions?: { readonly node?: string }; readonly env?: Record<string, string | undefined> };

const nodeProcess = (globalThis as { process?: NodeProcess }).process;

/** `import(specifier)` that bundlers leave alone (they resolve only literal specifiers, or obey these comments). */
const importUnbundled = (specifier: string): Promise<unknown> => import(/* @vite-ignore */ /* webpackIgnore: true */ specifier);

async function loadNode() {
  const [fs, os, path, workerThreads] = await Promise.all([
    importUnbundled('node:fs') as Promise<typeof import('node:fs')>,
    importUnbundled('node:os') as Promise<typeof import('node:os')>,
    importUnbundled('node:path') as Promise<typeof import('node:path')>,
    importUnbundled('node:worker_threads') as Promise<typeof import('node:worker_threads')>,
  ]);
  return {
    fs, os, path, workerThreads,
    /** Dawn's bindings, loaded only when a WebGPU device is wanted (a process on the cpu backend never loads the native module). */
    dawn: () => importUnbundled('webgpu') as Promise<typeof import('webgpu')>,
  };
}

/** Node's built-in modules the backends use, and Dawn; undefined outside Node. Loaded once, at import. */
export const node = nodeProcess?.versions?.node === undefined ? undefined : await loadNode();

/** Node's modules, or an error saying that `what` needs Node. */
export function nodeOnly(what: string): NonNullable<typeof node> {
  if (node === undefined) throw new BackendError(`${what} needs Node.js (it is not available in a browser)`);
  return node;
}

/** An environment variable on Node (`TESSERA_DEBUG`, ...); undefined in a browser or when unset. */
export function envVar(name: string): string | undefined {
  return nodeProcess?.env?.[name];
}
