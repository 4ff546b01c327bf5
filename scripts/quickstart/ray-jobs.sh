#!/usr/bin/env bash
# Encrypted inference as a Ray job on one machine: a token-authenticated head, `ray job submit`,
# status and logs, a wrong token refused, and the same submission again, which resumes (every
# batch is already finished, none is written twice). The head stops when the script exits.
# More nodes: `ray start --address <head-ip>:$RAY_PORT` on each, with the same RAY_AUTH_TOKEN.
set -euo pipefail
DATA="$(realpath "${DATA:-../shared/data/sst2}")"        # a folder with dev.tsv
OUT="$(realpath -m "${OUT:-runs/quickstart-ray-jobs}")"  # shared storage (NFS, a bucket) on a real cluster
RAY_PORT="${RAY_PORT:-6379}" DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
RAY_TEMP_DIR="${RAY_TEMP_DIR:-/tmp/ray}"
export RAY_AUTH_MODE=token                               # on every node and every client
export RAY_AUTH_TOKEN="${RAY_AUTH_TOKEN:-$(python -c 'import secrets; print(secrets.token_hex(32))')}"

ray start --head --block --temp-dir "$RAY_TEMP_DIR" --port "$RAY_PORT" \
  --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" ${HEAD_ARGS:-} &
HEAD=$!
trap 'kill $HEAD; wait $HEAD || true' EXIT                      # `ray start --block` stops what it started
JOBS="http://127.0.0.1:$DASHBOARD_PORT"
until ray job list --address "$JOBS" >/dev/null 2>&1; do kill -0 $HEAD; sleep 2; done

if RAY_AUTH_TOKEN=wrong ray job list --address "$JOBS" >/dev/null 2>&1; then
  echo "a wrong token was accepted: token authentication is off" >&2; exit 1
fi
SUBMIT=(python -m mpcformer.jobs.infer --config infer-tiny --data "$DATA" --limit 8 --batch-size 4
        --out "$OUT" --no-progress)
ray job submit --address "$JOBS" --submission-id "qs-$(date +%s)-1" -- "${SUBMIT[@]}"
ray job submit --address "$JOBS" --submission-id "qs-$(date +%s)-2" -- "${SUBMIT[@]}"   # resumes: nothing left
python -c 'import json, sys; s = json.load(open(sys.argv[1])); print("summary:", {k: s[k] for k in ("complete", "combos")})' \
  "$OUT/summary.json"
