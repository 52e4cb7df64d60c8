// The file provider: reflink clones (FICLONE) where the filesystem has them, else direct reads
// (VolumeSnapshotter). It keeps no checkpoints: changed ranges come from the host's dirty map.
#include <utility>

#include "vmbackup/volume_snapshotter.h"
#include "volume/provider.h"

namespace vmbackup::internal {
namespace {

class FileView final : public VolumeView {
 public:
  explicit FileView(std::unique_ptr<VolumeSnapshot> snap) : snap_(std::move(snap)) {}
  uint64_t size() const override { return snap_->size(); }
  StatusOr<std::vector<Extent>> DataExtents(uint64_t offset, uint64_t length) const override {
    return snap_->DataExtents(offset, length);
  }
  StatusOr<size_t> ReadAt(uint64_t offset, void* buf, size_t length) const override {
    return snap_->ReadAt(offset, buf, length);
  }

 private:
  std::unique_ptr<VolumeSnapshot> snap_;
};

class FileProvider final : public SnapshotProvider {
 public:
  explicit FileProvider(const SnapshotOptions& o) : options_(o) {}

  Status Prepare(const std::vector<ProviderVolume>& volumes, const std::string&) override {
    for (const auto& v : volumes) {
      names_.push_back(v.source->name);
      auto s = VolumeSnapshotter::Open(v.source->path, options_);
      if (!s.ok()) return s.status();
      snappers_.push_back(std::move(*s));
    }
    return Status::Ok();
  }

  Status Take() override {
    for (size_t i = 0; i < snappers_.size(); ++i) {
      auto snap = snappers_[i]->Snapshot();
      if (!snap.ok()) return snap.status().WithContext("volume '" + names_[i] + "'");
      snaps_.push_back(std::move(*snap));
    }
    return Status::Ok();
  }

  StatusOr<std::vector<TakenVolume>> Open() override {
    std::vector<TakenVolume> out;
    for (auto& s : snaps_) {
      TakenVolume t;
      t.point_in_time = s->is_clone();
      t.snapshot = t.point_in_time ? "reflink" : "direct";
      t.view = std::make_unique<FileView>(std::move(s));
      out.push_back(std::move(t));
    }
    snaps_.clear();
    return out;
  }

  void Commit() override {}

 private:
  SnapshotOptions options_;
  std::vector<std::string> names_;
  std::vector<std::unique_ptr<VolumeSnapshotter>> snappers_;
  std::vector<std::unique_ptr<VolumeSnapshot>> snaps_;
};

}  // namespace

std::unique_ptr<VolumeView> MakeFileView(std::unique_ptr<VolumeSnapshot> snap) {
  return std::make_unique<FileView>(std::move(snap));
}

std::unique_ptr<SnapshotProvider> MakeFileProvider(const SnapshotOptions& file_options) {
  return std::make_unique<FileProvider>(file_options);
}

}  // namespace vmbackup::internal
