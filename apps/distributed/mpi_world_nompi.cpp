// A build without MPI: --distributed says what to install.
#include "apps/distributed/mpi_world.h"
#include "engine/error.h"

namespace voxgrad::distributed {

bool built_with_mpi() { return false; }

std::shared_ptr<Communicator> mpi_world(const std::string& flag) {
  VG_USAGE_FAIL(flag << ": this voxgrad was built without MPI; install OpenMPI (apt-get install libopenmpi-dev "
                     << "openmpi-bin) and build again, then start it with mpirun -np P or srun");
}

}  // namespace voxgrad::distributed
