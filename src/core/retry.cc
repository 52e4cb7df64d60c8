// RetryPolicy (see retry.h).
#include "core/retry.h"

#include <algorithm>
#include <random>

namespace vmbackup::internal {

std::optional<RetryPolicy::Clock::time_point> RetryPolicy::NextAttempt(int attempts,
                                                                       Clock::time_point start,
                                                                       Clock::time_point now,
                                                                       Duration min_attempt) const {
  const Clock::time_point end = start + deadline;
  if (now + min_attempt >= end) return std::nullopt;
  // initial * 2^(attempts - 1), without overflow: the exponent is bounded before shifting.
  const int shift = std::clamp(attempts - 1, 0, 20);
  const Duration ceiling = std::min(cap, Duration(initial.count() << shift));
  thread_local std::mt19937_64 rng(std::random_device{}());
  const Duration wait(std::uniform_int_distribution<int64_t>(0, ceiling.count())(rng));
  // The last wait is shortened so that a final attempt happens before the deadline.
  return std::min(now + wait, end - min_attempt);
}

}  // namespace vmbackup::internal
