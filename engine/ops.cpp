// The differentiable ops: each function checks its inputs, dispatches its forward kernel to the
// CPU twin or the CUDA kernel inside a profiler scope, and records its backward closure beside it.
#include "engine/ops.h"

#include <algorithm>
#include <numeric>

#include "engine/allocator.h"
#include "engine/dispatch.h"
#include "engine/profiler.h"
#include "kernels/elementwise.h"
#include "kernels/layout.h"
#include "kernels/reduce.h"
#include "kernels/softmax.h"

namespace voxgrad {

using detail::check_compatible;
using detail::check_floating;
using detail::data_or_null;
using detail::dispatch_device;
using detail::dispatch_floating;

namespace {

int normalize_axis(int axis, int ndim, const char* op) {
  const int a = axis < 0 ? axis + ndim : axis;
  VG_CHECK(a >= 0 && a < ndim, op << ": axis " << axis << " is out of range for " << ndim << " axes");
  return a;
}

std::int64_t prod(const Shape& s, std::size_t from, std::size_t to) {
  std::int64_t n = 1;
  for (std::size_t i = from; i < to && i < s.size(); ++i) n *= s[i];
  return n;
}

// Copies `rows` rows of `row_bytes` between two tensors on one device, at byte offsets.
void copy_rows(const Tensor& src, std::int64_t src_offset, std::int64_t src_pitch, const Tensor& dst,
               std::int64_t dst_offset, std::int64_t dst_pitch, std::int64_t rows, std::int64_t row_bytes) {
  if (rows == 0 || row_bytes == 0) return;
  const char* s = static_cast<const char*>(src.raw_data()) + src_offset;
  char* d = static_cast<char*>(dst.raw_data()) + dst_offset;
  dispatch_device(src.device(),
                  [&](auto on) { VG_LAUNCH(on, copy_rows, s, src_pitch, d, dst_pitch, rows, row_bytes); });
}

// ---- unary ----------------------------------------------------------------------------------

struct UnaryInfo {
  const char* name;
  bool backward_needs_x;  // otherwise the output y (or nothing, for neg)
  bool backward_needs_y;
};

UnaryInfo unary_info(kernels::UnaryOp op) {
  using kernels::UnaryOp;
  switch (op) {
    case UnaryOp::Neg:
      return {"neg", false, false};
    case UnaryOp::Exp:
      return {"exp", false, true};
    case UnaryOp::Log:
      return {"log", true, false};
    case UnaryOp::Relu:
      return {"relu", true, false};
    case UnaryOp::LeakyRelu:
      return {"leaky_relu", true, false};
    case UnaryOp::Sigmoid:
      return {"sigmoid", false, true};
    case UnaryOp::Tanh:
      return {"tanh", false, true};
  }
  return {"unary", true, true};
}

Tensor unary(kernels::UnaryOp op, const Tensor& x, double alpha = 0) {
  const UnaryInfo info = unary_info(op);
  check_floating(x, info.name);
  Tensor y = empty_like(x);
  const double element = static_cast<double>(x.nbytes()) / static_cast<double>(std::max<std::int64_t>(x.numel(), 1));
  {
    VG_PROFILE_COST(info.name, x.device(), elementwise_cost(x.numel(), 1.0, 2, element));
    dispatch_floating(x, [&]<class T>(auto on) {
      VG_LAUNCH(on, unary_forward, op, x.data<T>(), y.data<T>(), x.numel(), static_cast<T>(alpha));
    });
  }
  // Save only what the derivative reads; the kernel gets the saved tensor in both slots, and the
  // formula of this op ignores the other one.
  Tensor x_saved = info.backward_needs_x ? saved(x) : Tensor();
  Tensor y_saved = info.backward_needs_y ? saved(y) : Tensor();
  Tensor out = record(info.name, y, {x}, [op, alpha, x_saved, y_saved](const Tensor& dy) {
    const Tensor& xs = x_saved.defined() ? x_saved : (y_saved.defined() ? y_saved : dy);
    const Tensor& ys = y_saved.defined() ? y_saved : xs;
    Tensor dx = empty_like(dy);
    dispatch_floating(dy, [&]<class T>(auto on) {
      VG_LAUNCH(on, unary_backward, op, xs.data<T>(), ys.data<T>(), dy.data<T>(), dx.data<T>(), dy.numel(),
                static_cast<T>(alpha));
    });
    return std::vector<Tensor>{dx};
  });
  // Backward: the saved tensor and dy read, dx written; a multiply by the derivative.
  if (profiler::enabled()) set_backward_cost(out, elementwise_cost(x.numel(), 2.0, 3, element));
  return out;
}

// ---- binary with broadcasting ---------------------------------------------------------------

// How `operand` is read across `out`, and the axes of `out` its gradient is summed over.
struct OperandPlan {
  kernels::Broadcast broadcast;
  unsigned reduce_mask = 0;  // 0: same shape, gradient taken as is
};

bool plan_operand(const Shape& operand, const Shape& out, OperandPlan* plan) {
  const std::int64_t n = shape_numel(out);
  const int ndim = static_cast<int>(out.size());
  const unsigned all = ndim == 0 ? 0u : ((1u << ndim) - 1u);
  if (operand == out) {
    *plan = {{1, n}, 0};
    return true;
  }
  if (shape_numel(operand) == 1) {
    *plan = {{n, 1}, all};
    return true;
  }
  // A (C) vector over the channel axis of (N, C, ...).
  if (operand.size() == 1 && ndim >= 2 && operand[0] == out[1]) {
    *plan = {{prod(out, 2, out.size()), out[1]}, all & ~(1u << 1)};
    return true;
  }
  // Same rank, equal to `out` on one block of adjacent axes [lo, hi), 1 elsewhere.
  if (static_cast<int>(operand.size()) != ndim) return false;
  int lo = -1, hi = -1;
  for (int k = 0; k < ndim; ++k) {
    if (operand[k] == 1 && out[k] != 1) continue;
    if (operand[k] != out[k]) return false;
    if (lo < 0) lo = k;
    if (hi >= 0 && hi != k) return false;  // a gap of broadcast axes inside the block
    hi = k + 1;
  }
  if (lo < 0) return false;
  unsigned mask = 0;
  for (int k = 0; k < ndim; ++k)
    if (k < lo || k >= hi) mask |= 1u << k;
  *plan = {{prod(out, hi, out.size()), prod(out, lo, hi)}, mask};
  return true;
}

// Sum a full-size gradient down to the operand's shape.
Tensor reduce_to_operand(const Tensor& g, const OperandPlan& plan, const Shape& operand_shape) {
  if (plan.reduce_mask == 0) return g;
  const auto geometry = kernels::make_reduce_geometry(g.shape().data(), g.dim(), plan.reduce_mask);
  Tensor out = empty(operand_shape, g.dtype(), g.device());
  dispatch_floating(g, [&]<class T>(auto on) {
    ScratchArena scratch(g.device());
    VG_LAUNCH(on.with_cuda_args(scratch), sum_axes, g.data<T>(), out.data<T>(), geometry, static_cast<T>(1.0));
  });
  return out;
}

Tensor binary(kernels::BinaryOp op, const char* name, const Tensor& a, const Tensor& b) {
  check_floating(a, name);
  check_floating(b, name);
  check_compatible(a, b, name);
  // The output takes the shape of the operand the other one broadcasts over.
  Shape out_shape;
  OperandPlan pa, pb;
  if (plan_operand(b.shape(), a.shape(), &pb)) {
    out_shape = a.shape();
    plan_operand(a.shape(), out_shape, &pa);
  } else if (plan_operand(a.shape(), b.shape(), &pa)) {
    out_shape = b.shape();
    plan_operand(b.shape(), out_shape, &pb);
  } else {
    VG_FAIL(name << ": shapes " << shape_str(a.shape()) << " and " << shape_str(b.shape())
                 << " do not broadcast (operands must match, hold one value, be a (C) vector over axis 1, or "
                    "match on one block of adjacent axes and be 1 elsewhere)");
  }
  Tensor y = empty(out_shape, a.dtype(), a.device());
  {
    VG_PROFILE_COST(name, y.device(),
                    OpCost{static_cast<double>(y.numel()), static_cast<double>(a.nbytes() + b.nbytes() + y.nbytes())});
    dispatch_floating(y, [&]<class T>(auto on) {
      VG_LAUNCH(on, binary_forward, op, a.data<T>(), pa.broadcast, b.data<T>(), pb.broadcast, y.data<T>(), y.numel());
    });
  }
  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  const bool linear = op == kernels::BinaryOp::Add || op == kernels::BinaryOp::Sub;
  // add and sub need no saved operands: their partials are constants.
  Tensor a_saved = linear ? Tensor() : saved(a);
  Tensor b_saved = linear ? Tensor() : saved(b);
  return record(name, y, {a, b},
                [op, linear, need_a, need_b, pa, pb, a_shape = a.shape(), b_shape = b.shape(), a_saved,
                 b_saved](const Tensor& dy) {
                  Tensor da, db;
                  if (linear) {
                    if (need_a) da = dy;
                    if (need_b) db = op == kernels::BinaryOp::Sub ? unary(kernels::UnaryOp::Neg, dy) : dy;
                  } else {
                    if (need_a) da = empty_like(dy);
                    if (need_b) db = empty_like(dy);
                    dispatch_floating(dy, [&]<class T>(auto on) {
                      VG_LAUNCH(on, binary_backward, op, a_saved.data<T>(), pa.broadcast, b_saved.data<T>(),
                                pb.broadcast, dy.data<T>(), data_or_null<T>(da), data_or_null<T>(db), dy.numel());
                    });
                  }
                  if (da.defined()) da = reduce_to_operand(da, pa, a_shape);
                  if (db.defined()) db = reduce_to_operand(db, pb, b_shape);
                  return std::vector<Tensor>{da, db};
                });
}

Tensor scalar_like(const Tensor& x, double value) {
  check_floating(x, "scalar operand");
  return full({}, value, x.dtype(), x.device());
}

// ---- reductions -----------------------------------------------------------------------------

Tensor reduce(const char* name, const Tensor& x, const std::vector<int>& axes, bool keepdim, bool average) {
  check_floating(x, name);
  const int ndim = x.dim();
  unsigned mask = 0;
  for (int axis : axes) {
    const int a = normalize_axis(axis, ndim, name);
    VG_CHECK(!((mask >> a) & 1u), name << ": axis " << axis << " given twice");
    mask |= 1u << a;
  }
  Shape out_shape;
  for (int k = 0; k < ndim; ++k) {
    if (!((mask >> k) & 1u))
      out_shape.push_back(x.shape()[k]);
    else if (keepdim)
      out_shape.push_back(1);
  }
  const auto geometry = kernels::make_reduce_geometry(x.shape().data(), ndim, mask);
  VG_CHECK(!average || geometry.red_count > 0, name << ": mean over an empty set of elements");
  const double scale = average ? 1.0 / static_cast<double>(geometry.red_count) : 1.0;
  Tensor y = empty(out_shape, x.dtype(), x.device());
  {
    VG_PROFILE(name, x.device());
    dispatch_floating(x, [&]<class T>(auto on) {
      ScratchArena scratch(x.device());
      VG_LAUNCH(on.with_cuda_args(scratch), sum_axes, x.data<T>(), y.data<T>(), geometry, static_cast<T>(scale));
    });
  }
  return record(name, y, {x}, [geometry, scale, x_shape = x.shape()](const Tensor& dy) {
    Tensor dx = empty(x_shape, dy.dtype(), dy.device());
    dispatch_floating(dy, [&]<class T>(auto on) {
      VG_LAUNCH(on, expand_axes, dy.data<T>(), dx.data<T>(), geometry, static_cast<T>(scale));
    });
    return std::vector<Tensor>{dx};
  });
}

std::vector<int> all_axes(const Tensor& x) {
  std::vector<int> axes(static_cast<std::size_t>(x.dim()));
  std::iota(axes.begin(), axes.end(), 0);
  return axes;
}

// ---- softmax --------------------------------------------------------------------------------

Tensor softmax_op(const char* name, const Tensor& x, int axis, bool log_space) {
  check_floating(x, name);
  const int a = normalize_axis(axis, x.dim(), name);
  const std::int64_t outer = prod(x.shape(), 0, a), classes = x.shape()[a], inner = prod(x.shape(), a + 1, x.dim());
  Tensor y = empty_like(x);
  {
    VG_PROFILE(name, x.device());
    dispatch_floating(x, [&]<class T>(auto on) {
      VG_LAUNCH(on, softmax_forward, x.data<T>(), y.data<T>(), outer, classes, inner, log_space);
    });
  }
  return record(name, y, {x}, [y_saved = saved(y), outer, classes, inner, log_space](const Tensor& dy) {
    Tensor dx = empty_like(dy);
    dispatch_floating(dy, [&]<class T>(auto on) {
      VG_LAUNCH(on, softmax_backward, y_saved.data<T>(), dy.data<T>(), dx.data<T>(), outer, classes, inner, log_space);
    });
    return std::vector<Tensor>{dx};
  });
}

// A tensor as (outer, axis, inner) for block copies along `axis`.
struct AxisView {
  std::int64_t outer, size, inner;
};
AxisView axis_view(const Shape& s, int axis) { return {prod(s, 0, axis), s[axis], prod(s, axis + 1, s.size())}; }

}  // namespace

// ---- public API -------------------------------------------------------------------------------

Tensor add(const Tensor& a, const Tensor& b) { return binary(kernels::BinaryOp::Add, "add", a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(kernels::BinaryOp::Sub, "sub", a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(kernels::BinaryOp::Mul, "mul", a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(kernels::BinaryOp::Div, "div", a, b); }
Tensor add(const Tensor& a, double b) { return add(a, scalar_like(a, b)); }
Tensor sub(const Tensor& a, double b) { return sub(a, scalar_like(a, b)); }
Tensor mul(const Tensor& a, double b) { return mul(a, scalar_like(a, b)); }
Tensor div(const Tensor& a, double b) { return div(a, scalar_like(a, b)); }

Tensor neg(const Tensor& x) { return unary(kernels::UnaryOp::Neg, x); }
Tensor exp(const Tensor& x) { return unary(kernels::UnaryOp::Exp, x); }
Tensor log(const Tensor& x) { return unary(kernels::UnaryOp::Log, x); }
Tensor relu(const Tensor& x) { return unary(kernels::UnaryOp::Relu, x); }
Tensor leaky_relu(const Tensor& x, double negative_slope) {
  return unary(kernels::UnaryOp::LeakyRelu, x, negative_slope);
}
Tensor sigmoid(const Tensor& x) { return unary(kernels::UnaryOp::Sigmoid, x); }
Tensor tanh(const Tensor& x) { return unary(kernels::UnaryOp::Tanh, x); }

Tensor sum(const Tensor& x) { return reduce("sum", x, all_axes(x), false, false); }
Tensor sum(const Tensor& x, const std::vector<int>& axes, bool keepdim) {
  return reduce("sum", x, axes, keepdim, false);
}
Tensor mean(const Tensor& x) { return reduce("mean", x, all_axes(x), false, true); }
Tensor mean(const Tensor& x, const std::vector<int>& axes, bool keepdim) {
  return reduce("mean", x, axes, keepdim, true);
}

Tensor softmax(const Tensor& x, int axis) { return softmax_op("softmax", x, axis, false); }
Tensor log_softmax(const Tensor& x, int axis) { return softmax_op("log_softmax", x, axis, true); }

Tensor concat(const std::vector<Tensor>& xs, int axis) {
  VG_CHECK(!xs.empty(), "concat: no tensors given");
  const Tensor& first = xs.front();
  VG_CHECK(first.defined(), "concat: undefined tensor");
  const int a = normalize_axis(axis, first.dim(), "concat");
  Shape out_shape = first.shape();
  out_shape[a] = 0;
  for (const auto& x : xs) {
    check_compatible(first, x, "concat");
    bool same = x.dim() == first.dim();
    for (int k = 0; same && k < x.dim(); ++k) same = k == a || x.shape()[k] == first.shape()[k];
    VG_CHECK(same, "concat: shape " << shape_str(x.shape()) << " does not match " << shape_str(first.shape())
                                    << " outside axis " << a);
    out_shape[a] += x.shape()[a];
  }
  Tensor y = empty(out_shape, first.dtype(), first.device());
  const AxisView out_view = axis_view(out_shape, a);
  const auto esize = static_cast<std::int64_t>(dtype_size(first.dtype()));
  std::vector<std::int64_t> offsets;  // start of each input along the axis
  {
    VG_PROFILE_COST("concat", y.device(), OpCost{0.0, 2.0 * static_cast<double>(y.nbytes())});
    std::int64_t offset = 0;
    for (const auto& x : xs) {
      const std::int64_t row = x.shape()[a] * out_view.inner * esize;
      copy_rows(x, 0, row, y, offset * out_view.inner * esize, out_view.size * out_view.inner * esize, out_view.outer,
                row);
      offsets.push_back(offset);
      offset += x.shape()[a];
    }
  }
  std::vector<bool> need;
  std::vector<Shape> shapes;
  for (const auto& x : xs) {
    need.push_back(x.requires_grad());
    shapes.push_back(x.shape());
  }
  return record("concat", y, xs, [need, shapes, offsets, out_view, a, esize](const Tensor& dy) {
    std::vector<Tensor> grads(shapes.size());
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      if (!need[i]) continue;
      grads[i] = empty(shapes[i], dy.dtype(), dy.device());
      const std::int64_t row = shapes[i][a] * out_view.inner * esize;
      copy_rows(dy, offsets[i] * out_view.inner * esize, out_view.size * out_view.inner * esize, grads[i], 0, row,
                out_view.outer, row);
    }
    return grads;
  });
}

Tensor slice(const Tensor& x, int axis, std::int64_t start, std::int64_t end) {
  VG_CHECK(x.defined(), "slice: undefined tensor");
  const int a = normalize_axis(axis, x.dim(), "slice");
  VG_CHECK(0 <= start && start <= end && end <= x.shape()[a],
           "slice: [" << start << ", " << end << ") is not within axis " << a << " of size " << x.shape()[a]);
  Shape out_shape = x.shape();
  out_shape[a] = end - start;
  Tensor y = empty(out_shape, x.dtype(), x.device());
  const AxisView in_view = axis_view(x.shape(), a);
  const auto esize = static_cast<std::int64_t>(dtype_size(x.dtype()));
  const std::int64_t in_pitch = in_view.size * in_view.inner * esize;
  const std::int64_t row = (end - start) * in_view.inner * esize;
  const std::int64_t offset = start * in_view.inner * esize;
  {
    VG_PROFILE_COST("slice", x.device(), OpCost{0.0, 2.0 * static_cast<double>(row * in_view.outer)});
    copy_rows(x, offset, in_pitch, y, 0, row, in_view.outer, row);
  }
  return record("slice", y, {x}, [x_shape = x.shape(), in_view, in_pitch, row, offset](const Tensor& dy) {
    Tensor dx = zeros(x_shape, dy.dtype(), dy.device());
    copy_rows(dy, 0, row, dx, offset, in_pitch, in_view.outer, row);
    return std::vector<Tensor>{dx};
  });
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  VG_CHECK(x.defined(), "reshape: undefined tensor");
  Shape out_shape = shape;
  std::int64_t known = 1;
  int inferred = -1;
  for (std::size_t k = 0; k < out_shape.size(); ++k) {
    if (out_shape[k] == -1) {
      VG_CHECK(inferred < 0, "reshape: more than one -1 in " << shape_str(shape));
      inferred = static_cast<int>(k);
    } else {
      VG_CHECK(out_shape[k] >= 0, "reshape: negative size in " << shape_str(shape));
      known *= out_shape[k];
    }
  }
  if (inferred >= 0) {
    VG_CHECK(known > 0 && x.numel() % known == 0,
             "reshape: cannot infer -1 in " << shape_str(shape) << " for " << x.numel() << " elements");
    out_shape[inferred] = x.numel() / known;
  }
  VG_CHECK(shape_numel(out_shape) == x.numel(), "reshape: " << shape_str(x.shape()) << " has " << x.numel()
                                                            << " elements, " << shape_str(out_shape) << " has "
                                                            << shape_numel(out_shape));
  VG_CHECK(out_shape.size() <= static_cast<std::size_t>(kMaxDims), "reshape: more than " << kMaxDims << " axes");
  VG_PROFILE("reshape", x.device());
  // A view: same storage, new shape.
  Tensor y = x.detach();
  y.impl()->shape = out_shape;
  return record("reshape", y, {x}, [x_shape = x.shape()](const Tensor& dy) {
    Tensor dx = dy.detach();
    dx.impl()->shape = x_shape;
    return std::vector<Tensor>{dx};
  });
}

}  // namespace voxgrad
