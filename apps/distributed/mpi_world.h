// The MPI job this process belongs to, as a Communicator: `mpirun -np P voxgrad train ...
// --distributed` (or srun under Slurm). MPI is an optional build dependency (libopenmpi-dev): a
// build without it says what to install when --distributed is asked for.
#pragma once

#include <memory>
#include <string>

#include "engine/communicator.h"

namespace voxgrad::distributed {

// Whether an MPI launcher started this process: the variables mpirun, mpiexec and srun set.
bool started_by_mpi_launcher();
// This process's rank as its launcher gave it, before MPI starts; -1 when no launcher did.
int launcher_rank();

// Whether this build can run data-parallel jobs over MPI.
bool built_with_mpi();

// The world communicator, MPI initialised on first use and finalised when the last reference
// goes. Throws UsageError naming `flag` when this build has no MPI or no MPI launcher started the
// process.
std::shared_ptr<Communicator> mpi_world(const std::string& flag);

}  // namespace voxgrad::distributed
