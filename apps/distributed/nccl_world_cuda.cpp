// The NCCL communicator. Its all-reduces run on a stream of their own: each waits for an event
// recorded on the engine's stream when it starts (the gradients copied into the bucket), and only
// when the reducer asks for the result does the host wait for its end (and the engine's stream
// after it), so the backward pass goes on meanwhile. NCCL's sum is deterministic for a given rank
// count, topology, algorithm and buffer (every rank gets each reduced chunk from the rank that
// reduced it), so the ranks hold the same bits and a rerun on the same machines gets them again;
// an element's summation order depends on where its chunk falls, so other buckets may change the
// last bits.
#include <cuda_runtime.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "apps/distributed/nccl_world.h"
#include "engine/device.h"
#include "engine/error.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/nccl_library.h"

namespace voxgrad::distributed {

namespace {

using kernels::cuda::nccl;

void check_nccl(ncclResult_t result, const char* call) {
  if (result == ncclSuccess) return;
  VG_FAIL(call << " failed: " << nccl().ncclGetErrorString(result));
}

std::string host_name() {
  char name[256] = "";
  if (gethostname(name, sizeof name - 1) != 0) return "?";
  return name;
}

std::string pci_bus_id(int device) {
  char id[64] = "";
  VG_CUDA_CHECK(cudaDeviceGetPCIBusId(id, sizeof id, device));
  return id;
}

// `placements[r]` is rank r's "host bus-id" ("" for a rank that failed before choosing a GPU).
void check_one_rank_per_gpu(const std::vector<std::string>& placements) {
  for (std::size_t a = 0; a < placements.size(); ++a)
    for (std::size_t b = a + 1; b < placements.size(); ++b)
      VG_USAGE_CHECK(placements[a].empty() || placements[a] != placements[b],
                     "--distributed on GPUs: ranks "
                         << a << " and " << b << " share one GPU (" << placements[a]
                         << "); give each rank a GPU of its own (at most one rank per GPU)");
}

// A CUDA event destroyed with its last owner. An event destroyed with work pending is released by
// CUDA once that work completes, so an owner may go before the stream catches up.
using Event = std::shared_ptr<std::remove_pointer_t<cudaEvent_t>>;

Event new_event() {
  cudaEvent_t event = nullptr;
  VG_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  return Event(event, [](cudaEvent_t e) { cudaEventDestroy(e); });
}

class NcclCommunicator : public Communicator {
 public:
  explicit NcclCommunicator(std::shared_ptr<Communicator> host) : host_(std::move(host)) {
    // What each rank does alone comes first, then the ranks agree that all of them managed: a
    // rank without a GPU or NCCL must not leave the others waiting for its id.
    ncclUniqueId id;
    std::memset(&id, 0, sizeof id);
    std::exception_ptr failure;
    std::string placement;  // "host GPU-bus-id": where this rank's GPU is
    try {
      const int gpus = cuda_device_count();
      VG_INPUT_CHECK(gpus > 0,
                     "--distributed on GPUs: this rank sees no usable GPU (" << cuda_unavailable_reason() << ")");
      // A launcher that binds each rank to a GPU of its own (Slurm's --gpus-per-task=1) leaves it
      // one; otherwise the local rank picks among the machine's GPUs.
      const int index = gpus == 1 ? 0 : host_->local_rank();
      VG_USAGE_CHECK(index < gpus, "--distributed on GPUs: local rank "
                                       << host_->local_rank() << " has no GPU of its own (this machine's ranks see "
                                       << gpus << "); start at most " << gpus << " ranks per machine");
      device_ = Device::cuda(index);
      VG_CUDA_CHECK(cudaSetDevice(device_.index));
      placement = host_name() + " " + pci_bus_id(device_.index);
      const kernels::cuda::NcclLibrary& library = nccl();  // loads it, or says what to install
      if (host_->rank() == 0) check_nccl(library.ncclGetUniqueId(&id), "ncclGetUniqueId");
    } catch (...) {
      failure = std::current_exception();
    }
    // One rank per GPU: NCCL refuses two ranks on one device, with a less telling error. Every
    // rank sees every placement, so all of them find the same clash.
    const std::vector<std::string> placements = host_->all_gather(placement);
    try {
      if (!failure) check_one_rank_per_gpu(placements);
    } catch (...) {
      failure = std::current_exception();
    }
    host_->agree(failure);
    const kernels::cuda::NcclLibrary& library = nccl();
    // Rank 0's unique id, to every rank.
    const std::vector<std::string> ids =
        host_->all_gather(host_->rank() == 0 ? std::string(reinterpret_cast<const char*>(&id), sizeof id) : "");
    VG_CHECK(ids[0].size() == sizeof id, "rank 0 sent an NCCL id of " << ids[0].size() << " bytes");
    std::memcpy(&id, ids[0].data(), sizeof id);
    check_nccl(library.ncclCommInitRank(&comm_, host_->size(), id, host_->rank()), "ncclCommInitRank");
    VG_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }

  ~NcclCommunicator() override {
    cudaSetDevice(device_.index);
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    if (comm_ != nullptr) nccl().ncclCommDestroy(comm_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  int local_rank() const override { return host_->local_rank(); }
  Device device() const override { return device_; }

  std::future<void> start_sum(float* data, std::int64_t count) override {
    VG_CUDA_CHECK(cudaSetDevice(device_.index));
    const auto engine = static_cast<cudaStream_t>(stream_for(device_).handle);
    // Owned from here on, so that a failed call or a future dropped unasked leaves no event behind.
    const Event ready = new_event(), done = new_event();
    VG_CUDA_CHECK(cudaEventRecord(ready.get(), engine));
    VG_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready.get(), 0));
    check_nccl(nccl().ncclAllReduce(data, data, static_cast<std::size_t>(count), ncclFloat, ncclSum, comm_, stream_),
               "ncclAllReduce");
    VG_CUDA_CHECK(cudaEventRecord(done.get(), stream_));
    // Asked for the result: the host waits for the sum, watching NCCL's asynchronous errors (a
    // dropped link would otherwise leave the engine's stream waiting forever), and the engine's
    // stream is ordered after it.
    const int device = device_.index;
    ncclComm_t comm = comm_;
    return std::async(std::launch::deferred, [engine, done, device, comm] {
      VG_CUDA_CHECK(cudaSetDevice(device));
      for (;;) {
        const cudaError_t state = cudaEventQuery(done.get());
        if (state == cudaSuccess) break;
        VG_CUDA_CHECK(state == cudaErrorNotReady ? cudaSuccess : state);
        ncclResult_t async = ncclSuccess;
        check_nccl(nccl().ncclCommGetAsyncError(comm, &async), "ncclCommGetAsyncError");
        check_nccl(async, "ncclAllReduce (asynchronous)");
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
      VG_CUDA_CHECK(cudaStreamWaitEvent(engine, done.get(), 0));
    });
  }

  void sum(double* data, std::int64_t count) override { host_->sum(data, count); }
  void sum(std::int64_t* data, std::int64_t count) override { host_->sum(data, count); }
  std::vector<std::string> all_gather(const std::string& mine) override { return host_->all_gather(mine); }

 private:
  void end_job(int status) override {
    if (comm_ != nullptr) nccl().ncclCommAbort(comm_);  // frees the GPU from collectives that never end
    comm_ = nullptr;
    host_->abort(status);
  }

  std::shared_ptr<Communicator> host_;
  Device device_ = Device::cpu();
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

std::shared_ptr<Communicator> nccl_world(std::shared_ptr<Communicator> host) {
  VG_CHECK(host != nullptr, "nccl_world: no host communicator");
  return std::make_shared<NcclCommunicator>(std::move(host));
}

}  // namespace voxgrad::distributed
