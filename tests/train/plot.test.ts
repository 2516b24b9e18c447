import assert from 'node:assert/strict';
import { test } from 'node:test';
import { emaSmooth, formatTick, linePlotSvg, linearTicks, logTicks, lossCurveSvg } from '../../train/plot.ts';

test('plot: nice linear and log ticks', () => {
  assert.deepEqual(linearTicks(0, 10), [0, 2, 4, 6, 8, 10]);
  assert.deepEqual(linearTicks(0.013, 0.061), [0.02, 0.03, 0.04, 0.05, 0.06]);
  assert.deepEqual(linearTicks(-3, 7), [-2, 0, 2, 4, 6]);
  assert.deepEqual(logTicks(0.03, 2), [0.05, 0.1, 0.2, 0.5, 1, 2]);
  assert.deepEqual(logTicks(1e-4, 10), [1e-4, 1e-3, 0.01, 0.1, 1, 10]);
  assert.deepEqual([0, 0.5, 1234, 1e-4, 2.5e-5, 3e6].map(formatTick), ['0', '0.5', '1230', '1e-4', '2.5e-5', '3e6']);
});

test('plot: EMA smoothing is bias-corrected', () => {
  assert.deepEqual(emaSmooth([4, 4, 4], 0.9).map((v) => Number(v.toFixed(12))), [4, 4, 4]);
  const s = emaSmooth([0, 10], 0.5);
  assert.equal(s[0], 0);
  assert.ok(Math.abs(s[1]! - 20 / 3) < 1e-12);
});

test('plot: a loss curve has raw points, a smoothed line, labelled axes and log ticks', () => {
  const points = Array.from({ length: 300 }, (_, i) => [i * 10, 2 / (1 + i / 10) * (1 + 0.2 * Math.sin(i))] as const);
  const svg = lossCurveSvg([...points, [3000, NaN], [3010, 0]], { logY: true, title: 'MNIST <patch>' });
  assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  assert.match(svg, /<\/svg>\n$/);
  assert.equal((svg.match(/<circle /g) ?? []).length, 300);
  assert.equal((svg.match(/class="line"/g) ?? []).length, 1);
  assert.match(svg, />loss \(log scale\)</);
  assert.match(svg, />step</);
  assert.match(svg, />MNIST &lt;patch&gt;</);
  assert.match(svg, />0\.1</);
  assert.match(svg, />2 points not drawn \(non-finite or &lt;= 0\)</);
});

test('plot: several series against wall-clock seconds get a legend and distinct colours', () => {
  const svg = linePlotSvg([
    { name: 'EDM', points: [[0, 300], [600, 120], [1200, 60]] },
    { name: 'Patch Diffusion', points: [[0, 300], [600, 90], [1200, 40]] },
  ], { xLabel: 'wall-clock seconds', yLabel: 'FID' });
  assert.match(svg, /class="legend"/);
  assert.match(svg, />EDM</);
  assert.match(svg, />Patch Diffusion</);
  assert.match(svg, /stroke="#1f77b4"/);
  assert.match(svg, /stroke="#ff7f0e"/);
  assert.equal((svg.match(/<circle /g) ?? []).length, 0);
  assert.doesNotMatch(svg, /NaN|undefined|Infinity/);
  // A single point or no points still produce a valid plot.
  assert.doesNotMatch(linePlotSvg([{ name: 'x', points: [[1, 1]] }], { logY: true }), /NaN|Infinity/);
  assert.doesNotMatch(linePlotSvg([]), /NaN|Infinity/);
});
