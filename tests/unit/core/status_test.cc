// Status / StatusOr and the errno mapping.
#include <gtest/gtest.h>

#include <cerrno>

#include "core/errors.h"
#include "support/test_util.h"
#include "vmbackup/status.h"

namespace vmbackup {
namespace {

TEST(StatusTest, CodesAndText) {
  Status ok;
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.ToString(), "OK");
  Status nf = NotFoundError("backup x");
  EXPECT_EQ(nf.code(), StatusCode::kNotFound);
  EXPECT_EQ(nf.ToString(), "NOT_FOUND: backup x");
  EXPECT_EQ(nf.WithContext("restore").message(), "restore: backup x");
  EXPECT_FALSE(nf.retryable());
  EXPECT_TRUE(UnavailableError("x").retryable());
  EXPECT_EQ(static_cast<int>(StatusCode::kDataLoss), 15);  // stable numbers (C ABI mirrors them)
}

TEST(StatusTest, StatusOrFromOkStatusIsInternal) {
  StatusOr<int> v(Status::Ok());
  EXPECT_EQ(v.status().code(), StatusCode::kInternal);
  StatusOr<int> w(7);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(*w, 7);
}

TEST(StatusTest, ErrnoMapping) {
  using internal::ErrnoToStatus;
  EXPECT_THAT(ErrnoToStatus(ENOENT, "open f"), StatusIs(StatusCode::kNotFound, "open f: "));
  EXPECT_THAT(ErrnoToStatus(ENOSPC, "write"), StatusIs(StatusCode::kResourceExhausted, "No space"));
  EXPECT_THAT(ErrnoToStatus(EROFS, "write"), StatusIs(StatusCode::kPermissionDenied, "Read-only"));
  EXPECT_THAT(ErrnoToStatus(EIO, "read"), StatusIs(StatusCode::kUnavailable, "I/O error"));
}

}  // namespace
}  // namespace vmbackup
