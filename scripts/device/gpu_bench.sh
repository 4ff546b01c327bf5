#!/usr/bin/env bash
# The GPU check, on the device machine (nvidia-h200), in at most 8 minutes:
#   1. install the carried wheels (scripts/device/prepare_wheels.sh made .whl/ here) and mpcformer;
#   2. the CUDA tests (tests/test_cuda.py) and the host-staging tests;
#   3. `mpcformer bench` for bert-base at sequence length 128, exact vs quad+2quad, 2 parties + the
#      dealer as Ray actors sharing the one GPU (falls back to local processes if Ray cannot start);
#   4. the same at length 512 if at least 200 s of the 8 minutes are left.
# Everything lands in $OUT (log.txt, bench-128/, bench-512/); at most 6 files, as the tool allows 8.
#
#   here:  bash scripts/device/prepare_wheels.sh
#   tool:  run(command="bash scripts/device/gpu_bench.sh", carry=[".whl"], timeout_s=540)
# Rehearsal on a CPU machine: PY=.venv/bin/python SKIP_INSTALL=1 DEVICE=cpu MODEL=tiny bash scripts/device/gpu_bench.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/device}
BUDGET_S=${BUDGET_S:-480}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-bert-base}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET_S - SECONDS)); }

if [ -z "${SKIP_INSTALL:-}" ]; then
  say "install"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 || { say "FAILED: wheel install"; exit 1; }
  # the build uses the carried setuptools (pyproject.toml's SPDX license needs setuptools >= 77)
  PYTHONPATH=/tmp/site $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade \
    --target /tmp/site . >>"$LOG" 2>&1 || { say "FAILED: mpcformer install"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
nvidia-smi -L >>"$LOG" 2>&1
$PY - >>"$LOG" 2>&1 <<'PY'
import torch, ray, transformers
from mpcformer.mpc.compat import crypten
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print("torch", torch.__version__, "cuda", torch.version.cuda, gpu, "| ray", ray.__version__,
      "| crypten", getattr(crypten, "__version__", "0.4.1"), "| transformers", transformers.__version__)
PY
[ $? -eq 0 ] || { say "FAILED: imports (see above)"; tail -20 "$LOG"; exit 1; }

say "CUDA tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_host_staging.py >>"$LOG" 2>&1
say "CUDA tests exit $?"

bench() {  # bench LEN LAUNCHER TIMEOUT
  say "bench $MODEL len $1 launcher $2 on $DEVICE (timeout $3 s)"
  timeout "$3" $PY -m mpcformer.jobs.bench --model "$MODEL" --seq-len "$1" --approx exact,quad+2quad \
    --device "$DEVICE" --launcher "$2" --out "$OUT/bench-$1" >>"$LOG" 2>&1
}
summary() {
  $PY - "$OUT/bench-$1/bench.json" <<'PY' | tee -a "$LOG"
import json, sys
r = json.load(open(sys.argv[1]))
for c in r["combinations"]:
    print(f'{r["settings"]["seq_len"]:>4} {c["approx"]:>11}: {c["latency_s"]:8.2f} s, {c["rounds"]:7.0f} rounds, '
          f'{c["bytes"] / 1e9:7.2f} GB, speed-up {c["speedup_vs_exact"]:.2f}x  (GPU {r["environment"]["gpu"]})')
PY
}
if bench 128 ray 240; then summary 128
else
  say "Ray launcher failed (tail of log above); length 128 again on local processes"
  bench 128 local "$(( $(left) < 200 ? $(left) : 200 ))" && summary 128
fi
if [ "$(left)" -ge 200 ]; then
  bench 512 ray "$(( $(left) - 10 ))" && summary 512
  rm -f "$OUT/bench-512/bench.png"  # keeps the files under the tool's 8
else
  say "skipped length 512: $(left) s left of $BUDGET_S"
fi
say "done"
