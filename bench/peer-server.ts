/**
 * The peer the bench compares Polyray with: a minimal node:http JSON server (no framework, no cache)
 * embedding texts with one ONNX model, run as a child process by `bench/run.ts`.
 *
 *   POST /embed          {"texts": [...]} → {"vectors": ["<base64 float32>", ...]}: one model call per request
 *   POST /embed-batched  same, but requests that queue while the model is busy are run together, up to
 *                        PEER_BATCH_MAX texts per call (padding to the longest text of the call, as the
 *                        library pads); the usual "micro-batching" a hand-written server would add
 *   GET  /readyz         200 once the model is loaded
 *
 * PEER_KIND=transformers (default): `@huggingface/transformers` (transformers.js) `pipeline('feature-extraction')`
 * on a Hugging Face layout of our model folder (PEER_HF_DIR, model id PEER_HF_ID), local files only. Our
 * ONNX graph already mean-pools and L2-normalises, and names its output `embedding`, which the pipeline's
 * `_call` does not read (it looks for last_hidden_state / logits / token_embeddings); so each call does
 * what `_call` does — `pipe.tokenizer(texts, {padding: true, truncation: true})` then `pipe.model(inputs)` —
 * and returns the `embedding` output (the same vectors as Polyray's, checked by the bench).
 * With PEER_POOLING=mean|cls the folder's graph outputs last_hidden_state and the pipeline itself pools and
 * normalises (`pipe(texts, {pooling, normalize: true})`), as a transformers.js user calls it.
 * PEER_KIND=ort: raw onnxruntime-node session with Polyray's WordPiece tokenizer, default session options,
 * the "naive Node server" fallback.
 */
import http from 'node:http';
import path from 'node:path';

const kind = process.env.PEER_KIND ?? 'transformers';
const port = Number(process.env.PORT ?? 0);
const batchMax = Number(process.env.PEER_BATCH_MAX ?? 8);

type EmbedFn = (texts: string[]) => Promise<Float32Array[]>;

function split(data: Float32Array, dims: readonly number[]): Float32Array[] {
  const n = dims[0]!;
  const d = dims[dims.length - 1]!;
  return Array.from({ length: n }, (_, i) => data.slice(i * d, (i + 1) * d));
}

async function loadTransformers(): Promise<EmbedFn> {
  const tf = await import('@huggingface/transformers');
  tf.env.allowRemoteModels = false;
  tf.env.allowLocalModels = true;
  tf.env.localModelPath = process.env.PEER_HF_DIR!;
  tf.env.useBrowserCache = false;
  tf.env.useFSCache = false;
  const pipe = await tf.pipeline('feature-extraction', process.env.PEER_HF_ID ?? 'text-bert-synthetic', { dtype: 'fp32', device: 'cpu' });
  const pooling = process.env.PEER_POOLING as 'mean' | 'cls' | undefined;
  if (pooling) {
    // A folder exported without pooling (last_hidden_state): the pipeline pools and normalises, as its users call it.
    return async (texts) => {
      const t = (await pipe(texts, { pooling, normalize: true })) as unknown as { data: Float32Array; dims: number[] };
      return split(t.data, t.dims);
    };
  }
  return async (texts) => {
    const inputs = pipe.tokenizer(texts, { padding: true, truncation: true });
    const out = (await pipe.model(inputs)) as Record<string, { data: Float32Array; dims: number[] }>;
    const e = out.embedding;
    if (!e) throw new Error(`model output has no "embedding" (outputs: ${Object.keys(out).join(', ')})`);
    return split(e.data, e.dims);
  };
}

async function loadOrt(): Promise<EmbedFn> {
  const ort = await import('onnxruntime-node');
  const { WordPieceTokenizer } = await import('../src/runtime/wordpiece.ts');
  const dir = process.env.PEER_MODEL_DIR!;
  const tok = await WordPieceTokenizer.load(path.join(dir, 'tokenizer.json'));
  const session = await ort.InferenceSession.create(path.join(dir, 'model.onnx'));
  return async (texts) => {
    const encs = texts.map((t) => tok.encode(t));
    const n = encs.length;
    const t = Math.max(...encs.map((e) => e.ids.length));
    const ids = new BigInt64Array(n * t);
    const mask = new BigInt64Array(n * t);
    encs.forEach((e, r) => {
      e.ids.forEach((id, j) => {
        ids[r * t + j] = BigInt(id);
        mask[r * t + j] = BigInt(e.mask[j]!);
      });
    });
    const feeds: Record<string, InstanceType<typeof ort.Tensor>> = {
      input_ids: new ort.Tensor('int64', ids, [n, t]),
      attention_mask: new ort.Tensor('int64', mask, [n, t]),
    };
    if (session.inputNames.includes('token_type_ids')) feeds.token_type_ids = new ort.Tensor('int64', new BigInt64Array(n * t), [n, t]);
    const out = await session.run(feeds);
    const e = out[session.outputNames[0]!]!;
    return split(e.data as Float32Array, e.dims);
  };
}

const embed: EmbedFn = kind === 'ort' ? await loadOrt() : await loadTransformers();

// Micro-batching: one model call at a time; what queued meanwhile goes in the next call.
interface Pending {
  texts: string[];
  resolve: (v: Float32Array[]) => void;
  reject: (e: unknown) => void;
}
const queue: Pending[] = [];
let busy = false;
function pump(): void {
  if (busy || queue.length === 0) return;
  busy = true;
  const take: Pending[] = [];
  let n = 0;
  while (queue.length > 0 && (take.length === 0 || n + queue[0]!.texts.length <= batchMax)) {
    const p = queue.shift()!;
    take.push(p);
    n += p.texts.length;
  }
  embed(take.flatMap((p) => p.texts))
    .then(
      (vs) => {
        let k = 0;
        for (const p of take) {
          p.resolve(vs.slice(k, k + p.texts.length));
          k += p.texts.length;
        }
      },
      (e: unknown) => {
        for (const p of take) p.reject(e);
      },
    )
    .finally(() => {
      busy = false;
      pump();
    });
}
const batched = (texts: string[]): Promise<Float32Array[]> =>
  new Promise((resolve, reject) => {
    queue.push({ texts, resolve, reject });
    pump();
  });

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/readyz') {
    res.writeHead(200).end('ok');
    return;
  }
  if (req.method !== 'POST' || (req.url !== '/embed' && req.url !== '/embed-batched')) {
    res.writeHead(404).end();
    return;
  }
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    void (async () => {
      try {
        const { texts } = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { texts: string[] };
        if (!Array.isArray(texts) || texts.length === 0 || texts.some((t) => typeof t !== 'string'))
          throw new Error('texts must be a non-empty array of strings');
        const vs = await (req.url === '/embed' ? embed(texts) : batched(texts));
        const body = JSON.stringify({ vectors: vs.map((v) => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64')) });
        res.writeHead(200, { 'content-type': 'application/json' }).end(body);
      } catch (e) {
        res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: (e as Error).message }));
      }
    })();
  });
});
server.keepAliveTimeout = 60_000;
server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
