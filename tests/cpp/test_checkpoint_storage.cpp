// Checkpoint storage from C++: the directory switch, what readers refuse (symlinks, FIFOs),
// plain names, and named snapshots of an embedded parameter server (confined, all or nothing).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/ps/ps_client.h"
#include "sparsecore/ps/ps_server.h"
#include "sparsecore/ps/ps_snapshot.h"
#include "temp_dir_test.h"

using namespace sparsecore;
namespace fs = std::filesystem;

namespace {

class CheckpointStorage : public sparsecore::test_support::TempDirTest {
 protected:
  static void write(const std::string& p, const std::string& text) { std::ofstream(p) << text; }
  static std::string read(const std::string& p) {
    std::ifstream f(p);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
};

TableConfig table(const std::string& name, int dim, int shard_bits = 2) {
  TableConfig c;
  c.name = name;
  c.dim = dim;
  c.shard_bits = shard_bits;
  return c;
}

}  // namespace

TEST_F(CheckpointStorage, CommitDirectoryRenamesIntoAMissingTarget) {
  make_directory(path("new"));
  write(path("new") + "/a", "1");
  commit_directory(path("new"), path("target"));
  EXPECT_EQ(read(path("target") + "/a"), "1");
  EXPECT_FALSE(path_exists(path("new")));
}

TEST_F(CheckpointStorage, CommitDirectoryReplacesAnExistingTargetWhole) {
  make_directory(path("target"));
  write(path("target") + "/old", "old");
  make_directory(path("new"));
  write(path("new") + "/a", "2");
  commit_directory(path("new"), path("target"));
  EXPECT_EQ(read(path("target") + "/a"), "2");
  EXPECT_FALSE(path_exists(path("target") + "/old"));  // no mix of the two
  EXPECT_FALSE(path_exists(path("new")));
  EXPECT_EQ(committed_directory(path("target")), path("target"));
  EXPECT_EQ(committed_directory(path("missing")), "");
}

TEST_F(CheckpointStorage, OpenRegularRefusesSymlinksAndFifosWithoutBlocking) {
  write(path("file"), "x");
  ASSERT_EQ(::symlink(path("file").c_str(), path("link").c_str()), 0);
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0644), 0);
  EXPECT_THROW(File::open_regular(path("link")), CorruptData);
  EXPECT_THROW(File::open_regular(path("fifo")), CorruptData);
  EXPECT_THROW(File::create(path("fifo")), IoError);
  EXPECT_THROW(File::create(path("link")), IoError);
  EXPECT_EQ(read(path("file")), "x");  // not written through the link
  EXPECT_THROW(read_regular_file(path("file"), 0), CorruptData);
  EXPECT_EQ(read_regular_file(path("file"), 1).size(), 1u);
}

TEST(PlainName, OnlySingleComponentsStayWhereTheyAreJoined) {
  for (const char* ok : {"a", "step-7", "t000-b00000-01024.rows", ".hidden"}) EXPECT_TRUE(is_plain_name(ok)) << ok;
  for (const char* bad : {"", ".", "..", "a/b", "/abs", "../up"}) EXPECT_FALSE(is_plain_name(bad)) << bad;
  EXPECT_FALSE(is_plain_name(std::string(256, 'a')));
  EXPECT_FALSE(is_plain_name(std::string("a\0b", 3)));
  EXPECT_THROW(ps::check_snapshot_name(".staging"), InvalidArgument);
  EXPECT_THROW(ps::snapshot_path("", "step-1"), InvalidArgument);
}

TEST_F(CheckpointStorage, EmbeddedSnapshotsAreNamedConfinedAndAllOrNothing) {
  ps::PsServerOptions o;
  o.rpc.num_reactors = 2;
  o.snapshot_dir = path("snaps");
  ps::PsServer server(o);
  ps::PsClient client(server, {});
  client.create_table(table("t", 3), 5);
  std::vector<int64_t> ids(200);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>(i) * 7919;
  std::vector<float> saved(ids.size() * 3), now(ids.size() * 3), grads(ids.size() * 3, 1.0f);
  client.pull("t", ids.data(), static_cast<int64_t>(ids.size()), true, saved.data());
  EXPECT_EQ(client.save("step-1", 1, false), "step-1");
  EXPECT_THROW(client.save("step-1", 1, false), InvalidArgument);
  EXPECT_THROW(client.save("../x", 1, false), InvalidArgument);
  client.push("t", ids.data(), static_cast<int64_t>(ids.size()), grads.data(), 0);

  // Shard 1's part damaged: nothing changes anywhere.
  const std::string marker = path("snaps") + "/step-1/" + ps::shard_marker_name(1, 2);
  const std::string good = read(marker);
  write(marker, "{\"format\": 1");
  std::vector<float> before(ids.size() * 3);
  client.pull("t", ids.data(), static_cast<int64_t>(ids.size()), false, before.data());
  EXPECT_THROW(client.restore("step-1"), CorruptData);
  client.pull("t", ids.data(), static_cast<int64_t>(ids.size()), false, now.data());
  EXPECT_EQ(now, before);

  write(marker, good);
  EXPECT_EQ(client.restore(""), 1);
  client.pull("t", ids.data(), static_cast<int64_t>(ids.size()), false, now.data());
  EXPECT_EQ(now, saved);
}

TEST_F(CheckpointStorage, AServerWithoutSnapshotDirectoryRefusesSaveAndRestore) {
  ps::PsServerOptions o;
  ps::PsServer server(o);
  ps::PsClient client(server, {});
  client.create_table(table("t", 2), 1);
  EXPECT_THROW(client.save("step-1", 1, false), InvalidArgument);
  EXPECT_THROW(client.restore(""), InvalidArgument);
  EXPECT_THROW(client.create_table(table("wide", 2, 16), 1), InvalidArgument);
}
