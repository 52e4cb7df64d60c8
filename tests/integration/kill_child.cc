// vmbackup_kill_child: the process the kill -9 trials (kill_trial_test.cc) kill at a chosen point.
// It runs one backup, delete, garbage collection or restore on a target whose store is wrapped so
// that the process SIGKILLs itself at the N-th counted store operation, just before the operation
// reaches the store or just after the store answered it (before the library sees the answer). No
// cleanup code runs: this is what a power cut or an OOM kill leaves.
//
//   vmbackup_kill_child --target local:DIR|s3:PREFIX [--raw-key HEX] --state-dir DIR
//                       --count writes|reads --kill-at N --after 0|1  OP ARGS...
//     backup NAME VOLUME_PATH          one volume "disk0"
//     delete NAME
//     gc RESTORE_DIR                   grace 0 (leases of killed writers: see FORMAT.md)
//     restore NAME DEST_PATH 0|1       1 = overwrite an existing destination
//
// Counted operations: "writes" = Put and Delete (sync and async forms), "reads" = Get, GetInto and
// GetAsync. --kill-at 0 never kills (a counting run). s3:PREFIX reads the server from the
// environment scripts/test.sh exports (S3_HTTP_ENDPOINT, S3_BUCKET, AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY).
//
// Output, one line each, flushed at once:
//   stats <bytes_new> <bytes_reused>   after a successful backup
//   ops <n>                            counted operations of a run that was not killed
//   result <CODE_NAME> <message>       last line
// Exit status: 0 on OK, 1 on an error status, 2 on bad usage; killed: SIGKILL.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/util.h"
#include "store/local_store.h"
#include "store/object_store.h"
#include "target/store_factory.h"
#include "target/target_impl.h"
#include "vmbackup/vmbackup.h"

namespace {

using namespace vmbackup;  // NOLINT(build/namespaces)
using internal::ObjectStore;

void Line(const std::string& s) {
  std::fprintf(stdout, "%s\n", s.c_str());
  std::fflush(stdout);
}

int Finish(const Status& st) {
  std::string m = st.message();
  for (char& c : m)
    if (c == '\n') c = ' ';
  Line(std::string("result ") + StatusCodeName(st.code()) + " " + m);
  return st.ok() ? 0 : 1;
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "vmbackup_kill_child: %s\n", why.c_str());
  return 2;
}

[[noreturn]] void Die() {
  ::raise(SIGKILL);
  std::abort();  // not reached
}

// Forwards every operation to `base`, counting the chosen kind; the process dies at number
// `kill_at` (1-based; 0 = never), before the call or once its answer came back.
class KillStore final : public ObjectStore {
 public:
  KillStore(std::unique_ptr<ObjectStore> base, bool count_reads, uint64_t kill_at, bool after)
      : ObjectStore(base->runtime()),
        base_(std::move(base)),
        count_reads_(count_reads),
        kill_at_(kill_at),
        after_(after) {}

  uint64_t counted() const { return n_.load(); }

  std::string Describe() const override { return base_->Describe(); }
  Status Put(const std::string& key, std::string_view data,
             const internal::PutOptions& opts) override {
    const bool die = Count(!count_reads_);
    Status st = base_->Put(key, data, opts);
    if (die) Die();
    return st;
  }
  StatusOr<std::string> Get(const std::string& key, uint64_t offset, uint64_t length) override {
    const bool die = Count(count_reads_);
    auto r = base_->Get(key, offset, length);
    if (die) Die();
    return r;
  }
  Status GetInto(const std::string& key, uint64_t offset, uint64_t length,
                 std::string* out) override {
    const bool die = Count(count_reads_);
    Status st = base_->GetInto(key, offset, length, out);
    if (die) Die();
    return st;
  }
  StatusOr<internal::ObjectInfo> Head(const std::string& key) override { return base_->Head(key); }
  StatusOr<internal::ListPage> List(const std::string& prefix, const std::string& token,
                                    int max_keys) override {
    return base_->List(prefix, token, max_keys);
  }
  Status Delete(const std::vector<std::string>& keys) override {
    const bool die = Count(!count_reads_);
    Status st = base_->Delete(keys);
    if (die) Die();
    return st;
  }
  void PutAsync(std::string key, std::shared_ptr<const std::string> data, internal::PutOptions opts,
                std::function<void(Status)> done) override {
    const bool die = Count(!count_reads_);
    base_->PutAsync(std::move(key), std::move(data), opts,
                    [die, done = std::move(done)](Status st) {
                      if (die) Die();
                      done(std::move(st));
                    });
  }
  void GetAsync(std::string key, uint64_t offset, uint64_t length,
                std::function<void(StatusOr<std::string>)> done) override {
    const bool die = Count(count_reads_);
    base_->GetAsync(std::move(key), offset, length,
                    [die, done = std::move(done)](StatusOr<std::string> r) {
                      if (die) Die();
                      done(std::move(r));
                    });
  }
  Status Ping() override { return base_->Ping(); }

 private:
  // Counts one operation of a counted kind; dies now (kill before) or returns true (kill after)
  // when it is number kill_at_.
  bool Count(bool counted) {
    if (!counted) return false;
    const uint64_t n = ++n_;
    if (kill_at_ == 0 || n != kill_at_) return false;
    if (!after_) Die();
    return true;
  }

  std::unique_ptr<ObjectStore> base_;
  const bool count_reads_;
  const uint64_t kill_at_;
  const bool after_;
  std::atomic<uint64_t> n_{0};
};

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

}  // namespace

int main(int argc, char** argv) {
  std::string target, raw_key_hex, state_dir, count = "writes";
  uint64_t kill_at = 0;
  bool after = false;
  int i = 1;
  for (; i + 1 < argc && std::string(argv[i]).rfind("--", 0) == 0; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--target") {
      target = value;
    } else if (flag == "--raw-key") {
      raw_key_hex = value;
    } else if (flag == "--state-dir") {
      state_dir = value;
    } else if (flag == "--count") {
      count = value;
    } else if (flag == "--kill-at") {
      kill_at = std::strtoull(value.c_str(), nullptr, 10);
    } else if (flag == "--after") {
      after = value == "1";
    } else {
      return Usage("bad flag " + flag);
    }
  }
  if (i >= argc) return Usage("missing operation");
  if (count != "writes" && count != "reads") return Usage("--count is writes or reads");
  const std::string op = argv[i];
  const std::vector<std::string> args(argv + i + 1, argv + argc);

  TargetOptions opts;
  opts.create_if_missing = false;
  opts.state_dir = state_dir;
  if (!raw_key_hex.empty()) {
    std::string key(raw_key_hex.size() / 2, '\0');
    if (!internal::BytesFromHex(raw_key_hex, reinterpret_cast<uint8_t*>(key.data()), key.size()))
      return Usage("--raw-key is not hex");
    opts.raw_key = key;
  }
  auto rt = Runtime::Default();
  StatusOr<std::unique_ptr<ObjectStore>> store = Status::Ok();
  if (target.rfind("local:", 0) == 0) {
    store = internal::OpenLocalStore(target.substr(6), rt);
  } else if (target.rfind("s3:", 0) == 0) {
    TargetConfig c;
    c.type = TargetConfig::Type::kS3;
    c.endpoint = Env("S3_HTTP_ENDPOINT");
    c.allow_insecure_http = true;
    c.bucket_name = Env("S3_BUCKET");
    c.access_key_id = Env("AWS_ACCESS_KEY_ID");
    c.secret_access_key = Env("AWS_SECRET_ACCESS_KEY");
    c.prefix = target.substr(3);
    store = internal::OpenS3Store(c, opts, rt);
  } else {
    return Usage("--target is local:DIR or s3:PREFIX");
  }
  if (!store.ok()) return Finish(store.status());
  auto killer = std::make_unique<KillStore>(std::move(*store), count == "reads", kill_at, after);
  KillStore* counter = killer.get();
  auto opened = internal::OpenTargetOnStore(std::move(killer), opts);
  if (!opened.ok()) return Finish(opened.status());
  std::shared_ptr<BackupTarget> t = *opened;

  Status st;
  if (op == "backup" && args.size() == 2) {
    BackupSpec spec;
    spec.name = args[0];
    spec.vm_metadata_json = R"({"name":"vm1","namespace":"trial"})";
    spec.volumes.push_back(VolumeSource{"disk0", args[1], false, {}});
    auto job = BackupJob::Create(t, spec);
    st = job.ok() ? (*job)->Run() : job.status();
    if (st.ok()) {
      auto info = (*job)->result();
      if (info.ok())
        Line("stats " + std::to_string(info->bytes_new) + " " + std::to_string(info->bytes_reused));
    }
  } else if (op == "delete" && args.size() == 1) {
    st = t->DeleteBackup(args[0]);
  } else if (op == "gc" && args.size() == 1) {
    GcOptions o;
    o.grace_seconds = 0;
    o.restore_dirs = {args[0]};
    auto r = t->CollectGarbage(o);
    st = r.ok() ? Status::Ok() : r.status();
    if (r.ok()) Line("gc " + GcReportToJson(*r));
  } else if (op == "restore" && args.size() == 3) {
    RestoreSpec spec;
    spec.backup = args[0];
    spec.volumes.push_back(VolumeDestination{"disk0", args[1]});
    spec.overwrite = args[2] == "1";
    auto plan = RestorePlan::Create(t, spec);
    st = plan.ok() ? (*plan)->Run() : plan.status();
  } else {
    return Usage("bad operation " + op);
  }
  Line("ops " + std::to_string(counter->counted()));
  return Finish(st);
}
