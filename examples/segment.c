/* Segments one case with a trained voxgrad model through the C API:
 *   segment MODEL_DIR OUT.nii.gz CHANNEL_0000.nii.gz [CHANNEL_0001.nii.gz ...] */
#include <stdio.h>
#include <voxgrad/voxgrad.h>

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s MODEL_DIR OUT.nii.gz CHANNEL.nii.gz...\n", argv[0]);
    return 2;
  }
  vg_predictor* predictor = NULL;
  if (vg_predictor_open(argv[1], "auto", &predictor) != 0) {
    fprintf(stderr, "segment: %s\n", vg_last_error());
    return 1;
  }
  const int status = vg_predict_files(predictor, (const char* const*)(argv + 3), argc - 3, argv[2]);
  if (status != 0) fprintf(stderr, "segment: %s\n", vg_last_error());
  vg_predictor_close(predictor);
  return status == 0 ? 0 : 1;
}
