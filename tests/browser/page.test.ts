/**
 * The browser example (examples/browser) in Debian's chromium, headless, driven by puppeteer-core:
 * the page fetches the committed checkpoint, samples 16 images on tessera's default backend (WebGPU
 * where the browser offers a real GPU, else the CPU backend) and draws them. Checks the canvas's size
 * and that its pixels vary, saves a screenshot, and says which backend ran; then, where chromium
 * offers any WebGPU adapter (headless, usually SwiftShader), samples again on WebGPU and compares.
 * Needs chromium (`scripts/setup.sh` installs it) and the built package (`npm run build`, which
 * `npm test` runs first); without them it fails, never skips.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import puppeteer, { type Browser } from 'puppeteer-core';
import { servePage, type PageServer } from '../../examples/browser/serve.ts';

const root = join(import.meta.dirname, '..', '..');
const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';

/** What the page shows once it has finished. */
interface PageResult {
  readonly state: string | undefined;
  readonly status: string | null;
  readonly backend: string | undefined;
  readonly backendLine: string | null;
  readonly isolated: boolean;
  readonly width: number;
  readonly height: number;
  /** The canvas's red channel (the samples are grey). */
  readonly pixels: number[];
  readonly log: string;
}

/** The little of the page's globals the checks read (the tests compile without the DOM library). */
interface PageGlobals {
  readonly crossOriginIsolated: boolean;
  readonly document: {
    readonly body: { readonly dataset: Record<string, string | undefined> };
    getElementById(id: string): {
      readonly textContent: string | null;
      readonly width: number;
      readonly height: number;
      getContext(kind: '2d'): { getImageData(x: number, y: number, width: number, height: number): { readonly data: Uint8ClampedArray } };
    };
  };
  readonly navigator: { readonly gpu?: { requestAdapter(): Promise<{ readonly info: { readonly vendor: string; readonly architecture: string } } | null> } };
}

let server: PageServer;
let browser: Browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no chromium at ${CHROMIUM}: run \`sh scripts/setup.sh\` (it installs Debian's chromium), or set CHROMIUM_PATH`);
  assert.ok(existsSync(join(root, 'dist', 'index.js')), 'the package is not built: run `npm run build` (the page imports tessera from dist/)');
  server = await servePage({ port: 0 });
  // As root (containers, CI) chromium's sandbox cannot start; --enable-unsafe-webgpu offers WebGPU on Linux.
  browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--enable-unsafe-webgpu'] });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

/** Opens the page with `query`, waits until it is done or failed, and reads it; saves a screenshot when `screenshot` is given. */
async function openPage(query: string, screenshot?: string): Promise<PageResult> {
  const page = await browser.newPage();
  try {
    const log: string[] = [];
    page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => log.push(`pageerror: ${String(e)}`));
    await page.goto(server.url + query);
    await page.waitForSelector('body[data-state=done], body[data-state=error]', { timeout: 100_000 });
    if (screenshot !== undefined) await page.screenshot({ path: screenshot });
    const read = await page.evaluate(() => {
      const { crossOriginIsolated, document } = globalThis as unknown as PageGlobals;
      const canvas = document.getElementById('grid');
      const rgba = canvas.width * canvas.height === 0 ? [] : Array.from(canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data);
      return {
        state: document.body.dataset['state'], status: document.getElementById('status')!.textContent,
        backend: document.body.dataset['backend'], backendLine: document.getElementById('backend')!.textContent,
        isolated: crossOriginIsolated, width: canvas.width, height: canvas.height, pixels: rgba.filter((_, i) => i % 4 === 0),
      };
    });
    return { ...read, log: log.join('\n') };
  } finally {
    await page.close();
  }
}

function variance(values: readonly number[]): number {
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  return values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length;
}

let defaultRun: PageResult | undefined;

test('the page typechecks against the built package, as a bundler for the browser resolves it', async () => {
  await promisify(execFile)(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '-p', join(root, 'examples', 'browser', 'page')], { cwd: root });
});

test('headless chromium samples the checkpoint on the default backend and draws a 4 x 4 grid of 16 x 16 images', { timeout: 120_000 }, async (t) => {
  const screenshot = join(await mkdtemp(join(tmpdir(), 'tessera-browser-')), 'page.png');
  const result = (defaultRun = await openPage('', screenshot));
  t.diagnostic(`${result.backendLine}; ${result.status}; screenshot ${screenshot}`);
  assert.equal(result.state, 'done', `the page failed: ${result.status}\n${result.log}`);
  assert.ok(result.isolated, 'the page is cross-origin isolated');
  assert.ok(result.backend === 'cpu' || result.backend === 'webgpu', `ran on ${result.backend}`);
  assert.deepEqual([result.width, result.height], [64, 64]);
  assert.ok(variance(result.pixels) > 100, `the pixels vary (variance ${variance(result.pixels)})`);
});

test('on WebGPU, where chromium offers an adapter, the page draws what the CPU backend draws', { timeout: 120_000 }, async (t) => {
  assert.ok(defaultRun?.state === 'done', 'the default run finished');
  const probe = await browser.newPage();
  await probe.goto(server.url);
  const adapter = await probe.evaluate(async () => {
    const found = await (globalThis as unknown as PageGlobals).navigator.gpu?.requestAdapter();
    return found === undefined || found === null ? undefined : `${found.info.vendor} ${found.info.architecture}`;
  });
  await probe.close();
  if (adapter === undefined) return t.diagnostic('this chromium offers no WebGPU adapter: the WebGPU path was not exercised');
  const result = await openPage(defaultRun.backend === 'webgpu' ? '?backend=cpu' : '?backend=webgpu');
  assert.equal(result.state, 'done', `the page failed: ${result.status}\n${result.log}`);
  const largest = Math.max(...result.pixels.map((p, i) => Math.abs(p - defaultRun!.pixels[i]!)));
  t.diagnostic(`WebGPU adapter: ${adapter}; ${result.backendLine}; ${result.status}; the grids differ by up to ${largest} of 255`);
  assert.ok(largest <= 4, `cpu and webgpu grids differ by up to ${largest} of 255`);
});
