/**
 * Options of the model folders: where they live, which of them a replica serves, whether the bundled ones
 * are built at start, and which model `Post.embedding` uses by default. Declared with
 * src/config/define.ts; src/config assembles and validates them.
 */
import path from 'node:path';
import { z } from 'zod';
import { list, maybe, setting } from '../config/define.ts';

export const modelsSchema = z
  .object({
    /** Folder holding one sub-folder per model, resolved against the working directory. `POLYRAY_MODELS_DIR`; default `./models`. */
    dir: setting(z.string(), {
      env: 'POLYRAY_MODELS_DIR',
      file: 'modelsDir',
      read: (raw) => path.resolve(raw),
      default: () => path.resolve('models'),
      defaultDoc: './models',
      doc: 'one folder per model (`manifest.json`, `model.onnx`, tokenizer)',
    }),
    /** Build the bundled models that are missing before serving. `POLYRAY_BUILD_MISSING`; default true. */
    buildMissing: setting(z.boolean(), {
      env: 'POLYRAY_BUILD_MISSING',
      file: 'buildMissing',
      default: true,
      doc: 'build bundled models that are missing at start',
    }),
    /**
     * Names of the models this replica loads and serves; `["*"]` loads every model folder. A replica per
     * model family keeps memory down (each worker holds a session per model). `POLYRAY_SERVE_MODELS`
     * (comma-separated); default `["*"]`.
     */
    serve: setting(z.array(z.string()), {
      env: 'POLYRAY_SERVE_MODELS',
      file: 'serveModels',
      read: list,
      default: ['*'],
      doc: 'comma-separated models this replica loads (`*` = every folder)',
    }),
    /**
     * Other names REST callers may use for served models, as `alias=model` pairs, e.g.
     * `text-embedding-3-small=bge-small-en-v1.5`, so code written for another service runs unchanged.
     * `POLYRAY_MODEL_ALIASES` (comma-separated); default none. Applies to `/v1/embeddings` and `/embed`.
     */
    aliases: setting(z.array(z.string().regex(/^[^=\s]{1,128}=[^=\s]{1,128}$/, { error: 'entries must look like alias=model' })), {
      env: 'POLYRAY_MODEL_ALIASES',
      file: 'modelAliases',
      read: list,
      default: [],
      doc: 'comma-separated `alias=model` pairs for REST callers (e.g. `text-embedding-3-small=text-glove`)',
    }),
    /** Model `Post.embedding` uses when the query names none. `POLYRAY_DEFAULT_POST_MODEL`; default `postray` (text + images). */
    defaultPostModel: setting(z.string(), {
      env: 'POLYRAY_DEFAULT_POST_MODEL',
      file: 'defaultPostModel',
      default: 'postray',
      doc: 'model of `Post.embedding` when the query names none',
    }),
    /** Hugging Face Hub endpoint `polyray models pull` downloads from (a mirror behind a firewall). `HF_ENDPOINT`; default https://huggingface.co. */
    hubEndpoint: setting(z.string().url(), {
      env: 'HF_ENDPOINT',
      file: 'hubEndpoint',
      default: 'https://huggingface.co',
      doc: 'Hugging Face Hub (or mirror) that `polyray models pull` downloads from',
    }),
    /** Access token for gated or private repositories on the hub. `HF_TOKEN`; default unset. */
    hubToken: setting(maybe(z.string().min(1)), {
      env: 'HF_TOKEN',
      file: 'hubToken',
      default: undefined,
      redact: 'secret',
      doc: 'access token `polyray models pull` sends to the hub (gated or private repositories)',
    }),
  })
  .strict();
