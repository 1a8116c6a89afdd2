// instance_norm3d, batch_norm3d, max_pool3d, avg_pool3d and dropout3d: input checks, one device
// dispatch per forward and per backward for the kernels of kernels/norm.h and kernels/pool.h, each
// forward inside a profiler scope and its backward closure recorded beside it.
#include "engine/norm_pool.h"

#include <algorithm>
#include <limits>

#include "engine/allocator.h"
#include "engine/dispatch.h"
#include "engine/profiler.h"
#include "kernels/norm.h"
#include "kernels/pool.h"

namespace voxgrad {

using detail::check_compatible;
using detail::check_floating;
using detail::data_or_null;
using detail::dispatch_floating;

namespace {

void check_volume(const Tensor& x, const char* op) {
  check_floating(x, op);
  VG_CHECK(x.dim() == 5, op << ": needs a 5-D (N, C, D, H, W) tensor, got " << shape_str(x.shape()));
  for (int k = 0; k < 5; ++k) VG_CHECK(x.shape()[k] > 0, op << ": empty axis " << k << " in " << shape_str(x.shape()));
}

// A per-channel tensor: undefined (absent), or (C) on x's device with x's dtype.
void check_channel_tensor(const Tensor& t, const Tensor& x, const char* op, const char* what) {
  if (!t.defined()) return;
  check_compatible(x, t, op);
  VG_CHECK(t.shape() == Shape{x.shape()[1]}, op << ": " << what << " must have shape (" << x.shape()[1] << ") for "
                                                << x.shape()[1] << " channels, got " << shape_str(t.shape()));
}

// ---- the shared normalisation op ---------------------------------------------------------------

// y = (x - mean) * invstd * weight + bias with per-channel mean and invstd (g.channels) already
// computed; batch_stats says whether they are functions of x (the backward's mean terms).
Tensor normalize(const char* name, const Tensor& x, const Tensor& weight, const Tensor& bias,
                 const kernels::NormGeometry& g, const Tensor& mean, const Tensor& invstd, bool batch_stats) {
  Tensor y = empty_like(x);  // (N, C, D, H, W)
  dispatch_floating(x, [&]<class T>(auto on) {
    VG_LAUNCH(on, norm_forward, x.data<T>(), mean.data<T>(), invstd.data<T>(), data_or_null<T>(weight),
              data_or_null<T>(bias), y.data<T>(), g);
  });
  const bool need_x = x.requires_grad();
  const bool need_w = weight.defined() && weight.requires_grad();
  const bool need_b = bias.defined() && bias.requires_grad();
  Tensor out = record(name, y, {x, weight, bias},
                      [g, batch_stats, need_x, need_w, need_b, x_saved = saved(x), w_saved = saved(weight), mean,
                       invstd](const Tensor& dy) {
                        Tensor dx, dw, db, sum_dy, sum_dy_xhat;  // sums: (g.channels)
                        dispatch_floating(dy, [&]<class T>(auto on) {
                          if (need_w || need_b || (need_x && batch_stats)) {
                            sum_dy = empty({g.channels}, dy.dtype(), dy.device());
                            sum_dy_xhat = empty({g.channels}, dy.dtype(), dy.device());
                            ScratchArena scratch(dy.device());
                            VG_LAUNCH(on.with_cuda_args(scratch), norm_backward_reduce, x_saved.data<T>(), dy.data<T>(),
                                      mean.data<T>(), invstd.data<T>(), sum_dy.data<T>(), sum_dy_xhat.data<T>(), g);
                          }
                          if (need_x) {
                            dx = empty_like(dy);
                            VG_LAUNCH(on, norm_backward_input, x_saved.data<T>(), dy.data<T>(), mean.data<T>(),
                                      invstd.data<T>(), data_or_null<T>(w_saved), data_or_null<T>(sum_dy),
                                      data_or_null<T>(sum_dy_xhat), dx.data<T>(), g, batch_stats);
                          }
                          if (need_w) dw = empty({g.affine_channels}, dy.dtype(), dy.device());
                          if (need_b) db = empty({g.affine_channels}, dy.dtype(), dy.device());
                          if (need_w || need_b) {
                            VG_LAUNCH(on, norm_affine_grad, sum_dy.data<T>(), sum_dy_xhat.data<T>(),
                                      data_or_null<T>(dw), data_or_null<T>(db), g);
                          }
                        });
                        return std::vector<Tensor>{dx, dw, db};
                      });
  // Backward: x and dy read, dx written; two sums and the input gradient, about 8 operations an element.
  if (profiler::enabled())
    set_backward_cost(out, elementwise_cost(x.numel(), 8.0, 3,
                                            static_cast<double>(x.nbytes()) /
                                                static_cast<double>(std::max<std::int64_t>(x.numel(), 1))));
  return out;
}

// The statistics and normalisation's cost model: x read, y written; mean, variance, then
// (x - mean) * invstd * weight + bias, about 7 operations an element.
OpCost norm_forward_cost(const Tensor& x) {
  return elementwise_cost(x.numel(), 7.0, 2,
                          static_cast<double>(x.nbytes()) / static_cast<double>(std::max<std::int64_t>(x.numel(), 1)));
}

// ---- pool helpers ------------------------------------------------------------------------------

kernels::PoolGeometry pool_geometry(const char* op, const Tensor& x, Triple kernel, Triple stride, Triple padding) {
  check_volume(x, op);
  if (stride == Triple{0, 0, 0}) stride = kernel;
  kernels::PoolGeometry g;
  g.planes = x.shape()[0] * x.shape()[1];
  for (int a = 0; a < 3; ++a) {
    const std::int64_t in = x.shape()[2 + a];
    VG_CHECK(kernel[a] > 0, op << ": kernel sizes must be positive, got " << kernel[a] << " on axis " << a);
    VG_CHECK(stride[a] > 0,
             op << ": strides must be positive (or all 0 for the kernel size), got " << stride[a] << " on axis " << a);
    VG_CHECK(padding[a] >= 0 && 2 * padding[a] <= kernel[a],
             op << ": padding must be between 0 and half the kernel size, got " << padding[a] << " for kernel "
                << kernel[a] << " on axis " << a);
    VG_CHECK(in + 2 * padding[a] >= kernel[a], op << ": kernel " << kernel[a] << " is larger than the padded input ("
                                                  << in << " + 2 * " << padding[a] << ") on axis " << a << " of "
                                                  << shape_str(x.shape()));
    g.in[a] = in;
    g.kernel[a] = kernel[a];
    g.stride[a] = stride[a];
    g.padding[a] = padding[a];
    g.out[a] = (in + 2 * padding[a] - kernel[a]) / stride[a] + 1;
  }
  VG_CHECK(g.in_plane() <= std::numeric_limits<std::int32_t>::max(),
           op << ": a (D, H, W) plane of " << g.in_plane() << " elements is too large for int32 indices");
  return g;
}

Shape pool_output_shape(const Tensor& x, const kernels::PoolGeometry& g) {
  return {x.shape()[0], x.shape()[1], g.out[0], g.out[1], g.out[2]};
}

}  // namespace

// ---- public API ----------------------------------------------------------------------------------

Tensor instance_norm3d(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  const char* op = "instance_norm3d";
  check_volume(x, op);
  check_channel_tensor(weight, x, op, "weight");
  check_channel_tensor(bias, x, op, "bias");
  VG_CHECK(eps >= 0, op << ": eps must be non-negative, got " << eps);
  const std::int64_t n = x.shape()[0], c = x.shape()[1];
  // Each (n, c) is its own channel of a (1, N*C, D*H*W) view; the affine entry is c.
  const kernels::NormGeometry g{1, n * c, x.numel() / (n * c), c};
  Tensor mean = empty({n * c}, x.dtype(), x.device());    // (N*C)
  Tensor var = empty({n * c}, x.dtype(), x.device());     // (N*C), biased
  Tensor invstd = empty({n * c}, x.dtype(), x.device());  // (N*C)
  VG_PROFILE_COST(op, x.device(), norm_forward_cost(x));
  dispatch_floating(x, [&]<class T>(auto on) {
    ScratchArena scratch(x.device());
    VG_LAUNCH(on.with_cuda_args(scratch), norm_stats, x.data<T>(), mean.data<T>(), var.data<T>(), invstd.data<T>(), g,
              eps);
  });
  return normalize(op, x, weight, bias, g, mean, invstd, true);
}

Tensor batch_norm3d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                    const Tensor& running_var, bool training, double momentum, double eps) {
  const char* op = "batch_norm3d";
  check_volume(x, op);
  check_channel_tensor(weight, x, op, "weight");
  check_channel_tensor(bias, x, op, "bias");
  check_channel_tensor(running_mean, x, op, "running_mean");
  check_channel_tensor(running_var, x, op, "running_var");
  VG_CHECK(eps >= 0, op << ": eps must be non-negative, got " << eps);
  const std::int64_t n = x.shape()[0], c = x.shape()[1];
  const kernels::NormGeometry g{n, c, x.numel() / (n * c), c};
  Tensor mean, invstd;  // (C)
  VG_PROFILE_COST(op, x.device(), norm_forward_cost(x));
  if (training) {
    VG_CHECK(g.count() > 1,
             op << ": training needs more than one value per channel, got input " << shape_str(x.shape()));
    mean = empty({c}, x.dtype(), x.device());
    invstd = empty({c}, x.dtype(), x.device());
    Tensor var = empty({c}, x.dtype(), x.device());  // (C), biased
    dispatch_floating(x, [&]<class T>(auto on) {
      {
        ScratchArena scratch(x.device());
        VG_LAUNCH(on.with_cuda_args(scratch), norm_stats, x.data<T>(), mean.data<T>(), var.data<T>(), invstd.data<T>(),
                  g, eps);
      }
      if (running_mean.defined() || running_var.defined()) {
        VG_LAUNCH(on, batch_norm_update_running, mean.data<T>(), var.data<T>(), data_or_null<T>(running_mean),
                  data_or_null<T>(running_var), c, g.count(), momentum);
      }
    });
  } else {
    VG_CHECK(running_mean.defined() && running_var.defined(),
             op << ": eval mode normalises with the running statistics; pass running_mean and running_var");
    // Copies: a later training step updates the running tensors in place, the backward must not see it.
    mean = running_mean.detach().clone();
    invstd = empty({c}, x.dtype(), x.device());
    dispatch_floating(running_var, [&]<class T>(auto on) {
      VG_LAUNCH(on, invstd_from_var, running_var.data<T>(), invstd.data<T>(), running_var.numel(), eps);
    });
  }
  return normalize(op, x, weight, bias, g, mean, invstd, training);
}

Tensor max_pool3d(const Tensor& x, Triple kernel, Triple stride, Triple padding) {
  const char* op = "max_pool3d";
  const kernels::PoolGeometry g = pool_geometry(op, x, kernel, stride, padding);
  Tensor y = empty(pool_output_shape(x, g), x.dtype(), x.device());       // (N, C, OD, OH, OW)
  Tensor arg = empty(pool_output_shape(x, g), DType::Int32, x.device());  // (N, C, OD, OH, OW)
  {
    VG_PROFILE(op, x.device());
    dispatch_floating(x, [&]<class T>(auto on) {
      VG_LAUNCH(on, max_pool3d_forward, x.data<T>(), y.data<T>(), arg.data<std::int32_t>(), g);
    });
  }
  return record(op, y, {x}, [g, arg, x_shape = x.shape()](const Tensor& dy) {
    Tensor dx = empty(x_shape, dy.dtype(), dy.device());
    dispatch_floating(dy, [&]<class T>(auto on) {
      VG_LAUNCH(on, max_pool3d_backward, dy.data<T>(), arg.data<std::int32_t>(), dx.data<T>(), g);
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor avg_pool3d(const Tensor& x, Triple kernel, Triple stride, Triple padding, bool count_include_pad) {
  const char* op = "avg_pool3d";
  const kernels::PoolGeometry g = pool_geometry(op, x, kernel, stride, padding);
  Tensor y = empty(pool_output_shape(x, g), x.dtype(), x.device());  // (N, C, OD, OH, OW)
  {
    VG_PROFILE(op, x.device());
    dispatch_floating(x, [&]<class T>(auto on) {
      VG_LAUNCH(on, avg_pool3d_forward, x.data<T>(), y.data<T>(), g, count_include_pad);
    });
  }
  return record(op, y, {x}, [g, count_include_pad, x_shape = x.shape()](const Tensor& dy) {
    Tensor dx = empty(x_shape, dy.dtype(), dy.device());
    dispatch_floating(dy, [&]<class T>(auto on) {
      VG_LAUNCH(on, avg_pool3d_backward, dy.data<T>(), dx.data<T>(), g, count_include_pad);
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor dropout3d(const Tensor& x, double p, bool training, Generator& gen) {
  const char* op = "dropout3d";
  check_volume(x, op);
  VG_CHECK(p >= 0 && p <= 1, op << ": p must be in [0, 1], got " << p);
  if (!training || p == 0) return x;
  const std::int64_t channels = x.shape()[0] * x.shape()[1];
  Tensor mask = empty({channels}, x.dtype(), x.device());  // (N*C): 0 or 1/(1-p)
  Tensor y = empty_like(x);                                // (N, C, D, H, W)
  const std::int64_t inner = x.numel() / channels;
  {
    VG_PROFILE(op, x.device());
    const std::uint64_t offset = gen.reserve(channels);
    dispatch_floating(x, [&]<class T>(auto on) {
      VG_LAUNCH(on, dropout_mask, mask.data<T>(), channels, gen.seed(), offset, p);
      VG_LAUNCH(on, channel_scale, x.data<T>(), mask.data<T>(), y.data<T>(), channels, inner);
    });
  }
  return record(op, y, {x}, [mask, inner](const Tensor& dy) {
    Tensor dx = empty_like(dy);
    dispatch_floating(dy, [&]<class T>(auto on) {
      VG_LAUNCH(on, channel_scale, dy.data<T>(), mask.data<T>(), dx.data<T>(), mask.numel(), inner);
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor dropout3d(const Tensor& x, double p, bool training) { return dropout3d(x, p, training, default_generator()); }

}  // namespace voxgrad
