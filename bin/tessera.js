#!/usr/bin/env node
// The `tessera` command: runs the TypeScript command line through tsx's loader.
import { register } from 'tsx/esm/api';

register();
await import('../train/cli.ts');
