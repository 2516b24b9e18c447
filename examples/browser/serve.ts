/**
 * Serves the browser example on localhost: the page (index.html and its bundles, built first by
 * build.ts) and a checkpoint folder at /checkpoint/ (by default the one beside this file: the demo's
 * EMA weights after 12,000 steps). Every response carries the two headers that make the page
 * cross-origin isolated, which a browser requires before it offers SharedArrayBuffer (the CPU
 * backend's shared WebAssembly memory).
 *
 *   npm run build && npx tsx examples/browser/serve.ts [--port 8080] [--checkpoint runs/demo/checkpoint-000012000]
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { buildPage } from './build.ts';

const here = import.meta.dirname;

const TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.map': 'application/json',
  '.json': 'application/json',
  '.safetensors': 'application/octet-stream',
};

const ISOLATION = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
} as const;

/** A running server: the page's URL, and how to stop it. */
export interface PageServer {
  readonly url: string;
  close(): Promise<void>;
}

/** The file under `root` that a URL path names, or undefined if it would leave `root`. */
function fileUnder(root: string, path: string): string | undefined {
  const file = resolve(root, `.${normalize(`/${path}`)}`);
  return file === root || file.startsWith(root + sep) ? file : undefined;
}

/** Builds the page, then serves it on 127.0.0.1 (`port` 0: a free one). */
export async function servePage(options: { readonly port?: number; readonly checkpoint?: string } = {}): Promise<PageServer> {
  await buildPage();
  const checkpoint = resolve(options.checkpoint ?? join(here, 'checkpoint'));
  const server = createServer((request, response) => {
    const fail = (code: number) => response.writeHead(code, { ...ISOLATION, 'Content-Type': 'text/plain' }).end(`${code}\n`);
    if (request.method !== 'GET' && request.method !== 'HEAD') return fail(405);
    let path: string;
    try {
      path = decodeURIComponent(new URL(request.url ?? '/', 'http://localhost').pathname);
    } catch {
      return fail(400);
    }
    const file = path.startsWith('/checkpoint/') ? fileUnder(checkpoint, path.slice('/checkpoint'.length)) : fileUnder(here, path === '/' ? '/index.html' : path);
    if (file === undefined) return fail(403);
    stat(file).then(
      (info) => {
        if (!info.isFile()) return fail(404);
        response.writeHead(200, { ...ISOLATION, 'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream', 'Content-Length': info.size, 'Cache-Control': 'no-store' });
        if (request.method === 'HEAD') response.end();
        else createReadStream(file).pipe(response);
      },
      () => fail(404),
    );
  });
  await new Promise<void>((done, failed) => server.once('error', failed).listen(options.port ?? 8080, '127.0.0.1', done));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`,
    close: () => new Promise((done) => server.close(() => done())),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { port: { type: 'string', default: '8080' }, checkpoint: { type: 'string' } } });
  const { url } = await servePage({ port: Number(values.port), checkpoint: values.checkpoint });
  console.log(`serving the browser example at ${url} (Ctrl-C stops)`);
}
