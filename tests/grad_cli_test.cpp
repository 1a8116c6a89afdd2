// `voxgrad grad` as a researcher meets it: the promised JSON keys, the same loss and per-class terms
// as the library computes in-process, the --out gradient with the logits' shape, the label's affine
// and logits.grad()'s values, grad_stats against a hand-checked and a brute-force boundary, and errors.
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "apps/pipeline/grad_stats.h"
#include "engine/json.h"
#include "engine/losses.h"
#include "engine/ops.h"
#include "io/nifti.h"
#include "io/volume.h"
#include "tests/test_support.h"

namespace {

namespace io = voxgrad::io;
using nlohmann::json;
using voxgrad::DType;
using voxgrad::Shape;
using voxgrad::Tensor;
using voxgrad::pipeline::ClassGradStats;
using voxgrad::pipeline::GradGeometry;
using voxgrad::test::CommandResult;
using voxgrad::test::run_voxgrad;
using voxgrad::test::temp_dir;

io::Affine scaled_affine(double sx, double sy, double sz, double tx, double ty, double tz) {
  io::Affine a = io::identity_affine();
  a[0][0] = sx;
  a[1][1] = sy;
  a[2][2] = sz;
  a[0][3] = tx;
  a[1][3] = ty;
  a[2][3] = tz;
  return a;
}

// A test case on disk: logits (N, K, D, H, W) and labels (N, D, H, W) in memory, written as NIfTI
// with the batch axis dropped when `batch` is false ((X,Y,Z,K) and (X,Y,Z)).
struct Case {
  std::int64_t N, K, D, H, W;
  std::vector<float> logits;         // (N, K, D, H, W)
  std::vector<std::int32_t> labels;  // (N, D, H, W)
  std::string logits_path, label_path;

  Shape zshape() const { return {N, K, D, H, W}; }
  Shape yshape() const { return {N, D, H, W}; }
};

Case make_case(const std::string& dir, std::int64_t N, std::int64_t K, std::int64_t D, std::int64_t H, std::int64_t W,
               unsigned seed, bool batch, std::int64_t label_limit = -1,
               const io::Affine& label_affine = io::identity_affine()) {
  Case c{N, K, D, H, W, {}, {}, dir + "/logits.nii.gz", dir + "/label.nii.gz"};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  const std::int64_t S = D * H * W;
  c.logits.resize(static_cast<std::size_t>(N * K * S));
  for (float& v : c.logits) v = normal(rng);
  const std::int64_t limit = label_limit > 0 ? label_limit : K;
  std::uniform_int_distribution<int> pick(0, static_cast<int>(limit) - 1);
  c.labels.resize(static_cast<std::size_t>(N * S));
  for (std::int32_t& l : c.labels) l = pick(rng);
  const Shape zs = batch ? Shape{N, K, D, H, W} : Shape{K, D, H, W};
  const Shape ys = batch ? Shape{N, D, H, W} : Shape{D, H, W};
  io::write_nifti(c.logits_path, io::make_volume(voxgrad::from_vector(c.logits, zs)), io::NiftiWriteType::Float32);
  io::write_nifti(c.label_path, io::make_volume(voxgrad::from_vector(c.labels, ys), label_affine),
                  io::NiftiWriteType::Int16);
  return c;
}

// The loss and gradient the library computes in-process, in float64 as the CLI does on the CPU.
struct InProcess {
  voxgrad::LossReport report;
  std::vector<double> grad;  // (N, K, D, H, W)
};

InProcess in_process(const Case& c, voxgrad::LossKind kind, const voxgrad::LossOptions& options = {}) {
  Tensor z = voxgrad::from_vector(c.logits, c.zshape()).to(DType::Float64);
  z.requires_grad_(true);
  const Tensor y = voxgrad::from_vector(c.labels, c.yshape());
  const voxgrad::LossOutput out = voxgrad::segmentation_loss_terms(kind, z, y, options);
  out.loss.backward();
  return {voxgrad::loss_report(out), z.grad().to_vector<double>()};
}

json run_grad_json(const std::string& args) {
  const CommandResult r = run_voxgrad("grad " + args + " --device cpu");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::istringstream lines(r.out);
  std::string first, second;
  std::getline(lines, first);
  EXPECT_FALSE(std::getline(lines, second)) << "more than one line on stdout: " << r.out;
  return json::parse(first);
}

double num(const json& j) { return j.is_null() ? std::nan("") : j.get<double>(); }

void expect_same(double a, double b, const std::string& what) {
  if (std::isnan(b)) {
    EXPECT_TRUE(std::isnan(a)) << what << ": " << a << " where null was expected";
  } else {
    EXPECT_NEAR(a, b, 1e-12 + 1e-12 * std::fabs(b)) << what;
  }
}

// The brute force: per channel, every voxel of the class, its six neighbours written out.
std::vector<ClassGradStats> brute_force_stats(const std::vector<double>& g, const std::vector<std::int32_t>& y,
                                              const GradGeometry& geo, std::optional<std::int32_t> ignore) {
  const std::int64_t S = geo.voxels();
  const int offsets[6][3] = {{-1, 0, 0}, {1, 0, 0}, {0, -1, 0}, {0, 1, 0}, {0, 0, -1}, {0, 0, 1}};
  auto label = [&](std::int64_t n, std::int64_t z, std::int64_t r, std::int64_t x) {
    return y[static_cast<std::size_t>(n * S + (z * geo.height + r) * geo.width + x)];
  };
  std::vector<ClassGradStats> out;
  for (std::int64_t c = 0; c < geo.channels; ++c) {
    ClassGradStats s;
    s.channel = s.label = c;
    double in = 0, outside = 0, bd = 0;
    for (std::int64_t n = 0; n < geo.images; ++n)
      for (std::int64_t z = 0; z < geo.depth; ++z)
        for (std::int64_t r = 0; r < geo.height; ++r)
          for (std::int64_t x = 0; x < geo.width; ++x) {
            const std::int32_t l = label(n, z, r, x);
            if (ignore && l == *ignore) continue;
            const double a =
                std::fabs(g[static_cast<std::size_t>((n * geo.channels + c) * S + (z * geo.height + r) * geo.width + x)]);
            if (l != c) {
              outside += a;
              ++s.outside_voxels;
              continue;
            }
            in += a;
            ++s.voxels;
            bool edge = false;
            for (const auto& o : offsets) {
              const std::int64_t zz = z + o[0], rr = r + o[1], xx = x + o[2];
              if (zz < 0 || zz >= geo.depth || rr < 0 || rr >= geo.height || xx < 0 || xx >= geo.width) continue;
              const std::int32_t m = label(n, zz, rr, xx);
              if (!(ignore && m == *ignore) && m != c) edge = true;
            }
            if (edge) {
              bd += a;
              ++s.boundary_voxels;
            }
          }
    const double nan = std::nan("");
    s.inside = s.voxels ? in / static_cast<double>(s.voxels) : nan;
    s.outside = s.outside_voxels ? outside / static_cast<double>(s.outside_voxels) : nan;
    s.boundary = s.boundary_voxels ? bd / static_cast<double>(s.boundary_voxels) : nan;
    out.push_back(s);
  }
  return out;
}

TEST(GradCli, KeysAndLossEqualTheLibraryForEveryLoss) {
  const std::string dir = temp_dir("grad_keys");
  const Case c = make_case(dir, 2, 3, 3, 4, 5, 7, /*batch=*/true);
  for (const char* name : {"ce", "wce", "dice", "jaccard", "lovasz", "dice_ce"}) {
    SCOPED_TRACE(name);
    const json j = run_grad_json("--logits " + c.logits_path + " --label " + c.label_path + " --loss " + name);
    for (const char* key : {"loss", "loss_name", "per_class", "grad_stats", "sets_chosen", "options", "shape",
                            "device", "dtype", "grad"})
      EXPECT_TRUE(j.contains(key)) << key;
    EXPECT_EQ(j["loss_name"], name);
    EXPECT_EQ(j["dtype"], "float64");
    EXPECT_EQ(j["shape"]["logits"], json({2, 3, 3, 4, 5}));
    ASSERT_EQ(j["per_class"].size(), 3u);
    ASSERT_EQ(j["grad_stats"].size(), 3u);
    const InProcess ref = in_process(c, voxgrad::parse_loss_kind(name));
    expect_same(num(j["loss"]), ref.report.loss, "loss");
    for (std::size_t k = 0; k < 3; ++k) {
      expect_same(num(j["per_class"][k]), ref.report.per_class[k], "per_class");
      EXPECT_EQ(j["sets_chosen"][k].get<std::int64_t>(), ref.report.sets_chosen[k]);
    }
  }
}

TEST(GradCli, OptionsReachTheLoss) {
  const std::string dir = temp_dir("grad_options");
  const Case c = make_case(dir, 2, 3, 2, 3, 4, 11, /*batch=*/true);
  const std::string files = "--logits " + c.logits_path + " --label " + c.label_path;
  {
    const json j = run_grad_json(files + " --loss dice --classes all --aggregate batch --eps 0.5 --ignore-label 2");
    voxgrad::LossOptions o;
    o.classes = voxgrad::ClassSelection::All;
    o.aggregate = voxgrad::Aggregate::Batch;
    o.eps = 0.5;
    o.ignore_label = 2;
    expect_same(num(j["loss"]), in_process(c, voxgrad::LossKind::Dice, o).report.loss, "dice");
    EXPECT_EQ(j["options"]["classes"], "all");
    EXPECT_EQ(j["options"]["aggregate"], "batch");
    EXPECT_EQ(j["options"]["ignore_label"], 2);
  }
  {
    const json j = run_grad_json(files + " --loss wce --class-weights 0.5,1,2");
    voxgrad::LossOptions o;
    o.class_weights = {0.5, 1, 2};
    expect_same(num(j["loss"]), in_process(c, voxgrad::LossKind::WeightedCrossEntropy, o).report.loss, "wce");
  }
  {
    const json j = run_grad_json(files + " --loss dice_ce --ce-weight 0.25 --dice-weight 3");
    voxgrad::LossOptions o;
    o.ce_weight = 0.25;
    o.dice_weight = 3;
    expect_same(num(j["loss"]), in_process(c, voxgrad::LossKind::DiceCrossEntropy, o).report.loss, "dice_ce");
  }
}

TEST(GradCli, LovaszHingeTakesOneChannel) {
  const std::string dir = temp_dir("grad_hinge");
  const Case c = make_case(dir, 1, 1, 3, 4, 5, 5, /*batch=*/false, /*label_limit=*/2);
  const json j = run_grad_json("--logits " + c.logits_path + " --label " + c.label_path + " --loss lovasz_hinge");
  expect_same(num(j["loss"]), in_process(c, voxgrad::LossKind::LovaszHinge).report.loss, "hinge");
  ASSERT_EQ(j["grad_stats"].size(), 1u);
  EXPECT_EQ(j["grad_stats"][0]["class"], 1);  // the one channel scores the foreground
}

TEST(GradCli, OutHasTheLogitsShapeTheLabelAffineAndTheGradient) {
  const std::string dir = temp_dir("grad_out");
  const io::Affine affine = scaled_affine(2.0, 1.5, 3.0, -10.0, 20.0, 5.5);
  const Case c = make_case(dir, 1, 4, 3, 5, 6, 3, /*batch=*/false, -1, affine);
  const std::string out = dir + "/g.nii.gz";
  const json j =
      run_grad_json("--logits " + c.logits_path + " --label " + c.label_path + " --loss lovasz --out " + out);
  EXPECT_EQ(j["out"], out);

  const io::Volume g = io::read_nifti(out);
  EXPECT_EQ(g.dims(), (std::vector<std::int64_t>{6, 5, 3, 4}));  // as the logits file: (X, Y, Z, K)
  EXPECT_EQ(g.source_datatype, 16);                               // float32
  for (int r = 0; r < 4; ++r)
    for (int k = 0; k < 4; ++k) EXPECT_NEAR(g.affine[r][k], affine[r][k], 1e-5) << r << "," << k;

  const InProcess ref = in_process(c, voxgrad::LossKind::LovaszSoftmax);
  const std::vector<float> got = g.to_float32().to_vector<float>();
  ASSERT_EQ(got.size(), ref.grad.size());
  std::vector<double> got_d(got.begin(), got.end());
  EXPECT_TRUE(voxgrad::test::all_close(got_d, ref.grad, 1e-12, 1e-6));
}

// A 3 x 4 slice, two images, hand-checked:     image 0        image 1 (all class 1)
//                                               0 0 1 1        1 1 1 1
//                                               0 1 1 1        1 1 1 1
//                                               0 0 1 9        1 1 1 1     (9: ignored)
// class 1 inner boundary in image 0: (0,2) (1,1) (2,2): 3 of its 6 voxels; (1,3) borders only the
// ignored voxel, so it is no boundary. class 0: (0,1) (1,0) (2,1): 3 of 5. Image 1 has none:
// neighbours never cross images. |g| of channel c at voxel i (flat in the image) is 1 + i + 100 n
// + 1000 c, so every mean is a sum of hand-listed indices.
TEST(GradStats, HandCheckedBoundary) {
  const GradGeometry geo{2, 2, 1, 3, 4};
  const std::vector<std::int32_t> y = {0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 9,  //
                                       1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  std::vector<double> g(2 * 2 * 12);
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 2; ++c)
      for (int i = 0; i < 12; ++i) g[static_cast<std::size_t>((n * 2 + c) * 12 + i)] = (c ? -1 : 1) * (1 + i + 100 * n + 1000 * c);

  const std::vector<std::uint8_t> edge = voxgrad::pipeline::inner_boundary(y, geo, 9);
  const std::vector<std::uint8_t> expected_edge = {0, 1, 1, 0, 1, 1, 0, 0, 0, 1, 1, 0,  //
                                                   0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(edge, expected_edge);

  const std::vector<ClassGradStats> s = voxgrad::pipeline::gradient_stats(g, y, geo, 9);
  ASSERT_EQ(s.size(), 2u);
  // class 0: voxels 0 1 4 8 9 of image 0; boundary 1 4 9; outside: image 0's 2 3 5 6 7 10, image 1's all 12.
  EXPECT_EQ(s[0].voxels, 5);
  EXPECT_EQ(s[0].boundary_voxels, 3);
  EXPECT_EQ(s[0].outside_voxels, 18);
  EXPECT_DOUBLE_EQ(s[0].inside, (1 + 2 + 5 + 9 + 10) / 5.0);
  EXPECT_DOUBLE_EQ(s[0].boundary, (2 + 5 + 10) / 3.0);
  EXPECT_DOUBLE_EQ(s[0].outside, ((3 + 4 + 6 + 7 + 8 + 11) + (12 * 100 + 78)) / 18.0);
  // class 1: image 0's 2 3 5 6 7 10 and image 1's 12; boundary 2 5 10.
  EXPECT_EQ(s[1].voxels, 18);
  EXPECT_EQ(s[1].boundary_voxels, 3);
  EXPECT_EQ(s[1].outside_voxels, 5);
  EXPECT_DOUBLE_EQ(s[1].inside, (6 * 1000 + (3 + 4 + 6 + 7 + 8 + 11) + 12 * 1100 + 78) / 18.0);
  EXPECT_DOUBLE_EQ(s[1].boundary, (3 * 1000 + 3 + 6 + 11) / 3.0);
  EXPECT_DOUBLE_EQ(s[1].outside, (5 * 1000 + 1 + 2 + 5 + 9 + 10) / 5.0);
}

TEST(GradStats, EmptySetsAreNaN) {
  const GradGeometry geo{1, 3, 1, 1, 4};
  const std::vector<std::int32_t> y = {1, 1, 1, 1};
  const std::vector<ClassGradStats> s = voxgrad::pipeline::gradient_stats(std::vector<double>(12, 0.5), y, geo, {});
  EXPECT_TRUE(std::isnan(s[0].inside));
  EXPECT_TRUE(std::isnan(s[0].boundary));
  EXPECT_DOUBLE_EQ(s[0].outside, 0.5);
  EXPECT_TRUE(std::isnan(s[1].outside));
  EXPECT_TRUE(std::isnan(s[1].boundary));  // one class fills the image: no boundary
}

TEST(GradCli, GradStatsEqualABruteForceOverTheLibraryGradient) {
  const std::string dir = temp_dir("grad_stats");
  const Case c = make_case(dir, 2, 3, 4, 5, 6, 19, /*batch=*/true, /*label_limit=*/4);  // label 3: the ignore label
  const json j = run_grad_json("--logits " + c.logits_path + " --label " + c.label_path +
                               " --loss dice --ignore-label 3");
  voxgrad::LossOptions o;
  o.ignore_label = 3;
  const InProcess ref = in_process(c, voxgrad::LossKind::Dice, o);
  const std::vector<ClassGradStats> want = brute_force_stats(ref.grad, c.labels, {2, 3, 4, 5, 6}, 3);
  ASSERT_EQ(j["grad_stats"].size(), want.size());
  for (std::size_t k = 0; k < want.size(); ++k) {
    SCOPED_TRACE(k);
    const json& s = j["grad_stats"][k];
    EXPECT_EQ(s["class"].get<std::int64_t>(), want[k].label);
    EXPECT_EQ(s["voxels"].get<std::int64_t>(), want[k].voxels);
    EXPECT_EQ(s["outside_voxels"].get<std::int64_t>(), want[k].outside_voxels);
    EXPECT_EQ(s["boundary_voxels"].get<std::int64_t>(), want[k].boundary_voxels);
    EXPECT_GT(want[k].boundary_voxels, 0);
    expect_same(num(s["inside"]), want[k].inside, "inside");
    expect_same(num(s["outside"]), want[k].outside, "outside");
    expect_same(num(s["boundary"]), want[k].boundary, "boundary");
  }
}

// One "voxgrad: error:" line on stderr, nothing on stdout, the given status.
void expect_error(const CommandResult& r, int status, const std::vector<std::string>& mentions) {
  EXPECT_EQ(r.exit_code, status) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_EQ(r.err.rfind("voxgrad: error: ", 0), 0u) << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "not one line: " << r.err;
  EXPECT_FALSE(voxgrad::test::has_source_text(r.err)) << r.err;
  for (const std::string& m : mentions) EXPECT_NE(r.err.find(m), std::string::npos) << m << " not in: " << r.err;
}

TEST(GradCli, ErrorsAreOneLine) {
  const std::string dir = temp_dir("grad_errors");
  const Case c = make_case(dir, 1, 3, 3, 4, 5, 1, /*batch=*/false);
  const std::string label = " --label " + c.label_path;
  // A flag naming a file that is not there is a usage error (2); a file with the wrong content is 1.
  expect_error(run_voxgrad("grad --logits " + dir + "/absent.nii.gz" + label + " --loss ce --device cpu"), 2,
               {"--logits", "absent.nii.gz"});
  expect_error(run_voxgrad("grad --logits " + c.logits_path + label + " --loss hinge --device cpu"), 2, {"--loss"});
  expect_error(run_voxgrad("grad --logits " + c.logits_path + label + " --loss lovasz_hinge --device cpu"), 1,
               {"K = 3", c.logits_path});
  expect_error(run_voxgrad("grad --logits " + c.logits_path + label + " --loss ce --out g.img --device cpu"), 2,
               {".nii"});
  expect_error(run_voxgrad("grad --logits " + c.logits_path + label + " --loss wce --class-weights 1,2 --device cpu"),
               2, {"2 weights"});

  const std::string other = dir + "/other_label.nii.gz";
  io::write_nifti(other, io::make_volume(voxgrad::zeros({3, 4, 4}, DType::Int32)), io::NiftiWriteType::UInt8);
  expect_error(run_voxgrad("grad --logits " + c.logits_path + " --label " + other + " --loss ce --device cpu"), 1,
               {c.logits_path, other, "(5, 4, 3, 3)", "(4, 4, 3)"});
}

// The gradient never lands on the files it is computed from, however the path is spelled.
TEST(GradCli, NeverWritesOverItsInputs) {
  const std::string dir = temp_dir("grad_inputs");
  const Case c = make_case(dir, 1, 3, 3, 4, 5, 2, /*batch=*/false);
  const std::string logits_bytes = voxgrad::test::read_file(c.logits_path);
  const std::string label_bytes = voxgrad::test::read_file(c.label_path);
  std::filesystem::create_hard_link(c.logits_path, dir + "/linked.nii.gz");
  for (const std::string& out : {c.logits_path, c.label_path, dir + "/./logits.nii.gz", dir + "/linked.nii.gz"}) {
    const CommandResult r =
        run_voxgrad("grad --logits " + c.logits_path + " --label " + c.label_path + " --loss dice --out " + out);
    expect_error(r, 1, {out, "would overwrite the input"});
  }
  EXPECT_EQ(voxgrad::test::read_file(c.logits_path), logits_bytes);
  EXPECT_EQ(voxgrad::test::read_file(c.label_path), label_bytes);
}

// NaN or Inf logits, and non-finite option values, are refused up front rather than giving
// "loss": null with status 0.
TEST(GradCli, NonFiniteInputsAndValuesAreRefused) {
  const std::string dir = temp_dir("grad_nonfinite");
  Case c = make_case(dir, 1, 3, 3, 4, 5, 3, /*batch=*/false);
  for (const float bad : {std::nanf(""), INFINITY}) {
    c.logits[7] = bad;
    io::write_nifti(c.logits_path, io::make_volume(voxgrad::from_vector(c.logits, {3, 3, 4, 5})),
                    io::NiftiWriteType::Float32);
    expect_error(run_voxgrad("grad --logits " + c.logits_path + " --label " + c.label_path + " --loss ce --device cpu"),
                 1, {c.logits_path, "not finite"});
  }
  c = make_case(dir, 1, 3, 3, 4, 5, 3, /*batch=*/false);
  const std::string args = "grad --device cpu --logits " + c.logits_path + " --label " + c.label_path;
  for (const std::string flag : {"--loss dice --eps nan", "--loss dice --eps inf", "--loss dice_ce --ce-weight inf",
                                 "--loss wce --class-weights 1,nan,1"}) {
    const std::string name = flag.substr(flag.rfind("--"), flag.rfind(' ') - flag.rfind("--"));
    expect_error(run_voxgrad(args + " " + flag), 2, {name});
  }
}

}  // namespace
