// ByteBudget: the bound on bytes in flight shared by the backups of a Runtime.
#include "core/byte_budget.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace vmbackup::internal {
namespace {

TEST(ByteBudgetTest, AcquireWaitsUntilTheBytesFit) {
  ByteBudget budget(100);
  budget.Acquire(60);
  std::atomic<bool> got{false};
  std::thread t([&] {
    budget.Acquire(50);  // 60 + 50 > 100: waits
    got = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(got.load());
  EXPECT_EQ(budget.in_flight(), 60u);
  budget.Release(60);
  t.join();
  EXPECT_TRUE(got.load());
  EXPECT_EQ(budget.in_flight(), 50u);
  EXPECT_EQ(budget.peak(), 60u);
}

TEST(ByteBudgetTest, ARequestLargerThanTheBudgetGoesThroughAlone) {
  ByteBudget budget(10);
  budget.Acquire(25);  // nothing in flight: allowed, or it would wait forever
  EXPECT_EQ(budget.in_flight(), 25u);
  std::atomic<bool> got{false};
  std::thread t([&] {
    budget.Acquire(1);
    got = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(got.load());
  budget.Release(25);
  t.join();
  EXPECT_TRUE(got.load());
}

// Many threads acquiring and releasing never exceed the bound together.
TEST(ByteBudgetTest, ConcurrentUsersStayWithinTheBound) {
  ByteBudget budget(64);
  std::atomic<int64_t> held{0};
  std::atomic<int64_t> max_held{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      for (int k = 0; k < 500; ++k) {
        budget.Acquire(16);
        int64_t now = held.fetch_add(16) + 16;
        int64_t m = max_held.load();
        while (now > m && !max_held.compare_exchange_weak(m, now)) {
        }
        held.fetch_sub(16);
        budget.Release(16);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(max_held.load(), 64);
  EXPECT_LE(budget.peak(), 64u);
  EXPECT_EQ(budget.in_flight(), 0u);
}

}  // namespace
}  // namespace vmbackup::internal
