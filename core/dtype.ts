/** Element types. float64 exists for the CPU backend's gradient checker only. */
export type DType = 'float32' | 'int32' | 'bool' | 'float64';

/** Every dtype, e.g. to draw one in a property test. */
export const DTYPES: readonly DType[] = ['float32', 'int32', 'bool', 'float64'];

/** A host array of values: what `Tensor.data()` resolves to (bool as 0/1 bytes). */
export type TypedArray = Float32Array | Float64Array | Int32Array | Uint8Array;

/**
 * The host array type that stores a dtype (bool is one byte per element, 0 or 1).
 * @example
 * allocate('float32', 4);                             // Float32Array(4)
 * allocate('bool', 4);                                // Uint8Array(4)
 */
export function allocate(dtype: DType, size: number): TypedArray {
  switch (dtype) {
    case 'float32':
      return new Float32Array(size);
    case 'float64':
      return new Float64Array(size);
    case 'int32':
      return new Int32Array(size);
    case 'bool':
      return new Uint8Array(size);
    default:
      return dtype satisfies never;
  }
}

/**
 * Whether `dtype` is float32 or float64.
 * @example
 * isFloat('float64');                                 // true
 * isFloat('int32');                                   // false
 */
export function isFloat(dtype: DType): boolean {
  return dtype === 'float32' || dtype === 'float64';
}

/**
 * Whether a host array has the storage type of `dtype`.
 * @example
 * matchesDType(new Float32Array(4), 'float32');       // true
 * matchesDType(new Float32Array(4), 'int32');         // false
 */
export function matchesDType(data: TypedArray, dtype: DType): boolean {
  switch (dtype) {
    case 'float32':
      return data instanceof Float32Array;
    case 'float64':
      return data instanceof Float64Array;
    case 'int32':
      return data instanceof Int32Array;
    case 'bool':
      return data instanceof Uint8Array;
    default:
      return dtype satisfies never;
  }
}

/**
 * Rounds a JS number to what a dtype can hold.
 * @example
 * coerceScalar(2.7, 'int32');                         // 2
 * coerceScalar(2.7, 'bool');                          // 1
 */
export function coerceScalar(value: number, dtype: DType): number {
  switch (dtype) {
    case 'float32':
      return Math.fround(value);
    case 'float64':
      return value;
    case 'int32':
      return value | 0;
    case 'bool':
      return value ? 1 : 0;
    default:
      return dtype satisfies never;
  }
}
