// Splitting a list of cases into N shares for N jobs (nnU-Net's -num_parts/-part_id habit):
// disjoint, together the whole list, balanced by the cases' sizes, and the same on every job
// that is given the same sizes.
#pragma once

#include <cstdint>
#include <vector>

namespace voxgrad::pipeline {

// The positions (ascending) of the cases that part `part_id` of `num_parts` runs. Largest cases
// first (ties: the earlier case), each to the part with the least total size so far (ties: the
// lower part), so no part exceeds another by more than the largest case. Requires
// 0 <= part_id < num_parts and sizes >= 0.
std::vector<std::size_t> cases_of_part(const std::vector<std::int64_t>& sizes, int num_parts, int part_id);

}  // namespace voxgrad::pipeline
