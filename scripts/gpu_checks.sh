#!/usr/bin/env bash
# The GPU checks, in one go, for a machine with a CUDA GPU (stages run in order; a failed stage is logged and
# the next one still runs). Usage: scripts/gpu_checks.sh OUT_DIR [STAGE ...]
#   env       GPU, driver, torch and timm versions
#   exact     deploy form == training form on the GPU in fp32 (scripts/check_deploy.py)
#   bench     PATNet against FasterNet (T0, T2, S), eager deploy form: fp32 NCHW, AMP fp16 and bf16
#             channels-last, batch 32 and 256 (`patnet bench --no-cpu --gpu`)
#   train     training throughput PATNet-T0 / FasterNet-T0 and T2 / T2 on the GPU (scripts/train_throughput.py),
#             then `patnet train` on the GPU: AMP channels-last, resume, eval, and DDP (torchrun, nccl)
#   compile   the bench's torch.compile regime for T2 at batch 256, fp32 and AMP bf16
#   ab        the MLP's products as cuDNN 1x1 convs against cuBLAS matrix products (scripts/ab_onednn.py)
#   profile   GPU time per block and operator type, T2 against FasterNet-T2 (scripts/profile_blocks.py)
# Default stages: env exact bench train. Fashion-MNIST is read from $FASHION_MNIST_DIR (default Debian's).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_checks.sh OUT_DIR [STAGE ...]}
shift
stages=${*:-env exact bench train}
data=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

stage() {  # stage NAME SECONDS COMMAND...: run it under a time limit, log it, report its exit status
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $* ($(date -u +%H:%M:%S))"
    timeout "$limit" "$@" 2>&1 | tee -a "$out/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]}"
}

for s in $stages; do
    case $s in
    env)
        stage env 60 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
        stage env 60 "$python" -c "import torch, timm, patnet; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'timm', timm.__version__, torch.cuda.get_device_name())" ;;
    exact)
        stage exact 300 "$python" scripts/check_deploy.py --device cuda ;;
    bench)
        stage bench 420 "$python" -m patnet.cli bench patnet_t0 fasternet_t0 patnet_t2 fasternet_t2 patnet_s \
            fasternet_s --no-cpu --gpu --forms deploy --dtype fp32 fp16 bf16 --gpu-batch 32 256 --no-progress --out-dir "$out/gpu" ;;
    train)
        for args in "--img-size 64 -b 128" "--img-size 224 -b 256"; do
            for precision in fp32 bf16; do
                # shellcheck disable=SC2086
                stage train 120 "$python" scripts/train_throughput.py --device cuda --data-dir "$data" $args \
                    --precision "$precision" --models patnet_t0 fasternet_t0 patnet_t2 fasternet_t2
            done
        done
        run=$out/train-run
        common=(--preset quick --data-dir "$data" --device cuda -j 6)
        stage train 180 "$python" -m patnet.cli train "${common[@]}" --epochs 1 --amp --channels-last --output "$run"
        stage train 180 "$python" -m patnet.cli train --resume "$run" --epochs 2
        stage train 120 "$python" -m patnet.cli eval --checkpoint "$run/best" --data-dir "$data" --device cuda --output "$run/eval"
        stage train 240 "$python" -m torch.distributed.run --standalone --nproc_per_node=1 -m patnet.cli train \
            "${common[@]}" --epochs 1 --output "$out/train-ddp" ;;
    compile)
        stage compile 420 "$python" -m patnet.cli bench patnet_t2 fasternet_t2 --no-cpu --gpu --runtime compile --dtype fp32 \
            --amp-dtype bfloat16 --gpu-batch 256 --no-progress --out-dir "$out/gpu-compile" ;;
    ab)
        for case in "fp32 256" "bf16 256" "bf16 32"; do
            read -r dtype batch <<<"$case"
            stage ab 70 "$python" scripts/ab_onednn.py --device cuda --dtype "$dtype" --batch "$batch" --iters 50 \
                --cases t0 t2 s
        done ;;
    profile)
        stage profile 100 "$python" scripts/profile_blocks.py --device cuda --out "$out" ;;
    *) echo "unknown stage $s (env, exact, bench, train, compile, ab, profile)"; exit 2 ;;
    esac
done
