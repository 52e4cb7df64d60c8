// BufferPool: recycled buffers keep their capacity, come back empty, and the pool keeps a bounded
// number of them.
#include "core/buffer_pool.h"

#include <gtest/gtest.h>

namespace vmbackup::internal {
namespace {

TEST(BufferPoolTest, RecycledBuffersKeepTheirMemoryAndComeBackEmpty) {
  BufferPool pool(2);
  std::string a = pool.Take(1 << 20);
  EXPECT_TRUE(a.empty());
  EXPECT_GE(a.capacity(), 1u << 20);
  a.append("payload");
  const char* mem = a.data();
  pool.Give(std::move(a));
  std::string b = pool.Take(1 << 20);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.data(), mem);  // the same allocation, not a new one
  std::string c = pool.Take(1 << 20);
  EXPECT_NE(c.data(), mem);  // the pool was empty: a fresh buffer
}

TEST(BufferPoolTest, KeepsAtMostMaxKept) {
  BufferPool pool(1);
  std::string a = pool.Take(4096), b = pool.Take(4096);
  const char* first = a.data();
  pool.Give(std::move(a));
  pool.Give(std::move(b));  // dropped: the pool already keeps one
  std::string x = pool.Take(4096), y = pool.Take(4096);
  EXPECT_EQ(x.data(), first);
  EXPECT_NE(y.data(), first);
}

TEST(BufferPoolTest, GrowsARecycledBufferThatIsTooSmall) {
  BufferPool pool(1);
  pool.Give(pool.Take(16));
  std::string s = pool.Take(1 << 16);
  EXPECT_GE(s.capacity(), 1u << 16);
}

// Sealed packs and pack builders share the pool with slightly different sizes: a buffer that is
// large enough is taken before a smaller, more recent one is grown (growing means a fresh buffer).
TEST(BufferPoolTest, TakesAKeptBufferThatIsLargeEnoughBeforeGrowingASmallerOne) {
  BufferPool pool(3);
  std::string big = pool.Take(1 << 16), small = pool.Take(16);
  const char* big_mem = big.data();
  const char* small_mem = small.data();
  pool.Give(std::move(big));
  pool.Give(std::move(small));  // the most recent
  std::string s = pool.Take(1 << 16);
  EXPECT_EQ(s.data(), big_mem);
  std::string t = pool.Take(16);
  EXPECT_EQ(t.data(), small_mem);
}

// The Runtime's pool: buffers are kept only while a backup holds the pool, and freed when the last
// hold ends, so an idle Runtime keeps no pack memory.
TEST(BufferPoolTest, WhileHeldPoolKeepsBuffersOnlyWhileHeld) {
  BufferPool pool(4, BufferPool::Retention::kWhileHeld);
  pool.Give(pool.Take(4096));
  EXPECT_EQ(pool.kept(), 0u);  // nobody holds it: dropped
  {
    BufferPool::Hold a = pool.Keep();
    std::string s = pool.Take(4096);
    const char* mem = s.data();
    pool.Give(std::move(s));
    EXPECT_EQ(pool.kept(), 1u);
    {
      BufferPool::Hold b = pool.Keep();
      std::string t = pool.Take(4096);
      EXPECT_EQ(t.data(), mem);  // a second holder reuses the first one's buffer
      pool.Give(std::move(t));
    }
    EXPECT_EQ(pool.kept(), 1u);  // `a` still holds the pool
    BufferPool::Hold moved = std::move(a);
    EXPECT_EQ(pool.kept(), 1u);  // moving a hold does not end it
  }
  EXPECT_EQ(pool.kept(), 0u);  // the last hold ended: freed
  pool.Give(pool.Take(4096));
  EXPECT_EQ(pool.kept(), 0u);
}

}  // namespace
}  // namespace vmbackup::internal
