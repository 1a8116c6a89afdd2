// libFuzzer target for the safetensors loader: any bytes must give tensors or a voxgrad::Error, never
// a crash, a sanitizer report or an allocation the input cannot back. Built without libFuzzer
// it is a replay program (tests/fuzz/replay_main.cpp): `safetensors_fuzz_replay FILE_OR_DIR...`.
// Seeds: tests/fuzz/corpus_safetensors (make_safetensors_seeds.py).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/error.h"
#include "tests/fuzz/fuzz_files.h"

namespace {

using namespace voxgrad;

// The network the seeds are shaped for: weight (2, 3) and bias (2) parameters, a running_mean (2) buffer.
class Tiny : public Module {
 public:
  Tiny() {
    register_parameter("weight", zeros({2, 3}));
    register_parameter("bias", zeros({2}));
    register_buffer("running_mean", zeros({2}));
  }
  Tensor forward(const Tensor& x) override { return x; }
};

// The loader reads files only: each input becomes one file.
const std::string& input_path() {
  static const std::string path = fuzz::scratch_dir("safetensors") + "/input.safetensors";
  return path;
}

void write_input(std::span<const std::byte> bytes) { fuzz::write_file(input_path(), bytes); }

// Where use() leaves its sum, so that the compiler keeps the reads.
volatile unsigned g_sink = 0;

// Every byte of every tensor read, so that a tensor claiming memory it does not own shows up here.
void use(const SafeTensors& file) {
  unsigned sum = 0;
  for (const auto& [name, t] : file.tensors) {
    const auto* p = static_cast<const unsigned char*>(t.raw_data());
    for (std::size_t i = 0; i < t.nbytes(); ++i) sum += p[i];
    sum += static_cast<unsigned>(shape_numel(t.shape()) + static_cast<std::int64_t>(name.size()));
  }
  for (const auto& [k, v] : file.metadata) sum += static_cast<unsigned>(k.size() + v.size());
  g_sink = g_sink + sum;
}

void run_one(std::span<const std::byte> bytes) {
  // The loader's warnings (no checksum, all zeros) would flood the output; sanitizers and
  // libFuzzer write to the descriptor, not through std::cerr.
  static const bool quiet = [] {
    std::cerr.rdbuf(nullptr);
    return true;
  }();
  (void)quiet;
  write_input(bytes);
  const std::string& path = input_path();
  try {
    use(load_safetensors(path, Device::cpu(), NonFinite::allow));
  } catch (const Error&) {
  }
  try {
    Sequential net({std::make_shared<Tiny>()});
    load_model(path, net, /*strict=*/false);
  } catch (const Error&) {
  }
  try {
    Sequential net({std::make_shared<Tiny>()});
    SGD optimizer(net.named_parameters(), {.lr = 0.01, .momentum = 0.9});
    (void)load_training_checkpoint(path, net, optimizer);
  } catch (const Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  run_one(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size));
  return 0;
}
