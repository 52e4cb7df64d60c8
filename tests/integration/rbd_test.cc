// Placeholder: the rbd provider's integration tests.
#include <gtest/gtest.h>
TEST(RbdProviderTest, Placeholder) { GTEST_SKIP() << "not written yet"; }
