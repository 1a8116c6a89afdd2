// float16 rounding on the host: the value a float or double becomes when stored as IEEE half
// precision, returned in the wider type. What PyTorch's .half() and numpy's float16 arrays do, for
// code that must repeat computations another framework keeps in float16.
#pragma once

namespace voxgrad {

// float32 rounded to the nearest float16 value (ties to even; beyond 65504 to infinity; NaN and
// infinities kept), as torch rounds a float to torch.half.
float round_to_float16(float value);
// The same from float64 in one rounding, as numpy stores a float64 result into a float16 array.
double round_to_float16(double value);

}  // namespace voxgrad
