#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one call (a lent H200 here), each step
# under its own time limit so that one slow step cannot cost the others:
#   w1: W1 at W1_NUM initializations, LanePool against plain vmap (issue 3), and
#   w2: W2 at W2_NUM, the issue-4 recipe (first call, compile included; rtol 1e-11,
#       atol 1e-13 since the tenth round: the ninth round's figures had 1e-10 / 1e-12;
#       max_kinks 4 since the twelfth)
#       against GD at eta = 0.1 in the same process;
#   w2big: W2 at 4 x W2_NUM in one pool (first call);
#   w2warm: W2 at W2_NUM, a second call timed (compile separated);
#   lanes: W1 LanePool alone at each NUM:LANES of LANES_SWEEP;
#   w2lanes: W2 at W2_NUM in pools of 256 lanes (first call).
#     bash benchmarks/gpu.sh        # logs and limits (.npz) under ${OUT:-/tmp/gpu-out}
#     STEPS="w1 w2big" bash benchmarks/gpu.sh
# Needs the package importable (the device machine reaches no registry: install it
# and quadprog from wheels first). Smaller sizes for a CPU smoke run, e.g.
#     W1_NUM=2000 W1_LANES=256 W2_NUM=16 W2_LANES=16 bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name: rc ${PIPESTATUS[0]}, $((SECONDS - start)) s"
}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
python3 -c 'import importlib.metadata as m, jax; print({p: m.version(p) for p in ["jax", "jaxlib", "diffrax", "equinox", "optax", "implicit_flow"]}, jax.devices())'
tol=(--rtol 1e-11 --atol 1e-13 --max-kinks 4)
w2=(--workload W2 --filippov --engines pool+tail --max-steps 8000 --retry-kinks 4
    --tail threshold=3e-6,radius=1e-4,iterations=2,retry=3 "${tol[@]}")
num=${W2_NUM:-1024}
for name in ${STEPS:-w1 w2}; do
    case $name in
    w1) step w1 "${W1_LIMIT:-150}" python3 benchmarks/ensemble.py \
        --num "${W1_NUM:-1000000}" --lanes "${W1_LANES:-131072}" --engines pool,vmap \
        --max-steps 20000 ;;
    w2) step w2 "${W2_LIMIT:-240}" python3 benchmarks/gd_accuracy.py --num "$num" \
        --lanes "$num" --etas 0.1 "${tol[@]}" --save "$out/w2.npz" ;;
    w2big) step w2big "${W2_LIMIT:-240}" python3 benchmarks/ensemble.py "${w2[@]}" \
        --num $((4 * num)) --lanes $((4 * num)) --no-warmup ;;
    w2warm) step w2warm "${W2_LIMIT:-240}" python3 benchmarks/ensemble.py "${w2[@]}" \
        --num "$num" --lanes "$num" ;;
    w2lanes) step w2lanes "${W2_LIMIT:-240}" python3 benchmarks/ensemble.py "${w2[@]}" \
        --num "$num" --lanes 256 --no-warmup ;;
    lanes) for pair in ${LANES_SWEEP:-10000:256 1000000:16384 1000000:65536 1000000:262144}; do
        step "lanes-${pair/:/-}" "${W1_LIMIT:-150}" python3 benchmarks/ensemble.py \
            --num "${pair%:*}" --lanes "${pair#*:}" --engines pool --check-exact 0 \
            --max-steps 20000
    done ;;
    *) echo "unknown step '$name' (w1, w2, w2big, w2warm, lanes, w2lanes)" && exit 2 ;;
    esac
done
