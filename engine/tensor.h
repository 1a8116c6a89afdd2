// Tensor: a refcounted, contiguous, row-major block of one dtype on one device, with the autograd
// fields (requires_grad, grad, grad_fn). Views (reshape, detach) share storage.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "device.h"
#include "error.h"
#include "../kernels/common.h"

namespace voxgrad {

using Shape = std::vector<std::int64_t>;
// Spatial (D, H, W) sizes, strides and paddings of the 3-D layers.
using Triple = std::array<std::int64_t, 3>;

std::int64_t shape_numel(const Shape& s);
std::string shape_str(const Shape& s);  // "(2, 3, 4)"

// Owns device or host memory; freed (to the caching allocator on the GPU) with its last reference.
class Storage {
 public:
  Storage(Device d, std::size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  std::size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  Device device_;
  std::size_t nbytes_;
  void* data_;
};

struct Node;
struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  int dim() const;
  std::int64_t size(int axis) const;  // negative axes count from the end
  std::int64_t numel() const;
  std::size_t nbytes() const;
  DType dtype() const;
  Device device() const;

  void* raw_data() const;
  template <class T> T* data() const;  // checks that T matches dtype()

  // Copies (never recorded by autograd).
  Tensor to(Device d) const;
  Tensor to(DType t) const;
  Tensor cpu() const { return to(Device::cpu()); }
  Tensor clone() const;
  void copy_(const Tensor& src) const;  // same shape and dtype, any devices; writes this tensor's data
  template <class T> std::vector<T> to_vector() const;  // T matches dtype()
  double item() const;  // the value of a one-element tensor

  // Autograd. requires_grad() is true for leaves marked so and for results computed from them.
  bool requires_grad() const;
  Tensor& requires_grad_(bool on = true);
  bool is_leaf() const;
  const Tensor& grad() const;  // undefined until a backward() reaches this leaf
  void zero_grad();            // drops the accumulated gradient
  void set_grad(const Tensor& g);
  const std::shared_ptr<Node>& grad_fn() const;
  Tensor detach() const;  // same storage, no history
  // Gradient of this tensor w.r.t. every leaf that requires it, accumulated into their grad().
  // Without `grad_output` the tensor must hold one element (a loss).
  void backward(bool retain_graph = false) const;
  void backward(const Tensor& grad_output, bool retain_graph = false) const;

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  std::string str() const;  // "Tensor(float32, cpu, (2, 3))"

 private:
  std::shared_ptr<TensorImpl> impl_;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  std::size_t byte_offset = 0;  // into storage (views share storage at an offset)
  Shape shape;
  DType dtype = DType::Float32;
  bool requires_grad = false;      // leaves only; results take theirs from grad_fn
  std::shared_ptr<Node> grad_fn;   // set on results of recorded ops
  Tensor grad;                     // accumulated gradient of a leaf
};

// Creation. Every tensor is contiguous and row-major.
Tensor empty(const Shape& shape, DType t = DType::Float32, Device d = Device::cpu());
Tensor zeros(const Shape& shape, DType t = DType::Float32, Device d = Device::cpu());
Tensor ones(const Shape& shape, DType t = DType::Float32, Device d = Device::cpu());
Tensor full(const Shape& shape, double value, DType t = DType::Float32, Device d = Device::cpu());
Tensor arange(double start, double end, double step = 1, DType t = DType::Float32, Device d = Device::cpu());
Tensor empty_like(const Tensor& x);
Tensor zeros_like(const Tensor& x);
Tensor ones_like(const Tensor& x);
// From host values (T: float, double, int32_t, uint8_t), copied to `d`.
template <class T> Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device d = Device::cpu());

// Seeded counter-based generator: (seed, offset) fully determine the next draw on either device.
class Generator {
 public:
  explicit Generator(std::uint64_t seed = 0) : seed_(seed) {}
  void manual_seed(std::uint64_t seed) { seed_ = seed; offset_ = 0; }
  std::uint64_t seed() const { return seed_; }
  std::uint64_t offset() const { return offset_; }
  void set_offset(std::uint64_t offset) { offset_ = offset; }
  // Reserves counters for a draw of n elements; returns the offset the draw starts at.
  std::uint64_t reserve(std::int64_t n);

 private:
  std::uint64_t seed_;
  std::uint64_t offset_ = 0;
};
Generator& default_generator();
void manual_seed(std::uint64_t seed);

// Uniform in (low, high] and normal (mean, std); float32, or float64 on the CPU.
Tensor rand(const Shape& shape, Generator& gen, DType t = DType::Float32, Device d = Device::cpu(), double low = 0,
            double high = 1);
Tensor randn(const Shape& shape, Generator& gen, DType t = DType::Float32, Device d = Device::cpu(), double mean = 0,
             double std = 1);
Tensor rand(const Shape& shape, DType t = DType::Float32, Device d = Device::cpu());
Tensor randn(const Shape& shape, DType t = DType::Float32, Device d = Device::cpu());

}  // namespace voxgrad
