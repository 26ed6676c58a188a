#!/usr/bin/env bash
# Trainer speed benchmark (not a test): `pangu train --bench` side by side with the PyTorch
# reference trainer of the same architecture (shared/bench/torch_pangu_cpu.py, copied to
# scripts/torch_pangu_cpu.py), alternating the two in one run because the machine is shared.
# Prints a markdown table (median ms/step of clean steps, tokens/s, GFLOP/s, ratio).
#   pip install torch numpy && bash scripts/bench-trainer.sh [repeats]
# SHAPES="tiny" (or "small") runs one shape only; the default is both.
# With BASE=/path/to/another/pangu, that binary (an earlier build) runs right after ours on
# every shape and thread count, and the table adds its ms/step and the ratio ours / base.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-1}
python3 -c 'import torch' 2>/dev/null || { echo "needs PyTorch: pip install torch numpy" >&2; exit 1; }
cargo build --release -q --bin pangu
P=${CARGO_TARGET_DIR:-./target}/release/pangu
TORCH=scripts/torch_pangu_cpu.py

tiny="--layers 4 --hidden 256 --heads 4 --seq 128 --vocab 8000 --batch 8"
small="--layers 6 --hidden 512 --heads 8 --seq 256 --vocab 16000 --batch 8"

# The shapes use the PyTorch script's --batch; pangu calls it --global-batch.
ours() { local bin=${BIN:-$P}; $bin train --bench $(echo "$@" | sed "s/--batch /--global-batch /") --json | python3 -c 'import json,sys; v=json.load(sys.stdin); print("%.1f %.0f %.1f %d/%d" % (v["ms_per_step"], v["tokens_per_s"], v["gflops"], v["clean_steps"], len(v["step_ms"])))'; }
torch() { python3 $TORCH "$@" --json | grep '^JSON' | sed 's/^JSON //' | python3 -c 'import json,sys; v=json.load(sys.stdin); ms=v["ms_per_step_clean_median"] or v["ms_per_step_median"]; print("%.1f %.0f %.1f %d/%d" % (ms, v["tokens_per_s"], v["gflops"], v["clean_steps"], len(v["steps_ms"])))'; }

if [ -n "${BASE:-}" ]; then
  echo "| shape | threads | run | PyTorch ms/step | pangu ms/step | base ms/step | pangu / base (time) | PyTorch tok/s | pangu tok/s | pangu GFLOP/s | pangu / PyTorch | clean steps (torch, pangu) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
else
  echo "| shape | threads | run | PyTorch ms/step | pangu ms/step | PyTorch tok/s | pangu tok/s | pangu GFLOP/s | pangu / PyTorch | clean steps (torch, pangu) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
fi
for r in $(seq 1 "$REPEATS"); do
  for shape in ${SHAPES:-tiny small}; do
    if [ $shape = tiny ]; then flags=$tiny; steps="--warmup 5 --steps 20"; else flags=$small; steps="--warmup 2 --steps 8"; fi
    for t in 1 2; do
      read -r tms ttok tgf tclean <<< "$(torch $flags $steps --threads $t)"
      read -r oms otok ogf oclean <<< "$(ours $flags $steps --threads $t)"
      ratio=$(python3 -c "print('%.2f' % ($otok / $ttok))")
      if [ -n "${BASE:-}" ]; then
        read -r bms _ <<< "$(BIN=$BASE ours $flags $steps --threads $t)"
        echo "| $shape | $t | $r | $tms | $oms | $bms | $(python3 -c "print('%.2f' % ($oms / $bms))") | $ttok | $otok | $ogf | $ratio× | $tclean, $oclean |"
      else
        echo "| $shape | $t | $r | $tms | $oms | $ttok | $otok | $ogf | $ratio× | $tclean, $oclean |"
      fi
    done
  done
done
