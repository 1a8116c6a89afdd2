// A build without CUDA has no GPUs to connect.
#include "apps/distributed/nccl_world.h"
#include "engine/error.h"

namespace voxgrad::distributed {

std::shared_ptr<Communicator> nccl_world(std::shared_ptr<Communicator>) {
  VG_USAGE_FAIL("--distributed on GPUs needs a CUDA build of voxgrad (this one is CPU-only); use --device cpu");
}

}  // namespace voxgrad::distributed
