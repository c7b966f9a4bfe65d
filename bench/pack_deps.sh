#!/usr/bin/env bash
# Packs unpacked Python packages for a GPU machine without network into two archives:
#   .whl/site.tar.xz     trl, bitsandbytes, datasets, liger-kernel for every bench script
#   .whl/unsloth.tar.xz  Unsloth and what it needs on top, for the Unsloth child of train_throughput.py
# Run where pip reaches PyPI, from anywhere: `bash bench/pack_deps.sh`. Rerunnable: wheels are cached
# in .whl/wheels, each archive is built in a temporary folder and moved into place when complete.
#
# The target is the GPU machines' image as listed on 2026-11-17: Python 3.12.3,
# x86-64 glibc, torch 2.11.0+cu130, transformers 5.17.0, peft 0.21.0, accelerate 1.15, triton 3.6.0,
# numpy, pandas, pyarrow, huggingface-hub, fsspec, httpx, psutil, protobuf, sentencepiece, pillow,
# typer, rich, pyyaml, jinja2 and so on already there. Nothing here repeats them.
#
# site.tar.xz:
# - trl 1.16.0, datasets 5.2.0 with dill 0.4.1 and multiprocess 0.70.19 (its caps: dill<0.4.2,
#   multiprocess<0.70.20), bitsandbytes 0.50.2, liger-kernel 0.8.5 (needs only torch and triton).
# - bitsandbytes keeps libbitsandbytes_cuda130.so (torch.version.cuda is 13.0 there) and the CPU
#   library; the other CUDA, ROCm and XPU builds are about 150 MB unpacked and never loaded.
#
# unsloth.tar.xz goes BEFORE site on PYTHONPATH, in the Unsloth process only, because Unsloth 2026.10.9
# pins trl<=1.15.0 and datasets<5.0.0 (minus 4.0.*, 4.1.0, 4.4.*, 4.5.0):
# - unsloth and unsloth_zoo 2026.10.9, without unsloth's studio/ (a web app, ~80 MB) and unsloth_cli/
#   (the `unsloth` command; nothing under unsloth/ or unsloth_zoo/ imports either). unsloth_zoo's wheel
#   also ships the top-level package unsloth_zoo_downloads, which unsloth/_gpu_init.py imports: kept.
# - trl 1.15.0, the newest Unsloth accepts. It requires datasets>=4.7.0, which rules out the 4.3.0
#   Unsloth's studio extra pins; datasets 4.8.5 is the newest 4.x Unsloth's markers allow, and it
#   accepts the dill 0.4.1 and multiprocess 0.70.19 of site.tar.xz, so those are not packed twice.
# - torchao 0.17.0: unsloth_zoo requires torchao>=0.13; 0.17.0 is the release built for torch 2.11
#   (its cpp extensions load from torch 2.11.0 on; 0.18.0 already targets a newer torch). Unsloth and
#   peft import it only for QAT, fp8 and torchao-quantized weights, never for a 4-bit QLoRA run, but
#   peft probes it when it is there. Its _C*.so files stay (~0.6 MB compressed).
# - cut_cross_entropy 25.1.1: unsloth_zoo/loss_utils.py imports it at import time, inside a try.
# - msgspec 0.22.0 (cp312 build; unsloth_zoo/vllm_lora_request.py) and nest-asyncio 1.6.0 (OpenEnv
#   patch in unsloth/import_fixes.py): small, imported only on those paths.
# Left out, from reading every import in unsloth/ and unsloth_zoo/ (a scan of the unpacked sources):
# - xformers: imported only inside try blocks; Unsloth falls back to torch SDPA / flash-attn, and an
#   xformers wheel is tied to one torch build.
# - diffusers: never imported by unsloth or unsloth_zoo (only named in a list of noisy loggers).
# - hf_transfer (9 MB unpacked): only probed with find_spec to set HF_HUB_ENABLE_HF_TRANSFER, which
#   huggingface_hub>=1.0 ignores; the machine has no network and loads a local model anyway.
# - tyro, docstring-parser, typeguard, shtab, json5, structlog, pydantic: declared by Unsloth, but
#   imported only by studio/ and unsloth_cli/ (pydantic once more, in a try that silences a warning).
# - vllm, flash-attn, mamba-ssm, causal-conv1d, deepspeed, mlx and the like: optional, each imported
#   in a try block or inside the function that needs it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/.whl"
CACHE="$OUT/wheels"

SITE_PACKAGES=(
  trl==1.16.0
  bitsandbytes==0.50.2
  datasets==5.2.0
  dill==0.4.1
  multiprocess==0.70.19
  liger-kernel==0.8.5
)
UNSLOTH_PACKAGES=(
  unsloth==2026.10.9
  unsloth_zoo==2026.10.9
  trl==1.15.0
  datasets==4.8.5
  torchao==0.17.0
  cut_cross_entropy==25.1.1
  msgspec==0.22.0
  nest-asyncio==1.6.0
)

# The GPU machine's interpreter, not this one's. pip matches each manylinux_2_N tag exactly.
TARGET=(
  --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64
  --platform manylinux2014_x86_64
)

WORK="$(mktemp -d)"
partial=""
trap 'rm -rf "$WORK" ${partial:+"$partial"}' EXIT
mkdir -p "$CACHE"

# Downloads the pinned wheels (reusing cached ones) and unpacks them into $1 as a site folder.
unpack() {
  local dir="$1"
  shift
  python3 -m pip download "${TARGET[@]}" --dest "$CACHE" "$@"
  python3 -m pip install "${TARGET[@]}" --no-compile --no-index --find-links "$CACHE" \
    --target "$dir" "$@"
  # Console scripts carry this machine's interpreter in their first line.
  rm -rf "$dir/bin"
}

# Removes bytecode and test suites; other removals are per archive.
tidy() {
  local dir="$1"
  find "$dir" -depth -type d \( -name __pycache__ -o -name tests -o -name test \) -exec rm -rf {} +
  find "$dir" -name '*.py[co]' -delete
}

# Writes $1 as .whl/$2, paths relative to $1, under a temporary name first so that an interrupted
# run leaves the previous archive whole. Entries are named one by one: a "./" entry would reset the
# mode of the folder it is unpacked into.
archive() {
  local dir="$1" name="$2"
  partial="$OUT/.$name.partial"
  find "$dir" -mindepth 1 -maxdepth 1 -printf '%P\n' | sort \
    | tar -C "$dir" --sort=name --owner=0 --group=0 --numeric-owner -cf - -T - \
    | xz -9 -T0 >"$partial"
  mv "$partial" "$OUT/$name"
  partial=""
}

site="$WORK/site"
unpack "$site" "${SITE_PACKAGES[@]}"
find "$site/bitsandbytes" -maxdepth 1 -name 'libbitsandbytes_*' \
  ! -name libbitsandbytes_cuda130.so ! -name libbitsandbytes_cpu.so -delete
tidy "$site"
archive "$site" site.tar.xz

unsloth="$WORK/unsloth"
unpack "$unsloth" "${UNSLOTH_PACKAGES[@]}"
rm -rf "$unsloth/studio" "$unsloth/unsloth_cli"
tidy "$unsloth"
archive "$unsloth" unsloth.tar.xz

echo
for name in site.tar.xz unsloth.tar.xz; do
  stat -c %s "$OUT/$name" | awk -v name="$OUT/$name" '{ printf "%-40s %5.1f MiB\n", name, $1 / 1048576 }'
done
