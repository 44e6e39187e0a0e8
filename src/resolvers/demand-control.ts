/**
 * The demand-control directives of the served SDL (`@cost`, `@listSize`), in Polyray's own cost units, so that
 * a gateway's static estimate (Apollo Router `demand_control`, Hive Gateway `demandControl`) of an operation
 * is never below what Polyray reserves for it before any work (`extensions.cost.estimated`,
 * src/accounting/request.ts).
 *
 * Each weight is the worst case of one item of the field over the models a replica serves, priced by
 * CostModel (src/accounting/cost.ts), which charges every item at least the larger hit cost, then rounded up
 * (`@cost(weight:)` is an Int):
 *
 *   Query.embed      per input  the dearest single input: a text model's `maxTokens × costFactor`, an image
 *                               model's `size² / 1000 × costFactor`; `@listSize(assumedSize: POLYRAY_MAX_INPUTS)`
 *                               multiplies it, since the gateway cannot count `inputs`
 *   Post.embedding   per post   the dearest of: a text model's single input; an image model's
 *                               POLYRAY_MAX_IMAGES_PER_POST images; postray's text part plus that many images
 *   Post.classify    per post   the head's encoder: that many images (image heads) or one text (text heads); the
 *                               head itself is not charged. `@listSize(assumedSize: 1)`: the weight is the
 *                               post's, not the label's, whatever the head's number of labels
 *
 * Every other field costs no units (model lists, usage, cache policy), so it carries no `@cost` and a gateway
 * prices it with its defaults. `Embedding.vector` costs what `base64` does: the embedding is charged once, at
 * its parent field; the size of a reply is bounded by POLYRAY_MAX_RESPONSE_BYTES, not by cost units.
 *
 * The numbers in `schema/` are these weights for the bundled models at the default settings (checked by
 * test/hive-gateway.test.ts); `SchemaOptions.costWeights` replaces them for another catalog.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { type ConstDirectiveNode, type DocumentNode, type FieldDefinitionNode, Kind } from 'graphql';
import { CostModel, type CostRates, type ModelCost } from '../accounting/cost.ts';
import { POSTRAY_IMAGE_MODEL, POSTRAY_TEXT_MODEL } from '../models/postray.ts';
import { parseManifest } from '../runtime/manifest.ts';

/** `@cost` weights of the charged fields, in cost units per item (whole numbers). */
export interface CostWeights {
  /** `Query.embed`, per input. */
  embed: number;
  /** `Post.embedding`, per post. */
  postEmbedding: number;
  /** `Post.classify`, per post. */
  postClassify: number;
}

/** What pricing reads of a model's manifest (src/runtime/manifest.ts `ModelManifest` has all of it). */
export interface PricedModel extends ModelCost {
  name: string;
  /** Task heads: the model whose output the head reads. */
  head?: { input: string } | undefined;
}

export interface CostWeightOptions {
  /** Images read per post, POLYRAY_MAX_IMAGES_PER_POST (default 16). */
  maxImagesPerPost: number;
  /** Hit costs, POLYRAY_COST_MEMORY_HIT / POLYRAY_COST_GLOBAL_HIT (defaults 0.01 / 0.05): the least any item costs. */
  rates: CostRates;
}

/** The weights for a catalog of served models (their manifests): see the file header for each formula. */
export function deriveCostWeights(models: readonly PricedModel[], options: CostWeightOptions): CostWeights {
  const { maxImagesPerPost, rates } = options;
  if (!Number.isInteger(maxImagesPerPost) || maxImagesPerPost < 1)
    throw new TypeError(`maxImagesPerPost must be a whole number >= 1, received ${String(maxImagesPerPost)}`);
  const cost = new CostModel(rates);
  const byName = new Map(models.map((m) => [m.name, m]));
  const isImage = (m: PricedModel): boolean => m.preprocess !== undefined;
  // The longest text a model accepts: CostModel prices min(maxTokens, length + 2) tokens.
  const oneInput = (m: PricedModel): number => (isImage(m) ? cost.imageEstimate(m, 1) : cost.estimate(m, ['x'.repeat(m.maxTokens)]));
  const onePost = (m: PricedModel): number => (isImage(m) ? cost.imageEstimate(m, maxImagesPerPost) : oneInput(m));

  const encoders = models.filter((m) => m.head === undefined);
  let embed = 0;
  let postEmbedding = 0;
  for (const m of encoders) {
    embed = Math.max(embed, oneInput(m));
    postEmbedding = Math.max(postEmbedding, onePost(m));
  }
  const text = byName.get(POSTRAY_TEXT_MODEL);
  const image = byName.get(POSTRAY_IMAGE_MODEL);
  if (text && image) postEmbedding = Math.max(postEmbedding, oneInput(text) + onePost(image));
  let postClassify = 0;
  for (const m of models) {
    const input = m.head ? byName.get(m.head.input) : undefined;
    if (input) postClassify = Math.max(postClassify, onePost(input));
  }
  // A field no served model can answer still costs the floor of a refused item, never 0 (a gateway ignores 0).
  const floor = Math.max(rates.memoryHitCost, rates.globalHitCost);
  // Rounded to 1e-6 first, as extensions.cost is, so float noise does not add a unit.
  const whole = (n: number): number => Math.max(1, Math.ceil(Math.round(Math.max(n, floor) * 1e6) / 1e6));
  return { embed: whole(embed), postEmbedding: whole(postEmbedding), postClassify: whole(postClassify) };
}

/** What the served SDL takes from the configuration. */
export interface DemandControlOptions {
  /** POLYRAY_MAX_INPUTS: `embed`'s `@listSize(assumedSize:)`. Absent: the SDL's number (2048, the default). */
  maxInputs?: number | undefined;
  /** The `@cost` weights (deriveCostWeights of the served models). Absent: the SDL's (the bundled models'). */
  costWeights?: CostWeights | undefined;
}

const LARGEST_INT = 2 ** 31 - 1;

/** Field coordinates whose `@cost(weight:)` each weight sets. */
const WEIGHTED: Readonly<Record<string, keyof CostWeights>> = { 'Query.embed': 'embed', 'Post.embedding': 'postEmbedding', 'Post.classify': 'postClassify' };

function checkWhole(name: string, n: number): number {
  if (!Number.isInteger(n) || n < 1 || n > LARGEST_INT)
    throw new TypeError(`${name} must be a whole number between 1 and ${LARGEST_INT}, received ${String(n)}`);
  return n;
}

/** `directive` with argument `arg` set to the Int `value`; throws if the SDL does not give the argument. */
function withInt(directive: ConstDirectiveNode, arg: string, value: number, coordinate: string): ConstDirectiveNode {
  if (!directive.arguments?.some((a) => a.name.value === arg)) throw new Error(`schema/: ${coordinate} has @${directive.name.value} without ${arg}`);
  return {
    ...directive,
    arguments: directive.arguments.map((a) => (a.name.value === arg ? { ...a, value: { kind: Kind.INT, value: String(value) } } : a)),
  };
}

/** The SDL with `embed`'s list size and the charged fields' weights set from `options`. */
export function applyDemandControl(doc: DocumentNode, options: DemandControlOptions): DocumentNode {
  const { maxInputs, costWeights } = options;
  if (maxInputs !== undefined) checkWhole('maxInputs', maxInputs);
  if (costWeights) for (const k of Object.values(WEIGHTED)) checkWhole(`costWeights.${k}`, costWeights[k]);
  if (maxInputs === undefined && !costWeights) return doc;
  const seen = new Set<string>();
  const field = (type: string, f: FieldDefinitionNode): FieldDefinitionNode => {
    const coordinate = `${type}.${f.name.value}`;
    const weight = costWeights ? WEIGHTED[coordinate] : undefined;
    const sized = maxInputs !== undefined && coordinate === 'Query.embed';
    if (!weight && !sized) return f;
    const directives = (f.directives ?? []).map((d) => {
      if (weight && d.name.value === 'cost') {
        seen.add(`${coordinate}@cost`);
        return withInt(d, 'weight', costWeights![weight], coordinate);
      }
      if (sized && d.name.value === 'listSize') {
        seen.add(`${coordinate}@listSize`);
        return withInt(d, 'assumedSize', maxInputs, coordinate);
      }
      return d;
    });
    return { ...f, directives };
  };
  // Type definitions and extensions are top-level definitions of the document.
  const definitions = doc.definitions.map((d) =>
    d.kind === Kind.OBJECT_TYPE_DEFINITION || d.kind === Kind.OBJECT_TYPE_EXTENSION ? { ...d, fields: d.fields?.map((f) => field(d.name.value, f)) } : d,
  );
  const wanted = [...(costWeights ? Object.keys(WEIGHTED).map((c) => `${c}@cost`) : []), ...(maxInputs !== undefined ? ['Query.embed@listSize'] : [])];
  const missing = wanted.filter((w) => !seen.has(w));
  if (missing.length > 0) throw new Error(`schema/ lacks the demand-control directives ${missing.join(', ')}`);
  return { ...doc, definitions };
}

/**
 * The served SDL's options from the configuration: POLYRAY_MAX_INPUTS, and the weights of the served models
 * when every one of them has a manifest on disk (a replica serving a pulled model prices it). Otherwise (a
 * first start before the bundled models are built, a Hugging Face folder without a manifest) the SDL keeps
 * the weights written in `schema/`, which are the bundled models'.
 */
export function schemaOptionsOf(config: {
  limits: { maxInputsPerRequest: number };
  models: { dir: string; serve: readonly string[] };
  images: { maxImagesPerPost: number };
  accounting: { memoryHitCost: number; globalHitCost: number };
}): DemandControlOptions {
  const base: DemandControlOptions = { maxInputs: config.limits.maxInputsPerRequest };
  const models: PricedModel[] = [];
  for (const name of config.models.serve) {
    const file = path.join(config.models.dir, name, 'manifest.json');
    if (!existsSync(file)) return base;
    try {
      models.push({ ...parseManifest(JSON.parse(readFileSync(file, 'utf8')), file), name });
    } catch {
      return base; // the registry reports a bad manifest at load; the SDL keeps its written weights
    }
  }
  if (models.length === 0) return base;
  const derived = deriveCostWeights(models, {
    maxImagesPerPost: config.images.maxImagesPerPost,
    rates: { memoryHitCost: config.accounting.memoryHitCost, globalHitCost: config.accounting.globalHitCost },
  });
  return { ...base, costWeights: derived };
}
