// Launcher detection by environment: each MPI launcher tells its processes their rank this way.
#include <cstdlib>

#include "apps/distributed/mpi_world.h"

namespace voxgrad::distributed {

// Open MPI's mpirun; PMIx (srun --mpi=pmix, Open MPI 5); PMI and PMI-2 (MPICH's mpiexec, srun).
constexpr const char* kRankVariables[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};

bool started_by_mpi_launcher() {
  if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr) return true;
  return launcher_rank() >= 0;
}

int launcher_rank() {
  for (const char* name : kRankVariables) {
    const char* value = std::getenv(name);
    if (value == nullptr) continue;
    char* end = nullptr;
    const long rank = std::strtol(value, &end, 10);
    if (end != value && *end == '\0' && rank >= 0 && rank < (1L << 30)) return static_cast<int>(rank);
  }
  return -1;
}

}  // namespace voxgrad::distributed
