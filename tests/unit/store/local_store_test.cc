// LocalStore, what is particular to a local directory: temporaries renamed into place, O_DIRECT
// for large objects, puts racing deletes of their directory; and a target that others write to
// (issue #9): planted symbolic links, FIFOs and oversized objects, and the modes of what the store
// creates. The ObjectStore contract itself (round trips, create-if-absent, ranges, listing, batch
// deletes, key validation) is tested for every store in
// tests/integration/store_conformance_test.cc.
#include "store/local_store.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "support/test_util.h"
#include "vmbackup/options.h"
#include "vmbackup/runtime.h"

namespace vmbackup::internal {
namespace {

using ::vmbackup::testing::TempDir;

class LocalStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = OpenLocalStore(dir_.path(), Runtime::Default());
    ASSERT_OK(s);
    store_ = std::move(*s);
  }
  TempDir dir_;
  std::unique_ptr<ObjectStore> store_;
};

// Puts leave nothing but their objects: each temporary is renamed into place, or removed when the
// put is refused.
TEST_F(LocalStoreTest, SmallPutsLeaveNoTemporaries) {
  ASSERT_OK(store_->Put("a/b/c.bin", "0123456789", PutOptions{}));
  ASSERT_OK(store_->Put("k", "one", PutOptions{.if_absent = true}));
  EXPECT_THAT(store_->Put("k", "two", PutOptions{.if_absent = true}),
              StatusIs(StatusCode::kAlreadyExists, "k"));
  ASSERT_OK(store_->Put("k", "three", PutOptions{}));
  ASSERT_OK(store_->Put("fast", "x", PutOptions{.durable = false}));
  EXPECT_EQ(*store_->Get("k"), "three");
  EXPECT_EQ(testing::ListFiles(dir_.path()), (std::vector<std::string>{"a/b/c.bin", "fast", "k"}));
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(s.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return s;
}

// Pages of `path` in the page cache, and the file's page count.
std::pair<size_t, size_t> ResidentPages(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  struct stat sb;
  ::fstat(fd, &sb);
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t pages = (static_cast<size_t>(sb.st_size) + page - 1) / page;
  void* m = ::mmap(nullptr, static_cast<size_t>(sb.st_size), PROT_READ, MAP_SHARED, fd, 0);
  std::vector<unsigned char> vec(pages);
  ::mincore(m, static_cast<size_t>(sb.st_size), vec.data());
  ::munmap(m, static_cast<size_t>(sb.st_size));
  ::close(fd);
  size_t resident = 0;
  for (unsigned char c : vec) resident += c & 1;
  return {resident, pages};
}

// Large durable objects take the O_DIRECT path (aligned chunks, padded last chunk, truncate):
// sizes around the chunk and alignment boundaries must come back byte for byte.
TEST_F(LocalStoreTest, LargeObjectsRoundTripExactly) {
  const size_t sizes[] = {1 << 20, (1 << 20) + 1,    (8 << 20) - 1,
                          8 << 20, (8 << 20) + 4096, (17 << 20) + 12345};
  uint32_t seed = 1;
  for (size_t n : sizes) {
    SCOPED_TRACE(n);
    const std::string data = RandomBytes(n, seed++);
    const std::string key = "packs/ab/" + std::to_string(n) + ".pack";
    ASSERT_OK(store_->Put(key, data, PutOptions{.if_absent = true}));
    auto head = store_->Head(key);
    ASSERT_OK(head);
    EXPECT_EQ(head->size, n);
    auto back = store_->Get(key);
    ASSERT_OK(back);
    EXPECT_TRUE(*back == data);
    // GetInto reuses one buffer across ranges of different sizes.
    std::string buf;
    ASSERT_OK(store_->GetInto(key, n - 5000, 5000, &buf));
    EXPECT_EQ(buf, data.substr(n - 5000));
    ASSERT_OK(store_->GetInto(key, 3, 100, &buf));
    EXPECT_EQ(buf, data.substr(3, 100));
    EXPECT_THAT(store_->GetInto(key, n - 10, 20, &buf), StatusIs(StatusCode::kDataLoss, "shorter"));
  }
  EXPECT_EQ(testing::ListFiles(dir_.path()).size(), std::size(sizes));  // no temporaries left
}

// A pack written by a backup should not push the host's cached data out of the page cache.
TEST_F(LocalStoreTest, LargeObjectsBypassThePageCache) {
  struct statfs fs;
  ASSERT_EQ(::statfs(dir_.path().c_str(), &fs), 0);
  if (fs.f_type != EXT4_SUPER_MAGIC && fs.f_type != XFS_SUPER_MAGIC &&
      fs.f_type != BTRFS_SUPER_MAGIC)
    GTEST_SKIP() << "the test directory's filesystem (magic 0x" << std::hex << fs.f_type
                 << ") is not ext4/xfs/btrfs, where O_DIRECT is known to bypass the cache";
  const std::string data = RandomBytes((4 << 20) + 100, 7);
  ASSERT_OK(store_->Put("big", data, PutOptions{}));
  auto [resident, pages] = ResidentPages(dir_.Sub("big"));
  EXPECT_LE(resident, 1u) << "of " << pages << " pages";  // the truncated tail page at most
  ASSERT_OK(store_->Put("small", data.substr(0, 100000), PutOptions{}));
  EXPECT_GT(ResidentPages(dir_.Sub("small")).first, 0u);  // small objects stay buffered
}

// tmpfs has no O_DIRECT: large puts fall back to buffered writes and still round-trip.
TEST(LocalStoreTmpfsTest, LargeObjectsFallBackWithoutDirectIo) {
  struct statfs fs;
  if (::statfs("/dev/shm", &fs) != 0 || fs.f_type != TMPFS_MAGIC)
    GTEST_SKIP() << "/dev/shm is not a tmpfs here";
  char tmpl[] = "/dev/shm/vmbackup-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string root = tmpl;
  {
    auto s = OpenLocalStore(root, Runtime::Default());
    ASSERT_OK(s);
    const std::string data = RandomBytes((3 << 20) + 5, 9);
    ASSERT_OK((*s)->Put("packs/x.pack", data, PutOptions{}));
    auto back = (*s)->Get("packs/x.pack");
    ASSERT_OK(back);
    EXPECT_TRUE(*back == data);
  }
  std::filesystem::remove_all(root);
}

// Regression: a Put could fail with NOT_FOUND when a concurrent Delete removed the parent
// directory it had just created (seen with several processes probing one target at once).
TEST_F(LocalStoreTest, PutsRaceDeletesInOneDirectoryWithoutErrors) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 150; ++i) {
        const std::string key = "probe/" + std::to_string(t) + "-" + std::to_string(i);
        Status st = store_->Put(key, "x", PutOptions{.if_absent = (i % 2 == 0), .durable = false});
        if (st.ok()) st = store_->Delete({key});
        if (!st.ok()) {
          ADD_FAILURE() << st.ToString();
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_TRUE(testing::ListFiles(dir_.path()).empty());
}

// ---- a target others write to (issue #9) --------------------------------------------------------

// Modes of everything below `root` (relative path → mode & 07777), the root itself excluded.
std::map<std::string, mode_t> ModesBelow(const std::string& root) {
  std::map<std::string, mode_t> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(root)) {
    struct stat sb;
    EXPECT_EQ(::lstat(e.path().c_str(), &sb), 0) << e.path();
    out[std::filesystem::relative(e.path(), root).string()] = sb.st_mode & 07777;
  }
  return out;
}

// Regression: objects were created 0644 and directories 0755, so every local user could read the
// guests' data in a backup.
TEST_F(LocalStoreTest, ObjectsWereWorldReadable) {
  const mode_t old_umask = ::umask(022);  // the usual umask: it let 0644 / 0755 through
  ASSERT_OK(store_->Put("repository.json", "{}", PutOptions{.if_absent = true}));
  ASSERT_OK(store_->Put("packs/ab/ab01.pack", RandomBytes((2 << 20) + 7, 3), PutOptions{}));
  ASSERT_OK(store_->Put("packs/cd/cd01.pack", RandomBytes(5000, 4), PutOptions{}));
  ASSERT_OK(store_->Put("index/ab01.idx", "i", PutOptions{.if_absent = true}));
  ASSERT_OK(store_->Put("volumes/b1/disk0.x.vidx", "v", PutOptions{.durable = false}));
  ASSERT_OK(store_->Put("records/b1.json", "r", PutOptions{.if_absent = true}));
  ::umask(old_umask);
  const auto modes = ModesBelow(dir_.path());
  ASSERT_EQ(modes.size(), 14u) << ::testing::PrintToString(modes);  // 6 files, 8 dirs
  for (const auto& [path, mode] : modes) {
    struct stat sb;
    ASSERT_EQ(::lstat(dir_.Sub(path).c_str(), &sb), 0);
    EXPECT_EQ(mode, S_ISDIR(sb.st_mode) ? 0700u : 0600u)
        << path << " has mode 0" << std::oct << mode;
  }
  EXPECT_TRUE(modes.count(".tmp")) << "the temporaries' directory is private too";
}

// Regression: a whole-object read allocated st_size bytes of whatever the target held, so a
// planted (sparse, cheap) huge file made a restore allocate without bound.
TEST_F(LocalStoreTest, WholeReadOfAHugePlantedObjectAllocatedItsSize) {
  const uint64_t size = kMaxWholeObjectRead + (1 << 20);  // 65 MiB, sparse
  ASSERT_OK(store_->Put("index/huge.idx", "x", PutOptions{}));
  ASSERT_EQ(::truncate(dir_.Sub("index/huge.idx").c_str(), static_cast<off_t>(size)), 0);
  EXPECT_THAT(store_->Get("index/huge.idx"), StatusIs(StatusCode::kDataLoss, "index/huge.idx"));
  std::string buf;
  EXPECT_THAT(store_->GetInto("index/huge.idx", 0, 0, &buf),
              StatusIs(StatusCode::kDataLoss, "index/huge.idx"));
  EXPECT_LT(buf.capacity(), 1u << 20) << "refused only after allocating the object's size";
  EXPECT_THAT(store_->GetAtMost("index/huge.idx", 1 << 20),
              StatusIs(StatusCode::kDataLoss, "index/huge.idx"));
  // Ranged reads are the caller's to bound, and still work.
  auto part = store_->Get("index/huge.idx", size - 10, 10);
  ASSERT_OK(part);
  EXPECT_EQ(*part, std::string(10, '\0'));
  // Exactly kMaxWholeObjectRead to the end is still a whole read.
  auto tail = store_->Get("index/huge.idx", size - kMaxWholeObjectRead, 0);
  ASSERT_OK(tail);
  EXPECT_EQ(tail->size(), kMaxWholeObjectRead);
}

// Regression: a ranged read sized its buffer from the length asked before looking at the object,
// so a length from a corrupt index past the end of a short object allocated that much.
TEST_F(LocalStoreTest, RangedReadPastTheEndOfAShortObjectAllocatedTheRange) {
  ASSERT_OK(store_->Put("packs/ab/short.pack", "0123456789", PutOptions{}));
  std::string buf;
  EXPECT_THAT(store_->GetInto("packs/ab/short.pack", 2, 1ull << 41, &buf),
              StatusIs(StatusCode::kDataLoss, "shorter"));
  EXPECT_LT(buf.capacity(), 1u << 20);
}

// Regression: a FIFO (or any non-regular file) planted at a key was opened and read as an object
// (and with no writer, opening it blocked the reader forever).
TEST_F(LocalStoreTest, FifoPlantedAtAKeyWasReadAsAnObject) {
  ASSERT_OK(store_->Put("records/real.json", "r", PutOptions{}));
  const std::string fifo = dir_.Sub("records/fifo.json");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // A writer keeps the old code's open from blocking, so that it fails instead of hanging.
  int w = ::open(fifo.c_str(), O_RDWR | O_NONBLOCK);
  ASSERT_GE(w, 0);
  EXPECT_THAT(store_->Get("records/fifo.json"),
              StatusIs(StatusCode::kNotFound, "records/fifo.json"));
  EXPECT_THAT(store_->Head("records/fifo.json"), StatusIs(StatusCode::kNotFound, "not a file"));
  auto listed = store_->ListAll("records/");
  ASSERT_OK(listed);
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].key, "records/real.json");
  ::close(w);
}

// Symbolic links planted below the root: run with openat2 and with the openat(O_NOFOLLOW) walk
// used on kernels without it.
class LocalStoreSymlinkTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    SetLocalStoreWithoutOpenat2ForTest(GetParam());
    root_ = dir_.Sub("target");
    outside_ = dir_.Sub("outside");
    ASSERT_EQ(::mkdir(root_.c_str(), 0700), 0);
    ASSERT_EQ(::mkdir(outside_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((outside_ + "/sub").c_str(), 0755), 0);
    testing::WriteAll(outside_ + "/victim", "precious");
    testing::WriteAll(outside_ + "/sub/victim2", "precious too");
    auto s = OpenLocalStore(root_, Runtime::Default());
    ASSERT_OK(s);
    store_ = std::move(*s);
    // Something real beside the links, which must keep working.
    ASSERT_OK(store_->Put("records/real.json", "real", PutOptions{}));
  }
  void TearDown() override { SetLocalStoreWithoutOpenat2ForTest(false); }

  // Puts a link at `key` (replacing an empty directory there, such as .tmp after SetUp's put).
  void Plant(const std::string& key, const std::string& to) {
    std::filesystem::create_directories(std::filesystem::path(root_ + "/" + key).parent_path());
    std::filesystem::remove(root_ + "/" + key);
    ASSERT_EQ(::symlink(to.c_str(), (root_ + "/" + key).c_str()), 0) << key;
  }
  // The outside directory holds exactly what SetUp put there, byte for byte.
  void ExpectOutsideUntouched() {
    EXPECT_EQ(testing::ListFiles(outside_), (std::vector<std::string>{"sub/victim2", "victim"}));
    EXPECT_EQ(testing::ReadAll(outside_ + "/victim"), "precious");
    EXPECT_EQ(testing::ReadAll(outside_ + "/sub/victim2"), "precious too");
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(outside_),
                            std::filesystem::directory_iterator()),
              2);
  }
  // Every operation on `key` is refused as a symbolic link, naming the key; nothing is followed.
  void ExpectRefused(const std::string& key) {
    SCOPED_TRACE(key);
    const auto refused = StatusIs(StatusCode::kPermissionDenied, "symbolic link");
    EXPECT_THAT(store_->Get(key), refused);
    EXPECT_THAT(store_->Get(key), StatusIs(StatusCode::kPermissionDenied, key));
    EXPECT_THAT(store_->Get(key, 0, 3), refused);
    EXPECT_THAT(store_->Head(key), refused);
    EXPECT_THAT(store_->Put(key, "evil", PutOptions{}), refused);
    EXPECT_THAT(store_->Put(key, "evil", PutOptions{.if_absent = true}), refused);
    EXPECT_THAT(store_->Put(key, RandomBytes((2 << 20) + 1, 5), PutOptions{}), refused);
    EXPECT_THAT(store_->Delete({key}), refused);
    ExpectOutsideUntouched();
  }
  // The real object is still listed, read and replaced.
  void ExpectRealObjectWorks() {
    EXPECT_EQ(*store_->Get("records/real.json"), "real");
    ASSERT_OK(store_->Put("records/real.json", "real", PutOptions{}));
  }
  std::vector<std::string> Keys(const std::string& prefix) {
    std::vector<std::string> keys;
    auto all = store_->ListAll(prefix);
    EXPECT_OK(all);
    if (all.ok())
      for (const auto& o : *all) keys.push_back(o.key);
    return keys;
  }

  TempDir dir_;
  std::string root_, outside_;
  std::unique_ptr<ObjectStore> store_;
};

// Regression: with volumes/x -> a directory outside the target, Delete of volumes/x/victim
// removed the file outside, Put wrote there and Get / Head / List read there.
TEST_P(LocalStoreSymlinkTest, SymlinkedDirectoryLetOperationsReachOutsideTheTarget) {
  Plant("volumes/x", outside_);
  ExpectRefused("volumes/x/victim");
  ExpectRefused("volumes/x/sub/victim2");
  ExpectRefused("volumes/x/new");
  ExpectRefused("volumes/x/sub/new/deeper");
  ExpectRefused("volumes/x");  // the link itself, as a key
  EXPECT_THAT(Keys(""), ::testing::ElementsAre("records/real.json"));
  EXPECT_THAT(Keys("volumes/"), ::testing::IsEmpty());
  EXPECT_THAT(store_->List("volumes/x/", "", 1000),
              StatusIs(StatusCode::kPermissionDenied, "volumes/x"));
  EXPECT_THAT(store_->List("volumes/x/sub/", "", 1000),
              StatusIs(StatusCode::kPermissionDenied, "symbolic link"));
  // The link is still there: refusing leaves the evidence.
  struct stat sb;
  ASSERT_EQ(::lstat((root_ + "/volumes/x").c_str(), &sb), 0);
  EXPECT_TRUE(S_ISLNK(sb.st_mode));
  ExpectRealObjectWorks();
  ExpectOutsideUntouched();
}

// Regression: puts of packs wrote through a symlinked packs/<xx> directory.
TEST_P(LocalStoreSymlinkTest, SymlinkedPackDirectoryWasWrittenThrough) {
  Plant("packs/ab", outside_);
  ExpectRefused("packs/ab/ab0123.pack");
  ExpectRefused("packs/ab/victim");
  EXPECT_THAT(Keys("packs/"), ::testing::IsEmpty());
  ASSERT_OK(store_->Put("packs/cd/cd0123.pack", RandomBytes(3 << 20, 6), PutOptions{}));
  EXPECT_THAT(Keys("packs/"), ::testing::ElementsAre("packs/cd/cd0123.pack"));
  ExpectOutsideUntouched();
}

// Regression: with .tmp -> a directory outside the target, every Put created (and renamed away)
// its temporary file outside.
TEST_P(LocalStoreSymlinkTest, SymlinkedTmpDirectoryWasWrittenThrough) {
  Plant(".tmp", outside_);
  for (const bool big : {false, true}) {
    const std::string data = big ? RandomBytes((2 << 20) + 3, 7) : "small";
    EXPECT_THAT(store_->Put("records/new.json", data, PutOptions{}),
                StatusIs(StatusCode::kPermissionDenied, ".tmp"));
    EXPECT_THAT(store_->Put("records/new.json", data, PutOptions{.if_absent = true}),
                StatusIs(StatusCode::kPermissionDenied, "symbolic link"));
    EXPECT_THAT(store_->Put("records/new.json", data, PutOptions{.durable = false}),
                StatusIs(StatusCode::kPermissionDenied, "records/new.json"));
  }
  EXPECT_THAT(store_->Head("records/new.json"), StatusIs(StatusCode::kNotFound, "new.json"));
  EXPECT_EQ(*store_->Get("records/real.json"), "real");
  EXPECT_THAT(Keys(""), ::testing::ElementsAre("records/real.json"));
  ExpectOutsideUntouched();
}

// Regression: an object that is a symbolic link (to a file or a directory outside) was read
// through by Get and Head, and replaced or deleted by Put and Delete.
TEST_P(LocalStoreSymlinkTest, SymlinkedObjectFileWasReadThrough) {
  Plant("records/evil.json", outside_ + "/victim");
  Plant("records/dir.json", outside_);
  Plant("records/dangling.json", outside_ + "/does-not-exist");
  ExpectRefused("records/evil.json");
  ExpectRefused("records/dir.json");
  ExpectRefused("records/dangling.json");
  EXPECT_FALSE(testing::FileExists(outside_ + "/does-not-exist"));
  EXPECT_THAT(Keys("records/"), ::testing::ElementsAre("records/real.json"));
  // A batch delete stops at the link; the keys before it are deleted.
  EXPECT_THAT(store_->Delete({"records/real.json", "records/evil.json"}),
              StatusIs(StatusCode::kPermissionDenied, "records/evil.json"));
  EXPECT_THAT(store_->Head("records/real.json"), StatusIs(StatusCode::kNotFound, "real.json"));
  ExpectOutsideUntouched();
}

// Regression: a symlinked index/ directory made the repository read pack indexes from outside.
TEST_P(LocalStoreSymlinkTest, SymlinkedIndexDirectoryWasListedAndReadThrough) {
  Plant("index", outside_);
  ExpectRefused("index/victim");
  ExpectRefused("index/ab0123.idx");
  EXPECT_THAT(Keys(""), ::testing::ElementsAre("records/real.json"));
  EXPECT_THAT(store_->List("index/", "", 1000),
              StatusIs(StatusCode::kPermissionDenied, "symbolic link"));
  EXPECT_THAT(store_->List("index/vic", "", 1000),
              StatusIs(StatusCode::kPermissionDenied, "index"));
  ExpectRealObjectWorks();
  ExpectOutsideUntouched();
}

// The configured root may itself be a link (the user chose it): it is resolved once, at open.
TEST_P(LocalStoreSymlinkTest, RootPathMayBeASymbolicLink) {
  const std::string link = dir_.Sub("root-link");
  ASSERT_EQ(::symlink(root_.c_str(), link.c_str()), 0);
  auto s = OpenLocalStore(link, Runtime::Default());
  ASSERT_OK(s);
  ASSERT_OK((*s)->Put("packs/ef/ef01.pack", RandomBytes((1 << 20) + 9, 8), PutOptions{}));
  ASSERT_OK((*s)->Put("records/b.json", "b", PutOptions{.if_absent = true}));
  EXPECT_EQ(*(*s)->Get("records/b.json"), "b");
  EXPECT_EQ((*s)->Head("packs/ef/ef01.pack")->size, (1u << 20) + 9);
  auto all = (*s)->ListAll("");
  ASSERT_OK(all);
  EXPECT_EQ(all->size(), 3u);
  EXPECT_TRUE(testing::FileExists(root_ + "/records/b.json"));
  ASSERT_OK((*s)->Delete({"records/b.json", "packs/ef/ef01.pack"}));
  EXPECT_FALSE(testing::FileExists(root_ + "/packs"));
  ExpectOutsideUntouched();
}

INSTANTIATE_TEST_SUITE_P(Resolve, LocalStoreSymlinkTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "OpenatWalk" : "Openat2";
                         });

TEST(LocalStoreOpenTest, MissingDirectoryIsNotFound) {
  TempDir d;
  EXPECT_THAT(OpenLocalStore(d.Sub("nope"), Runtime::Default()),
              StatusIs(StatusCode::kNotFound, "nope"));
  testing::WriteAll(d.Sub("file"), "x");
  EXPECT_THAT(OpenLocalStore(d.Sub("file"), Runtime::Default()),
              StatusIs(StatusCode::kInvalidArgument, "not a directory"));
}

}  // namespace
}  // namespace vmbackup::internal
