// conv3d and conv_transpose3d as autograd ops: input checks with PyTorch's rules, one dispatch per
// pass to the CPU twins or cuDNN, and the backward closures. A transposed convolution runs the
// passes of the convolution it transposes with roles exchanged, so the math exists once.
#include "engine/conv.h"

#include <atomic>
#include <sstream>
#include <string>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/dispatch.h"
#include "engine/profiler.h"
#include "kernels/conv3d.h"

namespace voxgrad {

using detail::check_compatible;
using detail::check_floating;
using kernels::Conv3dShape;

namespace {

std::atomic<bool> g_deterministic{false};
std::atomic<bool> g_allow_tf32{false};

bool is_double(const Tensor& t) { return t.dtype() == DType::Float64; }

[[maybe_unused]] kernels::ConvMathOptions math_options() {
  return {g_deterministic.load(), g_allow_tf32.load()};
}

std::string triple_str(const Triple& t) {
  std::ostringstream s;
  s << "(" << t[0] << ", " << t[1] << ", " << t[2] << ")";
  return s.str();
}

// ---- the passes on tensors: one device dispatch each ------------------------------------------

// y (n, c_out, out) = conv(x (n, c_in, in), w (c_out, c_in, k)); y overwritten.
void forward_pass(const Tensor& x, const Tensor& w, const Tensor& y, const Conv3dShape& g) {
  ScratchArena scratch(x.device());
  if (x.device().is_cpu()) {
    if (is_double(x)) kernels::cpu::conv3d_forward(x.data<double>(), w.data<double>(), y.data<double>(), g, scratch);
    else kernels::cpu::conv3d_forward(x.data<float>(), w.data<float>(), y.data<float>(), g, scratch);
  } else {
    VG_CUDA_ONLY(kernels::cuda::conv3d_forward(x.data<float>(), w.data<float>(), y.data<float>(), g, math_options(),
                                               scratch, stream_for(x.device())));
  }
}

// dx (n, c_in, in) from dy (n, c_out, out) and w; dx overwritten.
void backward_data_pass(const Tensor& dy, const Tensor& w, const Tensor& dx, const Conv3dShape& g) {
  ScratchArena scratch(dy.device());
  if (dy.device().is_cpu()) {
    if (is_double(dy)) {
      kernels::cpu::conv3d_backward_data(dy.data<double>(), w.data<double>(), dx.data<double>(), g, scratch);
    } else {
      kernels::cpu::conv3d_backward_data(dy.data<float>(), w.data<float>(), dx.data<float>(), g, scratch);
    }
  } else {
    VG_CUDA_ONLY(kernels::cuda::conv3d_backward_data(dy.data<float>(), w.data<float>(), dx.data<float>(), g,
                                                     math_options(), scratch, stream_for(dy.device())));
  }
}

// dw (c_out, c_in, k) from x (n, c_in, in) and dy (n, c_out, out); dw overwritten.
void backward_filter_pass(const Tensor& x, const Tensor& dy, const Tensor& dw, const Conv3dShape& g) {
  ScratchArena scratch(x.device());
  if (x.device().is_cpu()) {
    if (is_double(x)) {
      kernels::cpu::conv3d_backward_filter(x.data<double>(), dy.data<double>(), dw.data<double>(), g, scratch);
    } else {
      kernels::cpu::conv3d_backward_filter(x.data<float>(), dy.data<float>(), dw.data<float>(), g, scratch);
    }
  } else {
    VG_CUDA_ONLY(kernels::cuda::conv3d_backward_filter(x.data<float>(), dy.data<float>(), dw.data<float>(), g,
                                                       math_options(), scratch, stream_for(x.device())));
  }
}

// y (N, C, spatial) += bias (C).
void bias_forward_pass(const Tensor& y, const Tensor& bias) {
  const std::int64_t n = y.size(0), c = y.size(1), spatial = y.numel() / (n * c);
  if (y.device().is_cpu()) {
    if (is_double(y)) kernels::cpu::conv3d_bias_forward(y.data<double>(), bias.data<double>(), n, c, spatial);
    else kernels::cpu::conv3d_bias_forward(y.data<float>(), bias.data<float>(), n, c, spatial);
  } else {
    VG_CUDA_ONLY(kernels::cuda::conv3d_bias_forward(y.data<float>(), bias.data<float>(), n, c, spatial,
                                                    stream_for(y.device())));
  }
}

// db (C) = sum of dy (N, C, spatial) over N and space.
Tensor bias_backward_pass(const Tensor& dy) {
  const std::int64_t n = dy.size(0), c = dy.size(1), spatial = dy.numel() / (n * c);
  Tensor db = empty({c}, dy.dtype(), dy.device());
  if (dy.device().is_cpu()) {
    if (is_double(dy)) kernels::cpu::conv3d_bias_backward(dy.data<double>(), db.data<double>(), n, c, spatial);
    else kernels::cpu::conv3d_bias_backward(dy.data<float>(), db.data<float>(), n, c, spatial);
  } else {
    VG_CUDA_ONLY(kernels::cuda::conv3d_bias_backward(dy.data<float>(), db.data<float>(), n, c, spatial,
                                                     stream_for(dy.device())));
  }
  return db;
}

// ---- checks shared by both ops ----------------------------------------------------------------

void check_operands(const Tensor& x, const Tensor& w, const Tensor& bias, std::int64_t bias_channels,
                    std::int64_t weight_in_axis, const char* op, const char* weight_layout) {
  check_floating(x, op);
  check_compatible(x, w, op);
  VG_CHECK(x.dim() == 5, op << ": input must be (N, C, D, H, W), got shape " << shape_str(x.shape()));
  VG_CHECK(w.dim() == 5, op << ": weight must be " << weight_layout << ", got shape " << shape_str(w.shape()));
  VG_CHECK(x.numel() > 0 && w.numel() > 0, op << ": empty input " << shape_str(x.shape()) << " or weight "
                                              << shape_str(w.shape()));
  VG_CHECK(w.size(static_cast<int>(weight_in_axis)) == x.size(1),
           op << ": weight " << shape_str(w.shape()) << " (" << weight_layout << ") expects "
              << w.size(static_cast<int>(weight_in_axis)) << " input channels, but input " << shape_str(x.shape())
              << " has " << x.size(1));
  if (bias.defined()) {
    check_compatible(x, bias, op);
    VG_CHECK(bias.dim() == 1 && bias.size(0) == bias_channels,
             op << ": bias must be (" << bias_channels << ") for weight " << shape_str(w.shape()) << ", got shape "
                << shape_str(bias.shape()));
  }
}

void check_params(const Triple& stride, const Triple& padding, const Triple& dilation, const char* op) {
  for (int a = 0; a < 3; ++a) {
    VG_CHECK(stride[a] >= 1 && dilation[a] >= 1 && padding[a] >= 0,
             op << ": stride " << triple_str(stride) << " and dilation " << triple_str(dilation)
                << " must be >= 1 and padding " << triple_str(padding) << " >= 0");
  }
}

}  // namespace

void set_conv_deterministic(bool on) { g_deterministic = on; }
bool conv_deterministic() { return g_deterministic; }
void set_conv_allow_tf32(bool on) { g_allow_tf32 = on; }
bool conv_allow_tf32() { return g_allow_tf32; }

Tensor conv3d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv3dParams& p) {
  const char* op = "conv3d";
  check_operands(x, w, bias, w.defined() && w.dim() == 5 ? w.size(0) : 0, 1, op, "(Co, Ci, kD, kH, kW)");
  check_params(p.stride, p.padding, p.dilation, op);
  Conv3dShape g;
  g.n = x.size(0);
  g.c_in = x.size(1);
  g.c_out = w.size(0);
  for (int a = 0; a < 3; ++a) {
    g.in[a] = x.size(2 + a);
    g.kernel[a] = w.size(2 + a);
    g.stride[a] = p.stride[a];
    g.padding[a] = p.padding[a];
    g.dilation[a] = p.dilation[a];
    g.out[a] = kernels::conv_output_size(g.in[a], g.kernel[a], g.stride[a], g.padding[a], g.dilation[a]);
    VG_CHECK(g.out[a] >= 1, op << ": input " << shape_str(x.shape()) << " is smaller than kernel "
                               << shape_str(w.shape()) << " reaches with padding " << triple_str(p.padding)
                               << " and dilation " << triple_str(p.dilation) << " (axis " << 2 + a << ")");
  }
  Tensor y = empty({g.n, g.c_out, g.out[0], g.out[1], g.out[2]}, x.dtype(), x.device());
  {
    VG_PROFILE(op, x.device());
    forward_pass(x, w, y, g);
    if (bias.defined()) bias_forward_pass(y, bias);
  }
  const bool need_x = x.requires_grad(), need_w = w.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  // Save only what the wanted gradients read: dx needs w, dw needs x.
  Tensor x_saved = need_w ? saved(x) : Tensor();
  Tensor w_saved = need_x ? saved(w) : Tensor();
  return record(op, y, {x, w, bias}, [g, need_x, need_w, need_b, x_saved, w_saved](const Tensor& dy) {
    Tensor dx, dw, db;
    if (need_x) {
      dx = empty({g.n, g.c_in, g.in[0], g.in[1], g.in[2]}, dy.dtype(), dy.device());
      backward_data_pass(dy, w_saved, dx, g);
    }
    if (need_w) {
      dw = empty({g.c_out, g.c_in, g.kernel[0], g.kernel[1], g.kernel[2]}, dy.dtype(), dy.device());
      backward_filter_pass(x_saved, dy, dw, g);
    }
    if (need_b) db = bias_backward_pass(dy);
    return std::vector<Tensor>{dx, dw, db};
  });
}

Tensor conv_transpose3d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvTranspose3dParams& p) {
  const char* op = "conv_transpose3d";
  check_operands(x, w, bias, w.defined() && w.dim() == 5 ? w.size(1) : 0, 0, op, "(Ci, Co, kD, kH, kW)");
  check_params(p.stride, p.padding, p.dilation, op);
  // g is the convolution this op transposes: its input is our output, its output our input, and
  // its (c_out, c_in, k) weight is our (Ci, Co, k) weight as stored.
  Conv3dShape g;
  g.n = x.size(0);
  g.c_in = w.size(1);
  g.c_out = w.size(0);
  for (int a = 0; a < 3; ++a) {
    VG_CHECK(p.output_padding[a] >= 0 && (p.output_padding[a] < p.stride[a] || p.output_padding[a] < p.dilation[a]),
             op << ": output_padding " << triple_str(p.output_padding) << " must be smaller than stride "
                << triple_str(p.stride) << " or dilation " << triple_str(p.dilation));
    g.out[a] = x.size(2 + a);
    g.kernel[a] = w.size(2 + a);
    g.stride[a] = p.stride[a];
    g.padding[a] = p.padding[a];
    g.dilation[a] = p.dilation[a];
    g.in[a] = kernels::conv_transpose_output_size(g.out[a], g.kernel[a], g.stride[a], g.padding[a], g.dilation[a],
                                                  p.output_padding[a]);
    VG_CHECK(g.in[a] >= 1, op << ": input " << shape_str(x.shape()) << " with weight " << shape_str(w.shape())
                              << ", stride " << triple_str(p.stride) << ", padding " << triple_str(p.padding)
                              << " gives output size " << g.in[a] << " on axis " << 2 + a);
  }
  Tensor y = empty({g.n, g.c_in, g.in[0], g.in[1], g.in[2]}, x.dtype(), x.device());
  {
    VG_PROFILE(op, x.device());
    backward_data_pass(x, w, y, g);
    if (bias.defined()) bias_forward_pass(y, bias);
  }
  const bool need_x = x.requires_grad(), need_w = w.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  Tensor x_saved = need_w ? saved(x) : Tensor();
  Tensor w_saved = need_x ? saved(w) : Tensor();
  return record(op, y, {x, w, bias}, [g, need_x, need_w, need_b, x_saved, w_saved](const Tensor& dy) {
    Tensor dx, dw, db;
    if (need_x) {
      dx = empty({g.n, g.c_out, g.out[0], g.out[1], g.out[2]}, dy.dtype(), dy.device());
      forward_pass(dy, w_saved, dx, g);
    }
    if (need_w) {
      // The transposed op's output gradient is the input of the convolution g, its input g's output.
      dw = empty({g.c_out, g.c_in, g.kernel[0], g.kernel[1], g.kernel[2]}, dy.dtype(), dy.device());
      backward_filter_pass(dy, x_saved, dw, g);
    }
    if (need_b) db = bias_backward_pass(dy);
    return std::vector<Tensor>{dx, dw, db};
  });
}

}  // namespace voxgrad
