// LocalStore: atomic puts, create-if-absent, ranges, paged listing, deletes, key validation.
#include "store/local_store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
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
