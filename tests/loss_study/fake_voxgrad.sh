#!/usr/bin/env bash
# A stand-in for the voxgrad binary that tools/loss-study drives: each subcommand writes the files
# the real one would (empty or tiny) in milliseconds and appends its name and arguments to
# $FAKE_CALLS, so that tests/loss_study/records.sh can count what the script trained. Its scores
# are $FAKE_SCORE (a training that does not repeat itself) and its data $FAKE_DATA_VARIANT.
set -euo pipefail
command=$1
shift
echo "$command $*" >>"$FAKE_CALLS"
out="" init_from=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --init-from) init_from=$2; shift 2 ;;
    *) shift ;;
  esac
done
case $command in
  synth)
    mkdir -p "$out/imagesTr" "$out/labelsTr" "$out/imagesTs" "$out/labelsTs"
    echo "{\"variant\":\"${FAKE_DATA_VARIANT:-a}\"}" >"$out/dataset.json"
    for c in 016 017; do
      echo image >"$out/imagesTs/synth_${c}_0000.nii.gz"
      echo label >"$out/labelsTs/synth_$c.nii.gz"
    done
    ;;
  train)
    if [[ -n $init_from && ! -f $init_from/checkpoint_latest.safetensors ]]; then
      echo "voxgrad: error: --init-from $init_from: $init_from/checkpoint_latest.safetensors is missing" >&2
      exit 2
    fi
    mkdir -p "$out"
    printf 'epoch,lr,train_loss,val_dice,seconds\n1,0.01,0.9,0.5,1\n' >"$out/log.csv"
    echo weights >"$out/checkpoint_latest.safetensors"
    ;;
  predict)
    mkdir -p "$out"
    echo p >"$out/synth_016_probabilities.nii.gz"
    ;;
  eval)
    mkdir -p "$(dirname "$out")"
    echo '{"mean":{}}' >"$out"
    printf 'case,class,dice,jaccard\nsynth_016,1,%s,0.5\n' "${FAKE_SCORE:-0.9}" >"${out%.json}.csv"
    echo 'case,class,component,voxels' >"${out%.json}_components.csv"
    ;;
  grad)
    echo g >"$out"
    echo '{"loss":1}'
    ;;
  study) echo '{}' ;;
  *) echo "fake voxgrad: no subcommand '$command'" >&2; exit 2 ;;
esac
