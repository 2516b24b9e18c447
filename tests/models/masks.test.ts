/** MaskDM's masks: exact counts, distinct ascending indices, block alignment, one crop, uniformity, and the same mask on every backend. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { registerCpuBackend } from '../../backends/cpu/index.ts';
import { jit, random, setDefaultBackend, type Tensor } from '../../core/index.ts';
import { drawVisible, maskedCount, visibleCount, visiblePixelMask, type MaskConfig } from '../../models/masks.ts';
import { numRuns } from '../train/fcRuns.ts';

registerReferenceBackend();
registerCpuBackend();
setDefaultBackend('reference');

const rows = async (t: Tensor): Promise<number[][]> => {
  const v = Array.from(await t.data());
  const [b, n] = t.shape as [number, number];
  return Array.from({ length: b }, (_, i) => v.slice(i * n, (i + 1) * n));
};

/** A side, a mask config that fits it, a batch size and a seed. */
const arbCase: fc.Arbitrary<[number, MaskConfig, number, number]> = fc
  .tuple(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: 4 }), fc.double({ min: 0, max: 0.99, noNaN: true }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 0, max: 2 ** 30 }))
  .chain(([side, k, ratio, batch, seed]) => {
    const block = side % k === 0 ? [fc.constant<MaskConfig>({ kind: 'block', ratio, blockSize: k })] : [];
    return fc.tuple(fc.constant(side), fc.oneof(fc.constant<MaskConfig>({ kind: 'patch', ratio }), fc.constant<MaskConfig>({ kind: 'crop', cropSize: 1 + (seed % side) }), ...block), fc.constant(batch), fc.constant(seed));
  });

test('every mask keeps exactly visibleCount distinct patches per sample, ascending, on the grid; blocks are aligned; a crop is one square', () =>
  fc.assert(
    fc.asyncProperty(arbCase, async ([side, config, batch, seed]) => {
      const l = side * side;
      const n = visibleCount(config, side);
      const visible = drawVisible(random.key(seed), config, batch, side);
      assert.deepEqual(visible.shape, [batch, n]);
      assert.equal(visible.dtype, 'int32');
      for (const row of await rows(visible)) {
        assert.ok(row.every((v, i) => v >= 0 && v < l && (i === 0 || v > row[i - 1]!)), `indices ${row}`);
        const seen = new Set(row);
        if (config.kind === 'block') {
          const k = config.blockSize;
          // A patch is visible exactly when the whole k x k block holding it is.
          for (let p = 0; p < l; p++) {
            const [r, c] = [Math.floor(p / side), p % side];
            const anchor = (r - (r % k)) * side + (c - (c % k));
            assert.equal(seen.has(p), seen.has(anchor), `patch ${p} and its block's corner ${anchor}`);
          }
        }
        if (config.kind === 'crop') {
          const c = config.cropSize;
          const [top, left] = [Math.floor(row[0]! / side), row[0]! % side];
          assert.deepEqual(row, Array.from({ length: c * c }, (_, q) => (top + Math.floor(q / c)) * side + left + (q % c)));
          assert.ok(top + c <= side && left + c <= side);
        }
      }
    }),
    { numRuns },
  ));

test('counts follow the reference generators: floor(ratio L); blocks floor(floor(ratio L) / k^2) k^2; crop L - c^2', () => {
  assert.equal(maskedCount({ kind: 'patch', ratio: 0.9 }, 16), 230);
  assert.equal(maskedCount({ kind: 'block', ratio: 0.9, blockSize: 4 }, 16), 224);
  assert.equal(maskedCount({ kind: 'block', ratio: 0.5, blockSize: 4 }, 8), 32);
  assert.equal(maskedCount({ kind: 'crop', cropSize: 5 }, 16), 256 - 25);
  assert.equal(visibleCount({ kind: 'patch', ratio: 0 }, 4), 16);
  assert.throws(() => maskedCount({ kind: 'block', ratio: 0.5, blockSize: 3 }, 8), /blockSize 3/);
  assert.throws(() => maskedCount({ kind: 'patch', ratio: 1 }, 8), /ratio/);
  assert.throws(() => maskedCount({ kind: 'crop', cropSize: 9 }, 8), /cropSize/);
});

test('ratio 0 keeps every patch in order; the same key gives the same masks, another key others, samples differ', async () => {
  assert.deepEqual(await rows(drawVisible(random.key(1), { kind: 'patch', ratio: 0 }, 2, 3)), [[0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8]]);
  const config: MaskConfig = { kind: 'block', ratio: 0.5, blockSize: 2 };
  const a = await rows(drawVisible(random.key(7), config, 8, 8));
  assert.deepEqual(await rows(drawVisible(random.key(7), config, 8, 8)), a);
  assert.notDeepEqual(await rows(drawVisible(random.key(8), config, 8, 8)), a);
  assert.ok(new Set(a.map(String)).size > 1, 'each sample draws its own mask');
});

test('random patch masks are uniform: each patch is masked with frequency ratio (4 standard errors)', async () => {
  const [side, batch, ratio] = [4, 2000, 0.25];
  const counts = new Array<number>(16).fill(0);
  for (const row of await rows(drawVisible(random.key(3), { kind: 'patch', ratio }, batch, side))) for (const v of row) counts[v]!++;
  const p = 1 - ratio;
  const se = Math.sqrt((batch * p * (1 - p)));
  counts.forEach((c, i) => assert.ok(Math.abs(c - batch * p) < 4 * se, `patch ${i} visible ${c} times of ${batch}`));
  const blocks = new Array<number>(16).fill(0);
  for (const row of await rows(drawVisible(random.key(4), { kind: 'crop', cropSize: 2 }, batch, side))) blocks[row[0]!]!++;
  // Crops start at the 3 x 3 top-left corners with equal probability.
  const corners = blocks.filter((c) => c > 0);
  assert.equal(corners.length, 9);
  const pc = 1 / 9;
  corners.forEach((c) => assert.ok(Math.abs(c - batch * pc) < 4 * Math.sqrt(batch * pc * (1 - pc)), `corner drawn ${c} times`));
});

test('the same key gives the same masks on the reference and cpu backends, inside jit', async () => {
  const configs: MaskConfig[] = [{ kind: 'patch', ratio: 0.9 }, { kind: 'block', ratio: 0.9, blockSize: 4 }, { kind: 'crop', cropSize: 3 }];
  for (const config of configs) {
    const draw = (key: Tensor) => drawVisible(key, config, 4, 8);
    const onRef = await jit(draw, { backend: 'reference' })(random.key(11));
    const onCpu = await jit(draw, { backend: 'cpu' })(random.key(11));
    assert.deepEqual(await onCpu.data(), await onRef.data(), config.kind);
  }
});

test('visiblePixelMask covers exactly the visible patches\' pixels', async () => {
  const visible = drawVisible(random.key(2), { kind: 'patch', ratio: 0.5 }, 2, 4);
  const mask = visiblePixelMask(visible, 4, 3);
  assert.deepEqual(mask.shape, [2, 1, 12, 12]);
  const m = Array.from(await mask.data());
  const vis = await rows(visible);
  for (let b = 0; b < 2; b++) for (let y = 0; y < 12; y++) for (let x = 0; x < 12; x++) {
    const patch = Math.floor(y / 3) * 4 + Math.floor(x / 3);
    assert.equal(m[b * 144 + y * 12 + x], vis[b]!.includes(patch) ? 1 : 0);
  }
});
