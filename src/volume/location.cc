// Volume locations (ParseVolumeLocation / VolumeLocation), provider keys and checkpoint names.
#include <map>

#include "core/errors.h"
#include "core/util.h"
#include "volume/provider.h"

namespace vmbackup {

const char* VolumeProviderName(VolumeProvider provider) {
  switch (provider) {
    case VolumeProvider::kFile:
      return "file";
    case VolumeProvider::kQemu:
      return "qemu";
    case VolumeProvider::kRbd:
      return "rbd";
  }
  return "unknown";
}

namespace {

// Splits "A?k=v&k2=v2" into A and the parameters; kInvalidArgument on a parameter without '=',
// an empty or repeated key.
Status SplitQuery(const std::string& what, const std::string& s, std::string* head,
                  std::map<std::string, std::string>* params) {
  const size_t q = s.find('?');
  *head = s.substr(0, q);
  if (q == std::string::npos) return Status::Ok();
  std::string rest = s.substr(q + 1);
  size_t pos = 0;
  while (pos <= rest.size()) {
    size_t amp = rest.find('&', pos);
    if (amp == std::string::npos) amp = rest.size();
    std::string kv = rest.substr(pos, amp - pos);
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      return InvalidArgumentError(what + ": parameter '" + kv + "' is not KEY=VALUE");
    if (!params->emplace(kv.substr(0, eq), kv.substr(eq + 1)).second)
      return InvalidArgumentError(what + ": parameter '" + kv.substr(0, eq) + "' given twice");
    pos = amp + 1;
  }
  return Status::Ok();
}

Status Unknown(const std::string& what, const std::map<std::string, std::string>& params) {
  if (params.empty()) return Status::Ok();
  return InvalidArgumentError(what + ": unknown parameter '" + params.begin()->first + "'");
}

std::string Take(std::map<std::string, std::string>* params, const std::string& key) {
  auto it = params->find(key);
  if (it == params->end()) return "";
  std::string v = std::move(it->second);
  params->erase(it);
  return v;
}

}  // namespace

StatusOr<VolumeSource> ParseVolumeLocation(const std::string& name, const std::string& location) {
  VolumeSource v;
  v.name = name;
  const std::string what = "volume '" + name + "' location '" + location + "'";
  if (location.empty()) return InvalidArgumentError(what + ": empty");
  if (location.rfind("qemu:", 0) == 0) {
    v.provider = VolumeProvider::kQemu;
    std::map<std::string, std::string> params;
    VMB_RETURN_IF_ERROR(SplitQuery(what, location.substr(5), &v.qemu.qmp_socket, &params));
    v.qemu.node = Take(&params, "node");
    v.qemu.nbd_socket = Take(&params, "nbd");
    v.qemu.scratch_dir = Take(&params, "scratch");
    VMB_RETURN_IF_ERROR(Unknown(what, params));
    if (v.qemu.qmp_socket.empty()) return InvalidArgumentError(what + ": no QMP socket path");
    if (v.qemu.node.empty())
      return InvalidArgumentError(what + ": no node (qemu:SOCKET?node=NODE)");
    return v;
  }
  if (location.rfind("rbd:", 0) == 0) {
    v.provider = VolumeProvider::kRbd;
    std::map<std::string, std::string> params;
    std::string head;
    VMB_RETURN_IF_ERROR(SplitQuery(what, location.substr(4), &head, &params));
    const size_t slash = head.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == head.size() ||
        head.find('/', slash + 1) != std::string::npos)
      return InvalidArgumentError(what + ": expected rbd:POOL/IMAGE");
    v.rbd.pool = head.substr(0, slash);
    v.rbd.image = head.substr(slash + 1);
    v.rbd.conf = Take(&params, "conf");
    v.rbd.client_id = Take(&params, "id");
    VMB_RETURN_IF_ERROR(Unknown(what, params));
    return v;
  }
  v.provider = VolumeProvider::kFile;
  v.path = location.rfind("file:", 0) == 0 ? location.substr(5) : location;
  if (v.path.empty()) return InvalidArgumentError(what + ": no path");
  return v;
}

std::string VolumeLocation(const VolumeSource& v) {
  switch (v.provider) {
    case VolumeProvider::kQemu: {
      std::string s = "qemu:" + v.qemu.qmp_socket + "?node=" + v.qemu.node;
      if (!v.qemu.nbd_socket.empty()) s += "&nbd=" + v.qemu.nbd_socket;
      if (!v.qemu.scratch_dir.empty()) s += "&scratch=" + v.qemu.scratch_dir;
      return s;
    }
    case VolumeProvider::kRbd: {
      std::string s = "rbd:" + v.rbd.pool + "/" + v.rbd.image;
      char sep = '?';
      if (!v.rbd.conf.empty()) {
        s += std::string(1, sep) + "conf=" + v.rbd.conf;
        sep = '&';
      }
      if (!v.rbd.client_id.empty()) s += std::string(1, sep) + "id=" + v.rbd.client_id;
      return s;
    }
    case VolumeProvider::kFile:
      break;
  }
  // A path that would read as another kind keeps its meaning with the explicit prefix.
  if (v.path.rfind("qemu:", 0) == 0 || v.path.rfind("rbd:", 0) == 0 ||
      v.path.rfind("file:", 0) == 0)
    return "file:" + v.path;
  return v.path;
}

namespace internal {

std::string ProviderKey(const VolumeSource& v) {
  switch (v.provider) {
    case VolumeProvider::kQemu:
      return "qemu:" + v.qemu.qmp_socket;
    case VolumeProvider::kRbd:
      return "rbd:" + v.rbd.conf + "?" + v.rbd.client_id;
    case VolumeProvider::kFile:
      break;
  }
  return "file:";
}

StatusOr<std::string> NewCheckpointName() {
  VMB_ASSIGN_OR_RETURN(std::string r, RandomHex(8));
  return "vmbackup-" + r;
}

}  // namespace internal
}  // namespace vmbackup
