/**
 * The API reference (`npm run docs`, TypeDoc into docs/api/) is generated from doc comments, so
 * every export of every public entry point (package.json's `exports`) must have one, and TypeDoc
 * must document exactly those entry points. Members of exported namespaces (`nn`, `random`) count
 * as exports. Every exported function also shows how it is used: an `@example`, a `{@link}` to a
 * symbol whose comment has one, a README section, or a file under tests/, examples/,
 * train/experiments/ or bench/ that uses it.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';

const root = join(import.meta.dirname, '..');
const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { exports: Record<string, string | Record<string, string>> };
const entries = Object.entries(pkg.exports).flatMap(([path, target]) => (typeof target === 'string' ? [] : [{ path, file: target['tessera-source']! }]));

/** One export of a public entry point: `tessera/io orThrow`, `tessera nn.linear`. */
interface Export { name: string; bare: string; symbol: ts.Symbol; file: string }

const loadExports = (): { checker: ts.TypeChecker; exports: Export[] } => {
  const config = ts.getParsedCommandLineOfConfigFile(join(root, 'tsconfig.json'), {}, { ...ts.sys, onUnRecoverableConfigFileDiagnostic: () => {} });
  assert.ok(config !== undefined, 'tsconfig.json parses');
  const program = ts.createProgram(entries.map((e) => join(root, e.file)), config.options);
  const checker = program.getTypeChecker();
  const exports: Export[] = [];
  const seen = new Set<ts.Symbol>();
  const walk = (module: ts.Symbol, entry: string, prefix: string): void => {
    for (const exported of checker.getExportsOfModule(module)) {
      const symbol = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported;
      if (seen.has(symbol)) continue;
      seen.add(symbol);
      if (symbol.declarations?.some(ts.isSourceFile)) walk(symbol, entry, `${prefix}${exported.name}.`);
      else {
        const file = symbol.declarations?.[0]?.getSourceFile().fileName;
        exports.push({ name: `${entry} ${prefix}${exported.name}`, bare: exported.name, symbol, file: file === undefined ? '?' : relative(root, file) });
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
  return { checker, exports };
};
const { checker, exports } = loadExports();

test('TypeDoc documents every public entry point', async () => {
  const typedoc = JSON.parse(await readFile(join(root, 'typedoc.json'), 'utf8')) as { entryPoints: string[] };
  assert.deepEqual([...typedoc.entryPoints].sort(), entries.map((e) => e.file.replace(/^\.\//, '')).sort());
});

test('every public export has a doc comment', () => {
  const undocumented = exports.filter((e) => e.symbol.getDocumentationComment(checker).length === 0).map((e) => `${e.name} (${e.file})`);
  assert.deepEqual(undocumented, [], `exports without a doc comment:\n  ${undocumented.join('\n  ')}`);
});

const isFunction = (symbol: ts.Symbol): boolean =>
  (symbol.flags & ts.SymbolFlags.Function) !== 0 ||
  (symbol.declarations ?? []).some((d) => ts.isVariableDeclaration(d) && d.initializer !== undefined && (ts.isArrowFunction(d.initializer) || ts.isFunctionExpression(d.initializer)));

const docsOf = (symbol: ts.Symbol): ts.JSDoc[] => (symbol.declarations ?? []).flatMap((d) => ts.getJSDocCommentsAndTags(d).filter(ts.isJSDoc));
const hasExample = (symbol: ts.Symbol): boolean => docsOf(symbol).some((doc) => (doc.tags ?? []).some((tag) => tag.tagName.text === 'example'));
const commentParts = (comment: string | ts.NodeArray<ts.JSDocComment> | undefined): (string | ts.JSDocComment)[] => (comment === undefined ? [] : typeof comment === 'string' ? [comment] : [...comment]);
const partsOf = (doc: ts.JSDoc) => [...commentParts(doc.comment), ...(doc.tags ?? []).flatMap((tag) => commentParts(tag.comment))];
const textOf = (doc: ts.JSDoc): string => partsOf(doc).map((p) => (typeof p === 'string' ? p : p.text)).join('');

/** README.md's sections by heading text, each with its body up to the next heading of its level or above. */
const readmeSections = (() => {
  const lines = readFileSync(join(root, 'README.md'), 'utf8').split('\n');
  const sections = new Map<string, string>();
  let fence = false;
  const headings: { level: number; title: string; line: number }[] = [];
  lines.forEach((line, i) => {
    if (line.startsWith('```')) fence = !fence;
    const m = /^(#+) (.*)$/.exec(line);
    if (!fence && m !== null) headings.push({ level: m[1]!.length, title: m[2]!.trim(), line: i });
  });
  headings.forEach((h, i) => {
    const end = headings.slice(i + 1).find((n) => n.level <= h.level)?.line ?? lines.length;
    sections.set(h.title, lines.slice(h.line, end).join('\n'));
  });
  return sections;
})();
const mentions = (text: string, name: string): boolean => new RegExp(`(^|[^\\w$])${name.replace(/\$/g, '\\$')}($|[^\\w$])`).test(text);

/**
 * Why a function's comment shows no use of it (undefined when it does): an `@example` tag; a
 * `{@link X}` to another symbol whose comment has an `@example`; "README, section 'Title'" where
 * README.md has that heading and the section names the function; or a path under tests/,
 * examples/, train/experiments/ or bench/ of a file that exists and names the function.
 */
const missingUse = (e: Export): string | undefined => {
  if (hasExample(e.symbol)) return undefined;
  const docs = docsOf(e.symbol);
  const problems: string[] = [];
  for (const part of docs.flatMap(partsOf)) {
    if (typeof part === 'string' || !(ts.isJSDocLink(part) || ts.isJSDocLinkCode(part) || ts.isJSDocLinkPlain(part)) || part.name === undefined) continue;
    const found = checker.getSymbolAtLocation(part.name);
    const target = found !== undefined && found.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(found) : found;
    const label = part.name.getText();
    if (target === undefined) problems.push(`{@link ${label}} does not resolve`);
    else if (target === e.symbol) problems.push(`{@link ${label}} links to itself`);
    else if (!hasExample(target)) problems.push(`{@link ${label}} has no @example`);
    else return undefined;
  }
  const text = docs.map(textOf).join('\n');
  for (const [, title] of text.matchAll(/README, section '([^']+)'/g)) {
    const section = readmeSections.get(title!);
    if (section === undefined) problems.push(`README has no section '${title}'`);
    else if (!mentions(section, e.bare)) problems.push(`README section '${title}' does not name ${e.bare}`);
    else return undefined;
  }
  for (const [path] of text.matchAll(/\b(?:tests|examples|train\/experiments|bench)\/[\w./-]*\w/g)) {
    const full = join(root, path);
    if (!existsSync(full) || !statSync(full).isFile()) problems.push(`${path} is not a file`);
    else if (!mentions(readFileSync(full, 'utf8'), e.bare)) problems.push(`${path} does not name ${e.bare}`);
    else return undefined;
  }
  return problems.length === 0 ? 'no @example, {@link}, README section or file that uses it' : problems.join('; ');
};

test('every exported function has an example or a link to one', () => {
  const functions = exports.filter((e) => isFunction(e.symbol));
  assert.ok(functions.length > 200, `found ${functions.length} exported functions`);
  const offenders = functions.flatMap((e) => {
    const why = missingUse(e);
    return why === undefined ? [] : [`${e.name} (${e.file}): ${why}`];
  });
  assert.deepEqual(offenders, [], `${offenders.length} exported functions show no use:\n  ${offenders.join('\n  ')}`);
});
