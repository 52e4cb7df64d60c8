// ObjectStore's shared helpers against a store whose listing lies (a hostile or broken server):
// ListAll never loops for ever and never accepts pages that go backwards.
#include "store/object_store.h"

#include <gtest/gtest.h>

#include "core/runtime.h"
#include "support/test_util.h"

namespace vmbackup::internal {
namespace {

// Answers List with pages from `pages` chosen by the token ("" = page 0, else the token's number).
class ListingStore final : public ObjectStore {
 public:
  explicit ListingStore(std::vector<ListPage> pages)
      : ObjectStore(Runtime::Default()), pages_(std::move(pages)) {}
  std::string Describe() const override { return "listing://test"; }
  Status Put(const std::string&, std::string_view, const PutOptions&) override {
    return Status::Ok();
  }
  StatusOr<std::string> Get(const std::string& key, uint64_t, uint64_t) override {
    return NotFoundError(key);
  }
  StatusOr<ObjectInfo> Head(const std::string& key) override { return NotFoundError(key); }
  StatusOr<ListPage> List(const std::string&, const std::string& token, int) override {
    ++calls;
    return pages_[token.empty() ? 0 : std::stoul(token)];
  }
  Status Delete(const std::vector<std::string>&) override { return Status::Ok(); }
  int calls = 0;

 private:
  std::vector<ListPage> pages_;
};

ListPage Page(std::vector<std::string> keys, std::string next) {
  ListPage p;
  for (auto& k : keys) p.objects.push_back({k, 1});
  p.next_token = std::move(next);
  return p;
}

TEST(ListAllTest, FollowsPagesInOrder) {
  ListingStore s({Page({"a/1", "a/2"}, "1"), Page({"a/3"}, "")});
  auto all = s.ListAll("a/");
  ASSERT_OK(all);
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[2].key, "a/3");
}

TEST(ListAllTest, ServerCyclingBetweenTokensIsDataLossNotAnEndlessLoop) {
  ListingStore s({Page({"a/1"}, "1"), Page({"a/2"}, "0")});
  EXPECT_THAT(s.ListAll("a/"), StatusIs(StatusCode::kDataLoss, "went backwards"));
  EXPECT_LE(s.calls, 3);
}

TEST(ListAllTest, EmptyPagesThatAreNotTheLastAreDataLoss) {
  ListingStore s({Page({}, "0")});
  EXPECT_THAT(s.ListAll("a/"), StatusIs(StatusCode::kDataLoss, "empty page"));
}

}  // namespace
}  // namespace vmbackup::internal
