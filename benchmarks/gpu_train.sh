#!/usr/bin/env bash
# Train a default-model candidate on a GPU machine (issue 17): the seed's DCGAN at gf = df = 64 on the
# training shards copied there, for as many epochs as fit in TRAIN_S seconds, then its encoder, then a
# bf16 export (validated against PyTorch). Results in $OUT: the three graphs (step.onnx split in 15 MB
# parts: a device call brings back files of at most 16 MiB), validation.json, the logs. Nothing from
# the network: the repository root is put on PYTHONPATH as the `gcomp` package.
#
#   bash benchmarks/gpu_train.sh DATA_DIR                      # on the GPU machine
#   GF=8 EPOCHS=0.05 ENC_STEPS=5 TRAIN_S=120 bash benchmarks/gpu_train.sh DATA_DIR   # a CPU dry run
#
# Then, here: cat step.onnx.part-* > step.onnx, and `gcomp eval val.tar --model DIR` chooses (README).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${1:?usage: gpu_train.sh DATA_DIR (with train-*.tar)}
OUT=${OUT:-$ROOT/gpu_train_out}
GF=${GF:-64} EPOCHS=${EPOCHS:-25} ENC_STEPS=${ENC_STEPS:-3000} TRAIN_S=${TRAIN_S:-240}  # 25 epochs of 3 shards: ~110 s on an H200
mkdir -p "$OUT"
W=$(mktemp -d)
mkdir -p "$W/pp" && ln -s "$ROOT" "$W/pp/gcomp"
export PYTHONPATH="$W/pp${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
shards=$(ls "$DATA"/train-*.tar)
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/gpu_train.log"; }
log "shards: $(echo $shards | wc -w); gf=df=$GF; epochs $EPOCHS within ${TRAIN_S}s"
# A checkpoint is written every 200 steps: a run cut by the time box keeps its last one.
timeout --signal=TERM --kill-after=15 "$TRAIN_S" "$PY" -m gcomp train $shards --out "$W/run" --gf "$GF" --df "$GF" \
    --epochs "$EPOCHS" --amp --save-every 200 --sample-every 100000 --workers 6 > "$W/train.log" 2>&1
log "train exit $? ($(tail -n 2 "$W/train.log" | tr '\n' ' ' | cut -c1-300))"
[ -f "$W/run/checkpoint.pt" ] || { log "no checkpoint: stop"; exit 1; }
"$PY" -m gcomp export "$W/run" --out "$W/exp" --precision bf16 > "$W/export.log" 2>&1
log "export exit $? ($(tail -n 1 "$W/export.log"))"
# The graphs go to $OUT before the encoder trains, so a time-out there still brings them back.
cp "$W/exp/generator.onnx" "$W/exp/validation.json" "$OUT/" 2>/dev/null
split -b 15M "$W/exp/step.onnx" "$OUT/step.onnx.part-"
timeout --signal=TERM --kill-after=15 "${ENC_S:-120}" "$PY" -m gcomp train-encoder "$W/run" $shards --out "$W/exp" \
    --steps "$ENC_STEPS" --precision bf16 > "$W/encoder.log" 2>&1
log "encoder exit $? ($(tail -n 1 "$W/encoder.log"))"
cp "$W/exp/encoder.onnx" "$OUT/" 2>/dev/null
"$PY" - "$W/run/checkpoint.pt" >> "$OUT/gpu_train.log" 2>&1 <<'PY'
import sys, torch
ck = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
print("checkpoint step", ck.get("step"), "config", ck.get("config"))
PY
for f in train export encoder; do { echo "== $f.log"; tail -n 40 "$W/$f.log"; } >> "$OUT/gpu_train.log"; done
ls -la "$OUT" | tee -a "$OUT/gpu_train.log"  # at most 8 files come back: 3 graphs (step in parts), validation, this log
