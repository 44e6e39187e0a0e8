#!/usr/bin/env bash
# GPU check for Polyray (project issue 7): ORT ceiling and the service on a GPU provider beside CPU.
#
#   bash bench/gpu-check.sh [--quick]
#
# Writes gpu-check.json / gpu-check.md / nvidia-smi.csv / profiles to $OUT (the device runner's output
# folder) or bench/out/gpu/. On a machine without an NVIDIA GPU it says so, runs the CPU part only and
# exits 0. Everything runs offline from what was carried (see docs/BENCH.md, "GPU check").
#
# Environment:
#   GPU_PROVIDERS      providers to try after cpu (default: cuda,webgpu)
#   GPU_ORT_NODE_DIR   an onnxruntime-node folder with CUDA provider libraries (e.g. onnxruntime-node@1.29.0
#                      + libonnxruntime_providers_{cuda,shared}.so from com.github.asus4.onnxruntime.linux-x64-gpu
#                      0.4.9); used instead of node_modules/onnxruntime-node for this run, restored after
#   GPU_LD_LIBRARY_PATH  extra library folders (CUDA 13 runtime: libcublas, libcublasLt, libcudart, libcurand, cuDNN 9)
#   VK_ICD_FILENAMES   Vulkan ICD json for webgpu (the NVIDIA one is found under /usr/share/vulkan or /etc/vulkan if unset)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/out/gpu}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/gpu-check.log"
say() { echo "$*" | tee -a "$LOG" >&2; }
: > "$LOG"

QUICK=""
[[ "${1:-}" == "--quick" ]] && QUICK="--quick"

say "gpu-check: $(date -u +%FT%TZ) on $(hostname), $(nproc) cores; node $(node --version 2>/dev/null || echo missing)"
if ! command -v node >/dev/null; then say "node is not installed: nothing can run"; exit 1; fi
if [[ ! -f models/text-bert-synthetic/model.onnx ]]; then say "models/text-bert-synthetic is missing: carry models/ (see docs/BENCH.md)"; exit 1; fi

HAVE_GPU=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  HAVE_GPU=1
  nvidia-smi -L | tee -a "$LOG" >&2
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$OUT_DIR/nvidia-smi-info.csv" >&2
else
  say "NO NVIDIA GPU detected (nvidia-smi missing or sees no device): running the CPU part only."
fi

PROVIDERS="cpu"
SMI_PID=""
RESTORE=""
cleanup() {
  [[ -n "$SMI_PID" ]] && kill "$SMI_PID" 2>/dev/null
  if [[ -n "$RESTORE" ]]; then rm -f node_modules/onnxruntime-node && mv node_modules/.onnxruntime-node.gpu-check-orig node_modules/onnxruntime-node; fi
}
trap cleanup EXIT

if [[ "$HAVE_GPU" == 1 ]]; then
  PROVIDERS="cpu,${GPU_PROVIDERS:-cuda,webgpu}"
  if [[ -n "${GPU_ORT_NODE_DIR:-}" ]]; then
    say "using onnxruntime-node from $GPU_ORT_NODE_DIR for this run"
    mv node_modules/onnxruntime-node node_modules/.onnxruntime-node.gpu-check-orig && ln -s "$(cd "$GPU_ORT_NODE_DIR" && pwd)" node_modules/onnxruntime-node && RESTORE=1
  fi
  [[ -n "${GPU_LD_LIBRARY_PATH:-}" ]] && export LD_LIBRARY_PATH="${GPU_LD_LIBRARY_PATH}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if [[ -z "${VK_ICD_FILENAMES:-}" ]]; then
    for f in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.x86_64.json; do
      [[ -f "$f" ]] && export VK_ICD_FILENAMES="$f" && break
    done
  fi
  say "VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-<unset>}  LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-<unset>}"
  # What the CUDA provider library would need, if present.
  for so in node_modules/onnxruntime-node/bin/napi-v*/linux/x64/libonnxruntime_providers_cuda.so; do
    [[ -f "$so" ]] && { say "ldd $so (missing libraries):"; ldd "$so" | grep "not found" | tee -a "$LOG" >&2 || say "  none missing"; }
  done
  nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used --format=csv -l 1 > "$OUT_DIR/nvidia-smi.csv" 2>&1 &
  SMI_PID=$!
fi

say "providers: $PROVIDERS"
node --import tsx bench/gpu-check.ts --out "$OUT_DIR" --providers "$PROVIDERS" $QUICK 2> >(tee -a "$LOG" >&2)
RC=$?
if [[ -n "$SMI_PID" ]]; then
  kill "$SMI_PID" 2>/dev/null; SMI_PID=""
  awk -F', ' 'NR>1 && $2 ~ /%/ { gsub(/ %/,"",$2); n++; s+=$2; if ($2>m) m=$2 } END { if (n) printf "GPU utilisation over %d samples: mean %.0f%%, max %d%%\n", n, s/n, m }' "$OUT_DIR/nvidia-smi.csv" | tee -a "$LOG" "$OUT_DIR/gpu-check.md" >&2
fi
if [[ "$RC" != 0 ]]; then say "gpu-check: the CPU part failed (rc $RC); see $LOG"; exit "$RC"; fi
if [[ "$HAVE_GPU" == 0 ]]; then
  say "gpu-check: done, CPU only (no GPU on this machine: no GPU figures were produced). Results: $OUT_DIR/gpu-check.md"
else
  say "gpu-check: done. Results: $OUT_DIR/gpu-check.md (a provider that failed is reported there with its error)"
fi
exit 0
