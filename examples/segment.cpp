// Segments one case with a trained voxgrad model through the C++ API, reading and writing the
// NIfTI files itself so that it can look at the labels in between:
//   segment_cpp MODEL_DIR OUT.nii.gz CHANNEL_0000.nii.gz [CHANNEL_0001.nii.gz ...]
#include <voxgrad/io/nifti.h>
#include <voxgrad/predictor.h>

#include <cstdint>
#include <exception>
#include <iostream>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " MODEL_DIR OUT.nii.gz CHANNEL.nii.gz...\n";
    return 2;
  }
  try {
    voxgrad::Predictor predictor(argv[1]);  // device "auto", best checkpoint
    std::vector<voxgrad::io::Volume> channels;
    for (int i = 3; i < argc; ++i) channels.push_back(voxgrad::io::read_nifti(argv[i]));
    const voxgrad::io::Volume labels = predictor.predict(channels);
    std::vector<std::int64_t> voxels(predictor.classes(), 0);
    const voxgrad::Tensor counted = labels.data.to(voxgrad::DType::Int32);
    for (std::int32_t v : counted.to_vector<std::int32_t>()) ++voxels.at(v);
    for (int k = 0; k < predictor.classes(); ++k) std::cerr << "label " << k << ": " << voxels[k] << " voxels\n";
    voxgrad::io::write_nifti(argv[2], labels);
  } catch (const std::exception& e) {
    std::cerr << "segment_cpp: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
