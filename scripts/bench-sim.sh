#!/usr/bin/env bash
# Simulator speed benchmark (not a test): wall time and events/s of `pangu simulate`, release
# build, on this machine. Prints a markdown table for the README's performance section.
#   bash scripts/bench-sim.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bin pangu
P=./target/release/pangu

row() { # label, extra args...
    local label=$1; shift
    local out
    out=$($P simulate --json "$@" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["devices"], v["events"], v["flows"], "%.3f" % v["wall_s"], "%.2f" % (v["events"]/max(v["wall_s"],1e-9)/1e6), "%.3f" % v["step_time_s"], v["folded"] or "every device")')
    set -- $out
    local dev=$1 ev=$2 flows=$3 wall=$4 rate=$5 step=$6; shift 6
    echo "| $label | $dev | $step | $ev | $flows | $wall | $rate | $* |"
}

echo "| job | devices | step (s) | events | transfers | wall (s) | M events/s | mode |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
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
