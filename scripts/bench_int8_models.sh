#!/usr/bin/env bash
# qcompile int8 against OpenVINO int8 and ONNX Runtime int8 (and both fp32 runtimes) on
# ResNet-50, MobileNetV2 and the BERT block, one interleaved scripts/bench_compare.py run per
# model, ratios to OpenVINO int8 on the NNCF-quantized model.
#
#   python ../shared/bench/make_models.py MODELS          # the fp32 benchmark models
#   scripts/bench_int8_models.sh MODELS WORK [ROUNDS]     # quantize, build, measure
#   TARGET=avx2 scripts/bench_int8_models.sh MODELS WORK2 # another x86 target of this CPU
#
# TARGET (default host) is the qcompile target of `quantize` and `build`. When it is not what
# the host resolves to, or the CPU has AMX, an extra case runs OpenVINO with oneDNN capped
# at the same ISA (ONEDNN_MAX_CPU_ISA: avx2 -> AVX2, avx512 -> AVX512_CORE, avx512-vnni ->
# AVX512_CORE_VNNI), so the comparison is also made instruction set for instruction set.
#
# WORK receives (skipped when present): <m>_ort.onnx / <m>_nncf.onnx (scripts/make_lpt_models.py:
# ORT quantize_static, nncf.quantize), <m>_qc.onnx (qcompile quantize --target host: its own
# PTQ, FakeQuantize), the builds b_<m>_{qc,nncf}[_fm] (qcompile build --target host; _fm: with
# --fast-math), and cmp_<m>.json. Cases:
#   qc-int8-own-ptq[-fm]     qcompile build of qcompile's PTQ model (the product's flow)
#   qc-int8-nncf-model[-fm]  qcompile build of the NNCF model (same model as ov-int8-nncf-model)
#   ov-int8-nncf-model       OpenVINO CPU on the NNCF model (the baseline)
#   ov-int8-own-ptq          OpenVINO CPU on qcompile's FakeQuantize model
#   ort-int8, ort-fp32, ov-fp32 (INFERENCE_PRECISION_HINT=f32)
#   ov-int8-nncf-isa         OpenVINO on the NNCF model with oneDNN capped at TARGET's ISA
#                            (see above; on an AMX CPU its default kernels are AMX)
set -euo pipefail
M=$(realpath "$1"); W=$(realpath -m "$2"); ROUNDS=${3:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
TARGET=${TARGET:-host}
HOST=$(python -c "from qcompile import targets; print(targets.detect_host().name)")
[ "$TARGET" = host ] && TARGET=$HOST
case "$TARGET" in
  avx2) ISA=AVX2 ;; avx512) ISA=AVX512_CORE ;; avx512-vnni) ISA=AVX512_CORE_VNNI ;; *) ISA= ;;
esac
CAP=
if [ -n "$ISA" ] && { [ "$TARGET" != "$HOST" ] || grep -q amx_int8 /proc/cpuinfo; }; then CAP=$ISA; fi
export OV_TELEMETRY_DISABLE=1
mkdir -p "$W"
MODELS=(resnet50 mobilenetv2 bert_block)
for m in "${MODELS[@]}"; do
  [ -f "$W/${m}_ort.onnx" ] && [ -f "$W/${m}_nncf.onnx" ] || \
    python "$HERE/make_lpt_models.py" --models "$M" --out "$W" --only "$m"
  if [ ! -f "$W/${m}_qc.onnx" ]; then
    python - "$M/$m.onnx" "$W/${m}_calib.npy" <<'EOF'
import sys, numpy as np, onnx
m = onnx.load(sys.argv[1], load_external_data=False)
dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
np.save(sys.argv[2], np.random.default_rng(7).standard_normal([32] + dims[1:]).astype(np.float32))
EOF
    qcompile quantize "$M/$m.onnx" --data "$W/${m}_calib.npy" --subset-size 32 --target "$TARGET" \
      -o "$W/${m}_qc.onnx"
  fi
  for src in qc nncf; do
    [ -f "$W/b_${m}_${src}/model.so" ] || qcompile build "$W/${m}_${src}.onnx" --target "$TARGET" -o "$W/b_${m}_${src}"
    if [ "$m" = bert_block ]; then
      [ -f "$W/b_${m}_${src}_fm/model.so" ] || \
        qcompile build "$W/${m}_${src}.onnx" --target "$TARGET" --fast-math -o "$W/b_${m}_${src}_fm"
    fi
  done
done
for m in "${MODELS[@]}"; do
  echo "=== $m"
  fm=()
  if [ -n "$CAP" ]; then
    fm+=(--case "ov-int8-nncf-isa=ov@$CAP:$W/${m}_nncf.onnx")
  fi
  if [ "$m" = bert_block ]; then
    fm+=(--case "qc-int8-own-ptq-fm=qcompile:$W/b_${m}_qc_fm" --case "qc-int8-nncf-model-fm=qcompile:$W/b_${m}_nncf_fm")
  fi
  python "$HERE/bench_compare.py" "${fm[@]}" \
    --case "qc-int8-own-ptq=qcompile:$W/b_${m}_qc" --case "qc-int8-nncf-model=qcompile:$W/b_${m}_nncf" \
    --case "ov-int8-nncf-model=ov:$W/${m}_nncf.onnx" --case "ov-int8-own-ptq=ov:$W/${m}_qc.onnx" \
    --case "ort-int8=ort:$W/${m}_ort.onnx" --case "ort-fp32=ort:$M/$m.onnx" \
    --case "ov-fp32=ov-f32:$M/$m.onnx" --baseline ov-int8-nncf-model --rounds "$ROUNDS" \
    --iters 15 --json "$W/cmp_$m.json" 2>&1 | grep -v "W:onnxruntime"
done
