#!/usr/bin/env bash
# Observability on one machine: a Ray head that exports metrics, a real Prometheus scraping it
# (`mpcformer.jobs.monitor`), one private inference run on that cluster, then the run's rounds per
# approximation queried from Prometheus. Prometheus and the head stop when the script exits.
# Needs the Debian package prometheus (`bash scripts/install-system.sh`).
set -euo pipefail
DATA="$(realpath "${DATA:-../shared/data/sst2}")"        # a folder with dev.tsv
OUT="$(realpath -m "${OUT:-runs/quickstart-observability}")"
RAY_PORT="${RAY_PORT:-6379}" METRICS_PORT="${METRICS_PORT:-8080}" PROM_PORT="${PROM_PORT:-9090}"
RAY_TEMP_DIR="${RAY_TEMP_DIR:-/tmp/ray}"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN="${RAY_AUTH_TOKEN:-$(python -c 'import secrets; print(secrets.token_hex(32))')}"
# Ray's processes hand their metrics to the node's agent every report interval (10 s by default);
# at 1 s a forward's metrics reach Prometheus by the next scrape. The head, its workers and the
# drivers started here all read it from the environment.
export RAY_metrics_report_interval_ms="${RAY_metrics_report_interval_ms:-1000}"

ray start --head --block --temp-dir "$RAY_TEMP_DIR" --port "$RAY_PORT" \
  --metrics-export-port "$METRICS_PORT" ${HEAD_ARGS:-} &
HEAD=$!
trap 'kill $HEAD; wait $HEAD || true' EXIT                      # `ray start --block` stops what it started
until ray status --address "127.0.0.1:$RAY_PORT" >/dev/null 2>&1; do kill -0 $HEAD; sleep 2; done
python -m mpcformer.jobs.monitor --ray-temp-dir "$RAY_TEMP_DIR" --port "$PROM_PORT" \
  --data-dir "$OUT/prometheus" &
MONITOR=$!
trap 'kill $MONITOR $HEAD; wait $MONITOR $HEAD || true' EXIT    # the monitor stops its Prometheus

export RAY_ADDRESS="127.0.0.1:$RAY_PORT"                 # what `--address auto` joins
python -m mpcformer.jobs.infer --address auto --config infer-tiny --data "$DATA" --limit 8 \
  --batch-size 4 --approx exact,quad+2quad --out "$OUT/infer" --no-progress

# an approximation's rounds, once Prometheus has all its 4 forwards (2 batches x 2 parties)
QUERY='sum by (approx) (ray_mpcformer_comm_rounds_total)
  and on (approx) (sum by (approx) (ray_mpcformer_forwards_total) == 4)'
for _ in $(seq 60); do                                   # Ray exports, then Prometheus scrapes
  RESULT="$(curl -sfG "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$QUERY")" || true
  if [[ "$RESULT" == *quad+2quad* && "$RESULT" == *exact* ]]; then echo "prometheus: $RESULT"; exit 0; fi
  sleep 2
done
echo "Prometheus has not all the rounds of both approximations after 2 minutes: $RESULT" >&2; exit 1
