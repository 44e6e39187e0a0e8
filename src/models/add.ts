/**
 * `polyray models add <folder> [--name N]`: inspects a model folder (a Hugging Face export read as it is,
 * src/runtime/hf-folder.ts, or a folder with our manifest), prints what it found, and registers it by
 * copying it into the models directory under its name, where the next start serves it.
 *
 * A folder Polyray cannot serve is refused before anything is copied, with the reason: the missing or
 * unsupported file, the graph input it cannot feed, the output it cannot use.
 */
import { cp, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { isDir, isFile, pathExists } from '../files.ts';
import { checkVocabulary, readHfFolder } from '../runtime/hf-folder.ts';
import { loadHfTokenizer } from '../runtime/hf-tokenizer.ts';
import { type ModelManifest, parseManifest } from '../runtime/manifest.ts';

export interface AddOptions {
  modelsDir: string;
  name?: string | undefined;
  out: (line: string) => void;
}

export async function addModel(folder: string, o: AddOptions): Promise<ModelManifest> {
  const dir = path.resolve(folder);
  if (!(await isDir(dir))) throw new TypeError(`${folder} is not a folder`);
  const manifest = (await isFile(path.join(dir, 'manifest.json')))
    ? parseManifest(JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')), 'manifest.json')
    : await readHfFolder(dir, o.name ?? path.basename(dir).toLowerCase()); // throws naming what is missing
  if (o.name && manifest.name !== o.name)
    throw new TypeError(`the folder's manifest names the model "${manifest.name}"; --name applies to folders without one`);
  const tok = manifest.tokenizer;
  const tokenizer = tok ? await loadHfTokenizer(dir, tok.file) : undefined;
  if (tokenizer) checkVocabulary(manifest, tokenizer.vocabSize);
  const family = tok ? await tokenizerFamily(path.join(dir, tok.file)) : 'none';
  const config = await json(path.join(dir, 'config.json'));
  const st = await json(path.join(dir, 'config_sentence_transformers.json'));
  const prompts = typeof st['prompts'] === 'object' && st['prompts'] !== null ? Object.keys(st['prompts'] as object) : [];
  const variants = (await listOnnx(dir)).join(', ');
  const report: [string, string][] = [
    ['name', `${manifest.name}@${manifest.version}`],
    ['architecture', Array.isArray(config['architectures']) ? String(config['architectures'][0]) : String(config['model_type'] ?? 'unknown')],
    ['tokenizer', tokenizer ? `${family}, ${tokenizer.vocabSize} ids` : 'none'],
    ['graph', `${manifest.file} (inputs ${manifest.inputs.map((i) => i.name).join(', ')}; output ${manifest.outputs[0]?.name})`],
    [
      'pooling',
      manifest.pooling
        ? `${manifest.pooling.mode}${manifest.pooling.normalize ? ', normalised' : ''}${manifest.pooling.includePrompt === false ? ', prompt tokens left out' : ''} (in the worker)`
        : 'in the graph',
    ],
    ['dimensions', String(manifest.dimensions)],
    ['max tokens', String(manifest.maxTokens)],
    ['prompts', prompts.length > 0 ? `${prompts.join(', ')}${manifest.defaultPromptName ? ` (default ${manifest.defaultPromptName})` : ''}` : 'none'],
    ['matryoshka', manifest.matryoshkaDimensions?.join(', ') ?? 'not declared'],
    ['similarity', manifest.similarity ?? 'cosine'],
    ['variants', variants || 'none'],
    ['license', await license(dir)],
  ];
  for (const [k, v] of report) o.out(`${k.padEnd(13)}${v}\n`);
  const target = path.join(o.modelsDir, manifest.name);
  if (path.resolve(target) === dir) {
    o.out(`already in the models directory: ${target}\n`);
    return manifest;
  }
  if (await pathExists(target)) throw new TypeError(`${target} already exists: remove it, or add this folder under another --name`);
  await cp(dir, target, { recursive: true, errorOnExist: true, force: false });
  o.out(`registered: ${target} (served from the next start)\n`);
  return manifest;
}

async function tokenizerFamily(file: string): Promise<string> {
  const t =
    (JSON.parse(await readFile(file, 'utf8')) as {
      model?: { type?: string; byte_fallback?: boolean };
      pre_tokenizer?: { type?: string; pretokenizers?: { type?: string }[] };
    }) ?? {};
  const type = t.model?.type ?? 'unknown';
  const pre = [t.pre_tokenizer?.type, ...(t.pre_tokenizer?.pretokenizers ?? []).map((p) => p.type)];
  if (type === 'BPE' && pre.includes('ByteLevel')) return 'byte-level BPE';
  if (type === 'BPE') return 'SentencePiece-style BPE';
  return type;
}

async function listOnnx(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const sub of ['', 'onnx']) {
    try {
      for (const f of await readdir(path.join(dir, sub))) if (f.endsWith('.onnx')) found.push(path.join(sub, f));
    } catch {
      // no such folder
    }
  }
  return found.sort();
}

/** The `license:` line of the model card's front matter, if any. */
async function license(dir: string): Promise<string> {
  try {
    const card = await readFile(path.join(dir, 'README.md'), 'utf8');
    const m = /^---\n[\s\S]*?^license:\s*(.+)$[\s\S]*?^---$/m.exec(card);
    return m ? m[1]!.trim() : 'not stated (no license in README.md front matter)';
  } catch {
    return 'not stated (no README.md)';
  }
}

async function json(file: string): Promise<Record<string, unknown>> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
  } catch {
    return {};
  }
}
