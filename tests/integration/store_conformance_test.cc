// ObjectStore conformance (issue #10): one parameterized test of the contract in
// src/store/object_store.h, run against every store — the in-memory store, a local directory, S3
// (Ceph radosgw) and NFS (nfs-ganesha). The S3 and NFS variants need the servers' environment
// (scripts/test.sh starts both); without it they fail and say how to start them.
//
// This is the one place for the contract: the per-backend suites (local_store_test.cc,
// s3_test.cc, nfs_test.cc, ...) test only what is particular to their backend.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <optional>
#include <thread>

#include "core/errors.h"
#include "core/runtime.h"
#include "integration_util.h"
#include "store/encrypted_store.h"
#include "store/get_many.h"
#include "store/local_store.h"
#include "store/mem_store.h"
#include "store/nfs/nfs_store.h"
#include "store/s3/s3_store.h"
#include "support/test_util.h"
#include "target/store_factory.h"

namespace vmbackup::integration {
namespace {

using internal::ObjectInfo;
using internal::ObjectStore;
using internal::PutOptions;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::vmbackup::testing::TempDir;

StatusOr<std::unique_ptr<ObjectStore>> OpenStore(const std::string& kind, const TempDir& dir) {
  auto rt = Runtime::Default();
  if (kind.rfind("enc-", 0) == 0) {  // the same store, sealing every object (issue #11)
    VMB_ASSIGN_OR_RETURN(auto inner, OpenStore(kind.substr(4), dir));
    internal::ObjectKeys keys;
    keys.data_key.fill(0x3c);
    keys.key_id.fill(0x11);
    return internal::MakeEncryptedStore(std::move(inner), keys, {"repository.json", "keys/"}, rt);
  }
  if (kind == "mem") return std::unique_ptr<ObjectStore>(new internal::MemStore(rt));
  if (kind == "local") {
    const std::string root = dir.Sub("store");
    if (::mkdir(root.c_str(), 0700) != 0) return InternalError("mkdir " + root);
    return internal::OpenLocalStore(root, rt);
  }
  TargetOptions o;
  o.retry_timeout_seconds = 30;
  VMB_ASSIGN_OR_RETURN(TargetConfig c, ServerTargetConfig(kind));
  if (kind == "s3") return internal::OpenS3Store(c, o, rt);
  return internal::OpenNfsStore(c, o, rt);
}

class StoreConformanceTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto s = OpenStore(GetParam(), dir_);
    ASSERT_OK(s);
    store_ = std::move(*s);
  }
  void Put(const std::string& key, const std::string& data) {
    ASSERT_OK(store_->Put(key, data, PutOptions{}));
  }
  std::vector<std::string> Keys(const std::vector<ObjectInfo>& objects) {
    std::vector<std::string> keys;
    for (const auto& o : objects) keys.push_back(o.key);
    return keys;
  }
  TempDir dir_;
  std::unique_ptr<ObjectStore> store_;
};

TEST_P(StoreConformanceTest, PutGetHeadAndReplace) {
  Put("a/b/obj", "hello world");
  auto got = store_->Get("a/b/obj");
  ASSERT_OK(got);
  EXPECT_EQ(*got, "hello world");
  auto head = store_->Head("a/b/obj");
  ASSERT_OK(head);
  EXPECT_EQ(head->key, "a/b/obj");
  EXPECT_EQ(head->size, 11u);
  Put("a/b/obj", "replaced");
  EXPECT_EQ(*store_->Get("a/b/obj"), "replaced");
  Put("a/empty", "");
  EXPECT_EQ(*store_->Get("a/empty"), "");
  EXPECT_EQ(store_->Head("a/empty")->size, 0u);
  // durable = false only relaxes when the object must survive a crash.
  ASSERT_OK(store_->Put("a/fast", "not durable", PutOptions{.durable = false}));
  EXPECT_EQ(*store_->Get("a/fast"), "not durable");
}

TEST_P(StoreConformanceTest, MissingObjectsAreNotFound) {
  // Quickly: a missing object is an answer, not an outage to retry.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THAT(store_->Get("no/such"), StatusIs(StatusCode::kNotFound, "no/such"));
  EXPECT_THAT(store_->Get("no/such", 2, 3), StatusIs(StatusCode::kNotFound, "no/such"));
  EXPECT_THAT(store_->Head("no/such"), StatusIs(StatusCode::kNotFound, "no/such"));
  EXPECT_LT(SecondsSince(t0), 5.0);
  EXPECT_OK(store_->Delete({"no/such", "no/other"}));  // missing keys are not an error
}

// A key that only prefixes other objects (a directory on a file system) is no object.
TEST_P(StoreConformanceTest, KeyThatOnlyPrefixesOthersIsNotFound) {
  Put("dir/obj", "x");
  EXPECT_THAT(store_->Head("dir"), StatusIs(StatusCode::kNotFound, "dir"));
  EXPECT_THAT(store_->Get("dir"), StatusIs(StatusCode::kNotFound, "dir"));
  EXPECT_THAT(store_->Get("dir", 0, 1), StatusIs(StatusCode::kNotFound, "dir"));
}

TEST_P(StoreConformanceTest, CreateIfAbsentRefusesAnExistingObject) {
  ASSERT_OK(store_->Put("once", "first", PutOptions{.if_absent = true}));
  EXPECT_THAT(store_->Put("once", "second", PutOptions{.if_absent = true}),
              StatusIs(StatusCode::kAlreadyExists, "once"));
  EXPECT_EQ(*store_->Get("once"), "first");
  // A plain put still replaces it.
  Put("once", "third");
  EXPECT_EQ(*store_->Get("once"), "third");
}

TEST_P(StoreConformanceTest, ConcurrentCreateIfAbsentHasExactlyOneWinner) {
  constexpr int kWriters = 8;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    const std::string key = "race/r" + std::to_string(round);
    std::atomic<int> ready{0}, wins{0}, winner{-1};
    std::vector<Status> results(kWriters);
    std::vector<std::thread> threads;
    for (int i = 0; i < kWriters; ++i)
      threads.emplace_back([&, i] {
        ++ready;  // start together
        while (ready.load() < kWriters) std::this_thread::yield();
        results[i] = store_->Put(key, "writer-" + std::to_string(i), PutOptions{.if_absent = true});
        if (results[i].ok()) {
          ++wins;
          winner = i;
        }
      });
    for (auto& t : threads) t.join();
    EXPECT_EQ(wins.load(), 1);
    for (const Status& st : results) {
      if (!st.ok()) {
        EXPECT_THAT(st, StatusIs(StatusCode::kAlreadyExists, key));
      }
    }
    auto got = store_->Get(key);
    ASSERT_OK(got);
    EXPECT_EQ(*got, "writer-" + std::to_string(winner.load())) << "the winner's bytes";
  }
}

TEST_P(StoreConformanceTest, RangedReadsFollowTheContract) {
  std::string data(300000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + i / 251);
  Put("big/obj", data);
  EXPECT_EQ(*store_->Get("big/obj", 0, 1), data.substr(0, 1));
  EXPECT_EQ(*store_->Get("big/obj", 123457, 65536), data.substr(123457, 65536));
  EXPECT_EQ(*store_->Get("big/obj", data.size() - 10, 0), data.substr(data.size() - 10));
  EXPECT_EQ(*store_->Get("big/obj", data.size() - 10, 10), data.substr(data.size() - 10));
  std::string buf = "junk";
  ASSERT_OK(store_->GetInto("big/obj", 5, 7, &buf));
  EXPECT_EQ(buf, data.substr(5, 7));
  // Past the end: out of range; running past the end: a short object (data loss). Both name it.
  EXPECT_THAT(store_->Get("big/obj", data.size() + 1, 0),
              StatusIs(StatusCode::kOutOfRange, "big/obj"));
  EXPECT_THAT(store_->Get("big/obj", data.size(), 5), StatusIs(StatusCode::kOutOfRange, "big/obj"));
  EXPECT_THAT(store_->Get("big/obj", data.size() - 3, 10),
              StatusIs(StatusCode::kDataLoss, "shorter"));
  EXPECT_THAT(store_->Get("big/obj", data.size() - 3, 10),
              StatusIs(StatusCode::kDataLoss, "big/obj"));
  EXPECT_THAT(store_->GetInto("big/obj", data.size() - 3, 10, &buf),
              StatusIs(StatusCode::kDataLoss, "shorter"));
}

TEST_P(StoreConformanceTest, GetAtMostRefusesLargerObjects) {
  Put("b/hundred", std::string(100, 'h'));
  auto ok = store_->GetAtMost("b/hundred", 100);
  ASSERT_OK(ok);
  EXPECT_EQ(ok->size(), 100u);
  EXPECT_THAT(store_->GetAtMost("b/hundred", 99), StatusIs(StatusCode::kDataLoss, "b/hundred"));
  EXPECT_THAT(store_->GetAtMost("b/missing", 99), StatusIs(StatusCode::kNotFound, ""));
}

TEST_P(StoreConformanceTest, ListingIsSortedFilteredAndPaged) {
  const std::vector<std::string> keys = {"l/a", "l/b/1", "l/b/2", "l/c", "l/d/x/y", "l/e",
                                         "l/f", "l/g",   "l/h",   "l/i", "lx/other"};
  for (size_t i = 0; i < keys.size(); ++i)
    ASSERT_OK(store_->Put(keys[i], keys[i], PutOptions{.durable = i % 2 == 0}));
  auto all = store_->ListAll("l/");
  ASSERT_OK(all);
  EXPECT_THAT(Keys(*all), ElementsAre("l/a", "l/b/1", "l/b/2", "l/c", "l/d/x/y", "l/e", "l/f",
                                      "l/g", "l/h", "l/i"));
  EXPECT_EQ((*all)[0].size, 3u);
  // Pages of 3: every key once, in order, the last page without a token.
  std::vector<std::string> paged;
  std::string token;
  int pages = 0;
  do {
    auto page = store_->List("l/", token, 3);
    ASSERT_OK(page);
    // Full pages until the last.
    if (page->next_token.empty()) {
      EXPECT_LE(page->objects.size(), 3u);
    } else {
      EXPECT_EQ(page->objects.size(), 3u);
    }
    for (const auto& o : page->objects) paged.push_back(o.key);
    token = page->next_token;
    ASSERT_LT(++pages, 10);
  } while (!token.empty());
  EXPECT_EQ(paged, Keys(*all));
  EXPECT_EQ(pages, 4);
  auto sub = store_->ListAll("l/b/");
  ASSERT_OK(sub);
  EXPECT_THAT(Keys(*sub), ElementsAre("l/b/1", "l/b/2"));
  auto partial = store_->ListAll("l/b");  // a prefix that is not a whole directory name
  ASSERT_OK(partial);
  EXPECT_THAT(Keys(*partial), ElementsAre("l/b/1", "l/b/2"));
  auto none = store_->ListAll("nothing/");
  ASSERT_OK(none);
  EXPECT_THAT(*none, IsEmpty());
}

TEST_P(StoreConformanceTest, BatchDeleteRemovesEveryKey) {
  std::vector<std::string> keys;
  for (int i = 0; i < 25; ++i) keys.push_back("d/" + std::to_string(100 + i));
  for (const auto& k : keys) Put(k, "x");
  Put("d-keep", "kept");
  std::vector<std::string> batch = keys;
  batch.insert(batch.begin() + 10, "d/never-existed");  // missing keys in a batch are no error
  ASSERT_OK(store_->Delete(batch));
  auto left = store_->ListAll("d/");
  ASSERT_OK(left);
  EXPECT_THAT(*left, IsEmpty());
  EXPECT_THAT(store_->Head("d/100"), StatusIs(StatusCode::kNotFound, "d/100"));
  EXPECT_THAT(store_->Get("d/124"), StatusIs(StatusCode::kNotFound, "d/124"));
  EXPECT_EQ(*store_->Get("d-keep"), "kept");
  EXPECT_OK(store_->Delete(keys)) << "deleting them again";
}

TEST_P(StoreConformanceTest, BadKeysAreInvalidArgumentForEveryOperation) {
  for (const std::string& bad :
       {std::string("../x"), std::string("a/../b"), std::string("./a"), std::string("/abs"),
        std::string("a//b"), std::string("a/./b"), std::string("sp ace"), std::string(""),
        std::string("trailing/")}) {
    SCOPED_TRACE(bad);
    const auto refused = StatusIs(StatusCode::kInvalidArgument, "key");
    EXPECT_THAT(store_->Put(bad, "x", PutOptions{}), refused);
    EXPECT_THAT(store_->Put(bad, "x", PutOptions{.if_absent = true}), refused);
    EXPECT_THAT(store_->Get(bad), refused);
    EXPECT_THAT(store_->Head(bad), refused);
    EXPECT_THAT(store_->Delete({bad}), refused);
  }
}

TEST_P(StoreConformanceTest, AsyncFormsCompleteExactlyOnce) {
  std::promise<Status> put_done;
  auto data = std::make_shared<const std::string>("async bytes");
  store_->PutAsync("async/obj", data, PutOptions{},
                   [&put_done](Status st) { put_done.set_value(st); });
  ASSERT_OK(put_done.get_future().get());
  EXPECT_EQ(*store_->Get("async/obj"), "async bytes");
  std::promise<StatusOr<std::string>> get_done;
  store_->GetAsync("async/obj", 6, 5,
                   [&get_done](StatusOr<std::string> r) { get_done.set_value(std::move(r)); });
  auto got = get_done.get_future().get();
  ASSERT_OK(got);
  EXPECT_EQ(*got, "bytes");
  std::promise<StatusOr<std::string>> missing;
  store_->GetAsync("async/none", 0, 0,
                   [&missing](StatusOr<std::string> r) { missing.set_value(std::move(r)); });
  EXPECT_THAT(missing.get_future().get(), StatusIs(StatusCode::kNotFound, ""));
}

TEST_P(StoreConformanceTest, PingAnswers) { EXPECT_OK(store_->Ping()); }

// ObjectInfo::version: what a reader caching decoded objects relies on.
TEST_P(StoreConformanceTest, ListedVersionChangesWhenTheObjectIsReplaced) {
  Put("ver/obj", "first version");
  Put("ver/other", "another object");
  auto listed = [this](const std::string& key) -> std::string {
    auto all = store_->ListAll("ver/");
    EXPECT_OK(all);
    if (!all.ok()) return "";
    for (const auto& o : *all)
      if (o.key == key) return o.version;
    ADD_FAILURE() << key << " not listed";
    return "";
  };
  const std::string v1 = listed("ver/obj");
  ASSERT_FALSE(v1.empty()) << "every store of the project tells versions";
  EXPECT_EQ(listed("ver/obj"), v1) << "an unchanged object keeps its version";
  EXPECT_NE(listed("ver/other"), v1);
  auto head = store_->Head("ver/obj");
  ASSERT_OK(head);
  EXPECT_EQ(head->version, v1) << "Head and List tell the same version";
  Put("ver/obj", "second version");  // same size, other bytes
  EXPECT_NE(listed("ver/obj"), v1);
  ASSERT_OK(store_->Delete({"ver/obj"}));
  Put("ver/obj", "first version");  // deleted, then created again
  const std::string v3 = listed("ver/obj");
  EXPECT_FALSE(v3.empty());
}

TEST_P(StoreConformanceTest, GetManyReadsEveryObjectAtItsListedSize) {
  std::vector<std::string> want;
  for (int i = 0; i < 40; ++i) {
    want.push_back("object " + std::to_string(i) + std::string(static_cast<size_t>(i) * 37, 'x'));
    Put("many/" + std::to_string(100 + i), want.back());
  }
  Put("many/empty", "");
  auto all = store_->ListAll("many/");
  ASSERT_OK(all);
  ASSERT_EQ(all->size(), 41u);
  std::vector<ObjectInfo> objs = *all;
  objs.push_back(ObjectInfo{"many/missing", 5});
  objs.push_back(ObjectInfo{"many/100", 100000});  // listed larger than it is: a short read
  // A small window: reads queue behind each other; each result is handed over once.
  std::vector<std::optional<StatusOr<std::string>>> got(objs.size());
  ASSERT_OK(internal::GetMany(
      *store_, objs.size(), [&](size_t i) { return objs[i].key; },
      [&](size_t i) { return objs[i].size; }, 3,
      [&](size_t i, StatusOr<std::string> r) {
        EXPECT_FALSE(got[i].has_value()) << i;
        got[i] = std::move(r);
        return Status::Ok();
      }));
  for (size_t i = 0; i < 40; ++i) {
    ASSERT_TRUE(got[i].has_value()) << i;
    ASSERT_OK(*got[i]);
    EXPECT_EQ(**got[i], want[i]) << objs[i].key;
  }
  ASSERT_OK(*got[40]);
  EXPECT_EQ(**got[40], "");
  EXPECT_THAT(*got[41], StatusIs(StatusCode::kNotFound, ""));
  EXPECT_FALSE(got[42]->ok());
}

INSTANTIATE_TEST_SUITE_P(Stores, StoreConformanceTest,
                         ::testing::Values("mem", "local", "s3", "nfs3", "nfs4", "enc-mem",
                                           "enc-s3", "enc-nfs4"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace vmbackup::integration
