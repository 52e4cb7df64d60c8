#include "core/process_id.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <vector>

namespace vmbackup::internal {
namespace {

std::string ReadSmallFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return "";
  std::string s(4096, '\0');
  f.read(s.data(), static_cast<std::streamsize>(s.size()));
  s.resize(static_cast<size_t>(f.gcount()));
  return s;
}

std::string BootId() {
  std::string s = ReadSmallFile("/proc/sys/kernel/random/boot_id");
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// "pid:[4026531836]" → "4026531836".
std::string PidNamespace() {
  char buf[128];
  const ssize_t n = ::readlink("/proc/self/ns/pid", buf, sizeof buf - 1);
  if (n <= 0) return "";
  const std::string link(buf, static_cast<size_t>(n));
  const size_t open = link.find('['), close = link.find(']');
  if (open == std::string::npos || close == std::string::npos || close <= open + 1) return "";
  return link.substr(open + 1, close - open - 1);
}

// Field 22 (starttime) of /proc/<pid>/stat; "" when the process does not exist.
std::string StartTime(const std::string& pid) {
  const std::string stat = ReadSmallFile("/proc/" + pid + "/stat");
  const size_t paren = stat.rfind(')');  // the command name may hold spaces and parentheses
  if (paren == std::string::npos) return "";
  std::istringstream rest(stat.substr(paren + 1));
  std::string field;
  for (int i = 3; i <= 22; ++i)  // fields after the name start at 3 (state)
    if (!(rest >> field)) return "";
  return field;
}

bool AllDigits(std::string_view s, size_t max_len) {
  if (s.empty() || s.size() > max_len) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

}  // namespace

std::string ProcessIdentity() {
  const std::string boot = BootId(), ns = PidNamespace();
  const std::string pid = std::to_string(::getpid());
  const std::string start = StartTime(pid);
  if (boot.empty() || ns.empty() || start.empty()) return "";
  return boot + "/" + ns + "/" + pid + "/" + start;
}

bool ProcessCertainlyGone(std::string_view identity) {
  if (identity.empty() || identity.size() > 200) return false;
  std::vector<std::string_view> parts;
  size_t from = 0;
  while (parts.size() < 5) {
    const size_t slash = identity.find('/', from);
    parts.push_back(identity.substr(from, slash == std::string_view::npos ? slash : slash - from));
    if (slash == std::string_view::npos) break;
    from = slash + 1;
  }
  if (parts.size() != 4) return false;
  const std::string boot = BootId(), ns = PidNamespace();
  if (boot.empty() || ns.empty() || parts[0] != boot || parts[1] != ns) return false;
  if (!AllDigits(parts[2], 10) || !AllDigits(parts[3], 20) || parts[2] == "0") return false;
  const std::string pid(parts[2]);
  const long long n = std::stoll(pid);
  if (n < 1 || n > (1 << 22)) return false;  // above Linux's PID_MAX_LIMIT: not a pid
  if (::kill(static_cast<pid_t>(n), 0) != 0 && errno == ESRCH) return true;
  const std::string start = StartTime(pid);
  return !start.empty() && start != parts[3];  // the pid now names a later process
}

}  // namespace vmbackup::internal
