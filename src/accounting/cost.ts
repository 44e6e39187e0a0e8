/**
 * The cost model, in cost units.
 *
 *   cost(item) = tokens × costFactor(model)   when COMPUTED (tokens this request computed)
 *              = memoryHitCost                when served from the replica's memory   (default 0.01)
 *              = globalHitCost                when served from the global Redis tier  (default 0.05)
 *
 * An item that joined an identical computation already running for another request, or that repeats an
 * input of the same operation, computed nothing for this request: the request account books it as a
 * memory hit (source MEMORY, memoryHitCost; src/accounting/request.ts). The request that started the
 * computation pays for it, and every item delivered costs something, so repeating one input thousands of
 * times is not free.
 *
 * Worst case, charged up front (before the cache is even read):
 *
 *   estimate(item) = max(memoryHitCost, globalHitCost, min(maxTokens, length + 2) × costFactor)
 *
 * where `length` is the input's length in UTF-16 code units. The tokenizer emits at most one token per
 * UTF-16 code unit of the normalised text (its documented contract), +2 covers the special tokens of
 * WordPiece-style models, and inputs over `maxTokens` are refused, not computed. Normalisation (NFC,
 * lower-casing) can in rare scripts lengthen a text; if an item ever costs more than its estimate, the
 * settle charges the excess, so the bill stays exact and the bucket may dip below zero.
 *
 * Image models are priced per 1000 model input pixels (width × height of the preprocessed tensor):
 *
 *   cost(image) = pixels / 1000 × costFactor(model)   when COMPUTED; hit costs as above
 *   estimate(image) = size² / 1000 × costFactor(model) (the model's fixed input size)
 */
import type { Source, TextInput } from '../service/types.ts';

export interface CostRates {
  memoryHitCost: number;
  globalHitCost: number;
}

export interface ModelCost {
  costFactor: number;
  maxTokens: number;
  /** Image models: the square input size the model reads. */
  preprocess?: { size: number };
}

export class CostModel {
  readonly rates: CostRates;

  constructor(rates: CostRates) {
    this.rates = rates;
  }

  /** Upper bound of what embedding `texts` with `model` can cost. */
  estimate(model: ModelCost, texts: readonly TextInput[]): number {
    const floor = Math.max(this.rates.memoryHitCost, this.rates.globalHitCost);
    let sum = 0;
    for (const t of texts) {
      const tokens = Math.min(model.maxTokens, lengthOf(t) + 2);
      sum += Math.max(floor, tokens * model.costFactor);
    }
    return sum;
  }

  /** Upper bound of what embedding `count` images with an image model can cost. */
  imageEstimate(model: ModelCost, count: number): number {
    const size = model.preprocess?.size ?? 0;
    const perImage = Math.max(this.rates.memoryHitCost, this.rates.globalHitCost, ((size * size) / 1000) * model.costFactor);
    return count * perImage;
  }

  imageItemCost(model: ModelCost, source: Source, pixels: number): number {
    return source === 'COMPUTED' ? (pixels / 1000) * model.costFactor : this.itemCost(model, source, 0);
  }

  itemCost(model: ModelCost, source: Source, tokens: number): number {
    switch (source) {
      case 'MEMORY':
        return this.rates.memoryHitCost;
      case 'GLOBAL':
        return this.rates.globalHitCost;
      case 'COMPUTED':
        return tokens * model.costFactor;
      default: {
        const never: never = source;
        throw new TypeError(`unknown source ${String(never)}`);
      }
    }
  }
}

/** UTF-16 code units of a text, ids of a token input (each id one token); 0 for anything else. */
function lengthOf(t: TextInput): number {
  if (typeof t === 'string') return t.length;
  return typeof t === 'object' && t !== null && Array.isArray(t.ids) ? t.ids.length : 0;
}
