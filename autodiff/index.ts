/** Reverse-mode autodiff: gradients as graph transformations, and a numerical gradient checker. */
export { vjp, grad, valueAndGrad, type GradOf, type GradOptions, type ValueAndGradOptions } from './grad.ts';
export { jvp, linearize } from './jvp.ts';
export { jacfwd, jacrev, hessian, type Jacobian, type JacobianOptions, type TreeOf } from './jac.ts';
export { customVjp, remat } from './custom.ts';
export { vmap, type AxisSpec, type VmapOptions } from './vmap.ts';
export { vjpRule, type Cotangents } from './rules.ts';
export { checkGrad, GradCheckError, type CheckGradOptions, type GradCheckResult, type GradComparison } from './check.ts';
