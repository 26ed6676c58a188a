#!/usr/bin/env bash
# Overhead of the distributed executor (not a test): pangu-alpha-tiny, global batch 8, the same
# samples and steps on one device (1 and 2 compute threads: what a second core gives here) and
# on 2 devices as dp2, tp2 and pp2 (1F1B, 4 micro-batches), threads backend. Runs alternate in
# each round because the machine is shared; prints the median step time (after 2 warm-up steps)
# of every run and, per configuration, the median over rounds and its efficiency against one
# device on one thread with two cores' worth of work: speed-up / 2.
#   bash scripts/bench-dist.sh [rounds] [steps]
# With BASE=/path/to/another/pangu, every run is repeated right after with that binary (an
# earlier build: A/B side by side) and the table adds its median and the ratio new / base.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
STEPS=${2:-12}
cargo build --release -q --bin pangu
P=${CARGO_TARGET_DIR:-./target}/release/pangu
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
$P tokenizer train --vocab 8000 --out "$TMP/tok.json" >/dev/null 2>&1
COMMON="--model pangu-alpha-tiny --tokenizer $TMP/tok.json --steps $STEPS --eval-every 0 --dropout 0 --json --quiet"

# Median step seconds of a JSON report on stdin: per-step times of the distributed executor,
# or batch·seq / tokens-per-second of the single-device loop.
median_step() {
  python3 -c '
import json, statistics, sys
v = json.load(sys.stdin)
if "step_s" in v:
    steps = v["step_s"][2:]
else:
    steps = [8 * 128 / v["tokens_per_s"]]
print("%.4f" % statistics.median(steps))'
}

declare -A RUNS=(
  [1dev-1thread]="--threads 1"
  [1dev-2threads]="--threads 2"
  [dp2]="--dp 2"
  [dp2-zero1]="--dp 2 --opt-shard zero1"
  [tp2]="--tp 2 --micro-batches 1"
  [pp2]="--pp 2 --micro-batches 4 --schedule 1f1b"
)
ORDER=(1dev-1thread 1dev-2threads dp2 dp2-zero1 tp2 pp2)
declare -A ALL
declare -A OLD
for r in $(seq 1 "$ROUNDS"); do
  for name in "${ORDER[@]}"; do
    s=$($P train $COMMON ${RUNS[$name]} 2>/dev/null | median_step)
    ALL[$name]="${ALL[$name]:-} $s"
    echo "round $r $name: $s s/step" >&2
    if [ -n "${BASE:-}" ]; then
      o=$("$BASE" train $COMMON ${RUNS[$name]} 2>/dev/null | median_step)
      OLD[$name]="${OLD[$name]:-} $o"
      echo "round $r $name (base): $o s/step" >&2
    fi
  done
done
base=$(python3 -c "import statistics; print(statistics.median([float(x) for x in '${ALL[1dev-1thread]}'.split()]))")
if [ -n "${BASE:-}" ]; then
  echo "| run | median s/step | base s/step | new / base | speed-up vs 1 device, 1 thread | efficiency (speed-up / 2) |"
  echo "|---|---:|---:|---:|---:|---:|"
else
  echo "| run | median s/step | speed-up vs 1 device, 1 thread | efficiency (speed-up / 2) |"
  echo "|---|---:|---:|---:|"
fi
for name in "${ORDER[@]}"; do
  python3 -c "
import statistics
v = statistics.median([float(x) for x in '${ALL[$name]}'.split()])
b = $base
old = '${OLD[$name]:-}'.split()
if old:
    o = statistics.median([float(x) for x in old])
    print('| $name | %.3f | %.3f | %.3f | %.2f× | %.0f %% |' % (v, o, v / o, b / v, 100 * b / v / 2))
else:
    print('| $name | %.3f | %.2f× | %.0f %% |' % (v, b / v, 100 * b / v / 2))"
done
