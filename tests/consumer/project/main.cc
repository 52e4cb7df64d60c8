// A program built against an installed vmbackup: opens a local target, backs up a small file,
// restores it and compares.
#include <vmbackup/vmbackup.h>

#include <sys/stat.h>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string dir = argv[1];
  ::mkdir((dir + "/target").c_str(), 0755);
  {
    std::ofstream f(dir + "/disk.img", std::ios::binary);
    for (int i = 0; i < 100000; ++i) f << "line " << i << "\n";
  }
  auto target =
      vmbackup::BackupTarget::Open(R"({"type":"file","endpoint":")" + dir + R"(/target"})");
  if (!target.ok()) return std::puts(target.status().ToString().c_str()), 1;
  vmbackup::BackupSpec spec;
  spec.name = "consumer";
  spec.volumes.push_back({"disk", dir + "/disk.img", false, {}});
  auto job = vmbackup::BackupJob::Create(*target, spec);
  if (!job.ok()) return std::puts(job.status().ToString().c_str()), 1;
  if (auto st = (*job)->Run(); !st.ok()) return std::puts(st.ToString().c_str()), 1;
  vmbackup::RestoreSpec r;
  r.backup = "consumer";
  r.volumes.push_back({"disk", dir + "/restored.img"});
  auto plan = vmbackup::RestorePlan::Create(*target, r);
  if (!plan.ok()) return std::puts(plan.status().ToString().c_str()), 1;
  if (auto st = (*plan)->Run(); !st.ok()) return std::puts(st.ToString().c_str()), 1;
  auto read = [](const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  bool same = read(dir + "/disk.img") == read(dir + "/restored.img");
  std::printf("vmbackup %s consumer: restore %s\n", vmbackup::VersionString(),
              same ? "identical" : "DIFFERENT");
  return same ? 0 : 1;
}
