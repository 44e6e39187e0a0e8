/**
 * Image bytes → model input tensor, with sharp (libvips). Decoding runs on libuv's thread pool, so the
 * event loop never waits for it.
 *
 * Owns: content sniffing, the pixel limit, and the exact preprocessing an image model's manifest asks
 * for (`PreprocessSpec`):
 *
 *   1. sniff the format from the first bytes (JPEG FF D8 FF, PNG 89 50 4E 47 0D 0A 1A 0A, GIF87a/GIF89a,
 *      RIFF....WEBP); anything else is IMAGE_UNREADABLE, whatever the server said it was;
 *   2. read the header only (`metadata()`) and refuse width × height > maxPixels before decoding a
 *      single pixel (decompression bombs: a 100 kB PNG can claim 50 000 × 50 000 pixels); sharp's own
 *      `limitInputPixels` is set to the same limit as a second guard;
 *   3. decode the first frame, apply the EXIF orientation, convert to sRGB, drop alpha (as TF.js's
 *      `fromPixels` does: RGB of RGBA), resize so the shorter side is `size` and centre-crop to
 *      `size` × `size` (sharp `fit: cover`, Lanczos-3; an image whose shorter side already is `size` is
 *      only cropped, its pixels untouched);
 *   4. value = (byte · scale − mean[c]) / std[c], in the manifest's layout (NCHW for image-mobilenet).
 *
 * nsfwjs itself stretches the whole image to 224 × 224 (bilinear, aspect ratio lost); we keep the
 * aspect ratio and crop, which is what ImageNet-trained MobileNets expect. See docs/POSTRAY.md.
 */
import sharp from 'sharp';
import { ErrorCode, PolyrayError } from '../errors.ts';
import type { PreprocessSpec } from '../runtime/manifest.ts';

export type ImageFormat = 'jpeg' | 'png' | 'gif' | 'webp';

/** The image format from the leading bytes, or undefined when it is none we decode. */
export function sniffImageType(b: Uint8Array): ImageFormat | undefined {
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47 && b[4] === 0x0d && b[5] === 0x0a && b[6] === 0x1a && b[7] === 0x0a)
    return 'png';
  if (b.length >= 6 && b[0] === 0x47 && b[1] === 0x49 && b[2] === 0x46 && b[3] === 0x38 && (b[4] === 0x37 || b[4] === 0x39) && b[5] === 0x61) return 'gif';
  if (b.length >= 12 && b[0] === 0x52 && b[1] === 0x49 && b[2] === 0x46 && b[3] === 0x46 && b[8] === 0x57 && b[9] === 0x45 && b[10] === 0x42 && b[11] === 0x50)
    return 'webp';
  return undefined;
}

export interface PreprocessedImage {
  /** The model input for one image: 3 × size × size values in the spec's layout. */
  tensor: Float32Array;
  format: ImageFormat;
  /** Size of the source image, from its header. */
  width: number;
  height: number;
}

export interface PreprocessLimits {
  /** Largest width × height accepted. */
  maxPixels: number;
}

function unreadable(message: string): PolyrayError {
  return new PolyrayError(ErrorCode.IMAGE_UNREADABLE, message);
}

/** Decodes and preprocesses one image. Rejects with IMAGE_UNREADABLE or IMAGE_TOO_LARGE. */
export async function preprocessImage(bytes: Uint8Array, spec: PreprocessSpec, limits: PreprocessLimits): Promise<PreprocessedImage> {
  const format = sniffImageType(bytes);
  if (!format) throw unreadable('The bytes are not a JPEG, PNG, GIF or WebP image');
  const input = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let width: number;
  let height: number;
  try {
    const meta = await sharp(input, { limitInputPixels: false, failOn: 'none' }).metadata();
    if (meta.format !== format) throw new Error(`header says ${String(meta.format)}`);
    width = meta.width ?? 0;
    height = meta.height ?? 0;
  } catch {
    throw unreadable(`The ${format.toUpperCase()} header could not be read`);
  }
  if (!(width > 0 && height > 0)) throw unreadable(`The ${format.toUpperCase()} image has no size`);
  if (width * height > limits.maxPixels) {
    throw new PolyrayError(
      ErrorCode.IMAGE_TOO_LARGE,
      `Image is ${width}×${height} pixels; the limit is ${limits.maxPixels} pixels (POLYRAY_IMAGE_MAX_PIXELS)`,
      {
        width,
        height,
        limit: limits.maxPixels,
      },
    );
  }
  const size = spec.size;
  let data: Buffer;
  try {
    const out = await sharp(input, { limitInputPixels: limits.maxPixels, failOn: 'error', pages: 1 })
      .rotate() // EXIF orientation
      .toColourspace('srgb')
      .removeAlpha()
      .resize(size, size, { fit: 'cover', position: 'centre' })
      .raw()
      .toBuffer({ resolveWithObject: true });
    if (out.info.width !== size || out.info.height !== size || out.info.channels !== 3) throw new Error('unexpected output shape');
    data = out.data;
  } catch {
    throw unreadable(`The ${format.toUpperCase()} image could not be decoded`);
  }
  return { tensor: toTensor(data, spec), format, width, height };
}

/** RGB bytes (HWC, size × size × 3) → normalised floats in the spec's layout. */
export function toTensor(rgb: Uint8Array, spec: PreprocessSpec): Float32Array {
  const plane = spec.size * spec.size;
  if (rgb.length !== plane * 3) throw new Error(`expected ${plane * 3} RGB bytes, got ${rgb.length}`);
  const out = new Float32Array(plane * 3);
  // One lookup table per channel: 768 values instead of 150 528 multiply-subtract-divides.
  const lut = new Float32Array(3 * 256);
  for (let c = 0; c < 3; c++) for (let b = 0; b < 256; b++) lut[c * 256 + b] = (b * spec.scale - spec.mean[c]!) / spec.std[c]!;
  if (spec.layout === 'nchw') {
    for (let c = 0; c < 3; c++) {
      const base = c * plane;
      const l = c * 256;
      for (let p = 0; p < plane; p++) out[base + p] = lut[l + rgb[p * 3 + c]!]!;
    }
  } else {
    for (let i = 0; i < plane * 3; i++) out[i] = lut[(i % 3) * 256 + rgb[i]!]!;
  }
  return out;
}
