import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { isLeft } from 'fp-ts/lib/Either.js';
import type { DType } from '../../core/dtype.ts';
import { tensor } from '../../core/ops.ts';
import { flatten, treeDefString, type PyTree } from '../../core/pytree.ts';
import { isTensor, type Tensor } from '../../core/tensor.ts';
import { orThrow } from '../../train/errors.ts';
import { decodeSafetensors, encodeSafetensors } from '../../train/safetensors.ts';
import { countNonFinite, entriesToTree, escapeKey, parseTensorName, restoreTree, tensorNames, treeFromSafetensors, treeToEntries, treeToSafetensors } from '../../train/stateDict.ts';
import { numRuns } from './fcRuns.ts';

const arbLeaf: fc.Arbitrary<Tensor> = fc
  .tuple(fc.constantFrom<DType>('float32', 'float64', 'int32', 'bool'), fc.array(fc.integer({ min: 1, max: 3 }), { maxLength: 3 }))
  .chain(([dtype, shape]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    return fc.array(fc.integer({ min: -100, max: 100 }), { minLength: n, maxLength: n }).map((vs) => tensor(vs.map((v) => (dtype === 'bool' ? v & 1 : v)), shape, dtype));
  });

// Keys drawn to include the path characters that need escaping, and EDM-like names.
const arbKey = fc.oneof(
  fc.string({ minLength: 1, maxLength: 6, unit: fc.constantFrom('a', 'b', '.', '[', ']', '\\', '<', '0', 'x', '_') }),
  fc.constantFrom('32x32_conv', 'weight', 'bias', 'enc', '<root>', 'a.b', '0'),
);

// Trees without empty containers: those hold no tensors, and names cannot carry them.
const { tree: arbTree } = fc.letrec<{ tree: PyTree<Tensor> }>((tie) => ({
  tree: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    arbLeaf,
    fc.array(tie('tree'), { minLength: 1, maxLength: 3 }),
    fc.dictionary(arbKey, tie('tree'), { minKeys: 1, maxKeys: 3, noNullPrototype: true }),
  ),
}));

async function sameTree(a: PyTree<Tensor>, b: PyTree<Tensor>): Promise<void> {
  const fa = flatten(a);
  const fb = flatten(b);
  assert.equal(treeDefString(fb.def), treeDefString(fa.def));
  for (let i = 0; i < fa.leaves.length; i++) {
    const x = fa.leaves[i]!;
    const y = fb.leaves[i]!;
    assert.ok(isTensor(x) && isTensor(y));
    assert.equal(y.dtype, x.dtype);
    assert.deepEqual(y.shape, x.shape);
    assert.deepEqual(await y.data(), await x.data());
  }
}

test('state dict: any pytree (keys with dots, brackets, backslashes) survives names and a safetensors file', async () => {
  await fc.assert(
    fc.asyncProperty(arbTree, async (tree) => {
      const bytes = encodeSafetensors(await treeToEntries(tree));
      const back = orThrow(entriesToTree(orThrow(decodeSafetensors(bytes, 't')).tensors, 't'));
      await sameTree(tree, back);
      const viaHelpers = orThrow(treeFromSafetensors(await treeToSafetensors(tree, { note: 'x' }), 't'));
      await sameTree(tree, viaHelpers.tree);
      assert.deepEqual(viaHelpers.metadata, { note: 'x' });
    }),
    { numRuns },
  );
});

test('state dict: ordinary names are exactly EDM state_dict style; special characters are escaped', async () => {
  const tree = {
    enc: { '32x32_conv': { weight: tensor([1], [1]), bias: tensor([2], [1]) } },
    layers: [{ w: tensor([3], [1]) }],
    'a.b': tensor([4], [1]),
  };
  assert.deepEqual(Object.keys(await treeToEntries(tree)).sort(), ['a\\.b', 'enc.32x32_conv.bias', 'enc.32x32_conv.weight', 'layers[0].w']);
  assert.deepEqual(tensorNames(flatten(tensor([1], [1])).def), ['<root>']);
  assert.equal(escapeKey('<root>'), '\\<root>');
  assert.deepEqual(parseTensorName('enc.32x32_conv.weight'), [
    { kind: 'key', key: 'enc' }, { kind: 'key', key: '32x32_conv' }, { kind: 'key', key: 'weight' },
  ]);
  assert.deepEqual(parseTensorName('a\\.b[2]'), [{ kind: 'key', key: 'a.b' }, { kind: 'index', index: 2 }]);
  for (const bad of ['', 'a.', '.a', 'a..b', 'a[01]', 'a[x]', 'a]', 'a\\q', 'a<b', 'a[0]b']) assert.equal(parseTensorName(bad), undefined, bad);
});

test('state dict: names that cannot form one tree are reported', () => {
  const one = { dtype: 'float32' as const, shape: [1], data: new Float32Array(1) };
  const err = (entries: Record<string, typeof one>): string => {
    const r = entriesToTree(entries, 'f.safetensors');
    assert.ok(isLeft(r));
    return r.left.message;
  };
  assert.match(err({ 'a[2]': one }), /^f\.safetensors: array a has 1 elements with tensors but index \[2\]: more empty elements than named ones$/);
  // An index without names was an empty subtree (an optimizer chain's clipping stage holds no state).
  const holed = entriesToTree({ '[0].replaced': one, '[2].count': one }, 'f.safetensors');
  assert.ok(!isLeft(holed));
  assert.deepEqual((holed.right as unknown[]).map((x) => Object.keys(x as object)), [['replaced'], [], ['count']]);
  assert.match(err({ a: one, 'a.b': one }), /does not fit the tree/);
  assert.match(err({ 'a.b': one, 'a[0]': one }), /tensor 'a\[0\]' does not fit the tree the other names build: step 2 of it needs an array where there is a record/);
  assert.match(err({ 'x..y': one }), /tensor name 'x\.\.y' is not a path/);
  assert.match(err({ '<root>': one, b: one }), /does not fit the tree|makes the whole tree one tensor/);
});

test('state dict: non-finite values are refused on load, naming the tensor and the count', async () => {
  const w = Float32Array.from([1, NaN, 2, Infinity, NaN]);
  const file = encodeSafetensors({
    'model.w': { dtype: 'float32', shape: [5], data: w },
    'model.b': { dtype: 'float64', shape: [2], data: Float64Array.from([0, -Infinity]) },
    'model.ok': { dtype: 'float32', shape: [1], data: Float32Array.from([3]) },
    step: { dtype: 'int32', shape: [1], data: Int32Array.from([7]) },
  });
  const r = treeFromSafetensors(file, 'ema.safetensors');
  assert.ok(isLeft(r));
  assert.equal(r.left.message,
    "ema.safetensors: 2 tensor(s) hold non-finite values, so the weights are unusable (a run that diverged?): "
    + "tensor 'model.b' [2] has 1 non-finite of 2 values (1 -Inf; the first at element 1); "
    + "tensor 'model.w' [5] has 3 non-finite of 5 values (2 NaN, 1 +Inf; the first at element 1)");
  // Opting out reads the values as they are.
  const raw = orThrow(treeFromSafetensors(file, 'ema.safetensors', { allowNonFinite: true }));
  const values = await (raw.tree as { model: { w: Tensor } }).model.w.data();
  assert.deepEqual(Array.from(values), Array.from(w));
});

test('state dict: countNonFinite agrees with Number.isFinite on any values', () => {
  fc.assert(fc.property(fc.array(fc.double()), (vs) => {
    const c = countNonFinite(Float64Array.from(vs));
    assert.equal(c.nan, vs.filter(Number.isNaN).length);
    assert.equal(c.posInf, vs.filter((v) => v === Infinity).length);
    assert.equal(c.negInf, vs.filter((v) => v === -Infinity).length);
    assert.equal(c.first, vs.findIndex((v) => !Number.isFinite(v)));
  }), { numRuns });
});

test('state dict: restoring needs exactly the model\'s names, dtypes and shapes', () => {
  const template = { enc: { w: tensor([1, 2], [2]), b: tensor([0], [1]) }, n: tensor([0], [1], 'int32') };
  const same = { enc: { w: tensor([5, 6], [2]), b: tensor([1], [1]) }, n: tensor([3], [1], 'int32') };
  const restored = orThrow(restoreTree(template, same, 'params.safetensors'));
  assert.equal(restored.enc.w, same.enc.w);

  const extra = { ...same, enc: { ...same.enc, extra: tensor([9], [1]) } };
  const unknown = restoreTree(template, extra, 'params.safetensors');
  assert.ok(isLeft(unknown));
  assert.equal(unknown.left.message, "params.safetensors: the tensor names do not match the model's: 1 unknown to the model ('enc.extra')");

  const missing = restoreTree(template, { enc: { w: same.enc.w, c: tensor([1], [1]) } }, 'params.safetensors');
  assert.ok(isLeft(missing));
  assert.equal(missing.left.message, "params.safetensors: the tensor names do not match the model's: 2 missing ('enc.b', 'n'); 1 unknown to the model ('enc.c')");

  const reshaped = restoreTree(template, { ...same, n: tensor([3, 4], [2], 'int32') }, 'params.safetensors');
  assert.ok(isLeft(reshaped));
  assert.equal(reshaped.left.message, "params.safetensors: 'n' is int32 [2] in the checkpoint, the model expects int32 [1]");
});

test('state dict: absurdly deep tensor names are refused, not a stack overflow', () => {
  const name = Array.from({ length: 100_000 }, () => 'a').join('.');
  const r = entriesToTree({ [name]: { dtype: 'float32', shape: [], data: new Float32Array(1) } }, 'deep.safetensors');
  assert.ok(isLeft(r));
  assert.match(r.left.message, /^deep\.safetensors: tensor name 'a\.a\.a.*\.\.\.' is 100000 keys and indices deep, more than the 64 allowed$/);
});
