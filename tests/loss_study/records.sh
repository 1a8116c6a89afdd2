#!/usr/bin/env bash
# tools/loss-study --records on a fake voxgrad (fake_voxgrad.sh): a study whose work folder is lost
# is rebuilt from its records without training again, whatever the folder's name; runs finished
# before --records are recorded; a cross-entropy run restored without weights is trained again
# before its fine-tuning arms, and when it does not repeat its record the seed's fine-tuning runs
# are made again; data that differ from the records' are refused; the device is not part of a
# run's identity; work folders of the former format (absolute commands) continue; --preset runs
# one preset. Usage: records.sh SOURCE_DIR
set -euo pipefail
source_dir=$1
study="$source_dir/tools/loss-study"
tmp="$(mktemp -d)"
trap '[[ -n ${KEEP:-} ]] || rm -rf "$tmp"' EXIT
export VOXGRAD_BINARY="$source_dir/tests/loss_study/fake_voxgrad.sh" FAKE_CALLS="$tmp/calls"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
trains() { grep -c '^train ' "$FAKE_CALLS" || true; }
fresh_calls() { : >"$FAKE_CALLS"; }

# The quick tier from scratch: 15 runs plus the probe, every run recorded.
fresh_calls
"$study" --tier quick --work "$tmp/w1" --records "$tmp/rec" 2>"$tmp/log1" || fail "quick tier: $(tail -3 "$tmp/log1")"
[[ $(trains) == 16 ]] || fail "quick tier trained $(trains) networks, not 15 runs and the probe"
[[ $(find "$tmp/rec/small-structures" -name finished.json | wc -l) == 15 ]] || fail "not every run was recorded"
[[ -f $tmp/rec/small-structures/dataset.sha256 ]] || fail "no dataset checksum recorded"
for file in command.txt finished.json eval/summary.csv eval/summary.json eval/summary_components.csv run/log.csv; do
  [[ -f $tmp/rec/small-structures/dice/seed1/$file ]] || fail "the record of dice seed 1 lacks $file"
done
[[ ! -e $tmp/rec/small-structures/dice/seed1/run/checkpoint_latest.safetensors ]] || fail "weights were recorded"
grep -q -- "--data WORK/small-structures/dataset" "$tmp/rec/small-structures/dice/seed1/command.txt" ||
  fail "the recorded command names the work folder: $(cat "$tmp/rec/small-structures/dice/seed1/command.txt")"

# The work folder lost: a new one (a name with a space and glob characters, on another device) is
# rebuilt from the records; only the probe is trained.
w2="$tmp/g w[1]*"
fresh_calls
"$study" --tier quick --work "$w2" --records "$tmp/rec" --device cpu 2>"$tmp/log2" || fail "restore: $(tail -3 "$tmp/log2")"
[[ $(trains) == 1 ]] || fail "a restored study trained $(trains) networks, not just the probe"
[[ $(grep -c 'done before, skipped' "$tmp/log2") == 15 ]] || fail "not every run was restored"
cmp -s "$tmp/rec/small-structures/lovasz/seed2/eval/summary.json" \
  "$w2/small-structures/lovasz/seed2/eval/summary.json" || fail "a restored result differs from its record"

# Runs finished before --records was given are recorded when it is.
fresh_calls
"$study" --tier quick --work "$tmp/w1" --records "$tmp/rec-late" 2>"$tmp/log-late" || fail "late: $(tail -3 "$tmp/log-late")"
[[ $(trains) == 0 ]] || fail "runs finished in the work folder were trained again"
[[ $(find "$tmp/rec-late/small-structures" -name finished.json | wc -l) == 15 ]] || fail "finished runs were not recorded"

# A work folder of the former format (commands with its own paths and the device) continues.
for f in $(find "$tmp/w1" -name command.txt); do
  sed -i "s|WORK|$tmp/w1|g; s|\$| --device cpu|" "$f"
done
fresh_calls
"$study" --tier quick --work "$tmp/w1" --device cpu 2>"$tmp/log-old" || fail "former format: $(tail -3 "$tmp/log-old")"
[[ $(trains) == 0 ]] || fail "a work folder of the former format was trained again"

# Fine-tuning needs cross-entropy's weights: seed 0's fine-tuning records lost, its cross-entropy
# run is trained again (and re-recorded) before them; seed 1's are restored.
fresh_calls
"$study" --tier full --preset demo --work "$tmp/w3" --records "$tmp/rec" 2>"$tmp/log3" || fail "full: $(tail -3 "$tmp/log3")"
[[ $(trains) == 71 ]] || fail "the demo preset trained $(trains) networks, not 70 runs and the probe"
rm -rf "$tmp/rec/demo"/ce_*/seed0
ce_record="$(stat -c %i "$tmp/rec/demo/ce/seed0")"
fresh_calls
"$study" --tier full --preset demo --work "$tmp/w4" --records "$tmp/rec" 2>"$tmp/log4" || fail "refit: $(tail -3 "$tmp/log4")"
[[ $(grep -c -- '^train .* --out [^ ]*/demo/ce/seed0/run ' "$FAKE_CALLS") == 1 ]] || fail "cross-entropy seed 0 was not trained again"
[[ $(trains) == 5 ]] || fail "trained $(trains) networks, not the probe, ce seed 0 and its 3 fine-tuning arms"
grep -q "demo ce seed 0 has results but no weights to fine-tune from: trained again" "$tmp/log4" ||
  fail "the retraining was not announced"
[[ -f $tmp/rec/demo/ce_lovasz/seed0/finished.json ]] || fail "the new fine-tuning runs were not recorded"
[[ $(stat -c %i "$tmp/rec/demo/ce/seed0") == "$ce_record" ]] || fail "a repeated cross-entropy run was recorded again"
! grep -q 'small-structures' "$FAKE_CALLS" || fail "--preset demo ran small-structures"

# Only one fine-tuning record of seed 1 lost, and cross-entropy trained again scores otherwise: its
# record is replaced and all three fine-tuning runs are made again from it.
rm -rf "$tmp/rec/demo/ce_jaccard/seed1"
fresh_calls
FAKE_SCORE=0.7 "$study" --tier full --preset demo --work "$tmp/w5" --records "$tmp/rec" 2>"$tmp/log5" ||
  fail "refit, other scores: $(tail -3 "$tmp/log5")"
[[ $(trains) == 5 ]] || fail "trained $(trains) networks, not the probe, ce seed 1 and its 3 fine-tuning arms"
grep -q "demo ce seed 1 trained again scores otherwise than its record" "$tmp/log5" || fail "the change was not announced"
for arm in ce ce_dice ce_jaccard ce_lovasz; do
  grep -q '0.7' "$tmp/rec/demo/$arm/seed1/eval/summary.csv" || fail "the record of $arm seed 1 is not the new run's"
done
grep -q '0.9' "$tmp/rec/demo/ce_dice/seed2/eval/summary.csv" || fail "another seed's record changed"

# Data regenerated differently are refused, naming the folder.
fresh_calls
if FAKE_DATA_VARIANT=b "$study" --tier quick --work "$tmp/w7" --records "$tmp/rec" 2>"$tmp/log7"; then
  fail "different data were accepted"
fi
grep -q "differs from the data the runs in $tmp/rec/small-structures were made on" "$tmp/log7" ||
  fail "the refusal does not say why: $(tail -2 "$tmp/log7")"
[[ $(trains) == 0 ]] || fail "runs were trained on different data"

# A preset the tier lacks is a usage error.
set +e
"$study" --tier quick --preset demo --work "$tmp/w6" 2>"$tmp/log6"
rc=$?
set -e
[[ $rc == 2 ]] && grep -q "the quick tier has no preset 'demo'" "$tmp/log6" || fail "--preset demo on quick: rc $rc"
echo "tools/loss-study --records: all checks passed"
