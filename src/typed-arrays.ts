/** The typed arrays the growable columns of this project use. */
export type TypedArray = Int32Array | Uint32Array | Uint16Array | Uint8Array | Float64Array;

/** A copy of `a` in a new array of its own type with `size` elements (those past `a`'s length are 0). */
export function grown<A extends TypedArray>(a: A, size: number): A {
  const b = new (a.constructor as new (n: number) => A)(size);
  b.set(a);
  return b;
}
