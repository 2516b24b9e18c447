/**
 * Turns io-ts validation errors into one line per problem, e.g.
 * `train.lr: expected number, got "fast"` or `data.nmae: unknown key`.
 *
 * io-ts puts every codec it passes through into the error's context. Only some of those steps are
 * data keys: a union or intersection adds its member index, which means nothing to a user. So the
 * path keeps a key only when the codec above it is a container (record, array, tuple), and an error
 * inside a union is reported at the union with the union's name as what was expected, unless a
 * member got further into the value (see `lineFor`).
 */
import * as t from 'io-ts';

function isMemberStep(type: t.Decoder<unknown, unknown>): boolean {
  return type instanceof t.UnionType || type instanceof t.IntersectionType;
}

function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  try {
    const s = JSON.stringify(value);
    if (s === undefined) return typeof value;
    return s.length > 60 ? `${s.slice(0, 57)}...` : s;
  } catch {
    return typeof value;
  }
}

/** The data path of a context, `a.b[2].c`; the root is `<root>`. */
export function contextPath(context: t.Context): string {
  let path = '';
  for (let i = 1; i < context.length; i++) {
    const parent = context[i - 1]!;
    const entry = context[i]!;
    if (isMemberStep(parent.type)) continue;
    path += /^\d+$/.test(entry.key) && (parent.type instanceof t.ArrayType || parent.type instanceof t.TupleType || parent.type instanceof t.ReadonlyArrayType)
      ? `[${entry.key}]`
      : path === '' ? entry.key : `.${entry.key}`;
  }
  return path === '' ? '<root>' : path;
}

/** Identifies one union on one data path, e.g. `data.resolution@3`. */
function unionKey(context: t.Context, at: number): string {
  return `${contextPath(context.slice(0, at + 1))}@${at}`;
}

/**
 * The line for one error, or undefined to drop it. A union whose members all failed on the value
 * itself is reported once, naming the union (`expected "patch" | "edm"`). A union where some
 * member got inside the value (a tuple with one bad element) is "deep": that member's inner
 * errors are more useful, so they are reported and the shallow failures of the other members
 * dropped.
 */
function lineFor(error: t.ValidationError, deep: ReadonlySet<string>): string | undefined {
  const { context } = error;
  for (let u = 0; u < context.length; u++) {
    if (!(context[u]!.type instanceof t.UnionType)) continue;
    if (!deep.has(unionKey(context, u))) {
      return `${contextPath(context.slice(0, u + 1))}: expected ${context[u]!.type.name}, got ${describe(context[u]!.actual)}`;
    }
    if (context.length <= u + 2) return undefined;
  }
  const last = context[context.length - 1]!;
  const path = contextPath(context);
  if (error.message !== undefined) return `${path}: ${error.message}`;
  return `${path}: expected ${last.type.name}, got ${describe(last.actual)}`;
}

/** One line per distinct problem, in the order io-ts found them. */
export function formatDecodeErrors(errors: t.Errors): string[] {
  const deep = new Set<string>();
  for (const { context } of errors) {
    context.forEach((entry, u) => {
      if (entry.type instanceof t.UnionType && context.length > u + 2) deep.add(unionKey(context, u));
    });
  }
  const lines = errors.map((e) => lineFor(e, deep)).filter((l): l is string => l !== undefined);
  return [...new Set(lines)];
}
