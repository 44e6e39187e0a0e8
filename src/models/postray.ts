/**
 * `postray`: the post embedding — one vector for a post's text and images, fused from two real
 * encoders by a fixed, versioned formula. A virtual model: no ONNX file of its own; it is computed from
 * the part embeddings, which are cached and batched like any other.
 *
 * Formula `postray-1` (documented in docs/POSTRAY.md):
 *
 *   t = text-glove(text)                          unit 100-d vector, absent if there is no text or
 *                                                  no known word (zero vector)
 *   m = mean over the post's images of image-mobilenet(image)   (each a unit 1792-d vector)
 *   i = m / ‖m‖                                   absent if there are no images
 *
 *   both present:   v = [ α·t , β·i ]  with α = β = 1/√2   (α² + β² = 1)
 *   text only:      v = [ t , 0 ]
 *   images only:    v = [ 0 , i ]
 *   neither:        v = 0                          (Post.embedding is null then)
 *
 *   postray = v / ‖v‖                              1892-d (100 text + 1792 image components)
 *
 * With both parts present, ‖α·t‖² = ‖β·i‖² = ½: each part carries half the vector's energy, so for two
 * such posts cos(p, q) = ½·cos(t_p, t_q) + ½·cos(i_p, i_q) — text similarity and image similarity count
 * equally, whatever the dimensions of the two encoders. A text-only and an image-only post are
 * orthogonal. Components 0–99 are text, 100–1891 image: `dimensions` truncation keeps the text part
 * first, so truncating a postray vector is not meaningful beyond 100.
 *
 * The version is sha256(formula version, text model@version, image model@version), so a new encoder
 * version or a new formula is a new postray version (and a new cache namespace for anyone storing it).
 */
import { createHash } from 'node:crypto';

export const POSTRAY_MODEL = 'postray';
/** Bump when the formula changes. */
export const POSTRAY_FORMULA = 'postray-1';
export const POSTRAY_TEXT_MODEL = 'text-glove';
export const POSTRAY_IMAGE_MODEL = 'image-mobilenet';
/** Weight of the text part when both parts are present (α). */
export const ALPHA = Math.SQRT1_2;
/** Weight of the image part when both parts are present (β); α² + β² = 1. */
export const BETA = Math.SQRT1_2;

export function postrayVersion(textVersion: string, imageVersion: string): string {
  return createHash('sha256')
    .update(`${POSTRAY_FORMULA}\0${POSTRAY_TEXT_MODEL}@${textVersion}\0${POSTRAY_IMAGE_MODEL}@${imageVersion}`)
    .digest('hex')
    .slice(0, 16);
}

function norm(v: Float32Array): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!;
  return Math.sqrt(s);
}

/** The normalised mean of unit image vectors, or undefined when there are none (or they cancel out). */
export function meanImage(images: readonly Float32Array[], dims: number): Float32Array | undefined {
  if (images.length === 0) return undefined;
  const m = new Float64Array(dims);
  for (const v of images) {
    if (v.length !== dims) throw new Error(`image vector has ${v.length} components, expected ${dims}`);
    for (let k = 0; k < dims; k++) m[k]! += v[k]!;
  }
  let s = 0;
  for (let k = 0; k < dims; k++) s += m[k]! * m[k]!;
  const n = Math.sqrt(s);
  if (!(n > 0)) return undefined;
  return Float32Array.from(m, (x) => x / n);
}

/**
 * The postray vector of one post. `text`: the text embedding (unit or zero), or undefined when the
 * post has no text. `images`: the unit embeddings of its images. Returns undefined when the post has
 * nothing to embed.
 */
export function fusePost(text: Float32Array | undefined, images: readonly Float32Array[], dims: { text: number; image: number }): Float32Array | undefined {
  if (text && text.length !== dims.text) throw new Error(`text vector has ${text.length} components, expected ${dims.text}`);
  const t = text && norm(text) > 0 ? text : undefined;
  const i = meanImage(images, dims.image);
  if (!t && !i) return undefined;
  const a = t && i ? ALPHA : 1;
  const b = t && i ? BETA : 1;
  const out = new Float32Array(dims.text + dims.image);
  const tn = t ? norm(t) : 1;
  if (t) for (let k = 0; k < dims.text; k++) out[k] = (a * t[k]!) / tn;
  if (i) for (let k = 0; k < dims.image; k++) out[dims.text + k] = b * i[k]!;
  // Already unit length up to rounding; normalise so the contract (‖v‖ = 1) holds exactly as float32 allows.
  const n = norm(out);
  for (let k = 0; k < out.length; k++) out[k] = out[k]! / n;
  return out;
}
