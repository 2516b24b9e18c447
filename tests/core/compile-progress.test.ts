/**
 * While jit waits for a backend that builds its code asynchronously (WebGPU's pipelines), listeners
 * registered with onCompileProgress hear about it once a second and once when it is ready; the
 * training CLI turns that into a progress line (compileProgressPrinter).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registerReferenceBackend } from '../../backends/reference/index.ts';
import { add, getBackend, jit, mul, onCompileProgress, tensor, type Backend, type CompileProgress, type Executable, type Tensor } from '../../core/index.ts';
import { compileProgressPrinter } from '../../train/run.ts';

registerReferenceBackend();

/** The reference backend, but each program "builds" for `ms` milliseconds in 4 pieces, one every ms / 4. */
async function slowBackend(ms: number): Promise<Backend> {
  const inner = await getBackend('reference');
  const compile = (program: Parameters<Backend['compile']>[0]): Executable => {
    let done = 0;
    const pieces = Array.from({ length: 4 }, (_, i) => new Promise<void>((resolve) => setTimeout(() => { done++; resolve(); }, ((i + 1) * ms) / 4)));
    const exe: Executable & { inner: Executable } = { program, inner: inner.compile(program), ready: Promise.all(pieces).then(() => undefined), progress: () => ({ done, total: 4 }) };
    return exe;
  };
  const run: Backend['run'] = (exe, inputs, donated) => inner.run((exe as Executable & { inner: Executable }).inner, inputs, donated);
  return new Proxy(inner, {
    get(target, prop) {
      if (prop === 'name') return 'slow-reference';
      if (prop === 'compile') return compile;
      if (prop === 'run') return run;
      const v = Reflect.get(target, prop) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

test('a compile longer than a second is reported while it runs and when it is ready; a short one, not at all', async () => {
  const heard: CompileProgress[] = [];
  const stop = onCompileProgress((p) => heard.push(p));
  try {
    const slow = await slowBackend(2600);
    const f = jit((x: Tensor) => add(mul(x, 2), 1), { name: 'slowStep', backend: slow });
    // Two calls waiting on the same compile together: one report of it, not one per caller.
    const [y] = await Promise.all([f(tensor([1, 2, 3])), f(tensor([7, 8, 9]))]);
    assert.deepEqual(Array.from(await y.data()), [3, 5, 7]);
    assert.ok(heard.length >= 2, `${heard.length} reports`);
    assert.equal(heard.filter((p) => p.finished).length, 1, 'one final report for the two waiting calls');
    const last = heard.at(-1)!;
    assert.deepEqual([last.program, last.finished, last.done, last.total], ['slowStep', true, 4, 4]);
    assert.ok(last.seconds >= 2.5, `${last.seconds}`);
    const during = heard.slice(0, -1);
    assert.ok(during.every((p) => !p.finished && p.done < 4 && p.total === 4), JSON.stringify(during));
    assert.ok(during.every((p, i) => i === 0 || p.done >= during[i - 1]!.done), 'done never goes back');
    // The second call finds the executable ready: nothing to report.
    const before = heard.length;
    await f(tensor([4, 5, 6]));
    assert.equal(heard.length, before);
    // A compile under a second says nothing.
    const quick = jit((x: Tensor) => mul(x, 3), { name: 'quickStep', backend: await slowBackend(200) });
    await quick(tensor([1]));
    assert.equal(heard.length, before);
  } finally {
    stop();
  }
  // Once removed, a listener hears nothing.
  const after = heard.length;
  await jit((x: Tensor) => add(x, 5), { name: 'unheard', backend: await slowBackend(1400) })(tensor([1]));
  assert.equal(heard.length, after);
});

test('the CLI prints a compile as one line rewritten in place on a terminal, else a line every 10 s and the last', () => {
  const p = (done: number, seconds: number, finished = false): CompileProgress => ({ program: 'trainStep', done, total: 518, seconds, finished });
  const tty: string[] = [];
  const printTty = compileProgressPrinter((t) => tty.push(t), true);
  [p(10, 1), p(200, 2), p(518, 3.04, true)].forEach(printTty);
  assert.deepEqual(tty, ['\rcompiling trainStep: 10/518 kernels built, 1 s   ', '\rcompiling trainStep: 200/518 kernels built, 2 s   ', '\rcompiled trainStep: 518 kernels in 3.0 s   \n']);
  const plain: string[] = [];
  const printPlain = compileProgressPrinter((t) => plain.push(t), false);
  [p(10, 1), p(20, 2), p(300, 11.5), p(400, 12.5), p(518, 14, true)].forEach(printPlain);
  assert.deepEqual(plain, ['compiling trainStep: 10/518 kernels built, 1 s\n', 'compiling trainStep: 300/518 kernels built, 12 s\n', 'compiled trainStep: 518 kernels in 14.0 s\n']);
});
