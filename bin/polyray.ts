#!/usr/bin/env -S npx tsx
/**
 * The `polyray` CLI from source (development: `npx tsx bin/polyray.ts …`, `npm run polyray -- …`). The
 * installed `polyray` command is bin/polyray.mjs, which runs the compiled build (dist/cli.js).
 */
import '../src/cli.ts';
