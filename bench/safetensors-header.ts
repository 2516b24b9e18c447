/**
 * Decoding a safetensors file whose header lists many tiny tensors (the shape of a hostile file:
 * a few MB of header, almost no data), against JSON.parse of the same header text in the same run,
 * the floor any decoder pays. The issue this guards against: a per-tensor search of the header made
 * decoding quadratic in the tensor count (16k tensors took 5 s).
 *
 *   npx tsx bench/safetensors-header.ts              # 100,000 tensors
 *   npx tsx bench/safetensors-header.ts --tensors 16000
 */
import os from 'node:os';
import { Bench } from 'tinybench';
import { decodeSafetensors, encodeSafetensors, type HostTensor } from '../train/safetensors.ts';

const i = process.argv.indexOf('--tensors');
const count = i >= 0 ? Number(process.argv[i + 1]) : 100_000;
if (!Number.isInteger(count) || count < 1) throw new Error(`--tensors: expected an integer >= 1, got '${process.argv[i + 1]}'`);

// Names like a real state dict's, half of them holding one value and half empty.
const entries: Record<string, HostTensor> = {};
for (let k = 0; k < count; k++) {
  const n = k % 2;
  entries[`model.enc.block${k}.weight`] = { dtype: 'float32', shape: [n], data: new Float32Array(n) };
}
const file = encodeSafetensors(entries);
const headerLength = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
const headerText = new TextDecoder().decode(file.subarray(8, 8 + headerLength));

const bench = new Bench({ time: 2000, iterations: 3, warmupIterations: 1 });
bench.add(`decodeSafetensors, ${count} tensors`, () => {
  const r = decodeSafetensors(file, 'bench.safetensors');
  if (r._tag === 'Left' || Object.keys(r.right.tensors).length !== count) throw new Error('decode failed');
});
bench.add(`JSON.parse of the same header (peer: the floor)`, () => {
  JSON.parse(headerText);
});
await bench.run();

const rows = bench.tasks.map((task) => {
  const r = task.result as { latency?: { mean: number; samplesCount?: number } } | undefined;
  return `| ${task.name} | ${r?.latency?.mean.toFixed(1) ?? '?'} ms |`;
});
console.log(`header ${(headerLength / 1e6).toFixed(1)} MB, file ${(file.length / 1e6).toFixed(1)} MB\n`);
console.log(['| case | mean |', '| --- | --- |', ...rows].join('\n'));
console.log(`\n${os.cpus()[0]?.model ?? 'cpu'} x${os.availableParallelism()}, load ${os.loadavg()[0]!.toFixed(2)}, node ${process.version}`);
