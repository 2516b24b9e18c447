#!/usr/bin/env node
// The `tessera` command. An installed package runs the compiled command line (dist/, from
// `npm run build`); a checkout of the sources, where train/cli.ts sits beside this file, runs that
// through tsx (a development dependency), so the command always runs the code next to it.
import { existsSync } from 'node:fs';

const source = new URL('../train/cli.ts', import.meta.url);
if (existsSync(source)) {
  const { register } = await import('tsx/esm/api');
  register();
  await import(source.href);
} else {
  await import('../dist/train/cli.js');
}
