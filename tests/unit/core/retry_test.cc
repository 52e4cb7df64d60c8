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

// Operations queued behind one that gave up count from the outage's start, not their own: the
// third operation below fails after one attempt instead of waiting out another full deadline.
TEST(OutageTest, OperationsCountTheirDeadlineFromTheOutagesStartUntilTheServerAnswers) {
  RetryPolicy p;
  p.deadline = milliseconds(1000);
  Outage outage;
  const auto t0 = Clock::now();
  EXPECT_EQ(outage.CountFrom(t0), t0) << "no outage: an operation counts from its own start";
  outage.NoAnswer(t0 + milliseconds(10));
  outage.NoAnswer(t0 + milliseconds(500));  // a later failure does not move the start
  EXPECT_EQ(outage.CountFrom(t0), t0) << "an operation that started before the outage";
  const auto late = t0 + milliseconds(1200);  // started after the first one gave up
  EXPECT_EQ(outage.CountFrom(late), t0 + milliseconds(10));
  EXPECT_FALSE(p.NextAttempt(1, outage.CountFrom(late), late + milliseconds(5)).has_value())
      << "the server has been silent for the whole deadline: no second attempt";
  EXPECT_TRUE(p.NextAttempt(1, late, late + milliseconds(5)).has_value())
      << "without the outage it would have retried";
  outage.Answered();  // any answer ends the outage for everyone
  EXPECT_EQ(outage.CountFrom(late), late);
  outage.NoAnswer(late + milliseconds(50));
  EXPECT_EQ(outage.CountFrom(late + milliseconds(100)), late + milliseconds(50));
}

}  // namespace
}  // namespace vmbackup::internal
