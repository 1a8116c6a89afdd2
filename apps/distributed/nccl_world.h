// Data-parallel ranks on GPUs: NCCL between the ranks' GPUs, set up over a host communicator (the
// MPI job, or one process). Loaded at run time like cuDNN (kernels/cuda/nccl_library.h), built in
// every CUDA build.
#pragma once

#include <memory>

#include "engine/communicator.h"

namespace voxgrad::distributed {

// Binds this rank to local GPU host->local_rank() modulo the GPUs this process sees, makes NCCL's
// unique id on rank 0 and hands it to every rank with one all-gather over `host`, and sums floats
// on that GPU on a stream of its own, ordered after the engine's work (start_sum) and before the
// engine's later work (its future). Host-side collectives (the other sums, all_gather) go to
// `host`. Throws InputError when NCCL or a GPU is missing, and in builds without CUDA.
std::shared_ptr<Communicator> nccl_world(std::shared_ptr<Communicator> host);

}  // namespace voxgrad::distributed
