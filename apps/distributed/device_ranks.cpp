// communicator_for: the transport each rank's device calls for, agreed on by every rank.
#include <exception>

#include "apps/distributed/nccl_world.h"
#include "engine/device.h"

namespace voxgrad::distributed {

std::shared_ptr<Communicator> communicator_for(std::shared_ptr<Communicator> host, const std::string& device) {
  bool on_gpu = false;
  std::exception_ptr failure;
  try {
    on_gpu = resolve_device(device).is_cuda();
  } catch (...) {
    failure = std::current_exception();
  }
  host->agree(failure, {{"device", on_gpu ? "cuda" : "cpu"}});  // all on GPUs, or none
  return on_gpu ? nccl_world(std::move(host)) : host;
}

}  // namespace voxgrad::distributed
