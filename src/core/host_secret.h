// The host's own secret: 32 random bytes kept in the host's state directory, never written to a
// backup target. Keys derived from it authenticate what this host records on a target for its own
// later use (block fingerprints, see docs/FORMAT.md "Block fingerprints").
//
// Thread-safety: pure functions over the file system; concurrent callers (threads or processes)
// creating the same secret all end up with the one that was published first.
#ifndef VMBACKUP_CORE_HOST_SECRET_H_
#define VMBACKUP_CORE_HOST_SECRET_H_

#include <array>
#include <cstdint>
#include <string>

#include "vmbackup/status.h"

namespace vmbackup::internal {

using HostSecret = std::array<uint8_t, 32>;

// The file holding the secret inside a state directory.
inline constexpr const char* kHostSecretFile = "fingerprint.key";

// The default state directory: $VMBACKUP_STATE_DIR, else /var/lib/vmbackup for root, else
// $XDG_STATE_HOME/vmbackup, else $HOME/.local/state/vmbackup; empty when none can be named.
std::string DefaultStateDir();

// Reads `<state_dir>/fingerprint.key` (64 hex characters and a newline), creating the directory
// (0700) and the file (0600, random, fsynced, published with link() so concurrent creators agree)
// when missing. Errors: kInvalidArgument for an empty state_dir; kPermissionDenied when the file or
// the directory is a symbolic link, is not owned by this user, or is readable or writable by group
// or others (a secret others can read protects nothing); kDataLoss when the file is malformed;
// kUnavailable when no random secret can be drawn; the errno mapping of failing calls otherwise.
StatusOr<HostSecret> LoadOrCreateHostSecret(const std::string& state_dir);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_CORE_HOST_SECRET_H_
