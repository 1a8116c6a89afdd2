// The collectives of data-parallel training behind one interface, so that the trainer and the
// gradient reducer know nothing of the transport: MPI between processes and NCCL between GPUs
// (apps/distributed). Every collective must be called by every rank in the same order, as in
// MPI. Every sum of floating-point numbers gives every rank the same bits, and a rerun with the
// same ranks and the same buckets gets them again (the grouping of the operands is the
// transport's: see mpi_world.cpp and nccl_world_cuda.cpp).
#pragma once

#include <cstdint>
#include <exception>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "device.h"

namespace voxgrad {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;        // 0 .. size() - 1
  virtual int size() const = 0;        // the number of ranks
  virtual int local_rank() const = 0;  // among the ranks of this machine (a GPU's index)
  // Where start_sum's data lives: host memory for MPI, the rank's GPU for NCCL.
  virtual Device device() const { return Device::cpu(); }

  // Starts summing `count` floats in place over the ranks and returns at once; the future is ready
  // when `data` holds the sum (and rethrows a failure; on a GPU: when work queued on the device's
  // stream after get() sees the sum). `data`, on device(), must stay alive until then.
  // Reductions run one after another in the order they were started.
  virtual std::future<void> start_sum(float* data, std::int64_t count) = 0;
  // Blocking sums (on the host). On MPI they are queued behind the reductions already started;
  // NCCL's go over the host's MPI and are not ordered with its reductions, so a caller that needs
  // a reduction's result waits for its future first.
  virtual void sum(double* data, std::int64_t count) = 0;
  virtual void sum(std::int64_t* data, std::int64_t count) = 0;  // exact
  // Every rank's `mine`, indexed by rank.
  virtual std::vector<std::string> all_gather(const std::string& mine) = 0;

  // Ends every rank's process with `status` (the job cannot continue: one rank failed alone while
  // the others may wait in a collective).
  [[noreturn]] void abort(int status);

  // A collective check point: every rank says whether its part so far failed (`failure`, null when
  // it did not), and what it runs on, as named fingerprints (hashes of the command line, of the
  // data). When any rank failed, every rank throws the lowest failed rank's error, of its kind (a
  // usage error stays one), its message prefixed with "rank K: " when K is not 0. When none failed
  // but a fingerprint differs from rank 0's, every rank throws a UsageError naming the rank and
  // the fingerprint.
  using Fingerprints = std::vector<std::pair<std::string, std::string>>;
  void agree(std::exception_ptr failure, const Fingerprints& fingerprints = {});

  // The caller is about to throw an error that every rank throws at the same point, from values
  // every rank shares (a non-finite mean loss).
  void fail_together() { failure_agreed_ = true; }
  // After agree() threw or fail_together(): the failure is every rank's, so each exits on its own
  // and rank 0 alone says why.
  bool failure_agreed() const { return failure_agreed_; }
  void clear_failure() { failure_agreed_ = false; }  // a new task on the same ranks

 protected:
  // The transport's way of ending every rank (MPI_Abort); abort() ends this process if it returns.
  virtual void end_job(int status) = 0;

 private:
  bool failure_agreed_ = false;
};

// One process as a communicator of one rank: every collective returns what it was given. For a
// Trainer without a job around it, and for setting up NCCL on a single GPU.
std::shared_ptr<Communicator> single_process_communicator();

}  // namespace voxgrad
