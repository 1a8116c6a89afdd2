// Segmentation datasets on disk: the Medical Segmentation Decathlon / nnU-Net v1 dataset.json and
// the nnU-Net v2 raw layout are read into one Dataset description; cases load as (C, Z, Y, X)
// float32 images and (Z, Y, X) int32 labels; checks compare geometry and label values; v2 is written.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/log.h"
#include "engine/tensor.h"
#include "io/volume.h"

namespace voxgrad::io {

enum class DatasetLayout {
  MsdV1,     // dataset.json lists its cases: "modality", "labels" number -> name, "training", "test"
  NnunetV2,  // cases found from file names: "channel_names", "labels" name -> number, "file_ending"
};
const char* dataset_layout_name(DatasetLayout layout);  // "msd_v1", "nnunet_v2"

// The largest label value a dataset may declare: predict writes label maps as uint8, and a value
// of 100000 would otherwise build a 100001-class network.
constexpr int kMaxLabelValue = 255;
// nnU-Net names channel files <case>_0000 .. <case>_9999.
constexpr int kMaxChannels = 10000;

// One case. Paths are full paths (the dataset root joined with what dataset.json or the folder says).
struct Case {
  std::string id;                   // "BRATS_001", "prostate_00"
  std::vector<std::string> images;  // one file per channel, in channel order; or one file holding them all
  std::string label;                // empty for test cases
  // images[0] holds every channel along NIfTI's 4th axis, (X, Y, Z, C): the Decathlon's own
  // multi-modal files (BRATS is (240, 240, 155, 4)). Loading gives (C, Z, Y, X) either way.
  bool channels_in_one_file = false;
};

// nnU-Net v2 region-based training: one name for a set of label values ("whole tumor": [1, 2, 3]).
// Recorded as declared; voxgrad trains on the plain integer values found in the label files.
struct LabelRegion {
  std::string name;
  std::vector<int> values;
};

struct Dataset {
  std::string root;  // the folder holding dataset.json
  DatasetLayout layout = DatasetLayout::NnunetV2;
  std::string name;
  std::string description;
  std::vector<std::string> channels;     // channel index -> name ("T2", "ADC")
  std::map<int, std::string> labels;     // label value -> name; 0 ("background") is always there
  std::vector<LabelRegion> regions;      // v2 entries given as lists of values; empty for most datasets
  std::vector<int> regions_class_order;  // v2 "regions_class_order" when given
  std::optional<int> ignore_label;       // v2: the value of the label named "ignore", if any
  std::string file_ending = ".nii.gz";   // ".nii.gz" or ".nii"
  std::vector<Case> training;            // in file-name order (v2) or as listed (v1)
  std::vector<Case> test;                // imagesTs; may be empty
  // What is odd but usable in dataset.json (counts that disagree with the cases found), one line
  // each naming the file: for the caller to report (io never prints).
  std::vector<std::string> warnings;

  int num_channels() const { return static_cast<int>(channels.size()); }
  // Every value a label file may hold: the plain labels' and every region's, ascending.
  std::vector<int> label_values() const;
  // Classes a network predicts for this dataset: the largest label value + 1.
  int num_classes() const;
};

// Reads root/dataset.json and the cases it names or the folders hold. The layout is v2 when the
// json has "channel_names" or "file_ending", else MSD v1 when it has "training" or "modality".
// Throws voxgrad::InputError naming the file and what is wrong: no dataset.json, one that is not a
// regular file (a FIFO is refused, never opened for reading), bad JSON (with the parser's
// position), missing or mistyped keys, labels that are not number <-> name or repeat a value, a
// label value that is not a whole number 0..kMaxLabelValue (in "labels", a region or
// "regions_class_order"; named with its key and value), more than kMaxChannels channels, a file
// ending voxgrad cannot read (NIfTI only). Every problem with the cases themselves (a referenced
// file that does not exist or is not a regular file, a channel missing for a case, a label without
// images) is collected and thrown as one InputError listing how many and the first few.
// numTraining / numTest that disagree with the cases found, or are not counts, are a warning in
// Dataset::warnings, not an error.
Dataset read_dataset(const std::string& root);

// The same from dataset.json's text already in memory (the cases are still found under `root`;
// messages name root/dataset.json). Any bytes give a Dataset or an InputError: the fuzz target's
// entry point.
Dataset parse_dataset(std::string_view json_text, const std::string& root);

// A case's image as float32 (C, Z, Y, X), C = dataset.num_channels(), and the geometry of its
// first file. 2-D files count as Z = 1. The channels' dims must agree; their affines are not
// compared here (check_case does that).
struct CaseImage {
  Tensor data;  // (C, Z, Y, X) float32, CPU
  Affine affine = identity_affine();
  std::array<double, 3> spacing{1.0, 1.0, 1.0};  // x, y, z in mm (pixdim)
};
CaseImage load_case_image(const Dataset& dataset, const Case& c);

// A case's label volume as int32 (Z, Y, X) (a 4-D file with a 4th axis of 1 is accepted).
// Values are not checked against dataset.labels here (check_case does that).
struct CaseLabel {
  Tensor data;  // (Z, Y, X) int32, CPU
  Affine affine = identity_affine();
  std::array<double, 3> spacing{1.0, 1.0, 1.0};
};
CaseLabel load_case_label(const Dataset& dataset, const Case& c);

struct CheckOptions {
  // Two affines agree when every entry of their top three rows differs by at most
  // affine_tolerance * max(1, largest |entry| of either). With world coordinates in mm and the
  // translation usually the largest entry (tens to hundreds of mm), 1e-4 allows ~0.01 mm: far
  // below a voxel, far above the float32 rounding of the sform and the qform round trip.
  double affine_tolerance = 1e-4;
  bool check_label_values = true;  // read every label volume (the slow part) and compare its values
  // Read every image volume: a channel with no finite voxel (all NaN or infinite) or with zero
  // variance (one value everywhere) is a problem; training cannot normalise or learn from it.
  bool check_image_values = true;
  bool progress = false;           // a progress bar for check_dataset, on `sink`
  logging::Sink* sink = nullptr;   // nullptr: the process's sink (logging::sink())
};

// True when a and b agree as CheckOptions::affine_tolerance describes.
bool affines_close(const Affine& a, const Affine& b, double tolerance);

// What is wrong with one case, one line each ("case BRATS_003: ..."), empty when nothing is:
// every channel has the same spatial dims and affine as channel 0, the channel count matches
// dataset.json, the label has the image's dims and affine and only declared values (naming the
// unexpected values and how many voxels hold each), every image channel has a finite voxel and
// more than one value, and the case's image fits in this machine's memory. Geometry comes from
// the headers alone; voxels are read only for the value checks. Unreadable files are reported as
// problems, not thrown.
std::vector<std::string> find_case_problems(const Dataset& dataset, const Case& c, const CheckOptions& options = {});
// The same for every training and test case, in order.
std::vector<std::string> find_dataset_problems(const Dataset& dataset, const CheckOptions& options = {});

// Throwing forms: one voxgrad::InputError with the number of problems and the first few lines, so a
// user sees everything wrong with a dataset in one run instead of fixing one case at a time.
void check_case(const Dataset& dataset, const Case& c, const CheckOptions& options = {});
void check_dataset(const Dataset& dataset, const CheckOptions& options = {});

// What write_dataset_v2 puts into dataset.json.
struct DatasetV2Spec {
  std::string name;
  std::string description;
  std::vector<std::string> channel_names;  // index -> name
  std::map<int, std::string> labels;       // value -> name; must hold 0
  std::int64_t num_training = 0;
  std::string file_ending = ".nii.gz";
};
// Writes root/dataset.json in nnU-Net v2 form (channel_names, labels name -> number, numTraining,
// file_ending, name, description), atomically (engine/files.h: a temporary next to it, then a
// rename; a killed writer's stale temporaries are removed first). Creates root when missing.
void write_dataset_v2(const std::string& root, const DatasetV2Spec& spec);
// Creates root/imagesTr and root/labelsTr (and root/imagesTs when `with_test`).
void create_dataset_folders(const std::string& root, bool with_test = false);

// nnU-Net v2 file names: root/imagesTr/<case>_<channel as 4 digits><ending> (imagesTs for test
// cases) and root/labelsTr/<case><ending>.
std::string image_path(const std::string& root, const std::string& case_id, int channel,
                       const std::string& file_ending = ".nii.gz", bool test = false);
std::string label_path(const std::string& root, const std::string& case_id, const std::string& file_ending = ".nii.gz");

}  // namespace voxgrad::io
