#!/usr/bin/env bash
# GPU checks and benchmarks in one go (for a lent GPU machine with no network).
#
# Needs, next to the repository root (both git-ignored):
#   .whl/   wheels of the packages the machine lacks (dask, distributed, cf_xarray, zarr, numcodecs, ...,
#           timm==0.6.12 for the official model), downloaded for its Python;
#   .gpu/climax/   the official ClimaX package (src/climax of microsoft/ClimaX).
# Writes logs to $OUT (default ./gpu_out). PARTS (default all: tests,model,pipeline,run_all) picks the parts, e.g.
#   PARTS=run_all bash benchmarks/gpu_check.sh        # only the performance table (~5 min)
set -u
PARTS=",${PARTS:-tests,model,pipeline,run_all},"
part() { [[ "$PARTS" == *",$1,"* ]]; }
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.log"
python3 -c "import sys, torch, xarray, dask, zarr, numpy; print(sys.version.split()[0], 'torch', torch.__version__, 'xarray', xarray.__version__, 'dask', dask.__version__, 'zarr', zarr.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/env.log"
nproc | tee -a "$OUT/env.log"

part tests && echo "== GPU tests" && timeout 180 python3 -m pytest tests/test_gpu.py tests/test_model.py -q -p no:cacheprovider -o addopts="-ra --durations=8" 2>&1 | tee "$OUT/tests.log"

part model && echo "== model: xclimax vs official" && timeout 240 python3 benchmarks/bench_model.py --official .gpu --device cuda --configs small,default \
  --batch-small 64 --batch-default 16 --rounds 5 --inner 10 --warmup 3 --bf16 2>&1 | tee "$OUT/bench_model.log"

part pipeline && echo "== pipeline vs model training on the GPU" && timeout 150 python3 benchmarks/bench_pipeline.py --device cuda --times 512 --batches 60 --model-steps 30 --pretrain-steps 60 2>&1 | tee "$OUT/bench_pipeline.log"

part run_all && echo "== run_all: every performance figure in one table (MFU, e2e vs bare step, forecast overhead, memory, rollout, bf16/fp16)"
# the official module too when .gpu/climax is there; MFU against the H200's dense bf16 peak (989 TFLOP/s)
[ -d .gpu/climax ] && export XCLIMAX_OFFICIAL_SRC=$PWD/.gpu
part run_all && timeout 420 python3 benchmarks/run_all.py --device cuda --big --compile --rounds 3 --inner 10 --batch-gpu 64 --e2e-batch 16 --e2e-steps 200 \
  --peak-tflops 989 --only flops,e2e,forecast,memory,rollout,precision,model --json "$OUT/run_all.json" 2>&1 | tee "$OUT/run_all.log"
