/**
 * RequestScope: everything one operation (a GraphQL request; later a REST call) owns on its way through
 * the service — the client, its account (reserve → settle), the resolved model handles and the
 * per-request DataLoaders. Resolvers and routes call only this.
 *
 *   model(name)        resolves a ModelHandle once per name and checks the client may use it
 *   texts / images / posts / classify(handle)
 *                      DataLoaders: every load of one tick becomes one pipeline call (one cache read,
 *                      one submit); loaders are per request, so nothing one client loads is memoised
 *                      for another. They do not memoise within the request either: a repeated input
 *                      reaches the pipeline, which computes it once and answers every copy, and each
 *                      copy delivered is charged (as a memory hit), so repeats are not free
 *   every pipeline call goes through `account.admit`, which prices it, reserves, runs it and charges the
 *   work the results report; services never see the account.
 */
import DataLoader from 'dataloader';
import { ErrorCode, PolyrayError } from '../errors.ts';
import { decodeBase64Image } from '../images/fetch.ts';
import type { LabelScore } from '../models/heads.ts';
import type { SubmitOptions } from '../runtime/dispatch-queue.ts';
import type { HeadHandle, ImageHandle, ModelHandle, TextHandle } from '../runtime/handle.ts';
import type { ImageEmbedder, ImageInput, ImageResult, ImageWant } from './image.ts';
import { classifyPosts, embedPosts, type PartEmbedders, type PostInput, type PostLimits } from './posts.ts';
import type { TextEmbedder, TextOptions } from './text.ts';
import type { EmbedResult, TextInput, TokenCount } from './types.ts';

/** What a pipeline call asks for, so the account can price its worst case before any work. */
export type Demand = { kind: 'texts'; texts: readonly TextInput[] } | { kind: 'images'; count: number };

/** The request's account, as the scope needs it (src/accounting/request.ts implements it). */
export interface Account {
  readonly clientId: string;
  /** Set for a client whose cache entries are its own (`cacheScope: private`): keys are namespaced by it. */
  readonly cacheNamespace?: string | undefined;
  /** Whether this client may see where answers came from (`Embedding.source`). */
  readonly showSource: boolean;
  mayUse(model: string): boolean;
  /** Prices `demand` on `handle`, reserves it (with the rest of the tick), runs `run`, charges what its results report. */
  admit<R extends EmbedResult>(handle: TextHandle | ImageHandle, demand: Demand, run: () => Promise<(R | PolyrayError)[]>): Promise<(R | PolyrayError)[]>;
}

/** What a scope is built from: shared, server-wide pieces. */
export interface ScopeServices {
  resolve(name: string): ModelHandle;
  text: TextEmbedder;
  images: ImageEmbedder;
  limits: PostLimits & {
    /** Largest DataLoader batch (POLYRAY_MAX_INPUTS). */
    maxBatch: number;
  };
}

/** A post as the loaders see it. */
export interface PostKey {
  text?: string | null;
  imageUrls?: readonly string[] | null;
  /** A one-image post given inline (`Query.embed` with `postray`). */
  imageBase64?: string;
}

/** An image input of `Query.embed`. */
export type ImageKey = { imageUrl: string } | { imageBase64: string };

const urls = (p: PostKey): ImageInput[] => (p.imageUrls ?? []).map((url) => ({ kind: 'url' as const, url }));

export class RequestScope<A extends Account = Account> {
  readonly account: A;
  readonly #s: ScopeServices;
  readonly #handles = new Map<string, ModelHandle>();
  readonly #loaders = new Map<string, unknown>();
  readonly #parts: PartEmbedders;
  /** How this request's computations queue: priority, deadline, abort signal, weight (the client is the account's). */
  readonly serve: SubmitOptions;

  constructor(services: ScopeServices, account: A, serve: SubmitOptions = {}) {
    this.#s = services;
    this.account = account;
    this.serve = serve;
    this.#parts = { texts: (h, t) => this.#texts(h, t), images: (h, i, w) => this.#images(h, i, w) };
  }

  /** The model behind `name`: MODEL_NOT_FOUND / MODEL_NOT_READY from the host, FORBIDDEN for this client. */
  model(name: string): ModelHandle {
    let h = this.#handles.get(name);
    if (!h) {
      h = this.#s.resolve(name);
      if (!this.account.mayUse(name)) {
        throw new PolyrayError(ErrorCode.FORBIDDEN, `This client may not use model "${name.slice(0, 64)}"`, { model: name.slice(0, 64) });
      }
      this.#handles.set(name, h);
    }
    return h;
  }

  /**
   * Text embeddings of one text model; keys are input texts (or token ids of the model's tokenizer, read as
   * they are). `options`: the prompt before each text, and `truncate` to cut over-long inputs instead of
   * refusing them.
   */
  texts(handle: TextHandle, options: TextOptions = {}): DataLoader<TextInput, EmbedResult> {
    return this.#loader(
      `t:${handle.name}:${options.truncate === true ? `cut-${options.side ?? ''}` : 'whole'}:${options.user ?? ''}:${options.prompt ?? ''}`,
      () => new DataLoader<TextInput, EmbedResult>((texts) => this.#texts(handle, texts, options), { maxBatchSize: this.#s.limits.maxBatch, cache: false }),
    );
  }

  /**
   * What `texts(handle, options)` answers for a whole list, without a promise per input: the calls its
   * loader makes (batches of POLYRAY_MAX_INPUTS, started together), each answer in its input's place, and a
   * batch refused as a whole (a quota, say) refuses each of its inputs with that error.
   */
  async embedTexts(handle: TextHandle, texts: readonly TextInput[], options: TextOptions = {}): Promise<(EmbedResult | Error)[]> {
    const max = this.#s.limits.maxBatch;
    const parts: Promise<(EmbedResult | Error)[]>[] = [];
    for (let i = 0; i < texts.length; i += max) {
      const part = texts.length <= max ? texts : texts.slice(i, i + max);
      parts.push(this.#texts(handle, part, options).catch((e: unknown) => part.map(() => (e instanceof Error ? e : new Error(String(e))))));
    }
    return parts.length === 1 ? parts[0]! : (await Promise.all(parts)).flat();
  }

  /**
   * Token counts of texts as `texts(handle, options)` reads them, for answers served from the cache
   * (`Embedding.inputTokens`); tokenised off the event loop, uncharged (no inference runs).
   */
  tokenCounts(handle: TextHandle, options: TextOptions = {}): DataLoader<string, TokenCount> {
    return this.#loader(
      `n:${handle.name}:${options.truncate === true ? `cut-${options.side ?? ''}` : 'whole'}:${options.prompt ?? ''}`,
      () => new DataLoader<string, TokenCount>((texts) => this.#s.text.tokenCounts(handle, texts, options), { maxBatchSize: this.#s.limits.maxBatch }),
    );
  }

  /** Image embeddings of one image model; keys are URL or base64 inputs. */
  images(handle: ImageHandle): DataLoader<ImageKey, ImageResult> {
    return this.#loader(
      `i:${handle.name}`,
      () =>
        new DataLoader<ImageKey, ImageResult, string>(
          async (keys) => {
            const inputs = keys.map((k): ImageInput | PolyrayError => ('imageUrl' in k ? { kind: 'url', url: k.imageUrl } : this.#inline(k.imageBase64)));
            return this.#partial(inputs, (ok) => this.#images(handle, ok, 'embedding'));
          },
          { maxBatchSize: this.#s.limits.maxBatch, cache: false },
        ),
    );
  }

  /** Post embeddings of one model (postray, an image model or a text model). */
  posts(handle: ModelHandle): DataLoader<PostKey, EmbedResult | null> {
    if (handle.kind === 'head')
      throw new PolyrayError(ErrorCode.UNSUPPORTED_INPUT, `Model ${handle.name} is a task head; use Post.classify(head: "${handle.name}")`, {
        model: handle.name,
      });
    return this.#loader(
      `p:${handle.name}`,
      () =>
        new DataLoader<PostKey, EmbedResult | null, string>(
          async (keys) => {
            const inputs = keys.map((k): PostInput | PolyrayError => {
              if (k.imageBase64 === undefined) return { text: k.text ?? null, images: urls(k) };
              const inline = this.#inline(k.imageBase64);
              return inline instanceof PolyrayError ? inline : { text: k.text ?? null, images: [...urls(k), inline] };
            });
            return this.#partial(inputs, (ok) => embedPosts(handle, ok, this.#parts, this.#s.limits));
          },
          { maxBatchSize: this.#s.limits.maxBatch, cache: false },
        ),
    );
  }

  /** Head scores of posts. */
  classify(handle: HeadHandle): DataLoader<PostKey, LabelScore[] | null> {
    return this.#loader(
      `h:${handle.name}`,
      () =>
        new DataLoader<PostKey, LabelScore[] | null, string>(
          (keys) =>
            classifyPosts(
              handle,
              keys.map((k) => ({ text: k.text ?? null, images: urls(k) })),
              this.#parts,
              this.#s.limits,
              this.account.clientId,
              this.serve,
            ),
          { maxBatchSize: this.#s.limits.maxBatch, cache: false },
        ),
    );
  }

  #texts(handle: TextHandle, texts: readonly TextInput[], options: TextOptions = {}): Promise<(EmbedResult | PolyrayError)[]> {
    const ns = this.account.cacheNamespace;
    return this.account.admit(handle, { kind: 'texts', texts }, () =>
      this.#s.text.embed(handle, texts, this.account.clientId, { ...options, ...(ns === undefined ? {} : { namespace: ns }), serve: this.serve }),
    );
  }

  #images(handle: ImageHandle, inputs: readonly ImageInput[], want: ImageWant): Promise<(ImageResult | PolyrayError)[]> {
    return this.account.admit(handle, { kind: 'images', count: inputs.length }, () =>
      this.#s.images.embed(handle, inputs, want, this.account.clientId, this.account.cacheNamespace, this.serve),
    );
  }

  /** An inline image as an input; one that cannot be decoded is that input's error. */
  #inline(b64: string): ImageInput | PolyrayError {
    try {
      return { kind: 'bytes', bytes: decodeBase64Image(b64, this.#s.images.maxBytes) };
    } catch (e) {
      return e as PolyrayError;
    }
  }

  /** Runs `fn` on the inputs that are not already errors and puts the answers back in place. */
  async #partial<I, R>(inputs: readonly (I | PolyrayError)[], fn: (ok: I[]) => Promise<readonly R[]>): Promise<(R | PolyrayError)[]> {
    const ok = inputs.filter((i): i is I => !(i instanceof PolyrayError));
    const results = ok.length > 0 ? await fn(ok) : [];
    let j = 0;
    return inputs.map((i) => (i instanceof PolyrayError ? i : results[j++]!));
  }

  /** The request's loader under `key`, made on first use (the key names its kind and model). */
  #loader<L>(key: string, make: () => L): L {
    let l = this.#loaders.get(key) as L | undefined;
    if (!l) {
      l = make();
      this.#loaders.set(key, l);
    }
    return l;
  }
}
