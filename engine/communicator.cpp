// The start-up agreement: one all-gather of each rank's status, "-" and its fingerprints when it
// is fine, or the kind and message of its failure.
#include "engine/communicator.h"

#include <cstdlib>
#include <exception>

#include "engine/error.h"

namespace voxgrad {

namespace {

// A failure as its kind (U usage, I input, E anything else) and its message.
std::string encode_failure(const std::exception_ptr& failure) {
  try {
    std::rethrow_exception(failure);
  } catch (const UsageError& e) {
    return std::string("U") + e.what();
  } catch (const InputError& e) {
    return std::string("I") + e.what();
  } catch (const std::exception& e) {
    return std::string("E") + e.what();
  } catch (...) {
    return "Eunknown failure";
  }
}

// The fingerprints' values, each on its own line after the "-".
std::string encode_fine(const Communicator::Fingerprints& fingerprints) {
  std::string out = "-";
  for (const auto& [name, value] : fingerprints) out += value + "\n";
  return out;
}

class SingleProcess : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  std::future<void> start_sum(float*, std::int64_t) override {
    std::promise<void> done;
    done.set_value();
    return done.get_future();
  }
  void sum(double*, std::int64_t) override {}
  void sum(std::int64_t*, std::int64_t) override {}
  std::vector<std::string> all_gather(const std::string& mine) override { return {mine}; }

 private:
  void end_job(int) override {}  // abort() then ends this process, the whole job
};

}  // namespace

std::shared_ptr<Communicator> single_process_communicator() { return std::make_shared<SingleProcess>(); }

void Communicator::abort(int status) {
  end_job(status);
  std::_Exit(status);
}

void Communicator::agree(std::exception_ptr failure, const Fingerprints& fingerprints) {
  const std::vector<std::string> all = all_gather(failure ? encode_failure(failure) : encode_fine(fingerprints));
  for (std::size_t k = 0; k < all.size(); ++k) {
    const std::string& status = all[k];
    if (status[0] == '-') continue;
    failure_agreed_ = true;
    // The lowest failed rank rethrows its own failure as it was; the others throw its copy.
    if (failure && static_cast<int>(k) == rank()) std::rethrow_exception(failure);
    const std::string message = (k == 0 ? "" : "rank " + std::to_string(k) + ": ") + status.substr(1);
    if (status[0] == 'U') throw UsageError(message);
    if (status[0] == 'I') throw InputError(message);
    throw Error(message);
  }
  // Nobody failed, so every rank sent its fingerprints in the same order.
  for (std::size_t k = 1; k < all.size(); ++k) {
    if (all[k] == all[0]) continue;
    failure_agreed_ = true;
    std::size_t line = 0, a = 1, b = 1;  // the first fingerprint that differs
    while (line + 1 < fingerprints.size()) {
      const std::size_t end_a = all[0].find('\n', a), end_b = all[k].find('\n', b);
      if (all[0].compare(a, end_a - a, all[k], b, end_b - b) != 0) break;
      a = end_a + 1;
      b = end_b + 1;
      ++line;
    }
    const std::string what = line < fingerprints.size() ? fingerprints[line].first : "start-up";
    throw UsageError("rank " + std::to_string(k) + " differs from rank 0 in its " + what +
                     "; every rank must run the same command on the same data");
  }
}

}  // namespace voxgrad
