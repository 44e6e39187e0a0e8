/**
 * Image preprocessing is exact where it can be (no resampling: the tensor is bytes / 255, in NCHW, of
 * the centre crop), keeps colours where it resamples, handles grey, alpha and EXIF orientation, and
 * decodes off the event loop.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import sharp from 'sharp';

import { preprocessImage, toTensor } from '../src/images/preprocess.ts';
import type { PreprocessSpec } from '../src/runtime/manifest.ts';

const SPEC: PreprocessSpec = { size: 224, resize: 'cover', scale: 1 / 255, mean: [0, 0, 0], std: [1, 1, 1], layout: 'nchw' };
const S = 224;
const PLANE = S * S;

function noise(w: number, h: number, seed: number): Buffer {
  const b = Buffer.alloc(w * h * 3);
  let x = seed >>> 0;
  for (let i = 0; i < b.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

const png = (raw: Buffer, w: number, h: number, channels: 1 | 3 | 4 = 3): Promise<Buffer> =>
  sharp(raw, { raw: { width: w, height: h, channels } })
    .png()
    .toBuffer();

/** Asserts tensor = crop(raw) / 255 exactly, NCHW, for a crop at (ox, oy). */
function assertExactCrop(tensor: Float32Array, raw: Buffer, w: number, ox: number, oy: number): void {
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        const want = Math.fround(raw[((y + oy) * w + (x + ox)) * 3 + c]! / 255);
        const got = tensor[c * PLANE + y * S + x]!;
        if (got !== want) assert.fail(`c${c} (${x},${y}): ${got} !== ${want}`);
      }
    }
  }
}

describe('image preprocessing', () => {
  test('a 224×224 image is taken as is: byte / 255, channel planes (NCHW)', async () => {
    const raw = noise(S, S, 1);
    const out = await preprocessImage(await png(raw, S, S), SPEC, { maxPixels: 1e7 });
    assert.equal(out.tensor.length, 3 * PLANE);
    assert.deepEqual([out.width, out.height, out.format], [224, 224, 'png']);
    assertExactCrop(out.tensor, raw, S, 0, 0);
  });

  test('a wide or tall image whose shorter side is 224 is centre-cropped without resampling', async () => {
    const wide = noise(300, S, 2);
    assertExactCrop((await preprocessImage(await png(wide, 300, S), SPEC, { maxPixels: 1e7 })).tensor, wide, 300, 38, 0);
    // An odd difference (261 − 224 = 37) leaves the extra row at the top: offset ⌈37 / 2⌉ = 19.
    const tall = noise(S, 261, 3);
    assertExactCrop((await preprocessImage(await png(tall, S, 261), SPEC, { maxPixels: 1e7 })).tensor, tall, S, 0, 19);
  });

  test('a larger image is scaled so its shorter side is 224, then centre-cropped; flat regions keep their colour', async () => {
    // 896×448: scaled by 1/2 to 448×224, then the middle 224 columns (original columns 224..671) remain.
    const w = 896;
    const h = 448;
    const raw = Buffer.alloc(w * h * 3);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const colour = x < 224 ? [255, 0, 0] : x < 448 ? [0, 200, 0] : x < 672 ? [0, 0, 150] : [255, 255, 0];
        raw.set(colour, (y * w + x) * 3);
      }
    }
    const t = (await preprocessImage(await png(raw, w, h), SPEC, { maxPixels: 1e7 })).tensor;
    const px = (x: number, y: number) => [0, 1, 2].map((c) => Math.round(t[c * PLANE + y * S + x]! * 255));
    assert.deepEqual(px(20, 100), [0, 200, 0], 'left half of the crop is the green block');
    assert.deepEqual(px(200, 100), [0, 0, 150], 'right half is the blue block');
    // Red (x < 224) and yellow (x >= 672) were cropped away entirely.
    for (let y = 0; y < S; y += 37) for (let x = 0; x < S; x += 5) assert.ok(px(x, y)[0]! < 30, `no red at ${x},${y}`);
  });

  test('grey images become three equal channels; alpha is dropped, colour kept', async () => {
    const grey = Buffer.alloc(PLANE);
    for (let i = 0; i < PLANE; i++) grey[i] = i % 251;
    const g = (await preprocessImage(await png(grey, S, S, 1), SPEC, { maxPixels: 1e7 })).tensor;
    for (let p = 0; p < PLANE; p += 97) {
      assert.equal(g[p], Math.fround((p % 251) / 255));
      assert.equal(g[PLANE + p], g[p]);
      assert.equal(g[2 * PLANE + p], g[p]);
    }
    const rgba = Buffer.alloc(PLANE * 4);
    for (let p = 0; p < PLANE; p++) rgba.set([10, 20, 30, p % 2 ? 0 : 255], p * 4);
    const a = (await preprocessImage(await png(rgba, S, S, 4), SPEC, { maxPixels: 1e7 })).tensor;
    for (let p = 0; p < PLANE; p += 101)
      assert.deepEqual(
        [a[p], a[PLANE + p], a[2 * PLANE + p]],
        [10, 20, 30].map((v) => Math.fround(v / 255)),
      );
  });

  test('EXIF orientation is applied', async () => {
    // Left half red, right half blue, tagged "rotate 90° clockwise": upright it is red on top.
    const w = 448;
    const h = 224;
    const raw = Buffer.alloc(w * h * 3);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) raw.set(x < w / 2 ? [255, 0, 0] : [0, 0, 255], (y * w + x) * 3);
    const jpeg = await sharp(raw, { raw: { width: w, height: h, channels: 3 } })
      .jpeg({ quality: 95 })
      .withMetadata({ orientation: 6 })
      .toBuffer();
    const out = await preprocessImage(jpeg, SPEC, { maxPixels: 1e7 });
    assert.deepEqual([out.width, out.height], [448, 224], 'header size, before orientation');
    const red = (x: number, y: number) => out.tensor[y * S + x]! * 255;
    assert.ok(red(112, 20) > 200 && red(112, 200) < 50, 'red on top, blue below');
  });

  test('mean, std and layout come from the manifest', () => {
    const rgb = Uint8Array.from({ length: 2 * 2 * 3 }, (_, i) => i * 20);
    const spec: PreprocessSpec = { size: 2, resize: 'cover', scale: 1 / 255, mean: [0.5, 0.25, 0], std: [0.5, 0.25, 2], layout: 'nhwc' };
    const nhwc = toTensor(rgb, spec);
    for (let i = 0; i < rgb.length; i++) assert.equal(nhwc[i], Math.fround((rgb[i]! / 255 - spec.mean[i % 3]!) / spec.std[i % 3]!));
    const nchw = toTensor(rgb, { ...spec, layout: 'nchw' });
    assert.equal(nchw[1 * 4 + 2], nhwc[2 * 3 + 1], 'pixel 2, channel 1');
  });

  test('decoding runs off the event loop', async () => {
    const big = await sharp(noise(1600, 1200, 4), { raw: { width: 1600, height: 1200, channels: 3 } })
      .jpeg()
      .toBuffer();
    let ticks = 0;
    let running = true;
    const spin = (): void => {
      ticks++;
      if (running) setImmediate(spin);
    };
    setImmediate(spin);
    const t0 = performance.now();
    await Promise.all(Array.from({ length: 6 }, () => preprocessImage(big, SPEC, { maxPixels: 1e7 })));
    running = false;
    const ms = performance.now() - t0;
    assert.ok(ticks > 10, `the event loop turned ${ticks} times during ${ms.toFixed(0)} ms of decoding`);
  });
});
