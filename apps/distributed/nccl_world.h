// Data-parallel ranks on GPUs: NCCL between the ranks' GPUs, set up over a host communicator (the
// MPI job, or one process). Loaded at run time like cuDNN (kernels/cuda/nccl_library.h), built in
// every CUDA build.
#pragma once

#include <memory>
#include <string>

#include "engine/communicator.h"

namespace voxgrad::distributed {

// Binds this rank to local GPU host->local_rank() (one rank per GPU), makes NCCL's
// unique id on rank 0 and hands it to every rank with one all-gather over `host`, and sums floats
// on that GPU on a stream of its own, ordered after the engine's work (start_sum) and before the
// engine's later work (its future, whose get() waits for the sum and reports NCCL's errors). Host-side collectives (the
// other sums, all_gather) go to `host`. Throws InputError when NCCL or a GPU is missing, and in builds without CUDA.
std::shared_ptr<Communicator> nccl_world(std::shared_ptr<Communicator> host);

// The job's communicator for computing on `device` (--device: cpu, cuda or auto): `host` itself on
// the CPU, NCCL over it on GPUs. The ranks first agree that each resolved its device, and the same
// kind of device, so that none waits for a transport the others did not choose.
std::shared_ptr<Communicator> communicator_for(std::shared_ptr<Communicator> host, const std::string& device);

}  // namespace voxgrad::distributed
