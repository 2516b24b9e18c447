/**
 * The scalar functions a WebAssembly kernel imports (as `math.<name>`, f64 -> f64) for what it does
 * not compute itself: the reference's own definitions (backends/reference/elementwise.ts), so the
 * results stay bit-identical to it. Plain JavaScript, so that worker.js can import it without a loader.
 */

/** Logistic function without overflow, as the reference defines it. */
function sigmoid(x) {
  if (x >= 0) return 1 / (1 + Math.exp(-x));
  const e = Math.exp(x);
  return e / (1 + e);
}

export const MATH_IMPORTS = {
  exp: Math.exp,
  log: Math.log,
  sin: Math.sin,
  cos: Math.cos,
  tanh: Math.tanh,
  sign: Math.sign,
  pow: Math.pow,
  sigmoid,
};
