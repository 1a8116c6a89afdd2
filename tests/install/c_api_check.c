/* Checks the installed C API beyond the example: its failures (return codes and messages, never a
 * crash or an exit) and vg_predict_volume against vg_predict_files on the same image.
 *   c_api_check MODEL_DIR WORK_DIR
 * Writes WORK_DIR/image.nii (a synthetic image, uncompressed NIfTI-1) and WORK_DIR/labels.nii. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <voxgrad/voxgrad.h>

static int failures = 0;

#define EXPECT(condition, ...)                                 \
  do {                                                         \
    if (!(condition)) {                                        \
      fprintf(stderr, "c_api_check:%d: ", __LINE__);           \
      fprintf(stderr, __VA_ARGS__);                            \
      fprintf(stderr, " (last error: %s)\n", vg_last_error()); \
      ++failures;                                              \
    }                                                          \
  } while (0)

enum { Z = 12, Y = 20, X = 18 };

/* A minimal NIfTI-1 single file: 348-byte header, 4 bytes of extension flags, float32 voxels. */
static int write_image(const char* path, const float* voxels, const double spacing_zyx[3]) {
  unsigned char header[352];
  memset(header, 0, sizeof header);
  int32_t i32 = 348;
  memcpy(header + 0, &i32, 4);
  int16_t dims[8] = {3, X, Y, Z, 1, 1, 1, 1};
  memcpy(header + 40, dims, sizeof dims);
  int16_t datatype = 16, bitpix = 32;
  memcpy(header + 70, &datatype, 2);
  memcpy(header + 72, &bitpix, 2);
  float pixdim[8] = {1, (float)spacing_zyx[2], (float)spacing_zyx[1], (float)spacing_zyx[0], 0, 0, 0, 0};
  memcpy(header + 76, pixdim, sizeof pixdim);
  float vox_offset = 352;
  memcpy(header + 108, &vox_offset, 4);
  header[123] = 2 | 8; /* xyzt_units: mm, s */
  memcpy(header + 344, "n+1\0", 4);
  FILE* f = fopen(path, "wb");
  if (f == NULL) return 1;
  const size_t n = (size_t)Z * Y * X;
  const int ok = fwrite(header, 1, sizeof header, f) == sizeof header && fwrite(voxels, 4, n, f) == n;
  return fclose(f) == 0 && ok ? 0 : 1;
}

/* The uint8 voxels of an uncompressed label NIfTI-1 file as voxgrad writes it. */
static int read_labels(const char* path, uint8_t* labels) {
  unsigned char header[348];
  FILE* f = fopen(path, "rb");
  if (f == NULL) return 1;
  int ok = fread(header, 1, sizeof header, f) == sizeof header;
  float vox_offset = 0;
  int16_t datatype = 0;
  memcpy(&vox_offset, header + 108, 4);
  memcpy(&datatype, header + 70, 2);
  ok = ok && datatype == 2 && fseek(f, (long)vox_offset, SEEK_SET) == 0;
  const size_t n = (size_t)Z * Y * X;
  ok = ok && fread(labels, 1, n, f) == n;
  fclose(f);
  return ok ? 0 : 1;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s MODEL_DIR WORK_DIR\n", argv[0]);
    return 2;
  }
  EXPECT(strlen(vg_version()) >= 5, "vg_version() is '%s'", vg_version());

  vg_predictor* p = NULL;
  EXPECT(vg_predictor_open("/nonexistent/voxgrad-model", "cpu", &p) != 0 && p == NULL, "a missing model opened");
  EXPECT(strstr(vg_last_error(), "/nonexistent/voxgrad-model") != NULL, "the error does not name the folder");
  EXPECT(vg_predictor_open(argv[1], "tpu", &p) == 2, "device \"tpu\" was not a bad argument");
  EXPECT(strstr(vg_last_error(), "tpu") != NULL, "the error does not name the device");
  EXPECT(vg_predictor_open(argv[1], "cpu", NULL) == 2, "a NULL out was not a bad argument");
  EXPECT(vg_predictor_classes(NULL) == -1, "classes of NULL is not -1");
  vg_predictor_close(NULL);

  if (vg_predictor_open(argv[1], "cpu", &p) != 0) {
    fprintf(stderr, "c_api_check: cannot open %s: %s\n", argv[1], vg_last_error());
    return 1;
  }
  const int classes = vg_predictor_classes(p);
  EXPECT(classes >= 2 && classes <= 256, "classes = %d", classes);

  /* A bright ellipsoid in a darker, noisy background. */
  static float image[Z * Y * X];
  srand(7);
  for (int z = 0; z < Z; ++z)
    for (int y = 0; y < Y; ++y)
      for (int x = 0; x < X; ++x) {
        const double r = pow((z - 6) / 4.0, 2) + pow((y - 10) / 6.0, 2) + pow((x - 9) / 5.0, 2);
        image[(z * Y + y) * X + x] = (r < 1 ? 2.0f : 0.0f) + 0.2f * (float)rand() / (float)RAND_MAX;
      }
  const int64_t shape[3] = {Z, Y, X};
  const double spacing[3] = {2.0, 0.8, 0.8};
  static uint8_t in_memory[Z * Y * X], from_files[Z * Y * X];
  EXPECT(vg_predict_volume(p, image, 1, shape, spacing, in_memory) == 0, "vg_predict_volume failed");
  for (int i = 0; i < Z * Y * X; ++i) EXPECT(in_memory[i] < classes, "label %d at voxel %d", in_memory[i], i);

  char image_path[4096], labels_path[4096];
  snprintf(image_path, sizeof image_path, "%s/image.nii", argv[2]);
  snprintf(labels_path, sizeof labels_path, "%s/labels.nii", argv[2]);
  EXPECT(write_image(image_path, image, spacing) == 0, "cannot write %s", image_path);
  const char* files[1] = {image_path};
  EXPECT(vg_predict_files(p, files, 1, labels_path) == 0, "vg_predict_files failed");
  EXPECT(read_labels(labels_path, from_files) == 0, "cannot read %s", labels_path);
  EXPECT(memcmp(in_memory, from_files, sizeof in_memory) == 0, "vg_predict_volume and vg_predict_files differ");

  /* Failures while predicting: a code and a message, the predictor still usable. */
  const int64_t bad_shape[3] = {Z, 0, X};
  EXPECT(vg_predict_volume(p, image, 1, bad_shape, spacing, in_memory) == 2, "a zero size was accepted");
  EXPECT(vg_predict_volume(p, image, 3, shape, spacing, in_memory) == 2, "3 channels were accepted");
  EXPECT(strstr(vg_last_error(), "channels") != NULL, "the channel error does not say channels");
  const char* missing[1] = {"/nonexistent/case_0000.nii.gz"};
  EXPECT(vg_predict_files(p, missing, 1, labels_path) == 1, "a missing input was not a failure");
  EXPECT(strstr(vg_last_error(), "/nonexistent/case_0000.nii.gz") != NULL, "the error does not name the file");
  EXPECT(vg_predict_files(p, files, 1, labels_path) == 0, "the predictor is not usable after a failure");

  vg_predictor_close(p);
  if (failures == 0) printf("c_api_check: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
