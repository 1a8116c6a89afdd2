// The one log and progress module. Messages and progress go to a Sink: the command line's writes
// them on stderr (stdout carries results only), an embedding program gives its own or none, so the
// library itself never prints. A progress bar redraws in place with rate and ETA on a terminal and
// prints plain lines otherwise.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

// `logging`, not `log`: voxgrad::log is the natural-logarithm op (engine/ops.h).
namespace voxgrad::logging {

enum class Level { Info, Warning, Error };

// Where messages and progress go. One task (a progress bar) at a time per sink: begin, any number
// of updates, end. Implementations must accept calls from any thread one at a time.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual void message(Level level, const std::string& text) = 0;
  // A task of `total` steps of `unit` ("it", "case"); total 0 means unknown.
  virtual void task_begin(const std::string& label, std::int64_t total, const std::string& unit);
  // Now at `done` steps; `fields` is what to show beside the bar ("loss 0.123 lr 0.01").
  virtual void task_update(std::int64_t done, const std::string& fields);
  // `completed` is false when the task is abandoned (an error unwinding past it).
  virtual void task_end(const std::string& fields, bool completed);

  void info(const std::string& text) { message(Level::Info, text); }
  void warning(const std::string& text) { message(Level::Warning, text); }
  void error(const std::string& text) { message(Level::Error, text); }
};

// "voxgrad: message", "voxgrad: warning: message" lines and redrawn bars on stderr: the command line's.
Sink& stderr_sink();
// Drops everything.
Sink& silent_sink();
// The process-wide sink of the functions below and of a ProgressBar given none: silent until the
// program sets one (the command line sets stderr_sink()). The sink must outlive its use.
void set_sink(Sink& sink);
Sink& sink();

void info(const std::string& message);     // sink().info
void warning(const std::string& message);  // sink().warning
void error(const std::string& message);    // sink().error
// Said at most once per process per `key` (e.g. the "running on the CPU" notice).
void notice_once(const std::string& key, const std::string& message);

// True when stderr is a terminal (bars redraw in place) unless VOXGRAD_PROGRESS=plain or TERM=dumb.
bool stderr_is_tty();

// One task on a sink, ended when finish() is called or the bar goes out of scope.
class ProgressBar {
 public:
  // `total` steps of `unit` ("it", "case"); total 0 means unknown (no ETA).
  ProgressBar(std::string label, std::int64_t total, std::string unit = "it", Sink& sink = logging::sink());
  ~ProgressBar();  // ends the task if finish() did not
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Now at `done` steps; `fields` is shown after the bar ("loss 0.123 lr 0.01"). On stderr the
  // first update is drawn at once; after it, a terminal redraws at most ~10 times a second and
  // plain output gets a line at most every ~5 s. Reaching `total` draws nothing: that line is
  // finish()'s, printed once.
  void update(std::int64_t done, const std::string& fields = "");
  // The final line, always printed once (also in plain mode).
  void finish(const std::string& fields = "");

 private:
  Sink& sink_;
  bool finished_ = false;
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
