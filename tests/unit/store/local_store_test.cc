// LocalStore: atomic puts, create-if-absent, ranges, paged listing, deletes, key validation.
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
#include <future>
#include <random>
#include <thread>
#include <vector>

#include "support/test_util.h"
#include "vmbackup/options.h"

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

TEST_F(LocalStoreTest, PutGetRangeHead) {
  ASSERT_OK(store_->Put("a/b/c.bin", "0123456789", PutOptions{}));
  auto all = store_->Get("a/b/c.bin");
  ASSERT_OK(all);
  EXPECT_EQ(*all, "0123456789");
  auto part = store_->Get("a/b/c.bin", 3, 4);
  ASSERT_OK(part);
  EXPECT_EQ(*part, "3456");
  EXPECT_THAT(store_->Get("a/b/c.bin", 8, 5), StatusIs(StatusCode::kDataLoss, "shorter"));
  EXPECT_THAT(store_->Get("a/b/c.bin", 11, 1), StatusIs(StatusCode::kOutOfRange, "c.bin"));
  auto head = store_->Head("a/b/c.bin");
  ASSERT_OK(head);
  EXPECT_EQ(head->size, 10u);
  EXPECT_THAT(store_->Get("missing"), StatusIs(StatusCode::kNotFound, "missing"));
  // Nothing but the object itself remains (the temporary is renamed away).
  EXPECT_EQ(testing::ListFiles(dir_.path()), std::vector<std::string>{"a/b/c.bin"});
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

TEST_F(LocalStoreTest, IfAbsentRefusesToReplace) {
  ASSERT_OK(store_->Put("k", "one", PutOptions{.if_absent = true}));
  EXPECT_THAT(store_->Put("k", "two", PutOptions{.if_absent = true}),
              StatusIs(StatusCode::kAlreadyExists, "k"));
  EXPECT_EQ(*store_->Get("k"), "one");
  ASSERT_OK(store_->Put("k", "three", PutOptions{}));
  EXPECT_EQ(*store_->Get("k"), "three");
  EXPECT_EQ(testing::ListFiles(dir_.path()), std::vector<std::string>{"k"});
}

TEST_F(LocalStoreTest, ListIsSortedPagedAndPrefixed) {
  for (int i = 0; i < 25; ++i) {
    char key[32];
    std::snprintf(key, sizeof(key), "index/%02d.idx", i);
    ASSERT_OK(store_->Put(key, "x", PutOptions{.durable = false}));
  }
  ASSERT_OK(store_->Put("indexes-not/x", "x", PutOptions{}));
  ASSERT_OK(store_->Put("records/r.json", "x", PutOptions{}));
  auto page = store_->List("index/", "", 10);
  ASSERT_OK(page);
  ASSERT_EQ(page->objects.size(), 10u);
  EXPECT_EQ(page->objects.front().key, "index/00.idx");
  EXPECT_FALSE(page->next_token.empty());
  auto all = store_->ListAll("index/");
  ASSERT_OK(all);
  ASSERT_EQ(all->size(), 25u);
  EXPECT_EQ(all->back().key, "index/24.idx");
  auto none = store_->ListAll("nothing/");
  ASSERT_OK(none);
  EXPECT_TRUE(none->empty());
}

TEST_F(LocalStoreTest, DeleteIgnoresMissingKeys) {
  ASSERT_OK(store_->Put("x/1", "a", PutOptions{}));
  ASSERT_OK(store_->Delete({"x/1", "x/2"}));
  EXPECT_THAT(store_->Head("x/1"), StatusIs(StatusCode::kNotFound, "x/1"));
}

TEST_F(LocalStoreTest, BadKeysAreRejected) {
  for (const char* k : {"", "/abs", "a/../b", "a//b", "a/", "sp ace", "./a"}) {
    EXPECT_THAT(store_->Put(k, "x", PutOptions{}), StatusIs(StatusCode::kInvalidArgument, "key"))
        << k;
  }
}

TEST_F(LocalStoreTest, AsyncPutCompletes) {
  std::promise<Status> done;
  store_->PutAsync("async/k", std::make_shared<const std::string>("payload"), PutOptions{},
                   [&](Status st) { done.set_value(st); });
  ASSERT_OK(done.get_future().get());
  EXPECT_EQ(*store_->Get("async/k"), "payload");
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
