// NfsStore: an ObjectStore on an NFS export over libnfs (userspace; no kernel mount), with bounded
// timeouts. See docs/nfs.md.
//
// Key "a/b/c" is the file <export>/<prefix>/a/b/c. Put writes <export>/<prefix>/.tmp/<random>
// (pipelined WRITEs of the server's maximum size), COMMITs it when durable, then renames it into
// place (LINK + REMOVE for if_absent, which makes create-if-absent atomic on the server), creating
// parent directories on demand. Delete removes the file and the parent directories it leaves empty.
// List walks the directories below the prefix (READDIRPLUS) like LocalStore.
//
// Every operation has a deadline (TargetOptions::retry_timeout_seconds, default 120 s). Within it,
// transient failures (connection refused or reset, server restarted, ESTALE, EIO) are retried with
// a fresh libnfs context and backoff; when the deadline passes the operation fails with
// kUnavailable naming the server and the last error. Nothing ever waits without a deadline.
//
// Thread-safety: thread-safe. The store keeps a pool of libnfs contexts (one TCP connection and one
// mount each; TargetOptions::max_requests_in_flight, default 4), each serviced on the Runtime's
// io_context on an asio strand of its own: a stream_descriptor over a dup() of the context's socket
// waits for the events libnfs asks for and calls nfs_service. Operations are coroutines on the
// io_context that borrow a context per attempt; deadlines and retry backoff are asio timers. The
// store starts no thread and uses no blocking-pool thread: PutAsync / GetAsync complete on an
// io_context thread; the blocking forms wait on the calling thread (never call them from an
// io_context thread). Destroying the store ends pending operations with kUnavailable ("the NFS
// store was closed"), calls their completions, and waits until no handler of it is left (when
// destroyed on an io_context thread it does not wait; the Runtime then lives until the last
// handler ran). The server's name is resolved when the store is opened.
#ifndef VMBACKUP_STORE_NFS_NFS_STORE_H_
#define VMBACKUP_STORE_NFS_NFS_STORE_H_

#include <memory>
#include <string>

#include "core/retry.h"
#include "store/object_store.h"

namespace vmbackup::internal {

// A parsed nfs:// endpoint.
struct NfsEndpoint {
  std::string server;       // host name or address
  std::string export_path;  // "/srv/export" (absolute, no trailing '/')
  int version = 3;          // 3 (default) or 4
  int nfs_port = 0;         // 0 = ask the portmapper (v3) / 2049 (v4)
  int mount_port = 0;       // 0 = ask the portmapper (v3 only)
  std::string libnfs_url;   // nfs://server/export?options, as libnfs parses it
};

// Parses `nfs://host:/path` (Harvester) or `nfs://host/path?version=3|4&nfsport=N&mountport=M`
// (libnfs; also uid, gid, tcp-syncnt). kInvalidArgument naming the problem otherwise.
StatusOr<NfsEndpoint> ParseNfsEndpoint(const std::string& endpoint);

// What an NFS store needs, resolved from a target's setting and options by target/.
struct NfsStoreOptions {
  std::string endpoint;  // nfs:// URL (see ParseNfsEndpoint)
  std::string prefix;    // directory inside the export, "" or a valid key without trailing '/'
  int connections = 4;   // libnfs contexts (TCP connections, mounts) kept, 1 to 64
  RetryPolicy retry;     // transient failures, deadline per operation
};

// Opens the export named by options.endpoint and creates options.prefix inside it if missing
// (first contact: retried for at most kConnectDeadline). Returns kInvalidArgument for a bad URL or
// prefix, kNotFound for a missing export, kPermissionDenied when the server refuses access,
// kUnavailable when the server cannot be reached.
StatusOr<std::unique_ptr<ObjectStore>> OpenNfsStore(const NfsStoreOptions& options,
                                                    std::shared_ptr<Runtime> runtime);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_STORE_NFS_NFS_STORE_H_
