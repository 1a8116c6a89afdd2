// See failure.h.
#include "apps/distributed/failure.h"

#include <string>

#include "engine/error.h"
#include "engine/log.h"

namespace voxgrad::distributed {

namespace {

// The command line's exit status for `e`: 2 for a usage error, else 1.
int exit_status_of(const std::exception& e) { return dynamic_cast<const UsageError*>(&e) != nullptr ? 2 : 1; }

}  // namespace

int handle_failure(const std::exception& e, Communicator& comm) {
  const int status = exit_status_of(e);
  std::string message = e.what();
  for (char& c : message)
    if (c == '\n' || c == '\r') c = ' ';
  if (comm.failure_agreed()) {
    // Rank 0 speaks now, before MPI_Finalize: a rank that exits non-zero makes mpirun end the job,
    // and the others leave only once rank 0 has reached MPI_Finalize too.
    if (comm.rank() == 0) logging::error(message);
    return status;
  }
  // On stderr itself: ranks other than 0 keep their logging silent.
  logging::stderr_sink().error("rank " + std::to_string(comm.rank()) + ": " + message +
                               "; ending every rank of the job");
  comm.abort(status);
}

}  // namespace voxgrad::distributed
