/**
 * The API reference (`npm run docs`, TypeDoc into docs/api/) is generated from doc comments, so
 * every export of every public entry point (package.json's `exports`) must have one, and TypeDoc
 * must document exactly those entry points. Members of exported namespaces (`nn`, `random`) count
 * as exports.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';

const root = join(import.meta.dirname, '..');
const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { exports: Record<string, string | Record<string, string>> };
const entries = Object.entries(pkg.exports).flatMap(([path, target]) => (typeof target === 'string' ? [] : [{ path, file: target['tessera-source']! }]));

test('TypeDoc documents every public entry point', async () => {
  const typedoc = JSON.parse(await readFile(join(root, 'typedoc.json'), 'utf8')) as { entryPoints: string[] };
  assert.deepEqual([...typedoc.entryPoints].sort(), entries.map((e) => e.file.replace(/^\.\//, '')).sort());
});

test('every public export has a doc comment', () => {
  const config = ts.getParsedCommandLineOfConfigFile(join(root, 'tsconfig.json'), {}, { ...ts.sys, onUnRecoverableConfigFileDiagnostic: () => {} });
  assert.ok(config !== undefined, 'tsconfig.json parses');
  const program = ts.createProgram(entries.map((e) => join(root, e.file)), config.options);
  const checker = program.getTypeChecker();
  const undocumented = new Set<string>();
  const seen = new Set<ts.Symbol>();
  const walk = (module: ts.Symbol, entry: string, prefix: string): void => {
    for (const exported of checker.getExportsOfModule(module)) {
      const symbol = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported;
      const name = `${entry} ${prefix}${exported.name}`;
      if (symbol.declarations?.some(ts.isSourceFile)) {
        if (!seen.has(symbol)) walk(symbol, entry, `${prefix}${exported.name}.`);
        seen.add(symbol);
      } else if (symbol.getDocumentationComment(checker).length === 0) {
        const file = symbol.declarations?.[0]?.getSourceFile().fileName;
        undocumented.add(`${name} (${file === undefined ? '?' : relative(root, file)})`);
      }
    }
  };
  for (const entry of entries) {
    const source = program.getSourceFile(join(root, entry.file));
    assert.ok(source !== undefined, `${entry.file} is in the program`);
    const module = checker.getSymbolAtLocation(source);
    assert.ok(module !== undefined, `${entry.file} is a module`);
    walk(module, entry.path === '.' ? 'tessera' : `tessera${entry.path.slice(1)}`, '');
  }
  assert.deepEqual([...undocumented], [], `exports without a doc comment:\n  ${[...undocumented].join('\n  ')}`);
});
