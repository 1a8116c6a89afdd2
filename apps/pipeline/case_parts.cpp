#include "apps/pipeline/case_parts.h"

#include <algorithm>
#include <numeric>

#include "engine/error.h"

namespace voxgrad::pipeline {

std::vector<std::size_t> cases_of_part(const std::vector<std::int64_t>& sizes, int num_parts, int part_id) {
  VG_CHECK(num_parts >= 1 && part_id >= 0 && part_id < num_parts,
           "cases_of_part: part " << part_id << " of " << num_parts);
  std::vector<std::size_t> order(sizes.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return sizes[a] > sizes[b]; });
  std::vector<std::int64_t> load(static_cast<std::size_t>(num_parts), 0);
  std::vector<std::size_t> mine;
  for (std::size_t i : order) {
    const auto lightest = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    load[static_cast<std::size_t>(lightest)] += std::max<std::int64_t>(sizes[i], 0);
    if (lightest == part_id) mine.push_back(i);
  }
  std::sort(mine.begin(), mine.end());
  return mine;
}

}  // namespace voxgrad::pipeline
