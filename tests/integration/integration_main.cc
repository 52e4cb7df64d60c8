// main() of the integration suite: enters a private mount namespace before any thread exists, so
// that the tmpfs and read-only mounts some tests make disappear with the process, then runs the
// tests. VMBACKUP_INTEG_NO_MOUNT=1 skips the namespace, to exercise the fallbacks as root.
#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "integration_util.h"

int main(int argc, char** argv) {
  std::string why = "VMBACKUP_INTEG_NO_MOUNT is set";
  const char* no_mount = std::getenv("VMBACKUP_INTEG_NO_MOUNT");
  const bool skip = no_mount != nullptr && *no_mount != '\0' && std::string(no_mount) != "0";
  if (skip || !vmbackup::integration::EnterPrivateMountNamespace(&why)) {
    vmbackup::integration::SetNoMountReason(why);
    std::cout << "[ NOTE     ] mounts unavailable (" << why
              << "): tests use their documented fallbacks" << std::endl;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
