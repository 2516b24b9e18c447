/**
 * What a browser loads of the package (`tessera`, and each export's `browser` condition) must not
 * import a Node built-in or a Node-only package: the import graph from those entry points is
 * walked through every static `import`/`export ... from` that is not type-only. Dynamic imports
 * are allowed (backends/platform.ts loads Node's modules that way, only on Node).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';

const root = join(import.meta.dirname, '..', '..');

/** Packages that run in a browser as they are; any other bare import fails the test. */
const BROWSER_SAFE_PACKAGES = ['fp-ts', 'io-ts'];

type Exports = Record<string, string | Record<string, string | Record<string, string>>>;

/** Sources a browser loads first: `tessera` itself, and the source of each export's `browser` target (dist/x.js -> x.ts). */
function browserEntries(): string[] {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { exports: Exports };
  const entries = [join(root, 'index.ts')];
  for (const target of Object.values(pkg.exports)) {
    const browser = typeof target === 'string' ? undefined : target['browser'];
    if (browser === undefined) continue;
    const js = typeof browser === 'string' ? browser : browser['default']!;
    entries.push(join(root, js.replace(/^\.\/dist\//, '').replace(/\.js$/, '.ts')));
  }
  return entries;
}

/** The module specifiers of `file`'s static imports and re-exports that bring in code. */
function staticImports(file: string): string[] {
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, false);
  const found: string[] = [];
  for (const statement of source.statements) {
    if (ts.isImportDeclaration(statement)) {
      const clause = statement.importClause;
      const typeOnly = clause !== undefined && (clause.isTypeOnly || (clause.name === undefined && clause.namedBindings !== undefined &&
        ts.isNamedImports(clause.namedBindings) && clause.namedBindings.elements.length > 0 && clause.namedBindings.elements.every((e) => e.isTypeOnly)));
      if (!typeOnly) found.push((statement.moduleSpecifier as ts.StringLiteral).text);
    } else if (ts.isExportDeclaration(statement) && statement.moduleSpecifier !== undefined && !statement.isTypeOnly) {
      found.push((statement.moduleSpecifier as ts.StringLiteral).text);
    }
  }
  return found;
}

const isNodeBuiltin = (specifier: string) => specifier.startsWith('node:') || builtinModules.includes(specifier.split('/')[0]!);
const packageName = (specifier: string) => specifier.split('/').slice(0, specifier.startsWith('@') ? 2 : 1).join('/');

test('the modules a browser loads import no Node built-in and no Node-only package', () => {
  const problems: string[] = [];
  const seen = new Set<string>();
  const todo = browserEntries();
  while (todo.length > 0) {
    const file = todo.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    for (const specifier of staticImports(file)) {
      if (specifier.startsWith('.')) todo.push(join(dirname(file), specifier));
      else if (isNodeBuiltin(specifier)) problems.push(`${relative(root, file)}: import '${specifier}' (a Node built-in)`);
      else if (!BROWSER_SAFE_PACKAGES.includes(packageName(specifier))) problems.push(`${relative(root, file)}: import '${specifier}' (not a package known to run in a browser)`);
    }
  }
  assert.ok(seen.size > 50, `walked ${seen.size} modules from ${browserEntries().map((e) => relative(root, e)).join(', ')}`);
  assert.deepEqual(problems, [], `static imports a browser cannot load (load them dynamically behind a platform check, see backends/platform.ts):\n  ${problems.join('\n  ')}`);
});
