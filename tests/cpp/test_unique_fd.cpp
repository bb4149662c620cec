// UniqueFd, the one owner of a descriptor, and the error paths that must not leak one: a
// failed open, connect, bind or handshake leaves the process with the descriptors it had.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <utility>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/unique_fd.h"
#include "sparsecore/rpc/rpc_client.h"
#include "sparsecore/rpc/rpc_error.h"
#include "sparsecore/rpc/rpc_server.h"
#include "sparsecore/rpc/socket.h"

using namespace sparsecore;

namespace {

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

// Both ends of a fresh pipe, each owned.
std::pair<UniqueFd, UniqueFd> make_pipe() {
  int fds[2];
  EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

// Descriptors open in this process (the directory listing's own is counted every time).
size_t open_descriptors() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

bool eventually(const std::function<bool()>& condition) {
  for (int i = 0; i < 500; ++i) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return condition();
}

std::string temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / (name + "-" + random_suffix());
  std::filesystem::create_directories(dir);
  return dir.string();
}

}  // namespace

TEST(UniqueFd, DefaultAndNegativeAreEmpty) {
  UniqueFd none;
  EXPECT_FALSE(none.valid());
  EXPECT_EQ(none.get(), -1);
  UniqueFd failed(-5);  // e.g. the -1 of a failed open(2), wrapped before the check
  EXPECT_FALSE(failed);
  EXPECT_EQ(failed.get(), -1);
}

TEST(UniqueFd, ClosesOnDestruction) {
  int raw = -1;
  {
    auto [r, w] = make_pipe();
    raw = r.get();
    EXPECT_TRUE(is_open(raw));
  }
  EXPECT_FALSE(is_open(raw));
}

TEST(UniqueFd, MoveConstructionTransfersOwnership) {
  auto [r, w] = make_pipe();
  const int raw = r.get();
  UniqueFd moved(std::move(r));
  EXPECT_EQ(moved.get(), raw);
  EXPECT_FALSE(r.valid());  // NOLINT(bugprone-use-after-move): the moved-from state is the contract
  EXPECT_TRUE(is_open(raw));
}

TEST(UniqueFd, MoveAssignmentClosesTheDescriptorItReplaces) {
  auto [a, a_write] = make_pipe();
  auto [b, b_write] = make_pipe();
  const int old_raw = a.get(), new_raw = b.get();
  a = std::move(b);
  EXPECT_EQ(a.get(), new_raw);
  EXPECT_FALSE(b.valid());  // NOLINT(bugprone-use-after-move)
  EXPECT_FALSE(is_open(old_raw));
  EXPECT_TRUE(is_open(new_raw));
}

TEST(UniqueFd, SelfMoveAssignmentKeepsTheDescriptor) {
  auto [r, w] = make_pipe();
  const int raw = r.get();
  UniqueFd& alias = r;
  r = std::move(alias);
  EXPECT_EQ(r.get(), raw);
  EXPECT_TRUE(is_open(raw));
}

TEST(UniqueFd, ReleaseGivesUpOwnershipWithoutClosing) {
  int raw = -1;
  {
    auto [r, w] = make_pipe();
    raw = r.release();
    EXPECT_FALSE(r.valid());
  }
  EXPECT_TRUE(is_open(raw));
  UniqueFd again(raw);  // closes it at the end of the test
}

TEST(UniqueFd, ResetClosesTheOldDescriptorAndTakesTheNew) {
  auto [r, w] = make_pipe();
  const int old_raw = r.get();
  const int fresh = ::dup(w.get());
  ASSERT_GE(fresh, 0);
  r.reset(fresh);
  EXPECT_EQ(r.get(), fresh);
  EXPECT_FALSE(is_open(old_raw));
  r.reset();
  EXPECT_FALSE(r.valid());
  EXPECT_FALSE(is_open(fresh));
}

TEST(UniqueFd, ResetToTheHeldDescriptorKeepsItOpen) {
  auto [r, w] = make_pipe();
  const int raw = r.get();
  r.reset(raw);
  EXPECT_EQ(r.get(), raw);
  EXPECT_TRUE(is_open(raw));
}

TEST(UniqueFd, ResetKeepsErrno) {
  auto [r, w] = make_pipe();
  errno = ENOENT;
  r.reset();
  EXPECT_EQ(errno, ENOENT);
}

TEST(UniqueFd, ClosingTwiceClosesOnce) {
  auto [r, w] = make_pipe();
  const int raw = r.get();
  EXPECT_TRUE(r.close());
  EXPECT_FALSE(r.valid());
  EXPECT_FALSE(is_open(raw));
  // A descriptor opened now may reuse the number; a second close must leave it alone.
  auto [again_r, again_w] = make_pipe();
  EXPECT_TRUE(r.close());
  r.reset();
  EXPECT_TRUE(is_open(again_r.get()));
  EXPECT_TRUE(is_open(again_w.get()));
}

TEST(UniqueFd, CloseReportsAFailedClose) {
  auto [r, w] = make_pipe();
  const int raw = r.release();
  ASSERT_EQ(::close(raw), 0);
  UniqueFd stale(raw);  // no longer open: close(2) fails with EBADF
  errno = 0;
  EXPECT_FALSE(stale.close());
  EXPECT_EQ(errno, EBADF);
  EXPECT_FALSE(stale.valid());
}

TEST(NoDescriptorLeak, FailedOpenOfANonRegularFile) {
  const std::string dir = temp_dir("sc-fd-leak");
  const std::string fifo = dir + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const size_t before = open_descriptors();
  // open(2) succeeds on both; the checks after it fail.
  EXPECT_THROW(File::open_regular(fifo), CorruptData);
  EXPECT_THROW(File::create("/dev/null"), IoError);
  EXPECT_THROW(read_regular_file(fifo, 1 << 20), CorruptData);
  EXPECT_EQ(open_descriptors(), before);
  std::filesystem::remove_all(dir);
}

TEST(NoDescriptorLeak, FailedReadOfATruncatedFile) {
  const std::string dir = temp_dir("sc-fd-leak");
  const std::string path = dir + "/short";
  write_file_atomic(path, "abc", 3);
  const size_t before = open_descriptors();
  File f = File::open_regular(path);
  char buf[8];
  EXPECT_THROW(f.read_exact(buf, sizeof buf), CorruptData);
  f.close();
  EXPECT_NO_THROW(f.close());  // closing a closed File again closes nothing
  EXPECT_EQ(open_descriptors(), before);
  std::filesystem::remove_all(dir);
}

TEST(NoDescriptorLeak, FailedConnectAndBind) {
  const size_t before = open_descriptors();
  int port = 0;
  {
    UniqueFd listener = rpc::listen_tcp("127.0.0.1", 0);
    port = rpc::local_port(listener.get());
    // The port is taken: bind fails after the socket was made.
    EXPECT_THROW(rpc::listen_tcp("127.0.0.1", port), IoError);
  }
  // Nothing listens there now: the connection is refused after the socket was made.
  EXPECT_THROW(rpc::connect_tcp("127.0.0.1", port, 2000), RpcConnectionError);
  EXPECT_EQ(open_descriptors(), before);
}

TEST(NoDescriptorLeak, FailedHandshakeAndClosedConnections) {
  rpc::ServerOptions o;
  o.token = "s3cret";
  auto server = std::make_unique<rpc::RpcServer>(o);
  server->start();
  const size_t before = open_descriptors();
  rpc::ClientOptions bad;
  bad.token = "guess";
  for (int i = 0; i < 5; ++i) EXPECT_THROW(rpc::RpcClient("127.0.0.1", server->port(), bad), RpcAuthError);
  rpc::ClientOptions good;
  good.token = "s3cret";
  for (int i = 0; i < 5; ++i) rpc::RpcClient client("127.0.0.1", server->port(), good);
  // Both ends were in this process: the server's accepted sockets close when it sees the peers go.
  EXPECT_TRUE(eventually([&] { return server->connections_open() == 0; }));
  EXPECT_TRUE(eventually([&] { return open_descriptors() == before; })) << open_descriptors() << " vs " << before;
}
