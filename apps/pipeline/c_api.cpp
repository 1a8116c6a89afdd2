// The C API (<voxgrad/voxgrad.h>) over voxgrad::Predictor: every call serialised by one lock,
// every failure caught at the boundary and kept as the calling thread's last error.
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "apps/pipeline/build_info.h"
#include "apps/pipeline/predictor.h"
#include "apps/pipeline/voxgrad.h"
#include "engine/error.h"
#include "engine/memory_budget.h"

struct vg_predictor {
  voxgrad::Predictor predictor;
};

namespace {

constexpr int kFailure = 1;
constexpr int kBadArgument = 2;

std::string& last_error() {
  thread_local std::string message;
  return message;
}

std::mutex& api_lock() {
  static std::mutex m;
  return m;
}

int fail(int code, const std::string& message) {
  last_error() = message;
  return code;
}

// Runs `body` under the lock; any exception becomes a return code and the thread's last error.
template <class Body>
int guarded(Body&& body) {
  try {
    std::lock_guard<std::mutex> lock(api_lock());
    body();
    return 0;
  } catch (const voxgrad::UsageError& e) {
    return fail(kBadArgument, e.what());
  } catch (const std::bad_alloc&) {
    return fail(kFailure, "out of memory");
  } catch (const std::exception& e) {
    return fail(kFailure, e.what());
  } catch (...) {
    return fail(kFailure, "unknown failure");
  }
}

}  // namespace

extern "C" {

const char* vg_version(void) { return voxgrad::pipeline::version(); }

const char* vg_last_error(void) { return last_error().c_str(); }

int vg_predictor_open(const char* model_dir, const char* device, vg_predictor** out) {
  if (out == nullptr) return fail(kBadArgument, "vg_predictor_open: out is NULL");
  *out = nullptr;
  if (model_dir == nullptr) return fail(kBadArgument, "vg_predictor_open: model_dir is NULL");
  const std::string device_name = device == nullptr ? "auto" : device;
  if (device_name != "cpu" && device_name != "cuda" && device_name != "auto")
    return fail(kBadArgument, "vg_predictor_open: device '" + device_name + "': choose cpu, cuda or auto");
  return guarded([&] {
    voxgrad::PredictorOptions options;
    options.device = device_name;
    *out = new vg_predictor{voxgrad::Predictor(model_dir, options)};
  });
}

int vg_predictor_classes(const vg_predictor* p) {
  if (p == nullptr) {
    fail(kBadArgument, "vg_predictor_classes: the predictor is NULL");
    return -1;
  }
  return p->predictor.classes();
}

int vg_predict_files(vg_predictor* p, const char* const* channel_paths, int channels, const char* out_path) {
  if (p == nullptr) return fail(kBadArgument, "vg_predict_files: the predictor is NULL");
  if (channel_paths == nullptr || channels < 1) return fail(kBadArgument, "vg_predict_files: no channel files given");
  if (out_path == nullptr) return fail(kBadArgument, "vg_predict_files: out_path is NULL");
  std::vector<std::string> files;
  for (int ch = 0; ch < channels; ++ch) {
    if (channel_paths[ch] == nullptr)
      return fail(kBadArgument, "vg_predict_files: channel path " + std::to_string(ch) + " is NULL");
    files.emplace_back(channel_paths[ch]);
  }
  return guarded([&] { p->predictor.predict_files(files, out_path); });
}

int vg_predict_volume(vg_predictor* p, const float* image, int channels, const int64_t shape_zyx[3],
                      const double spacing_zyx[3], uint8_t* labels) {
  if (p == nullptr) return fail(kBadArgument, "vg_predict_volume: the predictor is NULL");
  if (image == nullptr || labels == nullptr || shape_zyx == nullptr || spacing_zyx == nullptr)
    return fail(kBadArgument, "vg_predict_volume: image, shape, spacing and labels must not be NULL");
  if (channels != p->predictor.in_channels())
    return fail(kBadArgument, "vg_predict_volume: " + std::to_string(channels) + " channels given; the model takes " +
                                  std::to_string(p->predictor.in_channels()));
  for (int a = 0; a < 3; ++a)
    if (shape_zyx[a] < 1 || shape_zyx[a] > (int64_t{1} << 20))
      return fail(kBadArgument, "vg_predict_volume: shape[" + std::to_string(a) +
                                    "] = " + std::to_string(shape_zyx[a]) + " is not a size from 1 to 2^20");
  if (p->predictor.classes() > 256)
    return fail(kBadArgument, "vg_predict_volume: the model has " + std::to_string(p->predictor.classes()) +
                                  " labels, more than uint8 holds");
  return guarded([&] {
    const voxgrad::Shape shape{channels, shape_zyx[0], shape_zyx[1], shape_zyx[2]};
    voxgrad::memory::check_fits(
        voxgrad::memory::saturating_product({channels, shape_zyx[0], shape_zyx[1], shape_zyx[2], sizeof(float)}),
        "vg_predict_volume: the image");
    voxgrad::Tensor input = voxgrad::empty(shape);
    std::memcpy(input.data<float>(), image, static_cast<std::size_t>(input.numel()) * sizeof(float));
    const voxgrad::Tensor out =
        p->predictor.predict(input, {spacing_zyx[0], spacing_zyx[1], spacing_zyx[2]}).to(voxgrad::DType::UInt8);
    std::memcpy(labels, out.data<std::uint8_t>(), static_cast<std::size_t>(out.numel()));
  });
}

void vg_predictor_close(vg_predictor* p) {
  if (p == nullptr) return;
  std::lock_guard<std::mutex> lock(api_lock());
  delete p;
}

}  // extern "C"
