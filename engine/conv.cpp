// conv3d and conv_transpose3d as autograd ops: input checks with PyTorch's rules, one dispatch per
// pass to the CPU twins or cuDNN, and the backward closures. A transposed convolution runs the
// passes of the convolution it transposes with roles exchanged, so the math exists once.
#include "engine/conv.h"

#include <algorithm>
#include <atomic>
#include <sstream>
#include <string>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "engine/profiler.h"
#include "kernels/conv3d.h"

namespace voxgrad {

using detail::check_compatible;
using detail::check_floating;
using detail::dispatch_floating;
using kernels::Conv3dShape;

namespace {

std::atomic<bool> g_deterministic{false};
std::atomic<bool> g_allow_tf32{false};

// The convolution twins' trailing arguments: the CPU twin takes a scratch arena; cuDNN takes the
// math options its algorithm choice depends on (held by value), then its workspace arena.
template <class On>
auto with_conv_args(const On& on, ScratchArena& scratch) {
  return on.with_cpu_args(scratch).with_cuda_args(kernels::ConvMathOptions{g_deterministic, g_allow_tf32}, scratch);
}

std::string triple_str(const Triple& t) {
  std::ostringstream s;
  s << "(" << t[0] << ", " << t[1] << ", " << t[2] << ")";
  return s.str();
}

// ---- checks shared by both ops ----------------------------------------------------------------

void check_operands(const Tensor& x, const Tensor& w, const Tensor& bias, std::int64_t bias_channels,
                    std::int64_t weight_in_axis, const char* op, const char* weight_layout) {
  check_floating(x, op);
  check_compatible(x, w, op);
  VG_CHECK(x.dim() == 5, op << ": input must be (N, C, D, H, W), got shape " << shape_str(x.shape()));
  VG_CHECK(w.dim() == 5, op << ": weight must be " << weight_layout << ", got shape " << shape_str(w.shape()));
  VG_CHECK(x.numel() > 0 && w.numel() > 0,
           op << ": empty input " << shape_str(x.shape()) << " or weight " << shape_str(w.shape()));
  VG_CHECK(w.size(static_cast<int>(weight_in_axis)) == x.size(1),
           op << ": weight " << shape_str(w.shape()) << " (" << weight_layout << ") expects "
              << w.size(static_cast<int>(weight_in_axis)) << " input channels, but input " << shape_str(x.shape())
              << " has " << x.size(1));
  if (bias.defined()) {
    check_compatible(x, bias, op);
    VG_CHECK(bias.dim() == 1 && bias.size(0) == bias_channels, op << ": bias must be (" << bias_channels
                                                                  << ") for weight " << shape_str(w.shape())
                                                                  << ", got shape " << shape_str(bias.shape()));
  }
}

void check_params(const Triple& stride, const Triple& padding, const Triple& dilation, const char* op) {
  for (int a = 0; a < 3; ++a) {
    VG_CHECK(stride[a] >= 1 && dilation[a] >= 1 && padding[a] >= 0,
             op << ": stride " << triple_str(stride) << " and dilation " << triple_str(dilation)
                << " must be >= 1 and padding " << triple_str(padding) << " >= 0");
  }
}

// x (N, C, D, H, W) with extra[a] zero planes appended on spatial axis a; x itself when none.
Tensor pad_spatial_end(const Tensor& x, const Triple& extra) {
  Tensor t = x.detach();
  for (int a = 0; a < 3; ++a) {
    if (extra[a] == 0) continue;
    Shape zero_shape = t.shape();
    zero_shape[2 + a] = extra[a];
    t = concat({t, zeros(zero_shape, t.dtype(), t.device())}, 2 + a);
  }
  return t;
}

// The leading `shape` block of t (N, C, D, H, W); t itself when the shapes are equal.
Tensor crop_spatial_end(const Tensor& t, const Shape& shape) {
  Tensor c = t;
  for (int a = 2; a < 5; ++a)
    if (c.size(a) != shape[static_cast<std::size_t>(a)]) c = slice(c, a, 0, shape[static_cast<std::size_t>(a)]);
  return c;
}

}  // namespace

void set_conv_deterministic(bool on) { g_deterministic = on; }
bool conv_deterministic() { return g_deterministic; }
void set_conv_allow_tf32(bool on) { g_allow_tf32 = on; }
bool conv_allow_tf32() { return g_allow_tf32; }

namespace {

// The convolutions' cost model, from the geometry g both directions run on: two FLOPs per
// multiply-add of every (output position, output channel, input channel, kernel tap), one per
// bias add; bytes of input, weight and output read or written once. The backward pays the same
// multiply-adds once per gradient it computes.
// bias_adds: the op's output elements when it adds a bias (the output is g's input for the
// transposed convolution), else 0.
OpCost conv_forward_cost(const Conv3dShape& g, double element, double bias_adds) {
  const double taps = static_cast<double>(g.n * g.c_out * g.out_spatial()) * static_cast<double>(g.c_in) *
                      static_cast<double>(g.kernel_volume());
  const double x = static_cast<double>(g.n * g.c_in * g.in_spatial()),
               y = static_cast<double>(g.n * g.c_out * g.out_spatial());
  const double w = static_cast<double>(g.c_out * g.c_in * g.kernel_volume());
  return {2.0 * taps + bias_adds, element * (x + w + y)};
}

OpCost conv_backward_cost(const Conv3dShape& g, double element, bool need_x, bool need_w, double bias_adds) {
  const double taps = static_cast<double>(g.n * g.c_out * g.out_spatial()) * static_cast<double>(g.c_in) *
                      static_cast<double>(g.kernel_volume());
  const double x = static_cast<double>(g.n * g.c_in * g.in_spatial()),
               y = static_cast<double>(g.n * g.c_out * g.out_spatial());
  const double w = static_cast<double>(g.c_out * g.c_in * g.kernel_volume());
  OpCost c{0.0, element * y};  // dy, read by every part
  if (need_x) c = {c.flops + 2.0 * taps, c.bytes + element * (w + x)};
  if (need_w) c = {c.flops + 2.0 * taps, c.bytes + element * (x + w)};
  c.flops += bias_adds;
  return c;
}

}  // namespace

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
  const double element = static_cast<double>(x.nbytes()) / static_cast<double>(std::max<std::int64_t>(x.numel(), 1));
  {
    VG_PROFILE_COST(op, x.device(),
                    conv_forward_cost(g, element, bias.defined() ? static_cast<double>(y.numel()) : 0.0));
    dispatch_floating(x, [&]<class T>(auto on) {
      {
        ScratchArena scratch(x.device());
        VG_LAUNCH(with_conv_args(on, scratch), conv3d_forward, x.data<T>(), w.data<T>(), y.data<T>(), g);
      }
      if (bias.defined())
        VG_LAUNCH(on, conv3d_bias_forward, y.data<T>(), bias.data<T>(), g.n, g.c_out, g.out_spatial());
    });
  }
  const bool need_x = x.requires_grad(), need_w = w.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  // Save only what the wanted gradients read: dx needs w, dw needs x.
  Tensor x_saved = need_w ? saved(x) : Tensor();
  Tensor w_saved = need_x ? saved(w) : Tensor();
  Tensor out = record(op, y, {x, w, bias}, [g, need_x, need_w, need_b, x_saved, w_saved](const Tensor& dy) {
    Tensor dx, dw, db;
    dispatch_floating(dy, [&]<class T>(auto on) {
      if (need_x) {
        dx = empty({g.n, g.c_in, g.in[0], g.in[1], g.in[2]}, dy.dtype(), dy.device());
        ScratchArena scratch(dy.device());
        VG_LAUNCH(with_conv_args(on, scratch), conv3d_backward_data, dy.data<T>(), w_saved.data<T>(), dx.data<T>(), g);
      }
      if (need_w) {
        dw = empty({g.c_out, g.c_in, g.kernel[0], g.kernel[1], g.kernel[2]}, dy.dtype(), dy.device());
        ScratchArena scratch(dy.device());
        VG_LAUNCH(with_conv_args(on, scratch), conv3d_backward_filter, x_saved.data<T>(), dy.data<T>(), dw.data<T>(),
                  g);
      }
      if (need_b) {
        db = empty({g.c_out}, dy.dtype(), dy.device());
        VG_LAUNCH(on, conv3d_bias_backward, dy.data<T>(), db.data<T>(), g.n, g.c_out, g.out_spatial());
      }
    });
    return std::vector<Tensor>{dx, dw, db};
  });
  if (profiler::enabled())
    set_backward_cost(out,
                      conv_backward_cost(g, element, need_x, need_w, need_b ? static_cast<double>(y.numel()) : 0.0));
  return out;
}

Tensor conv_transpose3d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvTranspose3dParams& p) {
  const char* op = "conv_transpose3d";
  check_operands(x, w, bias, w.defined() && w.dim() == 5 ? w.size(1) : 0, 0, op, "(Ci, Co, kD, kH, kW)");
  check_params(p.stride, p.padding, p.dilation, op);
  // g is the convolution this op transposes: its input is our output, its output our input, and
  // its (c_out, c_in, k) weight is our (Ci, Co, k) weight as stored. With output_padding >= stride
  // (allowed while below the dilation) g's output is larger than x by x_padding planes per axis
  // (kernels::conv_transpose_input_padding): the passes run on that geometry with x padded by zero
  // planes, which add nothing to y, and dx is cropped back to x's shape. cuDNN refuses sizes that
  // disagree, and the CPU twins run the same padded geometry rather than a path of their own, so the
  // CPU suite tests exactly what cuDNN is given; the extra copies arise only in this rare case.
  Triple x_padding{0, 0, 0};
  Conv3dShape g;
  g.n = x.size(0);
  g.c_in = w.size(1);
  g.c_out = w.size(0);
  for (int a = 0; a < 3; ++a) {
    VG_CHECK(p.output_padding[a] >= 0 && (p.output_padding[a] < p.stride[a] || p.output_padding[a] < p.dilation[a]),
             op << ": output_padding " << triple_str(p.output_padding) << " must be smaller than stride "
                << triple_str(p.stride) << " or dilation " << triple_str(p.dilation));
    x_padding[a] = kernels::conv_transpose_input_padding(p.stride[a], p.output_padding[a]);
    g.out[a] = x.size(2 + a) + x_padding[a];
    g.kernel[a] = w.size(2 + a);
    g.stride[a] = p.stride[a];
    g.padding[a] = p.padding[a];
    g.dilation[a] = p.dilation[a];
    g.in[a] = kernels::conv_transpose_output_size(x.size(2 + a), g.kernel[a], g.stride[a], g.padding[a], g.dilation[a],
                                                  p.output_padding[a]);
    VG_CHECK(g.in[a] >= 1, op << ": input " << shape_str(x.shape()) << " with weight " << shape_str(w.shape())
                              << ", stride " << triple_str(p.stride) << ", padding " << triple_str(p.padding)
                              << " gives output size " << g.in[a] << " on axis " << 2 + a);
  }
  Tensor y = empty({g.n, g.c_in, g.in[0], g.in[1], g.in[2]}, x.dtype(), x.device());
  const Tensor x_run = pad_spatial_end(x, x_padding);  // (N, Ci, g.out)
  const double element = static_cast<double>(x.nbytes()) / static_cast<double>(std::max<std::int64_t>(x.numel(), 1));
  {
    VG_PROFILE_COST(op, x.device(),
                    conv_forward_cost(g, element, bias.defined() ? static_cast<double>(y.numel()) : 0.0));
    dispatch_floating(x, [&]<class T>(auto on) {
      {
        ScratchArena scratch(x.device());
        VG_LAUNCH(with_conv_args(on, scratch), conv3d_backward_data, x_run.data<T>(), w.data<T>(), y.data<T>(), g);
      }
      if (bias.defined()) VG_LAUNCH(on, conv3d_bias_forward, y.data<T>(), bias.data<T>(), g.n, g.c_in, g.in_spatial());
    });
  }
  const bool need_x = x.requires_grad(), need_w = w.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  Tensor x_saved = need_w ? saved(x_run) : Tensor();
  Tensor w_saved = need_x ? saved(w) : Tensor();
  const Shape x_shape = x.shape();
  Tensor out = record(op, y, {x, w, bias}, [g, x_shape, need_x, need_w, need_b, x_saved, w_saved](const Tensor& dy) {
    Tensor dx, dw, db;
    dispatch_floating(dy, [&]<class T>(auto on) {
      if (need_x) {
        dx = empty({g.n, g.c_out, g.out[0], g.out[1], g.out[2]}, dy.dtype(), dy.device());
        {
          ScratchArena scratch(dy.device());
          VG_LAUNCH(with_conv_args(on, scratch), conv3d_forward, dy.data<T>(), w_saved.data<T>(), dx.data<T>(), g);
        }
        dx = crop_spatial_end(dx, x_shape);
      }
      if (need_w) {
        // The transposed op's output gradient is the input of the convolution g, its input g's output.
        dw = empty({g.c_out, g.c_in, g.kernel[0], g.kernel[1], g.kernel[2]}, dy.dtype(), dy.device());
        ScratchArena scratch(dy.device());
        VG_LAUNCH(with_conv_args(on, scratch), conv3d_backward_filter, dy.data<T>(), x_saved.data<T>(), dw.data<T>(),
                  g);
      }
      if (need_b) {
        db = empty({g.c_in}, dy.dtype(), dy.device());
        VG_LAUNCH(on, conv3d_bias_backward, dy.data<T>(), db.data<T>(), g.n, g.c_in, g.in_spatial());
      }
    });
    return std::vector<Tensor>{dx, dw, db};
  });
  if (profiler::enabled())
    set_backward_cost(out,
                      conv_backward_cost(g, element, need_x, need_w, need_b ? static_cast<double>(y.numel()) : 0.0));
  return out;
}

}  // namespace voxgrad
