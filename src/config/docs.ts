/**
 * The README's tables of settings, generated from the declarations (variable, file key, default, meaning),
 * so the docs cannot drift from the schema: `npm run docs:config` rewrites them, and test/config.test.ts
 * fails when the README differs. Each table sits between a pair of marker comments; prose around them is
 * left alone.
 */
import { declaration, type SettingMeta } from './define.ts';
import { defaultText } from './describe.ts';
import { configFile } from './process.ts';
import { type DeclaredSetting, declaredOptions } from './resolve.ts';
import { polyrayConfigSchema } from './schema.ts';

/** Which README table a config section is listed in (the section of the README it belongs to). */
const TABLE_OF_SECTION: Readonly<Record<string, string>> = {
  accounting: 'accounting',
  usage: 'accounting',
  trace: 'policy',
  policy: 'policy',
  images: 'images',
};
const DEFAULT_TABLE = 'configuration';

const begin = (table: string): string =>
  `<!-- config-table:${table} (generated from src/*/config.ts by \`npm run docs:config\`: edit the schema, not this table) -->`;
const end = (table: string): string => `<!-- /config-table:${table} -->`;

function settingsByTable(): Map<string, DeclaredSetting[]> {
  const { settings } = declaredOptions(polyrayConfigSchema);
  // POLYRAY_CONFIG is read before the schema's settings (it names their file), so it is not in the schema.
  const file: DeclaredSetting = { section: 'process', path: [], schema: configFile, meta: declaration(configFile) as SettingMeta };
  const tables = new Map<string, DeclaredSetting[]>();
  for (const s of [file, ...settings]) {
    if (s.meta.env === undefined || s.meta.doc === undefined) continue;
    const table = s.meta.table ?? TABLE_OF_SECTION[s.section] ?? DEFAULT_TABLE;
    tables.set(table, [...(tables.get(table) ?? []), s]);
  }
  // A setting listed away from its section (batch pixels, with the images) goes after the table's own.
  for (const [table, list] of tables) tables.set(table, [...list.filter((s) => !s.meta.table), ...list.filter((s) => s.meta.table)]);
  return tables;
}

function row({ meta }: DeclaredSetting): string {
  const name = `\`${meta.env!}\`${meta.file ? ` [${meta.file}]` : ''}`;
  const def = meta.defaultDoc ?? defaultText(meta.default, meta.unit);
  return `| ${[name, def, meta.doc!].map((cell) => cell.replaceAll('|', '\\|')).join(' | ')} |`;
}

/** Each table as Markdown, keyed by its name in the README markers. */
export function configTables(): Map<string, string> {
  const out = new Map<string, string>();
  for (const [table, settings] of settingsByTable()) {
    out.set(table, ['| variable [file key] | default | meaning |', '| --- | --- | --- |', ...settings.map(row)].join('\n'));
  }
  return out;
}

/** `readme` with every generated table replaced; a table whose markers are missing is an error. */
export function renderReadme(readme: string): string {
  let text = readme;
  for (const [table, markdown] of configTables()) {
    const from = text.indexOf(begin(table));
    const to = text.indexOf(end(table));
    if (from < 0 || to < from || text.indexOf(begin(table), from + 1) >= 0) {
      throw new TypeError(`README.md must hold the markers of table "${table}" once, in order:\n${begin(table)}\n${end(table)}`);
    }
    text = `${text.slice(0, from)}${begin(table)}\n${markdown}\n${text.slice(to)}`;
  }
  return text;
}
