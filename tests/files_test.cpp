// engine/files: only regular files are opened (a FIFO refused at once, not waited on), outputs are
// compared with inputs by identity, atomic writes leave the target whole or untouched, stale
// temporaries of dead processes are removed (and only theirs), and a folder lock names its holder.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>

#include "engine/error.h"
#include "engine/files.h"
#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
namespace files = voxgrad::files;
using voxgrad::test::error_of;
using voxgrad::test::read_file;
using voxgrad::test::temp_dir;

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// The pid of a process that has exited (and been reaped): nobody runs under it for a while.
pid_t dead_pid() {
  const pid_t child = fork();
  if (child == 0) _exit(0);
  int status = 0;
  waitpid(child, &status, 0);
  return child;
}

TEST(Files, FifoIsRefusedAtOnceNotWaitedOn) {
  const std::string dir = temp_dir("files-fifo");
  const std::string fifo = dir + "/x.nii";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0644), 0);
  // Run in another thread with a deadline: a blocking open() would hang the test, not fail it.
  auto opened =
      std::async(std::launch::async, [&] { return error_of([&] { files::open_regular_for_reading(fifo); }); });
  if (opened.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    // Unblock the reader so the process can end, then fail.
    const int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    if (w >= 0) ::close(w);
    FAIL() << "open_regular_for_reading blocked on a FIFO";
  }
  const std::string message = opened.get();
  EXPECT_NE(message.find(fifo + ": not a regular file (a FIFO)"), std::string::npos) << message;
  EXPECT_NE(error_of([&] { files::require_regular_file(dir); }).find("not a regular file (a folder)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { files::open_regular_for_reading(dir + "/missing"); }).find("no such file"),
            std::string::npos);
  // An InputError (exit 1) with no source text.
  try {
    files::open_regular_for_reading(fifo);
    FAIL();
  } catch (const voxgrad::InputError& e) {
    EXPECT_FALSE(voxgrad::test::has_source_text(e.what())) << e.what();
  }
  const std::string plain = dir + "/plain.nii";
  write_text(plain, "abc");
  const int fd = files::open_regular_for_reading(plain);
  char buf[4] = {};
  EXPECT_EQ(::read(fd, buf, 3), 3);  // an ordinary, blocking descriptor again
  EXPECT_EQ(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
  ::close(fd);
}

TEST(Files, InputsAreComparedByIdentityNotByName) {
  const std::string dir = temp_dir("files-identity");
  fs::create_directories(dir + "/sub");
  write_text(dir + "/image.nii.gz", "image");
  fs::create_hard_link(dir + "/image.nii.gz", dir + "/hardlink.nii.gz");
  fs::create_symlink(dir + "/image.nii.gz", dir + "/symlink.nii.gz");
  write_text(dir + "/other.nii.gz", "image");  // same bytes, another file
  files::InputFiles inputs;
  inputs.add(dir + "/image.nii.gz");
  inputs.add(dir + "/not-there.nii.gz");  // ignored
  for (const std::string& spelling : {dir + "/image.nii.gz", dir + "/sub/../image.nii.gz", dir + "/hardlink.nii.gz",
                                      dir + "/symlink.nii.gz", dir + "//./image.nii.gz"}) {
    const auto hit = inputs.overwritten_by(spelling);
    ASSERT_TRUE(hit.has_value()) << spelling;
    EXPECT_EQ(*hit, dir + "/image.nii.gz");
  }
  EXPECT_FALSE(inputs.overwritten_by(dir + "/other.nii.gz").has_value());
  EXPECT_FALSE(inputs.overwritten_by(dir + "/new.nii.gz").has_value());
}

TEST(Files, AtomicFileReplacesWholeOrLeavesTheTargetAlone) {
  const std::string dir = temp_dir("files-atomic");
  const std::string target = dir + "/summary.json";
  write_text(target, "old");
  {
    files::AtomicFile f(target);
    f.write("new but never committed", 23);
  }
  EXPECT_EQ(read_file(target), "old");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);  // no temporary left
  files::write_file_atomically(target, "new");
  EXPECT_EQ(read_file(target), "new");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
  // A folder that cannot be written names the target and the reason, in plain words.
  const std::string message = error_of([&] { files::write_file_atomically(dir + "/missing/x.json", "x"); });
  EXPECT_NE(message.find(dir + "/missing/x.json"), std::string::npos) << message;
  EXPECT_NE(message.find("no such file or folder"), std::string::npos) << message;
}

TEST(Files, StaleTemporariesOfDeadProcessesAreRemovedAndNoOthers) {
  const std::string dir = temp_dir("files-stale");
  const std::string dead = dir + "/model.safetensors.tmp-" + std::to_string(dead_pid()) + "-0";
  const std::string live = dir + "/model.safetensors.tmp-" + std::to_string(getpid()) + "-3";
  const std::string lookalike = dir + "/notes.tmp-abc-1";
  const std::string ordinary = dir + "/model.safetensors";
  for (const std::string& f : {dead, live, lookalike, ordinary}) write_text(f, "x");
  EXPECT_EQ(files::remove_stale_temporaries(dir), 1);
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(live));
  EXPECT_TRUE(fs::exists(lookalike));
  EXPECT_TRUE(fs::exists(ordinary));
  // A temporary name carries this process's id, so the next command can tell it is stale.
  EXPECT_EQ(files::temporary_path_for("/a/b").rfind("/a/b.tmp-" + std::to_string(getpid()) + "-", 0), 0u);
}

TEST(Files, FolderLockRefusesASecondOwnerNamingTheHolder) {
  const std::string dir = temp_dir("files-lock");
  int ready[2], release[2];
  ASSERT_EQ(pipe(ready), 0);
  ASSERT_EQ(pipe(release), 0);
  const pid_t child = fork();
  if (child == 0) {
    int status = 0;
    try {
      const files::FolderLock lock(dir, "the run folder");
      (void)!::write(ready[1], "1", 1);
      char c;
      (void)!::read(release[0], &c, 1);
    } catch (...) {
      status = 1;
    }
    _exit(status);
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  const std::string message = error_of([&] { files::FolderLock second(dir, "the run folder"); });
  EXPECT_NE(message.find(dir + ": the run folder is in use by process " + std::to_string(child)), std::string::npos)
      << message;
  // Nothing was written to take the lock.
  EXPECT_TRUE(fs::is_empty(dir));
  // The holder dies without unlocking anything: the kernel releases the lock.
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  const files::FolderLock mine(dir, "the run folder");
  EXPECT_TRUE(mine.held());
  for (int fd : {ready[0], ready[1], release[0], release[1]}) ::close(fd);
}

}  // namespace
