// How a data-parallel command ends when something fails on one rank. A failure every rank shares
// (Communicator::failure_agreed) is rank 0's to report; the others exit with the same status in
// silence. A rank failing alone says why, naming itself, and ends the whole job, whose other ranks
// may be waiting for it in a collective.
#pragma once

#include <exception>

#include "engine/communicator.h"

namespace voxgrad::distributed {

// For a failure `e` caught on this rank of `comm` (more than one rank): when agreed, rank 0
// reports it, and every rank returns the exit status; otherwise this rank reports it on stderr and
// ends the job.
int handle_failure(const std::exception& e, Communicator& comm);

}  // namespace voxgrad::distributed
