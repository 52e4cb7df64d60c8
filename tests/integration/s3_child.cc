// vmbackup_s3_child: a second process for the S3 integration tests (tests/integration/s3_test.cc).
// It backs up or restores through the public API against a target given as Harvester's setting JSON
// in a file (so that no secret ever appears on a command line), to prove that a repository written
// by one process is read by another.
//
//   vmbackup_s3_child backup  --config FILE --name NAME --volume PATH [--parent P]
//   vmbackup_s3_child restore --config FILE --name NAME --dest PATH
//   vmbackup_s3_child list    --config FILE
//
// Output, one line each, flushed at once (the format HelperProcess::Result() reads):
//   repository <id>                     after opening the target
//   backup <name>                       "list": one line per listed backup
//   stats <bytes_new> <bytes_reused>    after a successful backup
//   result <CODE_NAME> <message>        last line
// Exit status: 0 on OK, 1 on an error status, 2 on bad usage.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "vmbackup/vmbackup.h"

namespace {

using namespace vmbackup;  // NOLINT(build/namespaces)

void Line(const std::string& s) {
  std::string one = s;
  for (char& c : one)
    if (c == '\n') c = ' ';
  std::fprintf(stdout, "%s\n", one.c_str());
  std::fflush(stdout);
}

int Finish(const Status& st) {
  Line(std::string("result ") + StatusCodeName(st.code()) + " " + st.message());
  return st.ok() ? 0 : 1;
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "vmbackup_s3_child: %s\n", why.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage("missing mode");
  const std::string mode = argv[1];
  std::string config_file, name, volume, dest, parent;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) return Usage("flag " + flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--config") {
      config_file = value;
    } else if (flag == "--name") {
      name = value;
    } else if (flag == "--volume") {
      volume = value;
    } else if (flag == "--dest") {
      dest = value;
    } else if (flag == "--parent") {
      parent = value;
    } else {
      return Usage("bad flag " + flag);
    }
  }
  if (config_file.empty()) return Usage("--config is required");
  std::ifstream in(config_file);
  if (!in) return Usage("cannot read " + config_file);
  std::stringstream ss;
  ss << in.rdbuf();

  TargetOptions opts;
  opts.retry_timeout_seconds = 60;
  auto target = BackupTarget::Open(ss.str(), opts);
  if (!target.ok()) return Finish(target.status());
  Line("repository " + (*target)->repository_id());

  if (mode == "list") {
    auto list = (*target)->ListBackups();
    if (!list.ok()) return Finish(list.status());
    for (const auto& b : list->backups) Line("backup " + b.name);
    return Finish(Status::Ok());
  }
  if (mode == "backup") {
    if (name.empty() || volume.empty()) return Usage("backup needs --name and --volume");
    BackupSpec spec;
    spec.name = name;
    spec.parent = parent;
    spec.vm_metadata_json = R"({"name":"vm-child","namespace":"default"})";
    spec.volumes.push_back(VolumeSource{"disk0", volume, false, {}});
    auto job = BackupJob::Create(*target, spec);
    if (!job.ok()) return Finish(job.status());
    Status st = (*job)->Run();
    if (st.ok()) {
      auto info = (*job)->result();
      if (info.ok())
        Line("stats " + std::to_string(info->bytes_new) + " " + std::to_string(info->bytes_reused));
    }
    return Finish(st);
  }
  if (mode == "restore") {
    if (name.empty() || dest.empty()) return Usage("restore needs --name and --dest");
    RestoreSpec spec;
    spec.backup = name;
    spec.volumes.push_back(VolumeDestination{"disk0", dest});
    auto plan = RestorePlan::Create(*target, spec);
    if (!plan.ok()) return Finish(plan.status());
    return Finish((*plan)->Run());
  }
  return Usage("unknown mode " + mode);
}
