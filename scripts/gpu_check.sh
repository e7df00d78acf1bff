#!/usr/bin/env bash
# The one prepared check of the engine on a GPU machine with no network (issue 15); at most about 8 minutes.
#
#   bash scripts/gpu_check.sh --wheels   # here (with network): the wheels a bare GPU image lacks, into .whl/
#   bash scripts/gpu_check.sh [OUT]      # there: GPU tests, then scripts/gpu_bench.py; figures and logs in OUT
#   bash scripts/gpu_check.sh OUT --device cpu --shapes tiny --tokens 8   # a dry run anywhere (bench arguments)
#
# The image is assumed to hold torch with CUDA, pandas, pyarrow, pytest, safetensors and tokenizers; .whl/ brings
# this repository's pinned transformers and Hydra. Exit status: non-zero when the tests or the bench fail.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--wheels" ]; then
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  # pure-Python packages: `pip wheel` fetches their wheels, or builds one from an sdist (antlr4 ships only that)
  python3 -m pip wheel -q --no-deps -w .whl "transformers==5.24.0" "hydra-core==1.3.2" "omegaconf==2.3.0" \
    "antlr4-python3-runtime==4.9.3" || exit 1
  rm -f .whl/*.tar.gz
  # compiled ones transformers pins tightly, for the image's Python 3.12 on x86-64
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "tokenizers==0.23.3" "safetensors==0.8.0" "regex==2026.12.2" || exit 1
  ls -la .whl
  exit 0
fi

OUT=${1:-${OUT:-results/gpu_check}}
shift $(( $# > 0 ? 1 : 0 ))  # the rest goes to gpu_bench.py
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  for wheel in .whl/*.whl; do  # one at a time: a wheel this Python cannot take must not keep out the others
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/speclab-site \
      "$wheel" || echo "gpu_check: skipped $wheel (not installable here)"
  done
  export PYTHONPATH=/tmp/speclab-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export SPECLAB_CACHE="${SPECLAB_CACHE:-/tmp/speclab-cache}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/gpu.txt"

timeout 140 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
tests=${PIPESTATUS[0]}
timeout 320 python3 scripts/gpu_bench.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}
echo "gpu_check: tests exit $tests, bench exit $bench; figures in $OUT/gpu_bench.md"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
