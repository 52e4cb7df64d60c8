// Which process wrote an object that names its writer (the GC lock, backup leases), so that a
// later run on the same machine can tell a holder killed with SIGKILL from one still running
// instead of waiting out a timeout.
//
// Thread-safety: pure functions over /proc; safe from any thread.
#ifndef VMBACKUP_CORE_PROCESS_ID_H_
#define VMBACKUP_CORE_PROCESS_ID_H_

#include <string>
#include <string_view>

namespace vmbackup::internal {

// This process as "<boot id>/<pid namespace inode>/<pid>/<start time in clock ticks>" (Linux
// /proc). "" when /proc cannot tell (then nobody can ever call it gone).
std::string ProcessIdentity();

// True only when `identity` (read from a target: untrusted, any text) names a process of this
// machine's boot and of this PID namespace that no longer runs: its pid is free, or it belongs
// to a process started at another time. False whenever it cannot be sure (another machine or
// container, malformed or empty text, /proc unreadable).
bool ProcessCertainlyGone(std::string_view identity);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_CORE_PROCESS_ID_H_
