#!/usr/bin/env bash
# Simulator speed benchmark (not a test): wall time and events/s of `pangu simulate`, release
# build, on this machine. Prints a markdown table for docs/performance.md.
#   bash scripts/bench-sim.sh
# With BASE=/path/to/another/pangu, every row is also run by that binary (an earlier build),
# alternating new and base REPEATS times (default 3), and the table adds the median walls and
# their ratio new / base.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bin pangu
P=${CARGO_TARGET_DIR:-./target}/release/pangu
REPEATS=${REPEATS:-3}

# One run's "devices events flows wall rate step mode" on stdout.
one() { # binary, args...
    local bin=$1; shift
    $bin simulate --json "$@" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["devices"], v["events"], v["flows"], "%.3f" % v["wall_s"], "%.2f" % (v["events"]/max(v["wall_s"],1e-9)/1e6), "%.3f" % v["step_time_s"], v.get("folded") or "every device")'
}

med() { python3 -c 'import statistics,sys; print("%.3f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

row() { # label, extra args...
    local label=$1; shift
    local out walls="" bwalls=""
    for _ in $(seq 1 "$REPEATS"); do
        out=$(one "$P" "$@")
        walls="$walls $(echo "$out" | cut -d' ' -f4)"
        if [ -n "${BASE:-}" ]; then
            bwalls="$bwalls $(one "$BASE" "$@" | cut -d' ' -f4)"
        fi
    done
    set -- $out
    local dev=$1 ev=$2 flows=$3 step=$6; shift 6
    local wall rate
    wall=$(med $walls)
    rate=$(python3 -c "print('%.2f' % ($ev / max($wall, 1e-9) / 1e6))")
    if [ -n "${BASE:-}" ]; then
        local bwall
        bwall=$(med $bwalls)
        echo "| $label | $dev | $step | $ev | $flows | $wall | $bwall | $(python3 -c "print('%.2f' % ($wall / max($bwall, 1e-9)))") | $rate | $* |"
    else
        echo "| $label | $dev | $step | $ev | $flows | $wall | $rate | $* |"
    fi
}

if [ -n "${BASE:-}" ]; then
    echo "| job | devices | step (s) | events | transfers | wall (s) | base wall (s) | new / base | M events/s | mode |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
else
    echo "| job | devices | step (s) | events | transfers | wall (s) | M events/s | mode |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|"
fi
row "PanGu-α 200B, paper strategy (default)" 
row "PanGu-α 200B, every device and flow" --full
row "Llama-3-405B-like, tp8 pp16 dp128" --model llama3-405b
# Weak scaling: GPT-3 175B, tp 8, pp 8, 32 micro-batches per pipeline, dp grows with the chips.
for n in 64 256 1024 4096 16384; do
    dp=$((n / 64))
    row "GPT-3 175B weak scaling" --model gpt3-175b --cluster dgx-a100-80g:$n --tp 8 --pp 8 \
        --micro-batch-size 1 --global-batch $((dp * 32)) --schedule 1f1b
done
for n in 64 256 1024; do
    dp=$((n / 64))
    row "GPT-3 175B weak scaling" --model gpt3-175b --cluster dgx-a100-80g:$n --tp 8 --pp 8 \
        --micro-batch-size 1 --global-batch $((dp * 32)) --schedule 1f1b --full
done
