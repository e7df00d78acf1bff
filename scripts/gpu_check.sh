#!/usr/bin/env bash
# The one prepared check of the engine on a GPU machine with no network (issue 36); about 8 minutes there.
#
#   bash scripts/gpu_check.sh --wheels           # here (with the package registry): the wheels the GPU image lacks,
#                                                # into .whl/, then what a device call would carry against its 64 MiB
#   bash scripts/gpu_check.sh [OUT]              # there: GPU tests, then scripts/gpu_bench.py; figures and logs in OUT
#   bash scripts/gpu_check.sh --dry-run [OUT]    # anywhere, on the CPU: every step end to end on a tiny shape (tests)
#
# The device image (Python 3.12, torch 2.11, transformers 5.17, no Hydra; KINDS.md of the device tool) has every
# dependency the check imports except these, which travel as wheels: transformers 5.24 (speclab passes the 5.24
# forward's `cache=` argument; 5.17 would silently decode without a KV cache), hydra-core, omegaconf and antlr4 (an
# sdist, built here into a wheel). Everything else the image holds in versions transformers 5.24 accepts
# (tokenizers 0.23.2, safetensors 0.8.0, huggingface-hub 1.33, regex, pyyaml, typer, tqdm, numpy, pandas, pyarrow,
# pytest). Exit status: non-zero when the tests or the bench fail, or (--wheels) when the call would not fit.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=("transformers==5.24.0" "hydra-core==1.3.2" "omegaconf==2.3.0" "antlr4-python3-runtime==4.9.3")

if [ "${1:-}" = "--wheels" ]; then
  rm -rf .whl && mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  # all pure Python: `pip wheel` fetches their wheels, or builds one from an sdist (antlr4 ships only that)
  python3 -m pip wheel -q --no-deps -w .whl "${WHEELS[@]}" || exit 1
  ls -la .whl
  python3 scripts/device_travel.py --carry .whl
  exit $?
fi

BENCH=()
if [ "${1:-}" = "--dry-run" ]; then
  shift
  BENCH=(--device cpu --shapes tiny --tokens 8 --prompts 2 --prompt-len 32 --repeats 2 --ks 1,2,4)
fi
OUT=${1:-${OUT:-results/gpu_check}}
shift $(( $# > 0 ? 1 : 0 ))  # the rest goes to gpu_bench.py
mkdir -p "$OUT"
if [ ${#BENCH[@]} -eq 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
  for wheel in .whl/*.whl; do  # one at a time: a wheel this Python cannot take must not keep out the others
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/speclab-site \
      "$wheel" || echo "gpu_check: skipped $wheel (not installable here)"
  done
  export PYTHONPATH=/tmp/speclab-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export SPECLAB_CACHE="${SPECLAB_CACHE:-/tmp/speclab-cache}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
} 2>&1 | tee "$OUT/gpu.txt"

# exit 5 is pytest's "no tests ran": the GPU tests are skipped without a GPU (a dry run), which is not a failure
timeout 140 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
tests=${PIPESTATUS[0]}
[ ${#BENCH[@]} -gt 0 ] && [ "$tests" = 5 ] && tests=0
timeout 320 python3 scripts/gpu_bench.py --out "$OUT" "${BENCH[@]}" "$@" 2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}
echo "gpu_check: tests exit $tests, bench exit $bench; figures in $OUT/gpu_bench.md"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
