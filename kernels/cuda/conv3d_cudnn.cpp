// The CUDA path of the 3D convolution through cuDNN 9's legacy convolution API (libcudnn_cnn):
// RAII descriptors, one cuDNN handle per device held by one pass at a time, and a per-shape
// algorithm cache filled once by cudnnFind*AlgorithmEx (PyTorch's cudnn.benchmark idea). cuDNN is
// called only through the run-time loaded table (kernels/cuda/cudnn_library.h).
#include <algorithm>
#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/conv3d.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/cudnn_library.h"

namespace voxgrad::kernels::cuda {

namespace {

// Largest workspace offered to the algorithm search: faster algorithms that need more are skipped.
constexpr std::size_t kMaxWorkspaceBytes = std::size_t{1} << 30;

// A cuDNN descriptor owned for one scope; created in the constructor, so a failing Set call
// after it still destroys it. Create and Destroy are members of the function table.
template <class H, auto Create, auto Destroy>
class Descriptor {
 public:
  Descriptor() { VG_CUDNN_CHECK((cudnn().*Create)(&h_)); }
  // Unchecked: a destructor must not throw, and a failed destroy only leaks one descriptor.
  ~Descriptor() { (cudnn().*Destroy)(h_); }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  H get() const { return h_; }

 private:
  H h_{};
};
using TensorDescriptor = Descriptor<cudnnTensorDescriptor_t, &CudnnLibrary::cudnnCreateTensorDescriptor,
                                    &CudnnLibrary::cudnnDestroyTensorDescriptor>;
using FilterDescriptor = Descriptor<cudnnFilterDescriptor_t, &CudnnLibrary::cudnnCreateFilterDescriptor,
                                    &CudnnLibrary::cudnnDestroyFilterDescriptor>;
using ConvolutionDescriptor = Descriptor<cudnnConvolutionDescriptor_t, &CudnnLibrary::cudnnCreateConvolutionDescriptor,
                                         &CudnnLibrary::cudnnDestroyConvolutionDescriptor>;

int to_int(std::int64_t v, const char* what) {
  VG_CHECK(v >= 0 && v <= INT_MAX, "cuDNN convolution: " << what << " " << v << " does not fit cuDNN's int");
  return static_cast<int>(v);
}

// A contiguous (n, c, d, h, w) float tensor.
void set_tensor(cudnnTensorDescriptor_t d, std::int64_t n, std::int64_t c, const std::int64_t* spatial) {
  VG_CHECK(n * c * spatial[0] * spatial[1] * spatial[2] <= INT_MAX,
           "cuDNN convolution: a tensor of more than 2^31 elements; split the batch");
  const int dims[5] = {to_int(n, "batch"), to_int(c, "channels"), to_int(spatial[0], "depth"),
                       to_int(spatial[1], "height"), to_int(spatial[2], "width")};
  int strides[5];
  strides[4] = 1;
  for (int a = 3; a >= 0; --a) strides[a] = strides[a + 1] * dims[a + 1];
  VG_CUDNN(cudnnSetTensorNdDescriptor, d, CUDNN_DATA_FLOAT, 5, dims, strides);
}

// Everything that describes one convolution to cuDNN.
struct ConvDescriptors {
  TensorDescriptor x, y;  // (n, c_in, in), (n, c_out, out)
  FilterDescriptor w;     // (c_out, c_in, kernel)
  ConvolutionDescriptor conv;

  ConvDescriptors(const Conv3dShape& g, ConvMathOptions o) {
    // cuDNN computes the output size from the input and rejects a y that differs (the engine pads a
    // transposed convolution's input so that they agree); saying so here beats CUDNN_STATUS_BAD_PARAM.
    VG_CHECK(conv3d_sizes_agree(g), "cuDNN convolution: output (" << g.out[0] << ", " << g.out[1] << ", " << g.out[2]
                                                                  << ") is not the convolution of input (" << g.in[0]
                                                                  << ", " << g.in[1] << ", " << g.in[2] << ")");
    set_tensor(x.get(), g.n, g.c_in, g.in);
    set_tensor(y.get(), g.n, g.c_out, g.out);
    const int wdims[5] = {to_int(g.c_out, "output channels"), to_int(g.c_in, "input channels"),
                          to_int(g.kernel[0], "kernel"), to_int(g.kernel[1], "kernel"), to_int(g.kernel[2], "kernel")};
    VG_CUDNN(cudnnSetFilterNdDescriptor, w.get(), CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 5, wdims);
    int pad[3], stride[3], dilation[3];
    for (int a = 0; a < 3; ++a) {
      pad[a] = to_int(g.padding[a], "padding");
      stride[a] = to_int(g.stride[a], "stride");
      dilation[a] = to_int(g.dilation[a], "dilation");
    }
    VG_CUDNN(cudnnSetConvolutionNdDescriptor, conv.get(), 3, pad, stride, dilation, CUDNN_CROSS_CORRELATION,
             CUDNN_DATA_FLOAT);
    // CUDNN_DEFAULT_MATH lets cuDNN use TF32 tensor cores on Ampere and later; FMA_MATH forbids it.
    VG_CUDNN(cudnnSetConvolutionMathType, conv.get(), o.allow_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH);
  }
};

// (c) bias viewed as (1, c, 1, 1, 1) for broadcasting over (n, c, d, h, w).
void set_bias(cudnnTensorDescriptor_t d, std::int64_t c) {
  const std::int64_t ones[3] = {1, 1, 1};
  set_tensor(d, 1, c, ones);
}

// A device's cuDNN handle, lent to one pass at a time. cuDNN forbids two host threads using one
// handle at once, and cudnnSetStream binds the handle for every later call until the next rebinding,
// so a lease holds its device's lock from binding the stream until the pass's last cuDNN call has
// been enqueued (the lease outlives everything a pass does). The lock covers host work only:
// descriptor setup and asynchronous launches, microseconds per pass, the GPU work running after it
// is released; and the one algorithm search per shape, which a second thread asking for the same
// shape then finds cached instead of repeating. Per-thread handles would let threads enqueue in
// parallel, but cost a cudnnCreate (device memory, a device-wide synchronisation when destroyed) for
// every thread that ever convolves; the serialised enqueue time is too small to pay for that.
class HandleLease {
 public:
  explicit HandleLease(Stream s) {
    int device = 0;
    VG_CUDA_CHECK(cudaGetDevice(&device));
    DeviceHandle& d = device_handle(device);
    lock_ = std::unique_lock<std::mutex>(d.mutex);
    if (d.handle == nullptr) {  // the first pass on this device; the first one at all loads cuDNN
      cudnnHandle_t h = nullptr;
      VG_CUDNN(cudnnCreate, &h);
      d.handle = h;
    }
    VG_CUDNN(cudnnSetStream, d.handle, native(s));
    handle_ = d.handle;
  }
  HandleLease(const HandleLease&) = delete;
  HandleLease& operator=(const HandleLease&) = delete;
  cudnnHandle_t get() const { return handle_; }

 private:
  // Created on first use and kept for the process, as PyTorch does.
  struct DeviceHandle {
    std::mutex mutex;  // held by the lease that uses `handle`
    cudnnHandle_t handle = nullptr;
  };
  static DeviceHandle& device_handle(int device) {
    static std::mutex map_mutex;
    static std::map<int, std::unique_ptr<DeviceHandle>> handles;  // never erased: references stay valid
    std::lock_guard<std::mutex> lock(map_mutex);
    std::unique_ptr<DeviceHandle>& slot = handles[device];
    if (!slot) slot = std::make_unique<DeviceHandle>();
    return *slot;
  }

  std::unique_lock<std::mutex> lock_;
  cudnnHandle_t handle_ = nullptr;
};

// ---- the algorithm cache ------------------------------------------------------------------------

struct Choice {
  int algo = 0;
  std::size_t workspace = 0;
  cudnnMathType_t math = CUDNN_FMA_MATH;
};

std::mutex g_cache_mutex;
std::map<std::string, Choice> g_cache;

std::string cache_key(const char* pass, const Conv3dShape& g, ConvMathOptions o) {
  int device = 0;
  VG_CUDA_CHECK(cudaGetDevice(&device));
  std::ostringstream k;
  k << pass << " dev" << device << " n" << g.n << " ci" << g.c_in << " co" << g.c_out;
  for (int a = 0; a < 3; ++a) {
    k << " | " << g.in[a] << ' ' << g.out[a] << ' ' << g.kernel[a] << ' ' << g.stride[a] << ' ' << g.padding[a] << ' '
      << g.dilation[a];
  }
  k << " det" << o.deterministic << " tf32" << o.allow_tf32;
  return k.str();
}

// Workspace held for one call: the search buffer, reused by the run when it is large enough.
struct Workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

// The cached choice for `key`, or a search: offer the largest workspace any algorithm asks for
// (capped), let cuDNN time them all on the real buffers (outputs are overwritten afterwards
// anyway), and keep the fastest that succeeded and honours the deterministic setting.
template <class Perf, class WorkspaceSize, class Find>
Choice choose(const std::string& key, ConvMathOptions o, int algo_count, WorkspaceSize workspace_size, Find find,
              Scratch& scratch, Workspace& ws) {
  {
    std::lock_guard<std::mutex> lock(g_cache_mutex);
    auto it = g_cache.find(key);
    if (it != g_cache.end()) return it->second;
  }
  std::size_t largest = 0;
  for (int a = 0; a < algo_count; ++a) {
    std::size_t bytes = 0;
    // Algorithms that do not support this shape report an error status here; they are skipped.
    if (workspace_size(a, &bytes) == CUDNN_STATUS_SUCCESS && bytes <= kMaxWorkspaceBytes)
      largest = std::max(largest, bytes);
  }
  ws.data = largest > 0 ? scratch.get(largest) : nullptr;
  ws.bytes = largest;
  std::vector<Perf> results(static_cast<std::size_t>(algo_count));
  int returned = 0;
  VG_CUDNN_CHECK(find(algo_count, &returned, results.data(), ws.data, ws.bytes));
  for (int i = 0; i < returned; ++i) {
    const Perf& r = results[static_cast<std::size_t>(i)];
    if (r.status != CUDNN_STATUS_SUCCESS || r.memory > ws.bytes) continue;
    if (o.deterministic && r.determinism != CUDNN_DETERMINISTIC) continue;
    const Choice c{static_cast<int>(r.algo), r.memory, o.allow_tf32 ? r.mathType : CUDNN_FMA_MATH};
    std::lock_guard<std::mutex> lock(g_cache_mutex);
    g_cache[key] = c;
    return c;
  }
  VG_FAIL("cuDNN found no usable convolution algorithm for " << key
                                                             << (o.deterministic ? " among deterministic ones" : ""));
}

// The workspace the chosen algorithm runs with: the search buffer when there was one this call.
void* workspace_for(const Choice& c, const Workspace& ws, Scratch& scratch) {
  if (c.workspace == 0) return nullptr;
  if (ws.data != nullptr && ws.bytes >= c.workspace) return ws.data;
  return scratch.get(c.workspace);
}

const float kOne = 1.0f;
const float kZero = 0.0f;

}  // namespace

void conv3d_forward(const float* x, const float* w, float* y, const Conv3dShape& g, ConvMathOptions o,
                    Scratch& scratch, Stream s) {
  const HandleLease lease(s);
  const cudnnHandle_t h = lease.get();
  ConvDescriptors d(g, o);
  Workspace ws;
  const Choice c = choose<cudnnConvolutionFwdAlgoPerf_t>(
      cache_key("forward", g, o), o, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
      [&](int a, std::size_t* bytes) {
        return cudnn().cudnnGetConvolutionForwardWorkspaceSize(h, d.x.get(), d.w.get(), d.conv.get(), d.y.get(),
                                                               static_cast<cudnnConvolutionFwdAlgo_t>(a), bytes);
      },
      [&](int n, int* returned, cudnnConvolutionFwdAlgoPerf_t* perf, void* wsp, std::size_t bytes) {
        return cudnn().cudnnFindConvolutionForwardAlgorithmEx(h, d.x.get(), x, d.w.get(), w, d.conv.get(), d.y.get(), y,
                                                              n, returned, perf, wsp, bytes);
      },
      scratch, ws);
  VG_CUDNN(cudnnSetConvolutionMathType, d.conv.get(), c.math);
  VG_CUDNN(cudnnConvolutionForward, h, &kOne, d.x.get(), x, d.w.get(), w, d.conv.get(),
           static_cast<cudnnConvolutionFwdAlgo_t>(c.algo), workspace_for(c, ws, scratch), c.workspace, &kZero,
           d.y.get(), y);
}

void conv3d_backward_data(const float* dy, const float* w, float* dx, const Conv3dShape& g, ConvMathOptions o,
                          Scratch& scratch, Stream s) {
  const HandleLease lease(s);
  const cudnnHandle_t h = lease.get();
  ConvDescriptors d(g, o);
  Workspace ws;
  const Choice c = choose<cudnnConvolutionBwdDataAlgoPerf_t>(
      cache_key("backward_data", g, o), o, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
      [&](int a, std::size_t* bytes) {
        return cudnn().cudnnGetConvolutionBackwardDataWorkspaceSize(
            h, d.w.get(), d.y.get(), d.conv.get(), d.x.get(), static_cast<cudnnConvolutionBwdDataAlgo_t>(a), bytes);
      },
      [&](int n, int* returned, cudnnConvolutionBwdDataAlgoPerf_t* perf, void* wsp, std::size_t bytes) {
        return cudnn().cudnnFindConvolutionBackwardDataAlgorithmEx(h, d.w.get(), w, d.y.get(), dy, d.conv.get(),
                                                                   d.x.get(), dx, n, returned, perf, wsp, bytes);
      },
      scratch, ws);
  VG_CUDNN(cudnnSetConvolutionMathType, d.conv.get(), c.math);
  VG_CUDNN(cudnnConvolutionBackwardData, h, &kOne, d.w.get(), w, d.y.get(), dy, d.conv.get(),
           static_cast<cudnnConvolutionBwdDataAlgo_t>(c.algo), workspace_for(c, ws, scratch), c.workspace, &kZero,
           d.x.get(), dx);
}

void conv3d_backward_filter(const float* x, const float* dy, float* dw, const Conv3dShape& g, ConvMathOptions o,
                            Scratch& scratch, Stream s) {
  const HandleLease lease(s);
  const cudnnHandle_t h = lease.get();
  ConvDescriptors d(g, o);
  Workspace ws;
  const Choice c = choose<cudnnConvolutionBwdFilterAlgoPerf_t>(
      cache_key("backward_filter", g, o), o, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
      [&](int a, std::size_t* bytes) {
        return cudnn().cudnnGetConvolutionBackwardFilterWorkspaceSize(
            h, d.x.get(), d.y.get(), d.conv.get(), d.w.get(), static_cast<cudnnConvolutionBwdFilterAlgo_t>(a), bytes);
      },
      [&](int n, int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf, void* wsp, std::size_t bytes) {
        return cudnn().cudnnFindConvolutionBackwardFilterAlgorithmEx(h, d.x.get(), x, d.y.get(), dy, d.conv.get(),
                                                                     d.w.get(), dw, n, returned, perf, wsp, bytes);
      },
      scratch, ws);
  VG_CUDNN(cudnnSetConvolutionMathType, d.conv.get(), c.math);
  VG_CUDNN(cudnnConvolutionBackwardFilter, h, &kOne, d.x.get(), x, d.y.get(), dy, d.conv.get(),
           static_cast<cudnnConvolutionBwdFilterAlgo_t>(c.algo), workspace_for(c, ws, scratch), c.workspace, &kZero,
           d.w.get(), dw);
}

void conv3d_bias_forward(float* y, const float* b, std::int64_t n, std::int64_t c, std::int64_t spatial, Stream s) {
  const HandleLease lease(s);
  const cudnnHandle_t h = lease.get();
  TensorDescriptor yd, bd;
  const std::int64_t flat[3] = {1, 1, spatial};  // only the channel axis broadcasts
  set_tensor(yd.get(), n, c, flat);
  set_bias(bd.get(), c);
  VG_CUDNN(cudnnAddTensor, h, &kOne, bd.get(), b, &kOne, yd.get(), y);
}

void conv3d_bias_backward(const float* dy, float* db, std::int64_t n, std::int64_t c, std::int64_t spatial,
                          Stream s) {
  const HandleLease lease(s);
  const cudnnHandle_t h = lease.get();
  TensorDescriptor dyd, bd;
  const std::int64_t flat[3] = {1, 1, spatial};
  set_tensor(dyd.get(), n, c, flat);
  set_bias(bd.get(), c);
  VG_CUDNN(cudnnConvolutionBackwardBias, h, &kOne, dyd.get(), dy, &kZero, bd.get(), db);
}

std::int64_t conv3d_algorithm_cache_size() {
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  return static_cast<std::int64_t>(g_cache.size());
}

}  // namespace voxgrad::kernels::cuda
