// EncryptedStore over an in-memory store: round trips at every segment boundary, ranged reads,
// and every way a target can change what it holds (flipped bytes, truncation, moved or foreign
// objects) ending in kDataLoss.
#include "store/encrypted_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <future>
#include <random>
#include <thread>

#include "core/buffer_pool.h"
#include "core/runtime.h"
#include "core/util.h"
#include "store/mem_store.h"
#include "support/test_util.h"
#include "vmbackup/runtime.h"

namespace vmbackup::internal {
namespace {

std::string Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

ObjectKeys Keys(uint8_t fill) {
  ObjectKeys k;
  k.data_key.fill(fill);
  k.key_id.fill(static_cast<uint8_t>(fill + 1));
  return k;
}

class EncryptedStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto mem = std::make_unique<MemStore>(Runtime::Default());
    mem_ = mem.get();
    store_ = MakeEncryptedStore(std::move(mem), Keys(7), {"repository.json", "keys/"},
                                Runtime::Default());
  }
  std::string Inner(const std::string& key) { return mem_->Snapshot().at(key); }

  MemStore* mem_ = nullptr;
  std::unique_ptr<ObjectStore> store_;
};

TEST_F(EncryptedStoreTest, SizesAroundSegmentBoundariesRoundTripAndReportPlainSizes) {
  const size_t S = kSealedSegment;
  for (size_t n : {size_t{0}, size_t{1}, S - 1, S, S + 1, 3 * S, 3 * S + 17, size_t{100000}}) {
    SCOPED_TRACE(n);
    const std::string data = Random(n, static_cast<uint32_t>(n));
    ASSERT_OK(store_->Put("obj/x", data, PutOptions{}));
    EXPECT_EQ(Inner("obj/x").size(), SealedSize(n));
    auto back = store_->Get("obj/x");
    ASSERT_OK(back);
    EXPECT_TRUE(*back == data);
    auto head = store_->Head("obj/x");
    ASSERT_OK(head);
    EXPECT_EQ(head->size, n);
    auto listed = store_->ListAll("obj/");
    ASSERT_OK(listed);
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_EQ((*listed)[0].size, n);
    uint64_t plain = 0;
    EXPECT_TRUE(PlainSizeOf(SealedSize(n), &plain));
    EXPECT_EQ(plain, n);
  }
}

TEST(SealedSizeTest, EverySealedSizeMapsBackAndNoOtherSizeDoes) {
  std::vector<bool> image(SealedSize(5 * kSealedSegment) + 1);
  for (uint64_t p = 0; p <= 5 * kSealedSegment; ++p) {
    uint64_t back = ~0ull;
    ASSERT_TRUE(PlainSizeOf(SealedSize(p), &back)) << p;
    ASSERT_EQ(back, p);
    image[SealedSize(p)] = true;
  }
  for (uint64_t c = 0; c < image.size(); ++c) {
    uint64_t p = 0;
    EXPECT_EQ(PlainSizeOf(c, &p), image[c]) << c;
  }
  // Sizes near 2^64 (a hostile listing) must not wrap into a "valid" size.
  uint64_t p = 0;
  for (uint64_t c :
       std::vector<uint64_t>{~0ull, ~0ull - 56, SealedSize(1ull << 50) + 1, 1ull << 63})
    EXPECT_FALSE(PlainSizeOf(c, &p)) << c;
}

// The sealed bytes of FORMAT.md "Encryption", computed independently of this code (Python's
// `cryptography` AES-GCM and hmac, from the format's text): whatever sealing becomes, objects
// written by earlier versions still open and new objects are what those versions read.
TEST(SealedFormatTest, KnownAnswersPinTheSealedBytesAndTheyOpenWholeAndRanged) {
  std::array<uint8_t, 32> salt{};
  for (size_t i = 0; i < salt.size(); ++i) salt[i] = static_cast<uint8_t>(i);
  SetSealSaltForTest(&salt);
  struct Case {
    size_t n;
    const char* sha256;
  };
  const Case cases[] = {
      {2 * kSealedSegment + 5, "6a375f6a11deb6a507510312c5825723b34b547678d1815dfdfa9f0755b872fb"},
      {0, "b0823872225f1d4e771a9353927c2c6a9886469b8923d1d1dc5cc06a1f607b2a"}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.n);
    std::string plain(c.n, '\0');
    for (size_t i = 0; i < c.n; ++i) plain[i] = static_cast<char>((i * 31 + 7) % 256);
    auto sealed = SealObject(Keys(7), "packs/kat", plain);
    ASSERT_OK(sealed);
    EXPECT_EQ(sealed->size(), SealedSize(c.n));
    EXPECT_EQ(ToHex(Sha256(*sealed)), c.sha256);
    auto opened = OpenObject(Keys(7), "packs/kat", *sealed);
    ASSERT_OK(opened);
    EXPECT_TRUE(*opened == plain);
    // The same bytes through the store: written by the store (async too), read whole and ranged.
    auto mem = std::make_unique<MemStore>(Runtime::Default());
    MemStore* inner = mem.get();
    auto store = MakeEncryptedStore(std::move(mem), Keys(7), {}, Runtime::Default());
    ASSERT_OK(store->Put("packs/kat", plain, PutOptions{}));
    EXPECT_EQ(ToHex(Sha256(inner->Snapshot().at("packs/kat"))), c.sha256);
    std::promise<Status> put;
    store->PutAsync("packs/kat2", std::make_shared<const std::string>(plain), PutOptions{},
                    [&](Status st) { put.set_value(st); });
    ASSERT_OK(put.get_future().get());
    const std::string theirs = inner->Snapshot().at("packs/kat2");
    // Only the name differs (it is in every segment's associated data): same size, same header.
    EXPECT_EQ(theirs.size(), sealed->size());
    EXPECT_EQ(theirs.substr(0, kSealedHeaderSize), sealed->substr(0, kSealedHeaderSize));
    auto whole = store->Get("packs/kat");
    ASSERT_OK(whole);
    EXPECT_TRUE(*whole == plain);
    if (c.n > 0) {
      for (auto [off, len] : {std::pair<uint64_t, uint64_t>{0, c.n},
                              {3, kSealedSegment},
                              {kSealedSegment - 1, kSealedSegment + 2},
                              {c.n - 1, 1}}) {
        std::string into = "previous";
        ASSERT_OK(store->GetInto("packs/kat", off, len, &into));
        EXPECT_TRUE(into == plain.substr(off, len)) << off << "+" << len;
      }
    }
  }
  SetSealSaltForTest(nullptr);
}

TEST_F(EncryptedStoreTest, RangedReadsReturnExactlyTheRangeAcrossSegments) {
  const size_t S = kSealedSegment;
  const std::string data = Random(5 * S + 123, 1);
  ASSERT_OK(store_->Put("packs/p", data, PutOptions{}));
  const std::pair<uint64_t, uint64_t> ranges[] = {
      {0, 1},         {0, S},     {1, S},          {S - 1, 2}, {S, S},
      {S + 5, 3 * S}, {5 * S, 1}, {5 * S, 123},    {7, 0},     {data.size() - 1, 1},
      {2 * S, 100},   {0, 0},     {5 * S + 122, 1}};
  for (auto [off, len] : ranges) {
    SCOPED_TRACE(std::to_string(off) + "+" + std::to_string(len));
    auto got = store_->Get("packs/p", off, len);
    ASSERT_OK(got);
    EXPECT_TRUE(*got == data.substr(off, len == 0 ? std::string::npos : len));
    std::string into = "previous contents";
    ASSERT_OK(store_->GetInto("packs/p", off, len, &into));
    EXPECT_TRUE(into == *got);
    std::promise<StatusOr<std::string>> p;
    store_->GetAsync("packs/p", off, len,
                     [&](StatusOr<std::string> r) { p.set_value(std::move(r)); });
    auto async = p.get_future().get();
    ASSERT_OK(async);
    EXPECT_TRUE(*async == *got);
  }
  EXPECT_THAT(store_->Get("packs/p", data.size() + 1, 1), StatusIs(StatusCode::kOutOfRange, ""));
  // An empty range at the end would trust the header's size without opening a segment.
  EXPECT_THAT(store_->Get("packs/p", data.size(), 0), StatusIs(StatusCode::kOutOfRange, ""));
  EXPECT_THAT(store_->Get("packs/p", data.size() - 1, 2),
              StatusIs(StatusCode::kDataLoss, "shorter than expected"));
}

TEST_F(EncryptedStoreTest, AsyncPutOfALargeObjectIsSealedAndReadsBack) {
  auto data = std::make_shared<const std::string>(Random(3 << 20, 2));
  std::promise<Status> p;
  store_->PutAsync("packs/big", data, PutOptions{}, [&](Status st) { p.set_value(st); });
  ASSERT_OK(p.get_future().get());
  EXPECT_EQ(Inner("packs/big").size(), SealedSize(data->size()));
  std::promise<StatusOr<std::string>> g;
  store_->GetAsync("packs/big", 0, 0, [&](StatusOr<std::string> r) { g.set_value(std::move(r)); });
  auto back = g.get_future().get();
  ASSERT_OK(back);
  EXPECT_TRUE(*back == *data);
}

// Packs are sealed into the Runtime's recycled pack buffers (a fresh 36 MiB string per pack cost
// more than sealing it: page faults, zeroing, unmapping), given back once the upload let go.
TEST_F(EncryptedStoreTest, LargeObjectsAreSealedIntoRecycledPackBuffers) {
  BufferPool& pool = *ImplOf(Runtime::Default())->pack_buffers();
  BufferPool::Hold hold = pool.Keep();  // as a running backup does
  const uint64_t taken = pool.taken(), reused = pool.reused();
  for (int i = 0; i < 3; ++i) {
    const std::string data = Random(9 << 20, 10 + i);
    ASSERT_OK(store_->Put("packs/p" + std::to_string(i), data, PutOptions{}));
    auto back = store_->Get("packs/p" + std::to_string(i));
    ASSERT_OK(back);
    EXPECT_TRUE(*back == data);
  }
  EXPECT_EQ(pool.taken() - taken, 3u);
  EXPECT_GE(pool.reused() - reused, 2u);  // every seal but the first reused the buffer
  // Async (how packs are uploaded): the buffer goes back once the inner store lets go of it,
  // which may be just after the completion ran.
  auto data = std::make_shared<const std::string>(Random(9 << 20, 20));
  std::promise<Status> p;
  store_->PutAsync("packs/async", data, PutOptions{}, [&](Status st) { p.set_value(st); });
  ASSERT_OK(p.get_future().get());
  EXPECT_GE(pool.reused() - reused, 3u);
  for (int i = 0; i < 500 && pool.kept() == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_GE(pool.kept(), 1u);
  auto back = store_->Get("packs/async");
  ASSERT_OK(back);
  EXPECT_TRUE(*back == *data);
}

TEST_F(EncryptedStoreTest, TheTargetHoldsNoPlaintextButClearKeysPassThrough) {
  const std::string marker = "VM-SECRET-PASSWORD-hunter2";
  std::string data = Random(50000, 3);
  data.replace(20000, marker.size(), marker);
  ASSERT_OK(store_->Put("records/b.json", data, PutOptions{}));
  EXPECT_EQ(Inner("records/b.json").find(marker), std::string::npos);
  EXPECT_EQ(Inner("records/b.json").find(data.substr(0, 64)), std::string::npos);
  ASSERT_OK(store_->Put("repository.json", marker, PutOptions{}));
  ASSERT_OK(store_->Put("keys/0123456789abcdef.json", marker, PutOptions{}));
  EXPECT_EQ(Inner("repository.json"), marker);
  EXPECT_EQ(Inner("keys/0123456789abcdef.json"), marker);
  // The same plaintext sealed twice differs (fresh salt each write).
  ASSERT_OK(store_->Put("records/c.json", data, PutOptions{}));
  EXPECT_NE(Inner("records/b.json").substr(kSealedHeaderSize),
            Inner("records/c.json").substr(kSealedHeaderSize));
}

TEST_F(EncryptedStoreTest, EveryChangedByteIsDataLossForWholeAndRangedReads) {
  const std::string data = Random(2 * kSealedSegment + 300, 4);
  ASSERT_OK(store_->Put("packs/p", data, PutOptions{}));
  const std::string sealed = Inner("packs/p");
  for (size_t i = 0; i < sealed.size(); i += (i < 64 ? 1 : 997)) {
    SCOPED_TRACE(i);
    std::string bad = sealed;
    bad[i] ^= 0x20;
    mem_->Overwrite("packs/p", bad);
    auto whole = store_->Get("packs/p");
    ASSERT_FALSE(whole.ok());
    EXPECT_EQ(whole.status().code(), StatusCode::kDataLoss) << whole.status().ToString();
    // A ranged read of the segment that holds byte i (the header spoils every segment).
    const uint64_t seg =
        i < kSealedHeaderSize ? 0 : (i - kSealedHeaderSize) / (kSealedSegment + 16);
    std::string into = "x";
    EXPECT_FALSE(store_->GetInto("packs/p", seg * kSealedSegment, 10, &into).ok());
    EXPECT_EQ(into, "");  // no unauthenticated plaintext is left in the caller's buffer
    auto part = store_->Get("packs/p", seg * kSealedSegment, 10);
    ASSERT_FALSE(part.ok());
    EXPECT_EQ(part.status().code(), StatusCode::kDataLoss) << part.status().ToString();
  }
  mem_->Overwrite("packs/p", sealed);
  auto back = store_->Get("packs/p", 5, 10);
  ASSERT_OK(back);
  EXPECT_EQ(*back, data.substr(5, 10));
}

TEST_F(EncryptedStoreTest, MovedTruncatedExtendedOrForeignObjectsAreDataLoss) {
  const std::string data = Random(3 * kSealedSegment, 5);
  ASSERT_OK(store_->Put("packs/a", data, PutOptions{}));
  const std::string sealed = Inner("packs/a");
  mem_->Overwrite("packs/b", sealed);  // moved to another name
  EXPECT_THAT(store_->Get("packs/b"), StatusIs(StatusCode::kDataLoss, "failed authentication"));
  EXPECT_THAT(store_->Get("packs/b", 0, 100),
              StatusIs(StatusCode::kDataLoss, "failed authentication"));
  // Cut after two whole segments: a size a sealed object can have, but not the one its header
  // (and every segment's tag) was made with. A ranged read of an intact segment still works (it
  // is authentic); the whole object and the lost segment do not.
  ASSERT_OK(store_->Put("packs/c", data, PutOptions{}));
  mem_->Overwrite("packs/c",
                  Inner("packs/c").substr(0, kSealedHeaderSize + 2 * (kSealedSegment + 16)));
  EXPECT_THAT(store_->Get("packs/c"), StatusIs(StatusCode::kDataLoss, "failed authentication"));
  auto intact = store_->Get("packs/c", 2 * kSealedSegment - 10, 10);
  ASSERT_OK(intact);
  EXPECT_EQ(*intact, data.substr(2 * kSealedSegment - 10, 10));
  EXPECT_THAT(store_->Get("packs/c", 2 * kSealedSegment, 10),
              StatusIs(StatusCode::kDataLoss, "packs/c"));
  // Extended by a byte: no plaintext seals to that size.
  ASSERT_OK(store_->Put("packs/d", data, PutOptions{}));
  mem_->Overwrite("packs/d", Inner("packs/d") + "x");
  EXPECT_THAT(store_->Get("packs/d"), StatusIs(StatusCode::kDataLoss, "failed authentication"));
  EXPECT_THAT(store_->Head("packs/d"), StatusIs(StatusCode::kDataLoss, "fits no sealed object"));
  auto listed = store_->ListAll("packs/d");
  ASSERT_OK(listed);
  EXPECT_EQ(listed->at(0).size, 0u);
  mem_->Overwrite("packs/e", "plain bytes someone put there");
  EXPECT_THAT(store_->Get("packs/e"), StatusIs(StatusCode::kDataLoss, "not an object sealed"));
  EXPECT_THAT(store_->Get("packs/e", 0, 4),
              StatusIs(StatusCode::kDataLoss, "not an object sealed"));
  // Sealed by another repository's key: both key ids are named.
  auto foreign = SealObject(Keys(9), "packs/f", data);
  ASSERT_OK(foreign);
  mem_->Overwrite("packs/f", *foreign);
  EXPECT_THAT(store_->Get("packs/f"), StatusIs(StatusCode::kDataLoss, "0a0a0a0a0a0a0a0a"));
  // An empty object's lone tag is checked too.
  ASSERT_OK(store_->Put("leases/x", "", PutOptions{}));
  std::string empty = Inner("leases/x");
  empty.back() ^= 1;
  mem_->Overwrite("leases/x", empty);
  EXPECT_THAT(store_->Get("leases/x"), StatusIs(StatusCode::kDataLoss, "failed authentication"));
}

TEST_F(EncryptedStoreTest, ARangedReadAfterTheObjectWasReplacedElsewhereReadsTheNewObject) {
  const std::string v1 = Random(2 * kSealedSegment, 6), v2 = Random(2 * kSealedSegment, 7);
  ASSERT_OK(store_->Put("index/i", v1, PutOptions{}));
  auto first = store_->Get("index/i", 100, 50);  // caches the header
  ASSERT_OK(first);
  EXPECT_EQ(*first, v1.substr(100, 50));
  auto again = SealObject(Keys(7), "index/i", v2);  // another host rewrote it
  ASSERT_OK(again);
  mem_->Overwrite("index/i", *again);
  auto second = store_->Get("index/i", 100, 50);
  ASSERT_OK(second);
  EXPECT_EQ(*second, v2.substr(100, 50));
}

}  // namespace
}  // namespace vmbackup::internal
