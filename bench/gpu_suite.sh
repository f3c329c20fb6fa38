#!/usr/bin/env bash
# The GPU figures in one go, for a CUDA machine: the step and inference benchmarks, time to
# quality, a one-process torchrun (NCCL) CycleGAN run through the CLI, then `mrict demo`
# until the time budget runs out. Usage: bash bench/gpu_suite.sh OUT_DIR [SECONDS]
# (default 500). Every log and table lands in OUT_DIR; run from the repository root with
# mrict importable (installed, or PYTHONPATH=src).
set -uo pipefail
out=${1:?usage: bash bench/gpu_suite.sh OUT_DIR [SECONDS]}
budget=${2:-500}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
step() { echo "== $* ($(left) s left)"; }

step machine
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1 | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$out/gpu.txt"

step "benchmarks: cyclegan, inference, segmentation"
timeout "$(left)" "$py" -m bench --only cyclegan,inference,segmentation --device cuda \
    --out "$out/RESULTS_gpu.md" --note "GPU suite" 2>&1 | tee "$out/bench.log"

step "benchmark: time_to_quality"
timeout "$(left)" "$py" -m bench --only time_to_quality --device cuda \
    --out "$out/RESULTS_gpu.md" --note "GPU suite" 2>&1 | tee -a "$out/bench.log"

step "torchrun, one process, NCCL: train-gan"
work=$(mktemp -d)
"$py" -m mrict.cli simulate "$work/data" --mri-patients 12 --ct-patients 12 --test-patients 0 \
    --val-patients 2 --slices-per-patient 4 --size 96 --format png --seed 0 >/dev/null 2>&1
timeout "$(left)" "$py" -m torch.distributed.run --standalone --nproc_per_node=1 -m mrict.cli \
    train-gan "$work/data" --out "$work/gan" --preset quick --iterations 60 --device cuda --seed 0 \
    2>&1 | tail -n 15 | tee "$out/torchrun.log"
ls "$work/gan" >>"$out/torchrun.log" 2>&1

step "mrict demo"
timeout "$(left)" "$py" -m mrict.cli demo --out "$work/demo" --seed 0 2>&1 | tee "$out/demo.log" | tail -n 40
for f in results.csv results.json; do
    [ -f "$work/demo/study/$f" ] && cp "$work/demo/study/$f" "$out/demo_$f"
done
step done
