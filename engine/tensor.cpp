// Tensor, Storage and creation functions: memory comes from the device's allocator, bytes move
// through kernels/layout, values are made by the elementwise and random kernels.
#include "engine/tensor.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "kernels/elementwise.h"
#include "kernels/layout.h"
#include "kernels/random.h"

namespace voxgrad {

std::int64_t shape_numel(const Shape& s) {
  std::int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "(";
  for (std::size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}

Storage::Storage(Device d, std::size_t bytes)
    : device_(d), nbytes_(bytes), data_(bytes ? device_allocate(d, bytes) : nullptr) {}

Storage::~Storage() {
  if (data_ != nullptr) device_free(device_, data_, nbytes_);
}

namespace detail {

void check_floating(const Tensor& x, const char* op) {
  VG_CHECK(x.defined(), op << ": undefined tensor");
  VG_CHECK(x.dtype() == DType::Float32 || x.dtype() == DType::Float64,
           op << ": needs float32 or float64 input, got " << dtype_name(x.dtype()));
}

void check_compatible(const Tensor& a, const Tensor& b, const char* op) {
  VG_CHECK(a.defined() && b.defined(), op << ": undefined tensor");
  VG_CHECK(a.device() == b.device(),
           op << ": operands on different devices (" << a.device().str() << " and " << b.device().str() << ")");
  VG_CHECK(a.dtype() == b.dtype(),
           op << ": operands of different dtypes (" << dtype_name(a.dtype()) << " and " << dtype_name(b.dtype()) << ")");
}

void copy_bytes(const void* src, Device src_device, void* dst, Device dst_device, std::size_t bytes) {
  if (bytes == 0) return;
  if (src_device.is_cpu() && dst_device.is_cpu()) {
    std::memcpy(dst, src, bytes);
  } else if (src_device.is_cpu()) {
    VG_CUDA_ONLY(kernels::cuda::copy_to_device(src, dst, bytes, stream_for(dst_device)));
  } else if (dst_device.is_cpu()) {
    VG_CUDA_ONLY(kernels::cuda::copy_to_host(src, dst, bytes, stream_for(src_device)));
  } else {
    VG_CHECK(src_device == dst_device, "copies between two GPUs are not supported (" << src_device.str() << " to "
                                                                                   << dst_device.str() << ")");
    VG_CUDA_ONLY(kernels::cuda::copy_device_to_device(src, dst, bytes, stream_for(dst_device)));
  }
}

}  // namespace detail

// ---- accessors -----------------------------------------------------------------------------

#define VG_DEFINED() VG_CHECK(impl_ != nullptr, "operation on an undefined tensor")

const Shape& Tensor::shape() const {
  VG_DEFINED();
  return impl_->shape;
}
int Tensor::dim() const { return static_cast<int>(shape().size()); }
std::int64_t Tensor::size(int axis) const {
  const int n = dim();
  const int a = axis < 0 ? axis + n : axis;
  VG_CHECK(a >= 0 && a < n, "axis " << axis << " is out of range for a tensor of shape " << shape_str(shape()));
  return impl_->shape[a];
}
std::int64_t Tensor::numel() const { return shape_numel(shape()); }
std::size_t Tensor::nbytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype()); }
DType Tensor::dtype() const {
  VG_DEFINED();
  return impl_->dtype;
}
Device Tensor::device() const {
  VG_DEFINED();
  return impl_->storage->device();
}
void* Tensor::raw_data() const {
  VG_DEFINED();
  auto* base = static_cast<char*>(impl_->storage->data());
  return base == nullptr ? nullptr : base + impl_->byte_offset;
}

template <class T>
T* Tensor::data() const {
  VG_CHECK(dtype() == detail::dtype_of<T>(), "data<" << dtype_name(detail::dtype_of<T>()) << ">() on a "
                                                     << dtype_name(dtype()) << " tensor");
  return static_cast<T*>(raw_data());
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  return std::string("Tensor(") + dtype_name(dtype()) + ", " + device().str() + ", " + shape_str(shape()) + ")";
}

// ---- copies ---------------------------------------------------------------------------------

Tensor Tensor::to(Device d) const {
  if (device() == d) return *this;
  Tensor out = empty(shape(), dtype(), d);
  detail::copy_bytes(raw_data(), device(), out.raw_data(), d, nbytes());
  return out;
}

Tensor Tensor::to(DType t) const {
  if (dtype() == t) return *this;
  Tensor out = empty(shape(), t, device());
  detail::dispatch_device(device(),
                          [&](auto on) { VG_LAUNCH(on, cast, dtype(), raw_data(), t, out.raw_data(), numel()); });
  return out;
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  detail::copy_bytes(raw_data(), device(), out.raw_data(), device(), nbytes());
  return out;
}

void Tensor::copy_(const Tensor& src) const {
  VG_CHECK(src.shape() == shape(), "copy_: shape " << shape_str(src.shape()) << " into " << shape_str(shape()));
  VG_CHECK(src.dtype() == dtype(), "copy_: dtype " << dtype_name(src.dtype()) << " into " << dtype_name(dtype()));
  detail::copy_bytes(src.raw_data(), src.device(), raw_data(), device(), nbytes());
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  VG_CHECK(dtype() == detail::dtype_of<T>(), "to_vector<" << dtype_name(detail::dtype_of<T>()) << ">() on a "
                                                          << dtype_name(dtype()) << " tensor");
  std::vector<T> values(static_cast<std::size_t>(numel()));
  detail::copy_bytes(raw_data(), device(), values.data(), Device::cpu(), nbytes());
  return values;
}

double Tensor::item() const {
  VG_CHECK(numel() == 1, "item() needs a one-element tensor, got shape " << shape_str(shape()));
  switch (dtype()) {
    case DType::Float32: return to_vector<float>()[0];
    case DType::Float64: return to_vector<double>()[0];
    case DType::Int32: return to_vector<std::int32_t>()[0];
    case DType::UInt8: return to_vector<std::uint8_t>()[0];
  }
  return 0;
}

// ---- autograd fields ------------------------------------------------------------------------

bool Tensor::requires_grad() const {
  VG_DEFINED();
  return impl_->requires_grad || impl_->grad_fn != nullptr;
}

Tensor& Tensor::requires_grad_(bool on) {
  VG_DEFINED();
  VG_CHECK(impl_->grad_fn == nullptr, "requires_grad_() applies to leaf tensors; this one is the result of '"
                                          << impl_->grad_fn->name << "' (use detach() first)");
  VG_CHECK(!on || dtype() == DType::Float32 || dtype() == DType::Float64,
           "only floating tensors can require gradients, not " << dtype_name(dtype()));
  impl_->requires_grad = on;
  return *this;
}

bool Tensor::is_leaf() const {
  VG_DEFINED();
  return impl_->grad_fn == nullptr;
}

const Tensor& Tensor::grad() const {
  VG_DEFINED();
  return impl_->grad;
}

void Tensor::zero_grad() {
  VG_DEFINED();
  impl_->grad = Tensor();
}

void Tensor::set_grad(const Tensor& g) {
  VG_DEFINED();
  if (g.defined()) {
    VG_CHECK(g.shape() == shape() && g.dtype() == dtype() && g.device() == device(),
             "set_grad: gradient " << g.str() << " does not match " << str());
  }
  impl_->grad = g;
}

const std::shared_ptr<Node>& Tensor::grad_fn() const {
  VG_DEFINED();
  return impl_->grad_fn;
}

Tensor Tensor::detach() const {
  VG_DEFINED();
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->byte_offset = impl_->byte_offset;
  impl->shape = impl_->shape;
  impl->dtype = impl_->dtype;
  return Tensor(std::move(impl));
}

void Tensor::backward(bool retain_graph) const {
  VG_CHECK(numel() == 1, "backward() without a gradient needs a one-element tensor (a loss), got shape "
                             << shape_str(shape()) << "; pass grad_output for other shapes");
  run_backward(*this, ones(shape(), dtype(), device()), retain_graph);
}

void Tensor::backward(const Tensor& grad_output, bool retain_graph) const {
  run_backward(*this, grad_output, retain_graph);
}

// ---- creation -------------------------------------------------------------------------------

Tensor empty(const Shape& shape, DType t, Device d) {
  VG_CHECK(shape.size() <= static_cast<std::size_t>(kMaxDims),
           "tensors have at most " << kMaxDims << " axes, got shape " << shape_str(shape));
  for (auto n : shape) VG_CHECK(n >= 0, "negative size in shape " << shape_str(shape));
  VG_CHECK(!(t == DType::Float64 && d.is_cuda()), "float64 tensors live on the CPU only (gradient checks)");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(d, static_cast<std::size_t>(shape_numel(shape)) * dtype_size(t));
  impl->shape = shape;
  impl->dtype = t;
  return Tensor(std::move(impl));
}

Tensor full(const Shape& shape, double value, DType t, Device d) {
  Tensor out = empty(shape, t, d);
  detail::dispatch_device(d, [&](auto on) { VG_LAUNCH(on, fill, t, out.raw_data(), out.numel(), value); });
  return out;
}

Tensor zeros(const Shape& shape, DType t, Device d) { return full(shape, 0.0, t, d); }
Tensor ones(const Shape& shape, DType t, Device d) { return full(shape, 1.0, t, d); }

Tensor arange(double start, double end, double step, DType t, Device d) {
  VG_CHECK(step != 0, "arange: step must not be 0");
  const double span = (end - start) / step;
  const auto n = static_cast<std::int64_t>(span > 0 ? std::ceil(span) : 0);
  Tensor out = empty({n}, t, d);
  detail::dispatch_device(d, [&](auto on) { VG_LAUNCH(on, arange, t, out.raw_data(), n, start, step); });
  return out;
}

Tensor empty_like(const Tensor& x) { return empty(x.shape(), x.dtype(), x.device()); }
Tensor zeros_like(const Tensor& x) { return zeros(x.shape(), x.dtype(), x.device()); }
Tensor ones_like(const Tensor& x) { return ones(x.shape(), x.dtype(), x.device()); }

template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device d) {
  VG_CHECK(static_cast<std::int64_t>(values.size()) == shape_numel(shape),
           "from_vector: " << values.size() << " values for shape " << shape_str(shape));
  Tensor out = empty(shape, detail::dtype_of<T>(), d);
  detail::copy_bytes(values.data(), Device::cpu(), out.raw_data(), d, values.size() * sizeof(T));
  return out;
}

std::uint64_t Generator::reserve(std::int64_t n) {
  const std::uint64_t start = offset_;
  offset_ += kernels::philox_blocks_used(n);
  return start;
}

Generator& default_generator() {
  static Generator gen(0);
  return gen;
}

void manual_seed(std::uint64_t seed) { default_generator().manual_seed(seed); }

namespace {
Tensor random_tensor(const Shape& shape, Generator& gen, DType t, Device d, double a, double b, bool normal) {
  VG_CHECK(t == DType::Float32 || t == DType::Float64,
           (normal ? "randn" : "rand") << ": needs a floating dtype, got " << dtype_name(t));
  Tensor out = empty(shape, t, d);
  const std::int64_t n = out.numel();
  const std::uint64_t offset = gen.reserve(n);
  detail::dispatch_device(d, [&](auto on) {
    if (normal) VG_LAUNCH(on, rand_normal, t, out.raw_data(), n, gen.seed(), offset, a, b);
    else VG_LAUNCH(on, rand_uniform, t, out.raw_data(), n, gen.seed(), offset, a, b);
  });
  return out;
}
}  // namespace

Tensor rand(const Shape& shape, Generator& gen, DType t, Device d, double low, double high) {
  return random_tensor(shape, gen, t, d, low, high, false);
}
Tensor randn(const Shape& shape, Generator& gen, DType t, Device d, double mean, double std) {
  return random_tensor(shape, gen, t, d, mean, std, true);
}
Tensor rand(const Shape& shape, DType t, Device d) { return rand(shape, default_generator(), t, d); }
Tensor randn(const Shape& shape, DType t, Device d) { return randn(shape, default_generator(), t, d); }

// The element types tensors hold.
#define VG_INSTANTIATE(T)                                  \
  template T* Tensor::data<T>() const;                     \
  template std::vector<T> Tensor::to_vector<T>() const;    \
  template Tensor from_vector<T>(const std::vector<T>&, const Shape&, Device);
VG_INSTANTIATE(float)
VG_INSTANTIATE(double)
VG_INSTANTIATE(std::int32_t)
VG_INSTANTIATE(std::uint8_t)
#undef VG_INSTANTIATE

}  // namespace voxgrad
