// The sinks: stderr (messages and progress bars; one mutex orders every write, so a message printed
// while a bar is on screen clears the bar's line, prints, and redraws the bar below it) and silence,
// and the process-wide choice between them or a program's own.
#include "engine/log.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <set>

namespace voxgrad::logging {

namespace {

std::mutex& out_mutex() {
  static std::mutex m;
  return m;
}

// The bar line currently shown on the terminal (empty when none), so that messages can move it.
std::string& live_bar_line() {
  static std::string line;
  return line;
}

void write_message(const std::string& prefix, const std::string& message) {
  std::lock_guard<std::mutex> lock(out_mutex());
  const std::string& bar = live_bar_line();
  std::string text;
  if (!bar.empty()) text += "\r\x1b[K";
  text += prefix + message + "\n";
  if (!bar.empty()) text += bar;
  std::cerr << text << std::flush;
}

int terminal_columns() {
  winsize ws{};
  if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

// Columns a UTF-8 string takes (every code point one column: the bar glyphs are single-width).
std::size_t display_width(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s)
    if ((c & 0xC0) != 0x80) ++n;
  return n;
}

// Cuts `s` to at most `columns` code points, never in the middle of one: a line wider than the
// terminal wraps, and \r then redraws only its last row.
std::string fit_columns(const std::string& s, std::size_t columns) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
      if (n == columns) return s.substr(0, i);
      ++n;
    }
  }
  return s;
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// ---- the stderr sink -----------------------------------------------------------------------

class StderrSink final : public Sink {
 public:
  void message(Level level, const std::string& text) override {
    static const char* const prefix[] = {"voxgrad: ", "voxgrad: warning: ", "voxgrad: error: "};  // by Level
    write_message(prefix[static_cast<int>(level)], text);
  }
  void task_begin(const std::string& label, std::int64_t total, const std::string& unit) override;
  void task_update(std::int64_t done, const std::string& fields) override;
  void task_end(const std::string& fields, bool completed) override;

 private:
  void draw(bool final_line);
  // The task in progress (one at a time).
  std::string label_;
  std::int64_t total_ = 0;
  std::string unit_;
  std::int64_t done_ = 0;
  std::string fields_;
  bool tty_ = false;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

class SilentSink final : public Sink {
 public:
  void message(Level, const std::string&) override {}
};

std::atomic<Sink*>& current_sink() {
  static std::atomic<Sink*> current{&silent_sink()};
  return current;
}

}  // namespace

void Sink::task_begin(const std::string&, std::int64_t, const std::string&) {}
void Sink::task_update(std::int64_t, const std::string&) {}
void Sink::task_end(const std::string&, bool) {}

Sink& stderr_sink() {
  static StderrSink sink;
  return sink;
}

Sink& silent_sink() {
  static SilentSink sink;
  return sink;
}

void set_sink(Sink& sink) { current_sink().store(&sink); }
Sink& sink() { return *current_sink().load(); }

void info(const std::string& message) { sink().info(message); }
void warning(const std::string& message) { sink().warning(message); }
void error(const std::string& message) { sink().error(message); }

void notice_once(const std::string& key, const std::string& message) {
  static std::mutex m;
  static std::set<std::string> said;
  {
    std::lock_guard<std::mutex> lock(m);
    if (!said.insert(key).second) return;
  }
  info(message);
}

bool stderr_is_tty() {
  const char* mode = std::getenv("VOXGRAD_PROGRESS");
  if (mode != nullptr && std::strcmp(mode, "plain") == 0) return false;
  const char* term = std::getenv("TERM");
  if (term != nullptr && std::strcmp(term, "dumb") == 0) return false;
  return isatty(STDERR_FILENO) == 1;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long long s = std::llround(seconds);
  const long long h = s / 3600, m = (s % 3600) / 60, sec = s % 60;
  char buf[48];
  if (h > 0)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", h, m, sec);
  else
    std::snprintf(buf, sizeof buf, "%02lld:%02lld", m, sec);
  return buf;
}

std::string format_progress(const std::string& label, std::int64_t done, std::int64_t total,
                            const std::string& unit, double elapsed_seconds, const std::string& fields,
                            int bar_width) {
  std::string line = label;
  const bool known = total > 0;
  if (known) {
    const double frac = std::clamp(static_cast<double>(done) / static_cast<double>(total), 0.0, 1.0);
    char pct[16];
    std::snprintf(pct, sizeof pct, "%3d%%", static_cast<int>(std::floor(frac * 100.0)));
    line.append(" ").append(pct);  // "%3d" pads: "toy  37%", "toy 100%"
    if (bar_width > 0) {
      // Eighth blocks give the bar sub-character resolution.
      static const char* const partial[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
      const double cells = frac * bar_width;
      const int full = static_cast<int>(std::floor(cells));
      const int eighths = full < bar_width ? static_cast<int>(std::floor((cells - full) * 8.0)) : 0;
      line += " |";
      for (int i = 0; i < full; ++i) line += "█";
      int used = full;
      if (eighths > 0) {
        line += partial[eighths];
        ++used;
      }
      line += std::string(static_cast<std::size_t>(bar_width - used), ' ');
      line += "|";
    }
    line.append(" ").append(std::to_string(done)).append("/").append(std::to_string(total));
  } else {
    line.append(" ").append(std::to_string(done)).append(" ").append(unit);
  }

  const double rate = (elapsed_seconds > 0 && done > 0) ? static_cast<double>(done) / elapsed_seconds : 0.0;
  std::string rate_text;
  if (rate <= 0)
    rate_text.append("? ").append(unit).append("/s");
  else if (rate >= 1)
    rate_text.append(fixed(rate, 2)).append(" ").append(unit).append("/s");
  else
    rate_text.append(fixed(1.0 / rate, 2)).append(" s/").append(unit);  // slow steps read better as s/step
  line.append(" [").append(format_duration(elapsed_seconds));
  if (known) {
    const double eta = rate > 0 ? static_cast<double>(std::max<std::int64_t>(total - done, 0)) / rate : NAN;
    line.append("<").append(format_duration(eta));
  }
  line.append(", ").append(rate_text).append("]");
  if (!fields.empty()) line.append(" ").append(fields);
  return line;
}

ProgressBar::ProgressBar(std::string label, std::int64_t total, std::string unit, Sink& sink) : sink_(sink) {
  sink_.task_begin(label, total, unit);
}

ProgressBar::~ProgressBar() {
  if (finished_) return;
  // Unwinding past a live bar (an error mid-loop): end the task so the error starts on a new line.
  try {
    sink_.task_end("", false);
  } catch (...) {
  }
}

void ProgressBar::update(std::int64_t done, const std::string& fields) { sink_.task_update(done, fields); }

void ProgressBar::finish(const std::string& fields) {
  if (finished_) return;
  finished_ = true;
  sink_.task_end(fields, true);
}

void StderrSink::task_begin(const std::string& label, std::int64_t total, const std::string& unit) {
  label_ = label;
  total_ = total;
  unit_ = unit;
  done_ = 0;
  fields_.clear();
  tty_ = stderr_is_tty();
  drawn_ = false;
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

void StderrSink::task_update(std::int64_t done, const std::string& fields) {
  done_ = done;
  fields_ = fields;
  const auto now = std::chrono::steady_clock::now();
  const auto min_gap = tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(5000);
  // The last step's line is task_end's: drawing it here too would print it twice in plain mode.
  if (total_ > 0 && done >= total_ && drawn_) return;
  // The first update is always shown, so that even a short plain log has a start and an end.
  if (!drawn_ || now - last_draw_ >= min_gap) draw(false);
}

void StderrSink::task_end(const std::string& fields, bool completed) {
  if (!completed) {
    // Abandoned (an error mid-loop): end a live bar's line so the error starts on a new one.
    if (!tty_ || !drawn_) return;
    std::lock_guard<std::mutex> lock(out_mutex());
    live_bar_line().clear();
    std::cerr << "\n" << std::flush;
    return;
  }
  if (!fields.empty()) fields_ = fields;
  draw(true);
}

void StderrSink::draw(bool final_line) {
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  last_draw_ = now;
  drawn_ = true;
  std::lock_guard<std::mutex> lock(out_mutex());
  if (!tty_) {
    std::cerr << format_progress(label_, done_, total_, unit_, elapsed, fields_, 0) + "\n" << std::flush;
    return;
  }
  const int columns = terminal_columns();
  const int bar_width = std::clamp(columns / 4, 10, 30);
  std::string line = format_progress(label_, done_, total_, unit_, elapsed, fields_, bar_width);
  if (display_width(line) >= static_cast<std::size_t>(columns))
    line = fit_columns(line, static_cast<std::size_t>(std::max(columns - 1, 1)));
  std::string& live = live_bar_line();
  if (final_line) {
    live.clear();
    std::cerr << "\r" + line + "\x1b[K\n" << std::flush;
  } else {
    live = line;
    std::cerr << "\r" + line + "\x1b[K" << std::flush;
  }
}

}  // namespace voxgrad::logging
