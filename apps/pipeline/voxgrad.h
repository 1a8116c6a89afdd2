/* voxgrad's C API: segment NIfTI files or in-memory images with a trained model, from any program
 * that can call C. Installed as <voxgrad/voxgrad.h>; link with `pkg-config --libs voxgrad` or CMake's
 * voxgrad::voxgrad.
 *
 * Errors: every function that can fail returns 0 on success and a non-zero code otherwise (1: bad
 * input or a failure while running, 2: a bad argument), and vg_last_error() then holds one line
 * saying what and why. Nothing here throws, prints or exits.
 *
 * Threads: calls are serialised inside the library (one process-wide lock), so any thread may call
 * any function, and a predictor may be used from several threads, one call at a time.
 * vg_last_error() is per thread: it reports the calling thread's last failure. */
#ifndef VOXGRAD_VOXGRAD_H
#define VOXGRAD_VOXGRAD_H

#include <stdint.h>

#if defined(__GNUC__)
#define VG_C_API __attribute__((visibility("default")))
#else
#define VG_C_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vg_predictor vg_predictor;

/* The library's version, "MAJOR.MINOR.PATCH". */
VG_C_API const char* vg_version(void);

/* The message of the calling thread's last failure; "" when none. Valid until that thread's next
 * failing call. */
VG_C_API const char* vg_last_error(void);

/* Opens a trained model: `model_dir` is a voxgrad run folder (voxgrad train --out); its best
 * weights (model_best.safetensors) are loaded with their checksum verified. `device` is "cpu",
 * "cuda" or "auto" (CUDA when a usable device exists). On success *out holds the predictor. */
VG_C_API int vg_predictor_open(const char* model_dir, const char* device, vg_predictor** out);

/* Labels including background: outputs are 0..classes-1; -1 on error. */
VG_C_API int vg_predictor_classes(const vg_predictor* p);

/* Segments one case given as its channel files (NIfTI); writes a label NIfTI on the input's grid,
 * exactly what `voxgrad predict` writes for that case. */
VG_C_API int vg_predict_files(vg_predictor* p, const char* const* channel_paths, int channels, const char* out_path);

/* Segments an image already in memory: float32, C order (channels, z, y, x), with its spacing in mm
 * (z, y, x); writes uint8 labels (z, y, x) into the caller's buffer (models of up to 256 labels). */
VG_C_API int vg_predict_volume(vg_predictor* p, const float* image, int channels, const int64_t shape_zyx[3],
                               const double spacing_zyx[3], uint8_t* labels);

/* Frees the predictor; NULL is ignored. */
VG_C_API void vg_predictor_close(vg_predictor* p);

#ifdef __cplusplus
}
#endif

#endif /* VOXGRAD_VOXGRAD_H */
