// RetryPolicy: the one retry rule of every network store (S3, NFS): which failures retry, how long
// to wait between attempts (exponential backoff with full jitter) and when to give up (a deadline
// per operation). A target's options are turned into policies once, in target/.
//
// Thread-safety: a RetryPolicy is an immutable value; NextAttempt draws from a per-thread
// generator.
#ifndef VMBACKUP_CORE_RETRY_H_
#define VMBACKUP_CORE_RETRY_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <optional>

#include "vmbackup/status.h"

namespace vmbackup::internal {

struct RetryPolicy {
  using Clock = std::chrono::steady_clock;
  using Duration = std::chrono::milliseconds;

  Duration initial{100};      // the first retry waits up to this long
  Duration cap{5000};         // no wait is longer
  Duration deadline{120000};  // an operation gives up this long after it started

  // Whether a failure with `code` is worth another attempt: only kUnavailable (unreachable,
  // timed out, reset, 5xx, SlowDown: the stores map every transient failure to it). Everything
  // else is an answer.
  static bool Retryable(StatusCode code) { return code == StatusCode::kUnavailable; }

  // When to make attempt `attempts + 1` after `attempts` attempts of an operation that started at
  // `start`, failing last at `now`: a uniformly random wait in [0, min(cap, initial * 2^(attempts
  // - 1))] ("full jitter"), shortened so that a last attempt lands on the deadline. nullopt when
  // the deadline leaves no room for another attempt (less than `min_attempt` before it).
  std::optional<Clock::time_point> NextAttempt(int attempts, Clock::time_point start,
                                               Clock::time_point now,
                                               Duration min_attempt = Duration(20)) const;

  // This policy with its deadline cut to `d` (when shorter).
  RetryPolicy WithDeadlineAtMost(Duration d) const {
    RetryPolicy p = *this;
    if (d < p.deadline) p.deadline = d;
    return p;
  }
};

// A server's outage as one store sees it across all its operations: since when no attempt of any
// operation got an answer. An operation counts its deadline from the outage's start when that is
// earlier than its own start, so operations queued behind one that gave up do not each wait out a
// full deadline again: once the server has been silent for the deadline, operations fail after
// one attempt until the server answers again (which ends the outage for everyone).
//
// Thread-safety: every method may be called concurrently.
class Outage {
 public:
  using Clock = RetryPolicy::Clock;

  // An attempt failed with a retryable error at `now`: starts the outage if none is running.
  void NoAnswer(Clock::time_point now) {
    Clock::rep expected = kNone;
    since_.compare_exchange_strong(expected, now.time_since_epoch().count(),
                                   std::memory_order_relaxed);
  }
  // An attempt got an answer (success or a definite error): the server is there.
  void Answered() { since_.store(kNone, std::memory_order_relaxed); }

  // The time an operation that started at `start` counts its deadline from: the outage's start
  // if one is running and began earlier, else `start`.
  Clock::time_point CountFrom(Clock::time_point start) const {
    const Clock::rep since = since_.load(std::memory_order_relaxed);
    if (since == kNone) return start;
    return std::min(start, Clock::time_point(Clock::duration(since)));
  }

 private:
  static constexpr Clock::rep kNone = std::numeric_limits<Clock::rep>::max();
  std::atomic<Clock::rep> since_{kNone};
};

// The policy of a target whose options give `retry_timeout_seconds` (0 = the default, 120 s).
inline RetryPolicy RetryPolicyWithDeadlineSeconds(int retry_timeout_seconds) {
  RetryPolicy p;
  if (retry_timeout_seconds > 0)
    p.deadline = RetryPolicy::Duration(int64_t{retry_timeout_seconds} * 1000);
  return p;
}

// How long the first contact with a target may keep retrying: a target that is down when it is
// opened, or when a job starts, fails this fast with kUnavailable; an outage during a job keeps
// the full deadline.
inline constexpr RetryPolicy::Duration kConnectDeadline{10000};

}  // namespace vmbackup::internal

#endif  // VMBACKUP_CORE_RETRY_H_
