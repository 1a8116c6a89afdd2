// The MPI communicator. One thread owns MPI from MPI_Init to MPI_Finalize and runs the collectives
// in the order they were asked for (no other thread calls MPI, but MPI_Abort), so a
// reduction started during the backward pass runs while the calling thread computes. Floating-point
// sums use a non-commutative user operation: MPI then combines the operands in rank order, and
// Open MPI reduces such an operation to one rank and broadcasts the result, so every rank holds
// the same bits. With 2 ranks that is a + b whatever the message; with more, how the library
// groups the operands ((a + b) + c or a + (b + c)) may depend on the message size, so the last
// bits may depend on --bucket-mb.
#include "apps/distributed/mpi_world.h"

#include <mpi.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>

#include "engine/error.h"
#include "engine/profiler.h"

namespace voxgrad::distributed {

namespace {

// MPI's error codes as one line.
void check(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = "";
  int length = 0;
  MPI_Error_string(code, text, &length);
  VG_FAIL(call << " failed: " << text);
}

template <class T>
void ordered_sum(void* in, void* inout, int* length, MPI_Datatype*) {
  // MPI passes the lower ranks' partial result as `in`: inout = in + inout keeps rank order.
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *length; ++i) b[i] = a[i] + b[i];
}

int count_of(std::int64_t count) {
  VG_CHECK(count >= 0 && count <= std::numeric_limits<int>::max(),
           "MPI: " << count << " elements in one collective (at most 2^31 - 1)");
  return static_cast<int>(count);
}

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator() : thread_([this] { run(); }) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] { return started_; });
    if (start_error_) {
      lock.unlock();
      thread_.join();
      std::rethrow_exception(start_error_);
    }
  }

  ~MpiCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }

  std::future<void> start_sum(float* data, std::int64_t count) override {
    const int n = count_of(count);
    return submit([this, data, n] {
      VG_PROFILE("allreduce", Device::cpu());
      check(MPI_Allreduce(MPI_IN_PLACE, data, n, MPI_FLOAT, float_sum_, MPI_COMM_WORLD), "MPI_Allreduce");
    });
  }

  void sum(double* data, std::int64_t count) override {
    const int n = count_of(count);
    submit([this, data, n] {
      check(MPI_Allreduce(MPI_IN_PLACE, data, n, MPI_DOUBLE, double_sum_, MPI_COMM_WORLD), "MPI_Allreduce");
    }).get();
  }

  void sum(std::int64_t* data, std::int64_t count) override {
    const int n = count_of(count);
    submit([data, n] {
      check(MPI_Allreduce(MPI_IN_PLACE, data, n, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    }).get();
  }

  std::vector<std::string> all_gather(const std::string& mine) override {
    std::vector<std::string> out(static_cast<std::size_t>(size_));
    submit([&] {
      const int length = count_of(static_cast<std::int64_t>(mine.size()));
      std::vector<int> lengths(static_cast<std::size_t>(size_)), offsets(static_cast<std::size_t>(size_));
      check(MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, MPI_COMM_WORLD), "MPI_Allgather");
      std::int64_t total = 0;
      for (int k = 0; k < size_; ++k) {
        offsets[k] = count_of(total);
        total += lengths[k];
      }
      std::string all(static_cast<std::size_t>(count_of(total)), '\0');
      check(MPI_Allgatherv(mine.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR,
                           MPI_COMM_WORLD),
            "MPI_Allgatherv");
      for (int k = 0; k < size_; ++k) out[k] = all.substr(offsets[k], lengths[k]);
    }).get();
    return out;
  }

 private:
  void end_job(int status) override {
    // From the calling thread: the MPI thread may be waiting in a collective that never completes.
    // Only MPI_THREAD_MULTIPLE allows that; otherwise the process ends without MPI_Finalize, which
    // makes the launcher end the job.
    if (provided_ >= MPI_THREAD_MULTIPLE) MPI_Abort(MPI_COMM_WORLD, status);
    std::fflush(nullptr);
    std::_Exit(status);
  }

  std::future<void> submit(std::function<void()> task) {
    auto packaged = std::make_shared<std::packaged_task<void()>>(std::move(task));
    std::future<void> done = packaged->get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      tasks_.push_back([packaged] { (*packaged)(); });
    }
    changed_.notify_all();
    return done;
  }

  void start() {
    // The collectives need FUNNELED (this thread alone calls them); MULTIPLE where the library
    // offers it also makes abort()'s MPI_Abort from another thread, while a collective may be
    // waiting here, a supported call.
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
    provided_ = provided;
    VG_CHECK(provided >= MPI_THREAD_FUNNELED,
             "MPI offers no thread support (MPI_THREAD_FUNNELED or more), which voxgrad's communication thread "
             "needs; use an MPI library built with threads");
    check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    MPI_Comm local;
    check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local),
          "MPI_Comm_split_type");
    check(MPI_Comm_rank(local, &local_rank_), "MPI_Comm_rank");
    check(MPI_Comm_free(&local), "MPI_Comm_free");
    check(MPI_Op_create(&ordered_sum<float>, /*commute=*/0, &float_sum_), "MPI_Op_create");
    check(MPI_Op_create(&ordered_sum<double>, /*commute=*/0, &double_sum_), "MPI_Op_create");
  }

  void run() {
    profiler::set_communication_thread();
    try {
      start();
    } catch (...) {
      start_error_ = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      started_ = true;
    }
    changed_.notify_all();
    if (start_error_) return;
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) break;  // stopping, and every collective asked for has run
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();  // a packaged task: a failure goes to its future
    }
    MPI_Op_free(&float_sum_);
    MPI_Op_free(&double_sum_);
    MPI_Finalize();
  }

  int rank_ = 0, size_ = 1, local_rank_ = 0;
  int provided_ = 0;  // MPI's thread support, set before start-up ends
  MPI_Op float_sum_ = MPI_OP_NULL, double_sum_ = MPI_OP_NULL;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::function<void()>> tasks_;
  bool started_ = false, stopping_ = false;
  std::exception_ptr start_error_;
  std::thread thread_;  // last: starts once everything above exists
};

}  // namespace

bool built_with_mpi() { return true; }

std::shared_ptr<Communicator> mpi_world(const std::string& flag) {
  VG_USAGE_CHECK(started_by_mpi_launcher(),
                 flag << ": no MPI launcher started this process; run it as mpirun -np P voxgrad ... " << flag
                      << " (or under srun in a Slurm job)");
  // MPI may be initialised once per process: the communicator lives as long as someone holds it,
  // and a second request gets the same one.
  static std::mutex mutex;
  static std::weak_ptr<Communicator> world;
  static bool finalized = false;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto alive = world.lock()) return alive;
  VG_CHECK(!finalized, flag << ": MPI was already finalised in this process and cannot start again");
  std::shared_ptr<Communicator> created(new MpiCommunicator, [](Communicator* c) {
    delete c;
    std::lock_guard<std::mutex> lock(mutex);
    finalized = true;
  });
  world = created;
  return created;
}

}  // namespace voxgrad::distributed
