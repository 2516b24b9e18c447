/**
 * io-ts building blocks shared by the config, the checkpoint manifest and the safetensors header.
 * Each codec's name is what a user reads after "expected", so names are written for people
 * (`integer >= 1`, not `Int`).
 */
import * as t from 'io-ts';

function isPlainRecord(u: unknown): u is Record<string, unknown> {
  return typeof u === 'object' && u !== null && !Array.isArray(u);
}

/** An integer within [min, max]. */
export function integer(min = -Infinity, max = Infinity): t.Type<number, number, unknown> {
  const name = Number.isFinite(min) && Number.isFinite(max)
    ? `integer in [${min}, ${max}]`
    : Number.isFinite(min) ? `integer >= ${min}` : Number.isFinite(max) ? `integer <= ${max}` : 'integer';
  return new t.Type<number, number, unknown>(
    name,
    (u): u is number => typeof u === 'number' && Number.isInteger(u) && u >= min && u <= max,
    (u, c) => (typeof u === 'number' && Number.isInteger(u) && u >= min && u <= max ? t.success(u) : t.failure(u, c)),
    t.identity,
  );
}

/** A finite number with optional bounds; `exclusiveMin` makes the lower bound strict. */
export function finite(bounds: { min?: number; exclusiveMin?: boolean; max?: number } = {}): t.Type<number, number, unknown> {
  const { min, exclusiveMin = false, max } = bounds;
  const ok = (u: unknown): u is number =>
    typeof u === 'number' && Number.isFinite(u) &&
    (min === undefined || (exclusiveMin ? u > min : u >= min)) && (max === undefined || u <= max);
  const parts = [min === undefined ? '' : `${exclusiveMin ? '>' : '>='} ${min}`, max === undefined ? '' : `<= ${max}`].filter((s) => s !== '');
  const name = parts.length === 0 ? 'number' : `number ${parts.join(' and ')}`;
  return new t.Type<number, number, unknown>(name, ok, (u, c) => (ok(u) ? t.success(u) : t.failure(u, c)), t.identity);
}

/** Any value that survives JSON.stringify/parse unchanged (no undefined, NaN, functions, classes). */
export const jsonValue = new t.Type<unknown, unknown, unknown>(
  'JSON value',
  (u): u is unknown => isJson(u),
  (u, c) => (isJson(u) ? t.success(u) : t.failure(u, c)),
  t.identity,
);

function isJson(u: unknown): boolean {
  if (u === null || typeof u === 'string' || typeof u === 'boolean') return true;
  if (typeof u === 'number') return Number.isFinite(u);
  if (Array.isArray(u)) return u.every(isJson);
  if (isPlainRecord(u) && Object.getPrototypeOf(u) === Object.prototype) return Object.values(u).every(isJson);
  return false;
}

type StructOf<R extends t.Props, O extends t.Props> =
  { [K in keyof R]: t.TypeOf<R[K]> } & { [K in keyof O]?: t.TypeOf<O[K]> };

/**
 * A record with required and optional keys that rejects any other key, reporting it at its own
 * path (`data.nmae: unknown key`): typo protection for hand-written JSON. An optional key may be
 * absent or undefined.
 */
export function strictStruct<R extends t.Props, O extends t.Props = {}>(
  name: string,
  required: R,
  optional?: O,
): t.Type<StructOf<R, O>, StructOf<R, O>, unknown> {
  const opt: t.Props = optional ?? {};
  const known = new Set([...Object.keys(required), ...Object.keys(opt)]);
  const codec: t.Type<StructOf<R, O>, StructOf<R, O>, unknown> = new t.Type<StructOf<R, O>, StructOf<R, O>, unknown>(
    name,
    (u): u is StructOf<R, O> => codec.validate(u, [{ key: '', type: codec, actual: u }])._tag === 'Right',
    (u, c) => {
      if (!isPlainRecord(u)) return t.failure(u, c);
      const errors: t.ValidationError[] = [];
      const out: Record<string, unknown> = {};
      const check = (key: string, type: t.Mixed): void => {
        const value = u[key];
        const r = type.validate(value, t.appendContext(c, key, type, value));
        if (r._tag === 'Left') errors.push(...r.left);
        else out[key] = r.right;
      };
      for (const [key, type] of Object.entries(required)) check(key, type);
      for (const [key, type] of Object.entries(opt)) if (u[key] !== undefined) check(key, type);
      for (const key of Object.keys(u)) {
        if (!known.has(key)) errors.push({ value: u[key], context: t.appendContext(c, key, t.never, u[key]), message: 'unknown key' });
      }
      return errors.length > 0 ? t.failures(errors) : t.success(out as StructOf<R, O>);
    },
    t.identity,
  );
  return codec;
}
