/** Reverse-mode autodiff: gradients as graph transformations, and a numerical gradient checker. */
export { vjp, grad, valueAndGrad, type GradOf, type GradOptions, type ValueAndGradOptions } from './grad.ts';
export { vjpRule, type Cotangents } from './rules.ts';
export { checkGrad, GradCheckError, type CheckGradOptions, type GradCheckResult, type GradComparison } from './check.ts';
