// The one log and progress module. Everything here writes to stderr: stdout carries results only.
// A progress bar redraws in place with rate and ETA on a terminal and prints plain lines otherwise.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

// `logging`, not `log`: voxgrad::log is the natural-logarithm op (engine/ops.h).
namespace voxgrad::logging {

void info(const std::string& message);     // "voxgrad: message"
void warning(const std::string& message);  // "voxgrad: warning: message"
void error(const std::string& message);    // "voxgrad: error: message"
// Said at most once per process per `key` (e.g. the "running on the CPU" notice).
void notice_once(const std::string& key, const std::string& message);

// True when stderr is a terminal (bars redraw in place) unless VOXGRAD_PROGRESS=plain or TERM=dumb.
bool stderr_is_tty();

class ProgressBar {
 public:
  // `total` steps of `unit` ("it", "case"); total 0 means unknown (no ETA).
  ProgressBar(std::string label, std::int64_t total, std::string unit = "it");
  ~ProgressBar();  // finishes the line if update() drew one
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Now at `done` steps; `fields` is shown after the bar ("loss 0.123 lr 0.01"). The first
  // update is drawn at once; after it, a terminal redraws at most ~10 times a second and plain
  // output gets a line at most every ~5 s.
  // Reaching `total` draws nothing: that line is finish()'s, printed once.
  void update(std::int64_t done, const std::string& fields = "");
  // The final line, always printed once (also in plain mode).
  void finish(const std::string& fields = "");

 private:
  void draw(bool final_line);
  std::string label_;
  std::int64_t total_;
  std::string unit_;
  std::int64_t done_ = 0;
  std::string fields_;
  bool tty_;
  bool drawn_ = false;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

// One progress line without control characters, e.g.
//   "toy  37% |█████▌         | 37/100 [00:12<00:21, 3.02 it/s] loss 0.123"
// `bar_width` 0 leaves the bar out (plain lines); total 0 leaves out the percentage and the ETA.
std::string format_progress(const std::string& label, std::int64_t done, std::int64_t total,
                            const std::string& unit, double elapsed_seconds, const std::string& fields,
                            int bar_width);

// "00:12", "04:05", "1:02:03" for ETAs and durations; "?" when not finite or negative.
std::string format_duration(double seconds);

}  // namespace voxgrad::logging
