/**
 * Build progress: the event type builders report, and a dependency-free terminal progress writer.
 *
 * Owns: how `polyray models build` (and tests, if they want) show progress on stderr. On a TTY it
 * redraws one line with `\r`; otherwise (CI logs, files) it prints a line when a step starts and at
 * most one more per ~10 % of that step, so logs stay short.
 */

/** One progress report from a builder: `done` of `total` units of the current step. */
export interface BuildProgress {
  step: string;
  done: number;
  total: number;
}

/** A progress report tagged with the model it belongs to (what `buildModels` forwards). */
export interface ModelBuildProgress extends BuildProgress {
  model: string;
}

export type ProgressListener<P extends BuildProgress = BuildProgress> = (p: P) => void;

/** The part of a writable stream the progress writer needs (process.stderr fits). */
export interface ProgressStream {
  write(chunk: string): boolean;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressWriterOptions {
  /** Default process.stderr. */
  stream?: ProgressStream;
  /** Force TTY / non-TTY behaviour (default: `stream.isTTY`). */
  tty?: boolean;
  /** Bar width in characters. Default 24. */
  width?: number;
  /** Minimum ms between TTY redraws. Default 80. */
  redrawMs?: number;
}

export interface ProgressWriter {
  update: ProgressListener<BuildProgress & { model?: string }>;
  /** Ends the current line (TTY) and optionally prints a final message. */
  finish(message?: string): void;
}

const clamp01 = (x: number) => (Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0);

/** Creates a progress writer; pass `writer.update` as a builder's `onProgress`. */
export function createProgressWriter(options: ProgressWriterOptions = {}): ProgressWriter {
  const stream = options.stream ?? process.stderr;
  const tty = options.tty ?? Boolean(stream.isTTY);
  const width = options.width ?? 24;
  const redrawMs = options.redrawMs ?? 80;

  let lastKey = ''; // model + step of the last line printed
  let lastDecile = -1; // non-TTY: last 10 % bucket printed for the current step
  let lastDraw = 0;
  let lineOpen = false; // TTY: a line is drawn without its newline

  function render(p: BuildProgress & { model?: string }): string {
    const frac = p.total > 0 ? clamp01(p.done / p.total) : 0;
    const filled = Math.round(frac * width);
    const bar = '#'.repeat(filled) + '-'.repeat(width - filled);
    const pct = `${Math.floor(frac * 100)}`.padStart(3);
    const prefix = p.model ? `${p.model}: ` : '';
    const count = p.total > 1 ? ` ${p.done}/${p.total}` : '';
    return `${prefix}${p.step} [${bar}] ${pct}%${count}`;
  }

  return {
    update(p) {
      const key = `${p.model ?? ''}\0${p.step}`;
      const complete = p.total > 0 && p.done >= p.total;
      if (tty) {
        const now = Date.now();
        if (key === lastKey && !complete && now - lastDraw < redrawMs) return;
        lastDraw = now;
        let line = render(p);
        const cols = stream.columns ?? 0;
        if (cols > 1 && line.length >= cols) line = line.slice(0, cols - 1);
        // A new step keeps the previous step's final line; \x1b[K clears a longer previous draw.
        const lead = lineOpen && key !== lastKey ? '\n' : '\r';
        stream.write(`${lead}${line}\x1b[K`);
        lineOpen = true;
        lastKey = key;
        return;
      }
      const decile = p.total > 0 ? Math.floor(clamp01(p.done / p.total) * 10) : 0;
      if (key === lastKey && decile <= lastDecile) return;
      lastKey = key;
      lastDecile = decile;
      stream.write(`${render(p)}\n`);
    },
    finish(message) {
      if (lineOpen) stream.write('\n');
      lineOpen = false;
      lastKey = '';
      lastDecile = -1;
      if (message !== undefined) stream.write(`${message}\n`);
    },
  };
}
