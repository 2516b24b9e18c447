import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { isLeft, isRight } from 'fp-ts/lib/Either.js';
import type { DType, TypedArray } from '../../core/dtype.ts';
import { orThrow } from '../../train/errors.ts';
import { decodeSafetensors, encodeSafetensors, type HostTensor } from '../../train/safetensors.ts';
import { numRuns } from './fcRuns.ts';

function host(dtype: DType, shape: number[], values: number[]): HostTensor {
  const data: TypedArray = dtype === 'float32' ? Float32Array.from(values) : dtype === 'float64' ? Float64Array.from(values)
    : dtype === 'int32' ? Int32Array.from(values) : Uint8Array.from(values);
  return { dtype, shape, data };
}

const arbHostTensor: fc.Arbitrary<HostTensor> = fc
  .tuple(fc.constantFrom<DType>('float32', 'float64', 'int32', 'bool'), fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 4 }))
  .chain(([dtype, shape]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const value = dtype === 'bool' ? fc.integer({ min: 0, max: 1 })
      : dtype === 'int32' ? fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 })
      : dtype === 'float32' ? fc.float({ noNaN: false }).map(Math.fround) : fc.double();
    return fc.array(value, { minLength: n, maxLength: n }).map((vs) => host(dtype, shape, vs));
  });

function readHeader(bytes: Uint8Array): { length: number; json: Record<string, any> } {
  const length = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return { length, json: JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + length))) };
}

/** A file with a hand-written header, as another writer might produce. */
function rawFile(header: unknown, data: Uint8Array, pad = 0): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header) + ' '.repeat(pad));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

test('safetensors: round trip over random names, dtypes and shapes (bit-exact, NaN included)', () => {
  fc.assert(
    fc.property(fc.dictionary(fc.string({ minLength: 1 }).filter((k) => k !== '__metadata__'), arbHostTensor, { maxKeys: 6, noNullPrototype: true }),
      fc.dictionary(fc.string(), fc.string(), { maxKeys: 3, noNullPrototype: true }), (entries, metadata) => {
        const bytes = encodeSafetensors(entries, metadata);
        const back = orThrow(decodeSafetensors(bytes, 'p.safetensors'));
        assert.deepEqual(Object.keys(back.tensors).sort(), Object.keys(entries).sort());
        for (const [name, e] of Object.entries(entries)) {
          const b = back.tensors[name]!;
          assert.equal(b.dtype, e.dtype);
          assert.deepEqual([...b.shape], e.shape);
          assert.deepEqual(new Uint8Array(b.data.buffer), new Uint8Array(e.data.buffer, e.data.byteOffset, e.data.byteLength));
        }
        assert.deepEqual(back.metadata, metadata);
      }),
    { numRuns },
  );
});

test('safetensors: layout is the published one: sorted, packed, header padded to 8 bytes', () => {
  const bytes = encodeSafetensors({
    'b.weight': host('float32', [2, 2], [1, 2, 3, 4]),
    'a.bias': host('int32', [3], [-1, 0, 1]),
    flag: host('bool', [1], [1]),
  }, { format: 'pt' });
  const { length, json } = readHeader(bytes);
  assert.equal((8 + length) % 8, 0);
  assert.deepEqual(json['a.bias'], { dtype: 'I32', shape: [3], data_offsets: [0, 12] });
  assert.deepEqual(json['b.weight'], { dtype: 'F32', shape: [2, 2], data_offsets: [12, 28] });
  assert.deepEqual(json.flag, { dtype: 'BOOL', shape: [1], data_offsets: [28, 29] });
  assert.deepEqual(json.__metadata__, { format: 'pt' });
  assert.equal(bytes.length, 8 + length + 29);
  // Little-endian float32 1.0 at the start of b.weight.
  assert.deepEqual([...bytes.subarray(8 + length + 12, 8 + length + 16)], [0, 0, 0x80, 0x3f]);
});

test('safetensors: reads files from other writers (unpadded header, unaligned data, no metadata)', () => {
  const data = new Uint8Array(new Float64Array([1.5, -2]).buffer);
  const file = rawFile({ x: { dtype: 'F64', shape: [2], data_offsets: [0, 16] } }, data);
  const back = orThrow(decodeSafetensors(file, 'x.safetensors'));
  assert.deepEqual([...back.tensors.x!.data], [1.5, -2]);
  assert.deepEqual(back.metadata, {});
});

test('safetensors: encode rejects entries that do not match their shape or dtype', () => {
  assert.throws(() => encodeSafetensors({ a: host('float32', [2, 2], [1, 2, 3]) }), /tensor 'a' has 3 values, not the 4 of shape \[2,2\]/);
  assert.throws(() => encodeSafetensors({ a: { dtype: 'float32', shape: [1], data: new Int32Array(1) } }), /dtype float32 but its data is a Int32Array/);
  assert.throws(() => encodeSafetensors({ __metadata__: host('int32', [1], [1]) }), /reserved/);
});

function decodeError(bytes: Uint8Array, name = 'x.safetensors'): string {
  const r = decodeSafetensors(bytes, name);
  assert.ok(isLeft(r), 'expected a decode error');
  return r.left.message;
}

test('safetensors: corruption is reported with the file name and byte offset', () => {
  const good = encodeSafetensors({ 'a.b': host('float32', [2, 2], [1, 2, 3, 4]), c: host('int32', [1], [7]) });
  const { length } = readHeader(good);

  assert.equal(decodeError(good.subarray(0, 5)), 'x.safetensors: file is 5 bytes, too short for the 8-byte header length at byte 0');

  const huge = good.slice();
  new DataView(huge.buffer).setBigUint64(0, 9999999n, true);
  assert.equal(decodeError(huge), `x.safetensors: header length 9999999 at byte 0 exceeds file size ${good.length}`);

  assert.match(decodeError(good.subarray(0, good.length - 2)), /tensor 'c' data_offsets \[16,20\] at header byte \d+ reach past the end of the data section/);

  const extra = new Uint8Array(good.length + 3);
  extra.set(good);
  assert.match(decodeError(extra), new RegExp(`data section at byte ${8 + length} has 23 bytes but the tensors cover 20`));

  const garbled = good.slice();
  garbled[9] = 0x7b; // '{' -> '{{'
  assert.match(decodeError(garbled), /header at bytes 8\.\.\d+ is not valid JSON/);

  const header = { 'a.b': { dtype: 'F32', shape: [2, 2], data_offsets: [0, 12] } };
  const wrong = rawFile(header, new Uint8Array(12));
  const at = 8 + JSON.stringify(header).indexOf('"a.b"');
  assert.equal(decodeError(wrong), `x.safetensors: tensor 'a.b' data_offsets [0,12] at header byte ${at} do not match shape [2,2] F32 (16 bytes)`);
});

test('safetensors: header fields are validated with their path', () => {
  const f16 = rawFile({ w: { dtype: 'F16', shape: [1], data_offsets: [0, 2] } }, new Uint8Array(2));
  assert.match(decodeError(f16), /^x\.safetensors: tensor 'w' at header byte 9: dtype: expected "F32" \| "F64" \| "I32" \| "BOOL", got "F16"$/);
  const shape = rawFile({ w: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, new Uint8Array(4));
  assert.match(decodeError(shape), /tensor 'w' at header byte 9: shape\[0\]: expected integer >= 0, got -1/);
  const meta = rawFile({ __metadata__: { step: 3 } }, new Uint8Array(0));
  assert.match(decodeError(meta), /header "__metadata__" at byte 9: step: expected string, got 3/);
  assert.match(decodeError(rawFile([1, 2], new Uint8Array(0))), /header at byte 8 is not a JSON object/);
});

test('safetensors: gaps, overlaps and invalid booleans are rejected', () => {
  const gap = rawFile({ a: { dtype: 'I32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'I32', shape: [1], data_offsets: [8, 12] } }, new Uint8Array(12));
  assert.match(decodeError(gap), /tensor 'b' data_offsets \[8,12\] at header byte \d+ leave a gap of 4 bytes at data offset 4 \(file byte \d+\)/);
  const overlap = rawFile({ a: { dtype: 'I32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'I32', shape: [1], data_offsets: [4, 8] } }, new Uint8Array(8));
  assert.match(decodeError(overlap), /tensor 'b' data_offsets \[4,8\] at header byte \d+ overlap 'a'/);
  const bool = rawFile({ m: { dtype: 'BOOL', shape: [3], data_offsets: [0, 3] } }, Uint8Array.from([0, 1, 7]));
  const file = bool.length - 1;
  assert.match(decodeError(bool), new RegExp(`tensor 'm' BOOL element 2 at file byte ${file} is 7, not 0 or 1`));
});

test('safetensors: empty files (no tensors) round-trip', () => {
  const bytes = encodeSafetensors({});
  assert.ok(isRight(decodeSafetensors(bytes, 'e')));
  assert.equal(bytes.length % 8, 0);
});

test('safetensors: a many-tensor header decodes exactly, and an error late in it names the right byte', () => {
  // 20,000 tensors (the old decoder searched the whole header once per tensor: quadratic).
  const count = 20_000;
  const entries: Record<string, HostTensor> = {};
  for (let k = 0; k < count; k++) entries[`layer${k}.w`] = host('float32', [k % 3], Array.from({ length: k % 3 }, (_, j) => k + j / 4));
  const file = encodeSafetensors(entries);
  const decoded = orThrow(decodeSafetensors(file, 'many.safetensors'));
  assert.equal(Object.keys(decoded.tensors).length, count);
  for (const k of [0, 1, 2, 9_999, count - 1]) {
    const t = decoded.tensors[`layer${k}.w`]!;
    assert.deepEqual(t.shape, [k % 3]);
    assert.deepEqual(Array.from(t.data), Array.from({ length: k % 3 }, (_, j) => k + j / 4));
  }
  // Break the shape of a tensor near the end of the header: the message gives its key's byte offset.
  const { json } = readHeader(file);
  const victim = `layer${count - 2}.w`;
  json[victim].shape = [5];
  const text = JSON.stringify(json);
  const broken = rawFile(json, file.subarray(8 + readHeader(file).length));
  const at = 8 + Buffer.byteLength(text.slice(0, text.indexOf(`"${victim}"`)));
  assert.match(decodeError(broken, 'many.safetensors'), new RegExp(`^many\\.safetensors: tensor '${victim.replace('.', '\\.')}' data_offsets \\[\\d+,\\d+\\] at header byte ${at} do not match shape \\[5\\]`));
});

test('safetensors: key offsets in messages are byte offsets past multi-byte names', () => {
  fc.assert(fc.property(fc.array(fc.string({ minLength: 1, maxLength: 5, unit: fc.constantFrom('a', 'é', '字', '"', '\\', ':', '😀') }), { minLength: 1, maxLength: 6 }), (names) => {
    const header: Record<string, unknown> = {};
    for (const n of names) header[n] = { dtype: 'F32', shape: [1], data_offsets: [0, 4] };
    const last = Object.keys(header).sort().at(-1)!;
    header[last] = { dtype: 'F32', shape: ['x'], data_offsets: [0, 4] }; // an invalid entry: its key's byte is reported
    // The header text as JSON.stringify writes it, noting where the invalid entry's key starts.
    let text = '{';
    let at = -1;
    Object.entries(header).forEach(([k, v], i) => {
      if (i > 0) text += ',';
      if (k === last) at = 8 + Buffer.byteLength(text);
      text += `${JSON.stringify(k)}:${JSON.stringify(v)}`;
    });
    assert.equal(`${text}}`, JSON.stringify(header));
    const message = decodeError(rawFile(header, new Uint8Array(4 * names.length)));
    assert.ok(message.includes(`at header byte ${at}:`), `${message} (want byte ${at})`);
  }), { numRuns });
});

test('safetensors: deeply nested headers are refused before parsing, naming the file and byte', () => {
  const depth = 200_000;
  const text = `{"w":${'['.repeat(depth)}${']'.repeat(depth)}}`;
  const json = new TextEncoder().encode(text);
  const file = new Uint8Array(8 + json.length);
  new DataView(file.buffer).setBigUint64(0, BigInt(json.length), true);
  file.set(json, 8);
  // The 64th '[' is the first one past the limit: '{' is depth 1, so the 64th bracket is depth 65.
  assert.equal(decodeError(file, 'deep.safetensors'), `deep.safetensors: header at bytes 8..${8 + json.length}: JSON nested deeper than 64 levels at byte ${8 + 5 + 63}`);
});
