// RetryPolicy: full-jitter backoff, bounded by the cap and by the operation's deadline.
#include "core/retry.h"

#include <gtest/gtest.h>

namespace vmbackup::internal {
namespace {

using Clock = RetryPolicy::Clock;
using std::chrono::milliseconds;

TEST(RetryPolicyTest, WaitsGrowWithFullJitterUpToTheCap) {
  RetryPolicy p;  // 100 ms initial, 5 s cap, 120 s deadline
  const auto start = Clock::now();
  for (int attempts = 1; attempts <= 12; ++attempts) {
    const milliseconds ceiling = std::min(p.cap, milliseconds(100 << (attempts - 1)));
    milliseconds longest{0}, shortest = ceiling;
    for (int i = 0; i < 200; ++i) {
      auto when = p.NextAttempt(attempts, start, start);
      ASSERT_TRUE(when.has_value());
      const auto wait = std::chrono::duration_cast<milliseconds>(*when - start);
      ASSERT_GE(wait.count(), 0);
      ASSERT_LE(wait, ceiling) << "attempt " << attempts;
      longest = std::max(longest, wait);
      shortest = std::min(shortest, wait);
    }
    // Full jitter: the waits spread over [0, ceiling], not around a fixed value.
    EXPECT_GT(longest, ceiling / 2) << "attempt " << attempts;
    EXPECT_LT(shortest, ceiling / 2) << "attempt " << attempts;
  }
}

TEST(RetryPolicyTest, TheDeadlineEndsRetriesAndShortensTheLastWait) {
  RetryPolicy p;
  p.deadline = milliseconds(1000);
  const auto start = Clock::now();
  // 990 ms in: less than the minimum attempt time is left.
  EXPECT_FALSE(p.NextAttempt(3, start, start + milliseconds(990)).has_value());
  // 900 ms in, with up to 5 s of wait drawn: never past the deadline minus one attempt.
  for (int i = 0; i < 100; ++i) {
    auto when = p.NextAttempt(20, start, start + milliseconds(900));
    ASSERT_TRUE(when.has_value());
    EXPECT_LE(*when, start + p.deadline - milliseconds(20));
  }
  EXPECT_EQ(p.WithDeadlineAtMost(milliseconds(200)).deadline, milliseconds(200));
  EXPECT_EQ(p.WithDeadlineAtMost(milliseconds(5000)).deadline, milliseconds(1000));
  EXPECT_TRUE(RetryPolicy::Retryable(StatusCode::kUnavailable));
  EXPECT_FALSE(RetryPolicy::Retryable(StatusCode::kDataLoss));
  EXPECT_FALSE(RetryPolicy::Retryable(StatusCode::kPermissionDenied));
  EXPECT_EQ(RetryPolicyWithDeadlineSeconds(0).deadline, milliseconds(120000));
  EXPECT_EQ(RetryPolicyWithDeadlineSeconds(3).deadline, milliseconds(3000));
}

}  // namespace
}  // namespace vmbackup::internal
