import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { batches, sampleIndex, takeBatch, type Batch } from '../../../train/data/batches.ts';
import { pixelDataset, type Dataset } from '../../../train/data/dataset.ts';
import { mixSeed, permutation, splitmix32 } from '../../../train/data/prng.ts';
import { numRuns } from '../fcRuns.ts';

/** A dataset whose image i is filled with the pixel level i (so images identify themselves). */
function numbered(count: number): Dataset {
  const pixels = new Uint8Array(count * 2 * 2 * 3);
  for (let i = 0; i < count; i++) pixels.fill(i, i * 12, (i + 1) * 12);
  return pixelDataset({ count, channels: 3, height: 2, width: 2, pixels, labels: Array.from({ length: count }, (_, i) => i % 4), classCount: 4 });
}

async function take(it: AsyncIterable<Batch>, n: number): Promise<Batch[]> {
  const out: Batch[] = [];
  for await (const b of it) {
    out.push(b);
    if (out.length === n) break;
  }
  return out;
}

test('prng: splitmix32 is deterministic and permutations are permutations', () => {
  const a = splitmix32(42);
  const b = splitmix32(42);
  assert.deepEqual([a(), a(), a()], [b(), b(), b()]);
  assert.notEqual(mixSeed(1, 0), mixSeed(1, 1));
  assert.notEqual(mixSeed(2 ** 32), mixSeed(0));
  const p = permutation(1000, 7);
  assert.deepEqual([...p].sort((x, y) => x - y), Array.from({ length: 1000 }, (_, i) => i));
  assert.notDeepEqual([...p], [...permutation(1000, 8)]);
});

test('batches: shapes, ranges, labels and positions', async () => {
  const ds = numbered(10);
  const [b0, b1] = await take(batches(ds, { batchSize: 4, seed: 3 }), 2);
  assert.deepEqual(b0!.shape, [4, 3, 2, 2]);
  assert.equal(b0!.images.length, 48);
  assert.deepEqual([b0!.position, b1!.position], [4, 8]);
  for (const b of [b0!, b1!]) {
    b.indices.forEach((idx, k) => {
      assert.ok(b.images.subarray(k * 12, (k + 1) * 12).every((v) => v === Math.fround(idx / 127.5 - 1)));
      assert.equal(b.labels![k], idx % 4);
    });
  }
  assert.ok(Object.isFrozen(b0));
});

test('batches: every epoch visits each sample once, in a seeded order that changes per epoch', () => {
  const ds = numbered(10);
  const epoch = (e: number): number[] => Array.from({ length: 10 }, (_, k) => sampleIndex(ds, 5, e * 10 + k));
  for (const e of [0, 1, 2]) assert.deepEqual([...epoch(e)].sort((a, b) => a - b), [...Array(10).keys()]);
  assert.notDeepEqual(epoch(0), epoch(1));
  // A batch straddling the epoch boundary takes the end of one epoch and the start of the next.
  const b = takeBatch(ds, { seed: 5, position: 8, batchSize: 4 });
  assert.deepEqual([...b.indices], [...epoch(0).slice(8), ...epoch(1).slice(0, 2)]);
});

test('batches: the stream depends only on (seed, position): resuming continues exactly', async () => {
  const ds = numbered(13);
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 0, max: 2 ** 31 }), fc.integer({ min: 1, max: 7 }), fc.integer({ min: 0, max: 20 }), async (seed, batchSize, cut) => {
      const straight = await take(batches(ds, { batchSize, seed }), cut + 3);
      const resumed = await take(batches(ds, { batchSize, seed, start: straight[cut]!.position }), 2);
      assert.deepEqual(resumed.map((b) => [...b.indices]), straight.slice(cut + 1, cut + 3).map((b) => [...b.indices]));
      assert.deepEqual(resumed[0]!.images, straight[cut + 1]!.images);
      assert.equal(resumed[1]!.position, straight[cut + 2]!.position);
    }),
    { numRuns },
  );
});

test('batches: variable batch sizes read the same stream', () => {
  const ds = numbered(9);
  const big = takeBatch(ds, { seed: 1, position: 3, batchSize: 12 });
  const a = takeBatch(ds, { seed: 1, position: 3, batchSize: 4 });
  const b = takeBatch(ds, { seed: 1, position: a.position, batchSize: 8 });
  assert.deepEqual([...big.indices], [...a.indices, ...b.indices]);
  assert.throws(() => takeBatch(ds, { seed: 1, position: -1, batchSize: 2 }), /position must be an integer >= 0/);
  assert.throws(() => takeBatch(ds, { seed: 1, position: 0, batchSize: 0 }), /batchSize must be an integer >= 1/);
});
