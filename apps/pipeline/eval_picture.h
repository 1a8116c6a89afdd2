// The picture eval draws for one case: the middle axial slice in the radiological convention, the
// image (or the reference labels) in grey, reference contours green, prediction contours red.
#pragma once

#include <string>

#include "engine/log.h"
#include "engine/tensor.h"
#include "io/volume.h"

namespace voxgrad::pipeline {

// Writes the picture of one case to `path` (PNG). `ref` and `pred` are label tensors on the grid of
// `ref_volume` (3-D); `image_path`, when not empty, names the image shown behind the contours.
void write_case_picture(const std::string& path, const io::Volume& ref_volume, const Tensor& ref,
                        const Tensor& pred, const std::string& image_path, logging::Sink& sink = logging::sink());

}  // namespace voxgrad::pipeline
