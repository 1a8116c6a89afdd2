// Dataset reading, planning, preprocessing and the validation split for `voxgrad train`.
#include "apps/pipeline/train_data.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "engine/error.h"
#include "engine/log.h"
#include "engine/memory_budget.h"
#include "io/image_health.h"
#include "io/nifti.h"

namespace voxgrad::pipeline {

namespace {

// numpy's median (the mean of the middle two for an even count), rounded down to a whole voxel.
std::int64_t median_of(std::vector<std::int64_t> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

TrainingData prepare_training_data(const std::string& root, PreprocessPlan plan, bool reuse_plan,
                                   logging::Sink& sink) {
  TrainingData data;
  data.dataset = io::read_dataset(root);
  for (const std::string& warning : data.dataset.warnings) sink.warning(warning);
  const io::Dataset& ds = data.dataset;
  VG_INPUT_CHECK(!ds.training.empty(), root << ": the dataset has no training cases (imagesTr/labelsTr)");
  for (const io::Case& c : ds.training)
    VG_INPUT_CHECK(!c.label.empty(), root << ": training case " << c.id << " has no label");

  // Training reads only the training cases: a problem with a test case is predict's business.
  io::Dataset training_only = ds;
  training_only.test.clear();
  io::CheckOptions check;
  check.progress = true;
  check.sink = &sink;
  // Image values are checked while preprocessing below (still before train writes anything), so
  // that every image is read once, not twice.
  check.check_image_values = false;
  io::check_dataset(training_only, check);

  // The spacings come from the headers, so planning needs no voxels (except for CT statistics),
  // and each case is then loaded, preprocessed and its raw volumes dropped: memory holds the
  // preprocessed cases plus one raw case.
  std::vector<Spacing3> spacings;
  std::vector<Shape3> shapes;  // (z, y, x) of each case's grid, for the memory check below
  for (const io::Case& c : ds.training) {
    const auto header = io::read_nifti_header(c.images[0]);
    spacings.push_back(spacing_zyx(header.spacing()));
    const std::vector<std::int64_t> dims = header.dims();  // x, y, z, ...
    shapes.push_back({dims.size() > 2 ? dims[2] : 1, dims.size() > 1 ? dims[1] : 1, dims[0]});
  }

  if (!reuse_plan) {
    plan.target_spacing = median_spacing(spacings);
    plan.classes = ds.num_classes();
    plan.ct_stats.clear();
    if (plan.normalization == Normalization::CT) {
      std::vector<Tensor> images, labels;
      logging::ProgressBar bar("CT statistics", static_cast<std::int64_t>(ds.training.size()), "case", sink);
      for (const io::Case& c : ds.training) {
        images.push_back(io::load_case_image(ds, c).data);
        labels.push_back(io::load_case_label(ds, c).data);
        bar.update(static_cast<std::int64_t>(images.size()), c.id);
      }
      bar.finish();
      plan.ct_stats = foreground_intensity_stats(images, labels);
    }
  }
  VG_INPUT_CHECK(plan.classes == ds.num_classes(), root << ": the dataset declares " << ds.num_classes()
                                                  << " classes, the run was planned for " << plan.classes);
  data.plan = plan;

  // Every case must fit in memory at the plan's spacing, and all of them together (training keeps
  // them), which the headers tell before any voxel is read.
  std::uint64_t total_bytes = 0;
  for (std::size_t i = 0; i < ds.training.size(); ++i) {
    const io::Case& c = ds.training[i];
    const Shape3& shape = shapes[i];
    const auto channels = static_cast<std::int64_t>(ds.num_channels());
    check_preprocess_fits(c.images[0], channels, shape, spacings[i], plan, /*with_label=*/true);
    total_bytes = memory::saturating_add(total_bytes, preprocess_bytes(channels, shape, spacings[i], plan, true));
  }
  memory::check_fits(total_bytes, root + ": the " + std::to_string(ds.training.size()) +
                                      " preprocessed training cases, which training keeps in memory");

  logging::ProgressBar bar("preprocessing", static_cast<std::int64_t>(ds.training.size()), "case", sink);
  std::vector<std::int64_t> sizes[3];
  std::vector<std::string> problems;  // images training cannot use, all named in one error
  for (std::size_t i = 0; i < ds.training.size(); ++i) {
    const io::Case& c = ds.training[i];
    const io::CaseImage image = io::load_case_image(ds, c);
    const io::CaseLabel label = io::load_case_label(ds, c);
    PreparedCase prepared{c.id, preprocess_case(image.data, label.data, spacings[i], plan, c.images[0])};
    const std::vector<std::string> unusable = io::health_problems(prepared.data.health, c.images);
    for (const std::string& problem : unusable) problems.push_back("case " + c.id + ": " + problem);
    if (unusable.empty())  // else the error below says it all
      for (const std::string& warning : io::health_warnings(prepared.data.health, c.images)) sink.warning(warning);
    for (int a = 0; a < 3; ++a) sizes[a].push_back(prepared.data.image.size(1 + a));
    data.cases.push_back(std::move(prepared));
    bar.update(static_cast<std::int64_t>(i + 1), c.id);
  }
  bar.finish();
  if (!problems.empty()) {
    std::string all;
    for (const std::string& p : problems) all += (all.empty() ? "" : "; ") + p;
    VG_INPUT_FAIL("dataset " << root << ": " << problems.size() << " image problem" << (problems.size() > 1 ? "s" : "")
                             << " (training cannot normalise or learn from them): " << all);
  }
  for (int a = 0; a < 3; ++a) data.median_shape[a] = median_of(sizes[a]);
  return data;
}

void split_cases(const std::vector<std::string>& ids, std::uint64_t seed, std::vector<std::string>& train,
                 std::vector<std::string>& val, logging::Sink& sink) {
  train.clear();
  val.clear();
  if (ids.size() == 1) {
    sink.warning("only one training case (" + ids[0] +
                 "): it is also the validation case, so the validation Dice measures fit, not generalisation");
    train = ids;
    val = ids;
    return;
  }
  std::vector<std::size_t> order(ids.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  // A Fisher-Yates shuffle driven by mt19937_64's raw output (portable, unlike the distributions).
  std::mt19937_64 rng(seed ^ 0x5eed5eedULL);
  for (std::size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[rng() % (i + 1)]);
  const std::size_t n_val =
      std::max<std::size_t>(1, static_cast<std::size_t>(std::lround(0.2 * static_cast<double>(ids.size()))));
  std::vector<bool> is_val(ids.size(), false);
  for (std::size_t i = 0; i < n_val; ++i) is_val[order[i]] = true;
  for (std::size_t i = 0; i < ids.size(); ++i) (is_val[i] ? val : train).push_back(ids[i]);
}

pipeline::Shape3 default_patch(const Shape3& median_shape, int levels) {
  const std::int64_t multiple = std::int64_t{1} << (levels - 1);
  Shape3 patch{};
  for (int a = 0; a < 3; ++a) {
    const std::int64_t cap = std::max(multiple, std::int64_t{128} / multiple * multiple);
    patch[a] = std::clamp(median_shape[a] / multiple * multiple, multiple, cap);
  }
  return patch;
}

}  // namespace voxgrad::pipeline
