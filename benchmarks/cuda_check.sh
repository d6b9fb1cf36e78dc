#!/usr/bin/env bash
# One pass of every CUDA check, for a lent GPU machine (see benchmarks/RESULTS.md,
# "CUDA"). Run from the repository root; logs go to $OUT (default ./cuda_out).
#
#   bash benchmarks/cuda_check.sh [deadline_s]
#
# Steps, most important first; each is cut at the deadline (default 480 s from
# the start), so that the logs of the finished steps always come back:
#   1. the CUDA-marked tests (pytest -m cuda);
#   2. training-step throughput, fused and torchsde reference paths, on CUDA
#      and on all CPU cores of the same machine, at batch 64 and 512;
#   3. the whole test suite on a machine where device="auto" means CUDA;
#   4. the paper setting fitted with defaults on CUDA, then on the CPU cores.
# Python packages the machine lacks (torchsde and its one dependency) travel as
# wheels in .whl/ (download them with pip download --no-deps, see the device
# tool's README).
set -u
OUT=${OUT:-cuda_out}
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=$((START + ${1:-480}))
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
NCPU=$(nproc)

step() {  # step NAME MAX_SECONDS COMMAND...: run with the smaller of its limit and the time left
    local name=$1 limit=$2 left
    shift 2
    left=$((DEADLINE - $(date +%s)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then
        echo "== $name: skipped (deadline)" | tee -a "$OUT/summary.txt"
        return
    fi
    local t0=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc, $(( $(date +%s) - t0 )) s (limit $limit s)" | tee -a "$OUT/summary.txt"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
    python3 -c "import platform, torch, torchsde, sklearn, numpy, scipy; \
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', \
torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'torchsde', \
torchsde.__version__, 'sklearn', sklearn.__version__, 'numpy', numpy.__version__, \
'scipy', scipy.__version__, 'gpu', torch.cuda.get_device_name(0))"
    grep -m1 "model name" /proc/cpuinfo; echo "cores $NCPU"
} >"$OUT/env.txt" 2>&1

step cuda_tests 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests
step throughput_cuda_b64 90 python3 benchmarks/training_throughput.py --device cuda \
    --dynamics overdamped underdamped --steps 10 --warmup 3
step throughput_cpu_b64 90 python3 benchmarks/training_throughput.py --device cpu \
    --threads "$NCPU" --dynamics overdamped underdamped --steps 10 --warmup 3
step throughput_cuda_b512 60 python3 benchmarks/training_throughput.py --device cuda \
    --dynamics overdamped --batch 512 --steps 10 --warmup 3
step throughput_cpu_b512 60 python3 benchmarks/training_throughput.py --device cpu \
    --threads "$NCPU" --dynamics overdamped --batch 512 --steps 5 --warmup 1
# One torch thread per worker (14 workers of 16 threads each ran for over 190 s
# and were cut); -v names each result as it comes, so a cut run still says which
# tests failed.
step test_suite 200 env OMP_NUM_THREADS=1 python3 -m pytest -v --tb=short \
    -p no:cacheprovider -n 12 tests nldseg
step paper_fit_cuda 200 python3 benchmarks/paper_benchmark.py --seeds 0 \
    --dynamics overdamped --n-test 100
step paper_fit_cpu 200 env CUDA_VISIBLE_DEVICES= python3 benchmarks/paper_benchmark.py \
    --seeds 0 --dynamics overdamped --n-test 100

for f in "$OUT"/*.log; do
    echo "---- $(basename "$f")"
    grep -E "passed|failed|FAILED|ERROR|SUMMARY|^overdamped|^underdamped|^dynamics|rel. diff|machine" "$f" | tail -12
done
cat "$OUT/summary.txt"
