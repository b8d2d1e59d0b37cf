#!/usr/bin/env bash
# Every GPU benchmark in one go, for a lent GPU machine (torch, transformers, cmake and ninja, no Debian
# packages): builds the core (HYPRSTREAM_CORE_ONLY) and runs, on random weights of one configuration that
# both sides load from the same saved folder,
#   transformers eager decode and prefill (peer.json), our engine bench with CUDA graphs (engine.json) and the
#   logits parity of our decode against transformers (parity.json), our eager path without the flash decode
#   kernel (engine-masked.json), the adapter bench (adapters.json), and transformers with a static cache and
#   torch.compile (peer-compile.json), and the learning bench on random weights (learning.json). engine.json's
#   ragged_decode checks rows of different lengths decoded in one batch against each row alone.
# Each step has a time limit; a failed step is reported and the others still run. Two files go to $OUT
# (default bench/results/gpu-run): results.json (every step's JSON, exit status and seconds) and logs.txt.
#
# Here, first: scripts/pack-carry (fills .carry/, which the device tool must carry). Then on the GPU machine:
#   bash bench/gpu/run.sh
# The script runs on a CPU too (DEVICE=cpu DTYPE=float32 CONFIG=<small config.json>), to test it before
# spending GPU time; SKIP_BUILD=1 BUILD_DIR=build reuses a build that has the benchmarks.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$root/bench/results/gpu-run}
work=$(mktemp -d)  # per-step files; the device tool returns only a few files
device=${DEVICE:-cuda}
dtype=${DTYPE:-bfloat16}
config=${CONFIG:-$root/.carry/qwen3-1.7b.json}
steps=${STEPS:-64}
batches=${BATCHES:-1,8,32}
build=${BUILD_DIR:-$root/build-gpu}
weights=${WEIGHTS_DIR:-/tmp/hs-gpu-weights}
py=${PYTHON:-python3}
mkdir -p "$out"
summary="$work/summary.txt"
: > "$summary"

budget=${BUDGET:-560}  # seconds for the whole script: the device tool stops a command at 600
trap 'rm -rf "$work"' EXIT

# Every step's JSON, exit status and time in $out/results.json, and the ends of their logs in $out/logs.txt,
# rewritten after each step so that a run cut short still returns what it measured.
collect() {
  for f in "$work"/*.log "$work"/gpu.txt; do [ -f "$f" ] && { echo "== $(basename "$f")"; grep -v "^frame #" "$f" | tail -40; }; done > "$out/logs.txt"
  "$py" - "$work" "$out" <<'PY'
import glob, json, os, sys
work, out = sys.argv[1], sys.argv[2]
results = {}
for path in sorted(glob.glob(os.path.join(work, "*.json"))):
    try:
        with open(path) as f:
            results[os.path.basename(path)[:-5]] = json.load(f)
    except ValueError:
        pass
with open(os.path.join(work, "summary.txt")) as f:
    results["steps"] = f.read().splitlines()
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
PY
}

# step NAME LIMIT_S COMMAND...: stdout to NAME.json, stderr to NAME.log, within what is left of the budget.
step() {
  local name=$1 limit=$2 t0=$SECONDS left=$((budget - SECONDS - 10))
  shift 2
  if [ $left -lt 20 ]; then
    echo "$name skipped: the budget is spent" | tee -a "$summary"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout "$limit" "$@" > "$work/$name.json" 2> "$work/$name.log"
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$summary"
  [ $rc -eq 0 ] || grep -v "^frame #" "$work/$name.log" | tail -4
  collect
  return $rc
}

prefix=$($py -c 'import torch; print(torch.utils.cmake_prefix_path)')
t0=$SECONDS
if [ "${SKIP_BUILD:-0}" != 1 ] && ! { cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHYPRSTREAM_CORE_ONLY=ON \
         -DCMAKE_PREFIX_PATH="$prefix" > "$work/cmake.log" 2>&1 &&
       cmake --build "$build" -j "$(nproc)" > "$work/build.log" 2>&1; }; then
  tail -30 "$work/cmake.log" "$work/build.log"
  exit 1
fi
echo "build $((SECONDS - t0))s" | tee -a "$summary"
[ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv > "$work/gpu.txt" 2>&1

bench="$build/bench"
rm -rf "$weights"
if step peer 240 "$py" bench/gpu/transformers_peer.py save --dir "$weights" --config "$config" --device "$device" \
     --batches "$batches" --steps "$steps"; then
  shared=1
  model=(--model "$weights" --device "$device" --dtype "$dtype")
else
  shared=0  # our benchmarks still run, on random weights of their own; no parity without shared weights
  model=(--random-config "$config" --device "$device" --dtype "$dtype")
fi
step engine 300 "$bench/hyprstream-bench" "${model[@]}" --batches "$batches" --decode-steps "$steps" \
  --prompt-lengths 128,512 --logits-out "$work/logits.bin"
[ $shared = 1 ] && step parity 180 "$py" bench/gpu/transformers_peer.py parity --dir "$weights" \
  --engine "$work/engine.json" --device "$device"
step adapters 240 "$bench/hyprstream-bench-adapters" "${model[@]}" --decode-steps "$steps" --repeats 3
step engine-eager 120 "$bench/hyprstream-bench" "${model[@]}" --batches 1,8 --decode-steps 16 --prompt-lengths 128 \
  --repeats 1 --cuda-graphs off
HYPRSTREAM_FLASH_DECODE=0 step engine-masked 120 "$bench/hyprstream-bench" "${model[@]}" --batches 1,8 \
  --decode-steps 16 --prompt-lengths 128 --repeats 1
step learning 90 "$bench/hyprstream-bench-learning" --random-config "$config" --device "$device" --dtype "$dtype" \
  --submissions 2000 --singles 200 --train-batches 0 --serve 0
[ "${COMPILE:-1}" = 1 ] && [ $shared = 1 ] && step peer-compile 170 "$py" bench/gpu/transformers_peer.py compile \
  --dir "$weights" --config "$config" --device "$device" --steps "$steps"

# The figures that matter, last (the device tool returns the end of the output).
"$py" - "$out" <<'PY'
import json, os, sys
with open(os.path.join(sys.argv[1], "results.json")) as f:
    results = json.load(f)
names = ("engine", "peer", "engine-masked", "adapters", "peer-compile", "parity", "engine-eager")
e, p, m, a, c, par, ee = (results.get(n, {}) for n in names)
for b, d in e.get("decode", {}).items():
    peer = p.get("eager", {}).get(b, {}).get("ms_per_step")
    masked = m.get("decode", {}).get(b, {}).get("ms_per_step")
    eager = ee.get("decode", {}).get(b, {}).get("ms_per_step")
    print(f"decode {b}: ours {d['ms_per_step']:.2f} ms ({d['tokens_per_s']:.0f} tok/s), eager {eager}, masked eager {masked}, "
          f"transformers eager {peer}")
print("graph vs eager:", {k: v.get("same") for k, v in e.get("graph_vs_eager", {}).items()})
print("prefill:", {k: round(v["ms"], 2) for k, v in e.get("prefill", {}).items()}, "transformers 128:",
      p.get("eager", {}).get("prefill_128_ms"))
print("parity:", par)
print("adapters:", a.get("decode"), a.get("graph_vs_eager"))
print("compile peer:", c.get("static_compile"))
print("ragged rows vs alone:", e.get("ragged_decode"), "masked:", m.get("ragged_decode"))
learning = results.get("learning", {})
print("learning:", learning.get("single_updates"), learning.get("sustained_submissions"))
PY
