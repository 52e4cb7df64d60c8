// Dirty maps: the host-supplied changed ranges of a backup's volumes, as JSON
// ({"<volume>": [[offset, length], {"offset": o, "length": l}, ...], ...}).
// Thread-safety: pure function.
#ifndef VMBACKUP_VM_DIRTY_MAP_H_
#define VMBACKUP_VM_DIRTY_MAP_H_

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "vmbackup/options.h"
#include "vmbackup/status.h"

namespace vmbackup::internal {

// Parses a dirty map. Returns, per volume name, its extents in the order given (an empty array is a
// volume with nothing changed). kInvalidArgument with a message starting with `what` (for example
// "dirty map 'changes.json'") when `json` is not a JSON object, a volume does not map to an array,
// or an extent is not [offset, length] / {"offset", "length"} of non-negative integers. Volume
// names are not checked here: the caller matches them against its volumes. Extents are not
// checked against volume sizes or for overlaps.
StatusOr<std::map<std::string, std::vector<Extent>>> ParseDirtyMap(std::string_view json,
                                                                   const std::string& what);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_VM_DIRTY_MAP_H_
