#!/usr/bin/env bash
# bench/gpu_check.sh: all the GPU work of one device call, in one command: build there (make -j16: the
# device image differs from this one), tests/test_gpu (RoBERTa, GPT-2 and Llama parity), bench/bench_gpu,
# compute-sanitizer (memcheck on a small bench_gpu case and on test_gpu; racecheck and initcheck on small
# cases), bench/peft_step.py
# (transformers + PEFT on the same GPU), and one federated RTE run end to end; a summary table last, with
# every figure (test counts, sanitizer summaries, step times, samples/s, TFLOP/s and their fraction of the
# bf16 GEMM ceiling measured in the same run, the ratio to PEFT). It does not judge speed: the numbers go
# into GPU_NOTES.md by hand. It exits non-zero if any part failed, and fails at once, loudly, if the build
# left CUDA out (no nvcc, no cuBLAS: the CPU-only build would make every GPU part pointless).
#
# usage: bench/gpu_check.sh [PART...]     parts, in this order by default (most important first):
#          build test bench memcheck peft round racecheck initcheck
#        bench/gpu_check.sh prepare       on the developer machine, before the call: copies what the device
#                                         machine lacks (../shared does not travel) into gpu-carry/
# Full logs go to $OUT (the device tool brings them back; at most 8 files) or build/gpu-check. Every part
# runs under `timeout`, and the whole stays within BUDGET seconds (default 450: one 8-minute device call
# with room for the tool's start and transfers): a part that would not fit is skipped with a line saying so.
set -u
cd "$(dirname "$0")/.." || exit 1
CARRY=gpu-carry
CONFIG=$CARRY/roberta-base/config.json

if [ "${1:-}" = prepare ]; then
    S=${FEDEX_SHARED:-../shared}
    mkdir -p $CARRY/roberta-base $CARRY/glue || exit 1
    cp "$S"/models/roberta-base/{config.json,vocab.json,merges.txt} $CARRY/roberta-base/ || exit 1
    rm -rf $CARRY/glue/RTE && cp -r "$S"/data/glue/RTE $CARRY/glue/ || exit 1
    du -sh $CARRY
    exit 0
fi

OUT=${OUT:-build/gpu-check}
mkdir -p "$OUT" || exit 1
BUDGET=${BUDGET:-450}
SUM=$OUT/summary.txt
: >"$SUM"
parts=${*:-build test bench memcheck peft round racecheck initcheck}
has() { case " $parts " in *" $1 "*) return 0;; esac; return 1; }
row() { printf '%-34s %s\n' "$1" "$2" | tee -a "$SUM"; }
failed=""
fail() { failed="$failed $1"; }           # a part that ran and failed (not one the budget left out)
judge() {  # PART STATUS: records a failure; 125 (budget) and 126 (tool missing) are reported, not failures
    case $2 in 0|125|126) ;; *) fail "$1";; esac
}

# Runs "$@" with at most LIMIT seconds (less when the budget is short), output to LOG (appended).
# Returns the command's status; 124 when it ran out of time; 125 when it was not started.
bounded() {
    local limit=$1 log=$2; shift 2
    local left=$((BUDGET - SECONDS - 5))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then echo "skipped: $* (${left}s of the budget left)" | tee -a "$log"; return 125; fi
    echo "== $(date +%T) [${limit}s] $*" >>"$log"
    timeout -k 5 "$limit" "$@" >>"$log" 2>&1
}
status_word() {
    case $1 in 0) echo ok;; 124) echo "TIMED OUT";; 125) echo "not run (budget)";; 126) echo "not run (tool missing)";;
               *) echo "FAILED (exit $1)";; esac
}

for p in memcheck bench peft round racecheck initcheck; do has $p || continue
    for f in $CONFIG $CARRY/roberta-base/vocab.json $CARRY/glue/RTE/train.tsv; do
        [ -f "$f" ] || { echo "gpu_check: $f missing: run 'bench/gpu_check.sh prepare' here and carry $CARRY"; exit 1; }
    done
done
# CUDA's tools, on the PATH or where the toolkit keeps them.
tool() { command -v "$1" || ls /usr/local/cuda/bin/"$1" /usr/local/cuda/compute-sanitizer/"$1" 2>/dev/null | head -1; }
SANITIZER=$(tool compute-sanitizer)
export PYTHONUNBUFFERED=1

{
    echo "gpu_check $(date -u +%FT%TZ) on $(hostname), parts: $parts"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,utilization.gpu --format=csv 2>&1
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv 2>&1
} | tee -a "$SUM"

BIN=build/release
# ---------------------------------------------------------------- build
if has build; then
    L=$OUT/build.log
    { nvcc --version | tail -1; cc --version | head -1; } >"$L" 2>&1
    bounded 180 "$L" make -j16 all "$BIN/tests/test_gpu" "$BIN/bench/bench_gpu"; rc=$?
    row "build (make -j16)" "$(status_word $rc), $(grep -c warning "$L") warning lines"
    [ "$rc" -eq 0 ] || { tail -30 "$L"; echo "gpu_check: FAILED: the build"; exit 1; }
    # make says in one line whether it built CUDA; a CPU-only build also "succeeds", and would leave
    # every GPU part below skipping: that is a failure here, not a pass.
    made=$(grep -E '^fedex: built' "$L" | tail -1)
    row "build line" "$made"
    case $made in
        *"fedex-cuda (CUDA"*) ;;
        *) echo "gpu_check: FAILED: the build left CUDA out (${made:-no 'fedex: built' line}); nothing below would test the GPU" | tee -a "$SUM"
           exit 1;;
    esac
    # Registers, shared memory, stack and spills of every kernel: what METHOD.md calls the free reading.
    CUOBJDUMP=$(tool cuobjdump)
    [ -n "$CUOBJDUMP" ] && "$CUOBJDUMP" --dump-resource-usage $BIN/gpu.o >>"$L" 2>&1
fi
[ -x $BIN/bench/bench_gpu ] && [ -x $BIN/tests/test_gpu ] && [ -x ./fedex-cuda ] && [ -f $BIN/gpu.o ] ||
    { echo "gpu_check: FAILED: no CUDA build in $BIN (fedex-cuda, gpu.o, test_gpu, bench_gpu): run the 'build' part"; exit 1; }

# ---------------------------------------------------------------- correctness
if has test; then
    L=$OUT/test_gpu.log; : >"$L"
    bounded 100 "$L" $BIN/tests/test_gpu; rc=$?
    row "test_gpu" "$(status_word $rc): $(grep -E '^[0-9]+ passed' "$L" | tail -1)"
    judge test $rc
    # on the device machine the GPU part must run: a skip there is a failure
    if [ "$rc" -eq 0 ] && grep -q '^skipped: GPU tests' "$L"; then row "test_gpu GPU part" "FAILED: $(grep '^skipped: GPU tests' "$L")"; fail test-skipped; fi
    grep -E '^emulated (fp32|tf32|bf16):|dropout \(|normwise error|^parity:|^gpu tests:' "$L" | grep -v '^emulated [a-z0-9]* [a-z_]' | tee -a "$SUM"
    grep -E '^FAIL' "$L" | head -20 | tee -a "$SUM"
    # Llama's ops (RMSNorm, RoPE with llama3 scaling, biases, grouped-query attention, the sliding window,
    # SwiGLU) run in test_gpu's llama_d and llama_f parity, fp32 and tf32: all four must have run
    n=$(grep -cE '^llama_[a-z] (fp32|tf32) +normwise' "$L")
    row "test_gpu Llama parity" "$n of 4 runs (llama_d, llama_f; fp32, tf32)"
    [ "$rc" -eq 0 ] && [ "$n" -ne 4 ] && fail test-llama
fi

SAN=$OUT/sanitizer.log
: >"$SAN"
sanitize() {  # TOOL LIMIT COMMAND...: one sanitizer run, appended to $SAN from line SAN_FROM on
    local t=$1 limit=$2; shift 2
    SAN_FROM=$(($(wc -l <"$SAN") + 1))
    if [ -z "$SANITIZER" ]; then echo "skipped: compute-sanitizer not found" >>"$SAN"; return 126; fi
    bounded "$limit" "$SAN" "$SANITIZER" --tool "$t" --error-exitcode 99 "$@"
}
# TOOL LIMIT ROWS TOKENS: a small bench_gpu case, RoBERTa-base's real shapes (12 heads of 64) on few rows.
sanitize_small() {
    sanitize "$1" "$2" $BIN/bench/bench_gpu $CONFIG --quick --steps 1 --warmup 0 --batch "$3" --tokens "$4"
}
san_row() {  # the run's own summary line from the sanitizer, if it printed one, after its exit status
    local s; s=$(tail -n +"$SAN_FROM" "$SAN" | grep -E '(ERROR|RACECHECK) SUMMARY' | tail -1 | sed 's/^=* *//')
    row "$1" "$(status_word $2)${s:+: $s}"
}
# ---------------------------------------------------------------- speed
if has bench; then
    L=$OUT/bench_gpu.log; : >"$L"
    bounded 150 "$L" $BIN/bench/bench_gpu $CONFIG --data $CARRY/glue --steps 20 --warmup 3; rc=$?
    row "bench_gpu" "$(status_word $rc)"
    judge bench $rc
    if [ "$rc" -eq 0 ] && grep -q '^skipped' "$L"; then row "bench_gpu" "FAILED: $(grep '^skipped' "$L" | head -1)"; fail bench-skipped; fi
    # the ceilings, the FLOP count, the table (ms, samples/s, TFLOP/s, fraction of the bf16 GEMM rate)
    grep -E '^ceiling:|^FLOPs per|^(run|full_|eval_|half_len_|padded_|rte_train_)|^attention|^bf16 step|^device memory|^bench_gpu (ceiling|fraction)' "$L" | tee -a "$SUM"
fi

# ---------------------------------------------------------------- memory errors (compute-sanitizer)
if has memcheck; then
    sanitize_small memcheck 60 4 128; rc=$?
    san_row "memcheck bench_gpu 4x128" $rc
    judge memcheck-bench $rc
    FEDEX_GPU_QUICK=1 sanitize memcheck 150 $BIN/tests/test_gpu; rc=$?
    san_row "memcheck test_gpu (quick: small cases)" $rc
    judge memcheck-test $rc
fi

# ---------------------------------------------------------------- the same step in transformers + PEFT
if has peft; then
    L=$OUT/peft_step.log; : >"$L"
    bounded 120 "$L" python3 bench/peft_step.py $CONFIG --steps 20 --warmup 5; rc=$?
    row "peft_step (transformers + PEFT)" "$(status_word $rc)"
    judge peft $rc
    grep -E '^peft_step|^skipped' "$L" | tee -a "$SUM"
    fedex=$(awk '$1 == "bench_gpu" && $3 == "bf16" && $4 == "train" && $2 ~ /^full_/ {print $8}' "$OUT/bench_gpu.log" 2>/dev/null)
    frac=$(awk '$1 == "bench_gpu" && $2 == "fraction" {print $3}' "$OUT/bench_gpu.log" 2>/dev/null)
    peft=$(awk '$1 == "peft_step" && $2 == "bf16" && $3 == "train" {print $7}' "$L")
    [ -n "$fedex" ] && [ -n "$peft" ] &&
        row "bf16 train samples/s fedex / PEFT" "$(awk -v a="$fedex" -v b="$peft" 'BEGIN {printf "%.1f / %.1f = %.2f", a, b, a / b}')"
    # the same FLOPs per step, so PEFT's fraction of the GEMM ceiling is fedex's scaled by the speed ratio
    [ -n "$fedex" ] && [ -n "$peft" ] && [ -n "$frac" ] &&
        row "bf16 train frac of GEMM ceiling" "$(awk -v a="$fedex" -v b="$peft" -v f="$frac" 'BEGIN {printf "fedex %.3f, PEFT %.3f (goal >= 0.40)", f, f * b / a}')"
fi

# ---------------------------------------------------------------- a federated round end to end
# RTE's 2490 training rows over 3 clients, the paper's settings (batch 128, 3 local epochs, LoRA r=4 on
# query,value, bf16), 2 rounds: the second round's seconds carry no start-up. Evaluation on the GPU.
if has round; then
    L=$OUT/round.log; : >"$L"
    M=/tmp/fedex-roberta-base R=/tmp/fedex-round
    rm -rf $R
    bounded 30 "$L" ./fedex init --config $CONFIG --out $M --labels 2 --seed 1 &&
    bounded 150 "$L" ./fedex train --model $M --task RTE --data $CARRY/glue --num-clients 3 --rounds 2 \
        --device cuda --precision bf16 --server-gpu 0 --threads 16 --out $R; rc=$?
    row "fedex train RTE, 3 clients, 2 rounds" "$(status_word $rc)"
    judge round $rc
    if [ -f $R/metrics.jsonl ]; then
        cat $R/metrics.jsonl >>"$L"
        python3 - $R/metrics.jsonl <<'EOF' | tee -a "$SUM"
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    cl = " ".join(f"{c.get('seconds', float('nan')):.1f}" for c in m.get("clients", []))
    print(f"round {m.get('round')}: {m.get('seconds', float('nan')):.1f} s (clients {m.get('seconds_clients', float('nan')):.1f}: "
          f"each {cl}; aggregate {m.get('seconds_aggregate', float('nan')):.2f}; eval {m.get('seconds_eval', float('nan')):.1f}); "
          f"{m.get('metric')} {m.get('value')}")
EOF
    fi
fi

# ---------------------------------------------------------------- race and initialisation checks (slow)
if has racecheck; then
    sanitize_small racecheck 90 2 64; rc=$?
    san_row "racecheck bench_gpu 2x64" $rc
    judge racecheck $rc
fi
if has initcheck; then
    sanitize_small initcheck 90 2 64; rc=$?
    san_row "initcheck bench_gpu 2x64" $rc
    judge initcheck $rc
fi

echo
echo "== summary ($SECONDS s of a budget of $BUDGET; logs in $OUT)"
cat "$SUM"
if [ -n "$failed" ]; then
    echo "gpu_check: FAILED:$failed"
    exit 1
fi
echo "gpu_check: every part that ran passed"
