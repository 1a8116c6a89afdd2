// voxgrad against nnU-Net v2 itself on the committed fixtures (tests/data/nnunet, made by nnU-Net's
// own planner, networks, trainer checkpoints and nnUNetPredictor; see its README): the network
// alone against PyTorch's logits, the preprocessing against nnU-Net's preprocessed data, the
// sliding-window logits, and `voxgrad predict` against nnUNetPredictor's segmentations and
// probabilities. Each comparison prints what it measured.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "apps/pipeline/nnunet_inference.h"
#include "engine/json.h"
#include "engine/ops.h"
#include "io/dataset.h"
#include "io/nifti.h"
#include "io/torch_checkpoint.h"
#include "tests/test_support.h"

namespace {

using voxgrad::test::max_abs;
using voxgrad::test::max_abs_diff;

namespace fs = std::filesystem;
using namespace voxgrad;
using namespace voxgrad::pipeline::nnunet;
using Json = nlohmann::json;

std::string fixtures() { return test::source_path("tests/data/nnunet"); }

Json manifest() {
  std::ifstream in(fixtures() + "/manifest.json");
  return Json::parse(in);
}

std::vector<std::string> model_keys() {
  std::vector<std::string> keys;
  try {
    const Json all = manifest();
    for (const Json& m : all["models"]) keys.push_back(m["key"]);
  } catch (const std::exception&) {
    keys.push_back("manifest_unreadable");  // the test then fails, naming the manifest
  }
  return keys;
}

// (model key, variant name) pairs.
std::vector<std::pair<std::string, std::string>> model_variants() {
  std::vector<std::pair<std::string, std::string>> out;
  try {
    const Json all = manifest();
    for (const Json& m : all["models"])
      for (const Json& v : m["variants"]) out.emplace_back(m["key"], v["name"]);
  } catch (const std::exception&) {
    out.emplace_back("manifest_unreadable", "");
  }
  return out;
}

Json model_entry(const std::string& key) {
  const Json all = manifest();
  for (const Json& m : all["models"])
    if (m["key"] == key) return m;
  ADD_FAILURE() << "no model " << key << " in " << fixtures() << "/manifest.json";
  return Json::object();
}

std::vector<double> values(const Tensor& t) { return t.to(DType::Float64).to_vector<double>(); }

io::PickleValue load(const std::string& relative) { return io::load_torch_checkpoint(fixtures() + "/" + relative); }

const Tensor& tensor_in(const io::PickleValue& dict, const std::string& key) {
  const io::PickleValue* v = dict.get(key);
  if (v == nullptr || !v->is(io::PickleValue::Kind::Tensor)) throw std::runtime_error("no tensor " + key);
  return v->tensor;
}

std::vector<std::int64_t> ints_in(const io::PickleValue& dict, const std::string& key) {
  std::vector<std::int64_t> out;
  for (const io::PickleValue& v : dict.get(key)->items()) out.push_back(v.integer);
  return out;
}

// The network as a 2-D configuration's PyTorch input is (N, C, H, W): voxgrad's is (N, C, 1, H, W).
Tensor as_network_input(const Tensor& x) {
  if (x.dim() == 5) return x;
  return reshape(x, {x.size(0), x.size(1), 1, x.size(2), x.size(3)});
}

class NnunetModel : public ::testing::TestWithParam<std::string> {};

TEST_P(NnunetModel, NetworkAloneMatchesPyTorch) {
  const Json entry = model_entry(GetParam());
  const io::PickleValue record = load("expected/" + GetParam() + "/network.pth");
  Inference inference(open_model_folder(fixtures() + "/" + entry["model_folder"].get<std::string>(), "0", "final"),
                      Device::cpu());
  NnunetNetwork& network = inference.network(0);
  const Tensor x = as_network_input(tensor_in(record, "input"));
  NoGradGuard no_grad;

  const std::vector<double> ref32 = values(tensor_in(record, "logits_float32"));
  const std::vector<double> got32 = values(network.forward(x.to(DType::Float32)));
  ASSERT_EQ(got32.size(), ref32.size());
  const double scale = max_abs(ref32);
  const double err32 = max_abs_diff(got32, ref32);
  EXPECT_LE(err32, 1e-3 * scale);

  network.to(DType::Float64);
  const std::vector<double> ref64 = values(tensor_in(record, "logits_float64"));
  const std::vector<double> got64 = values(network.forward(x.to(DType::Float64)));
  const double err64 = max_abs_diff(got64, ref64);
  EXPECT_LE(err64, 1e-9);
  std::printf("[ measured ] %s network: float64 max|diff| %.3g, float32 max|diff| %.3g (max|logit| %.3g)\n",
              GetParam().c_str(), err64, err32, scale);
}

// nnU-Net's own preprocessed data, crop and shapes for each case, from voxgrad's reading of the files.
TEST_P(NnunetModel, PreprocessingMatchesNnunet) {
  const Json entry = model_entry(GetParam());
  const std::string model_dir = fixtures() + "/" + entry["model_folder"].get<std::string>();
  Inference inference(open_model_folder(model_dir, "0", "final"), Device::cpu());
  const std::string expected = entry["variants"][0]["expected"];
  for (const Json& case_id : entry["cases"]) {
    const io::PickleValue record = load(expected + "/" + case_id.get<std::string>() + "_intermediates.pth");
    std::vector<io::Volume> channels;
    std::vector<std::string> names;
    for (int c = 0; c < inference.model().input_channels; ++c) {
      char suffix[32];
      std::snprintf(suffix, sizeof suffix, "_%04d.nii.gz", c);
      names.push_back(fixtures() + "/" + entry["inputs"].get<std::string>() + "/" + case_id.get<std::string>() +
                      suffix);
      channels.push_back(io::read_nifti(names.back()));
    }
    const PreprocessedCase p =
        inference.preprocess(read_case(channels, names, inference.model().image_reader_writer), names[0]);
    const std::vector<std::int64_t> before = ints_in(record, "shape_before_cropping");
    const std::vector<std::int64_t> after = ints_in(record, "shape_after_cropping_and_before_resampling");
    EXPECT_EQ(std::vector<std::int64_t>(p.shape_before_cropping.begin(), p.shape_before_cropping.end()), before);
    EXPECT_EQ(std::vector<std::int64_t>(p.shape_after_cropping.begin(), p.shape_after_cropping.end()), after);
    const io::PickleValue* bbox = record.get("bbox_used_for_cropping");
    for (int a = 0; a < 3; ++a) {
      EXPECT_EQ(p.box.begin[a], bbox->items()[a].items()[0].integer) << case_id << " axis " << a;
      EXPECT_EQ(p.box.end[a], bbox->items()[a].items()[1].integer) << case_id << " axis " << a;
    }
    const Tensor& ref = tensor_in(record, "data");
    ASSERT_EQ(p.data.shape(), ref.shape()) << case_id;
    const std::vector<double> r = values(ref);
    const double err = max_abs_diff(values(p.data), r);
    EXPECT_LE(err, 1e-4 * (1 + max_abs(r))) << case_id;
    std::printf("[ measured ] %s %s preprocessed: max|diff| %.3g (max|value| %.3g)\n", GetParam().c_str(),
                case_id.get<std::string>().c_str(), err, max_abs(r));
  }
}

// The sliding window over nnU-Net's own preprocessed data. With nnU-Net's float16 arithmetic the
// logits are nnU-Net's up to a few float16 steps (where the network's own float32 rounding differs
// from PyTorch's); with float32 sums they differ where tiles' corners overlap, where nnU-Net's
// float16 sums of tiny weights are coarse, and agree elsewhere.
TEST_P(NnunetModel, SlidingWindowLogitsMatchNnunet) {
  const Json entry = model_entry(GetParam());
  const Json& variant = entry["variants"][0];
  Inference inference(open_model_folder(fixtures() + "/" + entry["model_folder"].get<std::string>(), "",
                                        variant["checkpoint"] == "checkpoint_best.pth" ? "best" : "final"),
                      Device::cpu());
  const io::PickleValue record = load(variant["expected"].get<std::string>() + "/case_plan_intermediates.pth");
  const std::vector<double> ref = values(tensor_in(record, "logits"));
  const double scale = max_abs(ref);
  for (bool float16 : {true, false}) {
    InferenceSettings settings;
    settings.mirror = variant["mirroring"];
    settings.float16_like_nnunet = float16;
    const std::vector<double> got = values(inference.logits(tensor_in(record, "data"), settings));
    ASSERT_EQ(got.size(), ref.size());
    double sum = 0;
    for (std::size_t i = 0; i < got.size(); ++i) sum += std::abs(got[i] - ref[i]);
    const double err = max_abs_diff(got, ref), mean = sum / static_cast<double>(got.size());
    if (float16)  // float16 holds 11 significant bits: one step at the largest logit is scale / 1024
      EXPECT_LE(err, 4 * scale / 1024);
    else
      EXPECT_LE(mean, 0.01 * scale);
    std::printf("[ measured ] %s sliding window (%s sums): max|diff| %.3g, mean|diff| %.3g (max|logit| %.3g)\n",
                GetParam().c_str(), float16 ? "float16" : "float32", err, mean, scale);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, NnunetModel, ::testing::ValuesIn(model_keys()));

struct Agreement {
  double labels = 0;            // fraction of voxels with nnU-Net's label
  double confident_labels = 0;  // the same where nnU-Net's top two probabilities differ by > 0.05
  double mean_probability = 0;  // mean |p - p_nnunet|
  double max_probability = 0;
};

Agreement agreement(const io::Volume& seg, const io::Volume& ref_seg, const io::Volume& prob,
                    const io::Volume& ref_prob) {
  const Tensor a = seg.to_labels(), b = ref_seg.to_labels();
  const Tensor p = prob.to_float32(), q = ref_prob.to_float32();
  const std::int64_t n = a.numel();
  const std::int64_t k = q.numel() / n;
  const std::int32_t* la = a.data<std::int32_t>();
  const std::int32_t* lb = b.data<std::int32_t>();
  const float* pp = p.data<float>();
  const float* pq = q.data<float>();
  std::int64_t same = 0, confident = 0, confident_same = 0;
  double sum = 0, worst = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    same += la[i] == lb[i];
    float first = -1, second = -1;
    for (std::int64_t c = 0; c < k; ++c) {  // classes along the 4th NIfTI axis: the slowest in memory
      const float v = pq[c * n + i];
      if (v > first) {
        second = first;
        first = v;
      } else if (v > second) {
        second = v;
      }
      const double d = std::abs(static_cast<double>(pp[c * n + i]) - v);
      sum += d;
      worst = std::max(worst, d);
    }
    if (first - second > 0.05f) {
      ++confident;
      confident_same += la[i] == lb[i];
    }
  }
  Agreement r;
  r.labels = static_cast<double>(same) / n;
  r.confident_labels = confident == 0 ? 1.0 : static_cast<double>(confident_same) / confident;
  r.mean_probability = sum / static_cast<double>(n * k);
  r.max_probability = worst;
  return r;
}

class NnunetVariant : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

// `voxgrad predict` on one model variant and device against nnUNetPredictor's files.
void expect_predict_matches(const std::string& key, const std::string& variant_name, const std::string& device) {
  const Json entry = model_entry(key);
  Json variant;
  for (const Json& v : entry["variants"])
    if (v["name"] == variant_name) variant = v;
  ASSERT_TRUE(variant.is_object()) << key << "/" << variant_name;
  const std::string out = test::temp_dir("nnunet-predict") + "/out";
  std::string args = "predict --model " + fixtures() + "/" + entry["model_folder"].get<std::string>() + " --input " +
                     fixtures() + "/" + entry["inputs"].get<std::string>() + " --out " + out +
                     " --save-probabilities --device " + device;
  if (!variant["mirroring"].get<bool>()) args += " --disable-tta";
  if (variant["checkpoint"] == "checkpoint_best.pth") args += " --checkpoint best";
  const test::CommandResult r = test::run_voxgrad(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const Json& case_json : entry["cases"]) {
    const std::string id = case_json;
    const std::string expected = fixtures() + "/" + variant["expected"].get<std::string>() + "/" + id;
    const io::Volume seg = io::read_nifti(out + "/" + id + ".nii.gz");
    const io::Volume ref_seg = io::read_nifti(expected + ".nii.gz");
    ASSERT_EQ(seg.dims(), ref_seg.dims()) << id;
    EXPECT_TRUE(io::affines_close(seg.affine, ref_seg.affine, 1e-4)) << id << ": the input's geometry";
    const io::Volume prob = io::read_nifti(out + "/" + id + "_probabilities.nii.gz");
    const io::Volume ref_prob = io::read_nifti(expected + "_probabilities.nii.gz");
    ASSERT_EQ(prob.dims(), ref_prob.dims()) << id;
    const Agreement a = agreement(seg, ref_seg, prob, ref_prob);
    EXPECT_GE(a.labels, 0.995) << id;
    EXPECT_GE(a.confident_labels, 0.999) << id;
    EXPECT_LE(a.mean_probability, 2e-3) << id;
    std::printf("[ measured ] %s/%s %s (%s): labels %.4f%%, where confident %.4f%%, mean|dp| %.2g, max|dp| %.2g\n",
                key.c_str(), variant_name.c_str(), id.c_str(), device.c_str(), 100 * a.labels, 100 * a.confident_labels,
                a.mean_probability, a.max_probability);
  }
}

TEST_P(NnunetVariant, PredictMatchesNnunetPredictor) {
  expect_predict_matches(GetParam().first, GetParam().second, "cpu");
}

// The same code on a GPU: the networks run there, tiles are cut and summed on the host.
TEST(NnunetCuda, CudaPredictMatchesNnunetPredictor) {
  if (!test::has_cuda()) GTEST_SKIP() << "no CUDA device";
  for (const char* key : {"ct_border", "slices_2d", "resenc_m"}) expect_predict_matches(key, "default", "cuda");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, NnunetVariant, ::testing::ValuesIn(model_variants()),
                         [](const auto& info) { return info.param.first + "_" + info.param.second; });

}  // namespace
