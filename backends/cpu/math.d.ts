/** Functions WebAssembly kernels import as `math.<name>` (see math.js). */
export declare const MATH_IMPORTS: {
  readonly exp: (x: number) => number;
  readonly log: (x: number) => number;
  readonly sin: (x: number) => number;
  readonly cos: (x: number) => number;
  readonly tanh: (x: number) => number;
  readonly sign: (x: number) => number;
  readonly pow: (x: number, y: number) => number;
  readonly sigmoid: (x: number) => number;
};
