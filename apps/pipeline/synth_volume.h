// The synthetic segmentation cases behind `voxgrad synth`: smooth random blobs of K-1 foreground
// classes in a cubic volume, class intensities that overlap under Gaussian noise and a smooth
// multiplicative bias field. Pure host code, fully determined by (spec, seed): same seed, same bytes.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace voxgrad::pipeline {

enum class SynthPreset {
  Demo,             // large blobs only (a few thousand voxels and more at the default size)
  SmallStructures,  // the same plus blobs of a few hundred voxels, kept apart from everything else
};
const char* synth_preset_name(SynthPreset p);  // "demo", "small-structures"

struct SynthSpec {
  SynthPreset preset = SynthPreset::Demo;
  int size = 48;    // S: the volume is S^3 voxels
  int classes = 3;  // K: label values 0 (background) .. K-1
  // Voxel size in mm, NIfTI order (x, y, z): thick slices, as many clinical scans have.
  std::array<double, 3> spacing{0.8, 0.8, 2.0};
};

// One case, (Z, Y, X) row-major with x fastest (the NIfTI voxel order).
struct SynthCase {
  std::vector<float> image;
  std::vector<std::uint8_t> label;
};

// Draws one case. Every foreground class 1..K-1 holds at least one voxel; throws voxgrad::Error
// when the volume is too small to place them all (many classes in a small S).
SynthCase synth_case(const SynthSpec& spec, std::uint64_t seed);

// The seed of case `index` of a split (0 training, 1 test) of a dataset drawn with `seed`: the
// test cases do not change when only the number of training cases does.
std::uint64_t synth_case_seed(std::uint64_t seed, int split, int index);

}  // namespace voxgrad::pipeline
