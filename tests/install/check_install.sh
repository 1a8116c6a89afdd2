#!/usr/bin/env bash
# The installed package, checked the way a user meets it: `cmake --install BUILD --prefix P`, the
# tree moved elsewhere (it must be relocatable), then
#   - bin/voxgrad runs with an empty environment and, like lib/libvoxgrad.so, needs no cuDNN and no
#     CUDA runtime library (NEEDED entries); the library has a SONAME and exports only vg_* and voxgrad::;
#   - every installed header compiles on its own with a plain compiler and includes no CUDA, cuDNN,
#     CLI11 or nlohmann header;
#   - examples/ builds through find_package and through pkg-config, and both examples write labels
#     byte-identical to `voxgrad predict`'s; tests/install/c_api_check.c checks the C API's failures;
#   - an nnU-Net model folder and its `voxgrad convert`ed form give the examples and predict one answer.
# Usage: check_install.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$1"
source="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() {
  echo "check_install: $*" >&2
  exit 1
}

cmake --install "$build" --prefix "$work/staged" >/dev/null
mv "$work/staged" "$work/prefix"  # relocated: nothing may point at the install-time place
prefix="$work/prefix"

# ---- the tree ----
for f in bin/voxgrad lib/libvoxgrad.so include/voxgrad/voxgrad.h include/voxgrad/predictor.h \
  include/voxgrad/trainer.h include/voxgrad/engine/tensor.h lib/cmake/voxgrad/voxgrad-config.cmake \
  lib/pkgconfig/voxgrad.pc; do
  [[ -e "$prefix/$f" ]] || fail "$f is not installed"
done
soname="$(readelf -d "$prefix/lib/libvoxgrad.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
[[ "$soname" =~ ^libvoxgrad\.so\.[0-9]+$ ]] || fail "libvoxgrad.so has SONAME '$soname'"
[[ -e "$prefix/lib/$soname" ]] || fail "$soname is not installed"

# ---- dynamic dependencies: never cuDNN or the CUDA runtime ----
for f in bin/voxgrad lib/libvoxgrad.so; do
  needed="$(readelf -d "$prefix/$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
  [[ -n "$needed" ]] || fail "$f: no NEEDED entries read"
  if grep -Ei 'cudnn|cudart' <<<"$needed"; then fail "$f needs the libraries above"; fi
done

# ---- exported symbols: the public API only ----
exported="$(nm -D --defined-only "$prefix/lib/libvoxgrad.so" | awk '{print $3}' | sed 's/@.*//' | c++filt)"
[[ $(wc -l <<<"$exported") -gt 100 ]] || fail "libvoxgrad.so exports almost nothing"
grep -qx 'vg_predictor_open' <<<"$exported" || fail "vg_predictor_open is not exported"
grep -q '^voxgrad::Predictor::Predictor(' <<<"$exported" || fail "voxgrad::Predictor is not exported"
# The API is vg_* and what names voxgrad:: (instances of std templates over voxgrad types
# included); nothing of the pipeline's internals (voxgrad::pipeline::...) as a symbol's own name.
strays="$(grep -Ev '^vg_|^VOXGRAD_[0-9]+$|voxgrad::' <<<"$exported" || true)"
[[ -z "$strays" ]] || fail "libvoxgrad.so exports more than its API, e.g. $(head -3 <<<"$strays")"
internal="$(grep -E '^([a-z ]+ for )?voxgrad::pipeline::|^[^(<]* voxgrad::pipeline::' <<<"$exported" || true)"
[[ -z "$internal" ]] || fail "libvoxgrad.so exports pipeline internals, e.g. $(head -3 <<<"$internal")"

# ---- headers: self-contained, plain C / C++ ----
if grep -rEn '#include *[<"](cuda|cudnn|cub/|CLI/|nlohmann/)' "$prefix/include"; then
  fail "installed headers include the headers above"
fi
cc -std=c99 -Wall -Werror -fsyntax-only -I"$prefix/include" -x c - <<<'#include <voxgrad/voxgrad.h>' ||
  fail "voxgrad.h is not plain C"
while IFS= read -r header; do
  c++ -std=c++20 -fsyntax-only -I"$prefix/include" -x c++ - <<<"#include <voxgrad/${header#"$prefix/include/voxgrad/"}>" ||
    fail "$header does not compile on its own"
done < <(find "$prefix/include/voxgrad" -name '*.h' | sort)

# ---- a model and voxgrad predict's labels, with the installed binary and no environment ----
run() { env -i "$prefix/bin/voxgrad" "$@"; }
run synth --out "$work/data" --cases 2 --test-cases 1 --size 16 --classes 2 >/dev/null 2>&1 || fail "synth failed"
run train --data "$work/data" --out "$work/run" --device cpu --epochs 1 --iters-per-epoch 2 --batch-size 1 \
  --patch 16 --base 4 --levels 2 >/dev/null 2>"$work/train.log" || fail "train failed: $(tail -3 "$work/train.log")"
image="$(find "$work/data/imagesTs" -name '*_0000.nii.gz' | sort | head -1)"
case_id="$(basename "$image" _0000.nii.gz)"
run predict --device cpu --model "$work/run" --input "$image" --out "$work/predict" >/dev/null 2>&1 ||
  fail "voxgrad predict failed"
expected="$work/predict/$case_id.nii.gz"
[[ -s "$expected" ]] || fail "voxgrad predict wrote no $expected"

same_as_predict() {  # NAME FILE
  cmp -s "$expected" "$2" || fail "$1 wrote labels that differ from voxgrad predict's"
}

# ---- the examples through find_package ----
cmake -S "$source/examples" -B "$work/examples" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
  >"$work/examples.log" 2>&1 || fail "configuring examples/ failed: $(tail -5 "$work/examples.log")"
cmake --build "$work/examples" >>"$work/examples.log" 2>&1 || fail "building examples/ failed: $(tail -5 "$work/examples.log")"
"$work/examples/segment" "$work/run" "$work/c.nii.gz" "$image" || fail "segment (find_package) failed"
same_as_predict "segment (find_package)" "$work/c.nii.gz"
"$work/examples/segment_cpp" "$work/run" "$work/cpp.nii.gz" "$image" 2>/dev/null || fail "segment_cpp (find_package) failed"
same_as_predict "segment_cpp (find_package)" "$work/cpp.nii.gz"

# ---- the examples and the C API check through pkg-config ----
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
# shellcheck disable=SC2046
cc -o "$work/segment_pc" "$source/examples/segment.c" $(pkg-config --cflags --libs voxgrad) || fail "cc with pkg-config failed"
# shellcheck disable=SC2046
c++ -std=c++20 -o "$work/segment_cpp_pc" "$source/examples/segment.cpp" $(pkg-config --cflags --libs voxgrad) ||
  fail "c++ with pkg-config failed"
env -i "$work/segment_pc" "$work/run" "$work/c_pc.nii.gz" "$image" || fail "segment (pkg-config) failed"
same_as_predict "segment (pkg-config)" "$work/c_pc.nii.gz"
env -i "$work/segment_cpp_pc" "$work/run" "$work/cpp_pc.nii.gz" "$image" 2>/dev/null || fail "segment_cpp (pkg-config) failed"
same_as_predict "segment_cpp (pkg-config)" "$work/cpp_pc.nii.gz"
# shellcheck disable=SC2046
cc -std=c99 -Wall -o "$work/c_api_check" "$source/tests/install/c_api_check.c" $(pkg-config --cflags --libs voxgrad) -lm ||
  fail "building c_api_check failed"
mkdir "$work/c_api"
env -i "$work/c_api_check" "$work/run" "$work/c_api" || fail "c_api_check failed"

# ---- an nnU-Net model, as it is and converted: predict, the C and C++ examples give one answer ----
nnunet_model="$source/tests/data/nnunet/models/Dataset903_CTBorder/nnUNetTrainer__nnUNetPlans__3d_fullres"
nnunet_image="$source/tests/data/nnunet/inputs/Dataset903_CTBorder/case_other_0000.nii.gz"
run predict --device cpu --model "$nnunet_model" --input "$nnunet_image" --out "$work/nnunet" >/dev/null 2>&1 ||
  fail "voxgrad predict on the nnU-Net model failed"
expected="$work/nnunet/case_other.nii.gz"
run convert --model "$nnunet_model" --out "$work/converted" >/dev/null 2>"$work/convert.log" ||
  fail "voxgrad convert failed: $(tail -3 "$work/convert.log")"
run predict --device cpu --model "$work/converted" --input "$nnunet_image" --out "$work/nnunet_converted" \
  >/dev/null 2>&1 || fail "voxgrad predict on the converted model failed"
same_as_predict "predict (converted model)" "$work/nnunet_converted/case_other.nii.gz"
for model in "$nnunet_model" "$work/converted"; do
  env -i "$work/segment_pc" "$model" "$work/nnunet_c.nii.gz" "$nnunet_image" || fail "segment on $model failed"
  same_as_predict "segment (C API, $(basename "$model"))" "$work/nnunet_c.nii.gz"
  env -i "$work/segment_cpp_pc" "$model" "$work/nnunet_cpp.nii.gz" "$nnunet_image" 2>/dev/null ||
    fail "segment_cpp on $model failed"
  same_as_predict "segment_cpp ($(basename "$model"))" "$work/nnunet_cpp.nii.gz"
done
echo "check_install: the installed package passed every check"
