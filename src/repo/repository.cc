// Repository implementation (see repository.h).
#include "repo/repository.h"

#include <algorithm>
#include <map>
#include <optional>
#include <tuple>

#include "core/errors.h"
#include "core/util.h"
#include "store/encrypted_store.h"
#include "store/get_many.h"

namespace vmbackup::internal {

void RepoIndex::AddPack(const std::string& pack_id, const std::vector<PackEntry>& entries) {
  uint32_t p = static_cast<uint32_t>(pack_ids_.size());
  pack_ids_.push_back(pack_id);
  map_.reserve(map_.size() + entries.size());
  for (const auto& e : entries) {
    map_.try_emplace(e.digest, BlockLocation{p, e.stored_len, e.offset, e.raw_len, e.codec});
  }
}

void RepoIndex::RemovePacks(const std::set<std::string>& pack_ids) {
  if (pack_ids.empty()) return;
  std::vector<bool> gone(pack_ids_.size());
  for (size_t i = 0; i < pack_ids_.size(); ++i) gone[i] = pack_ids.count(pack_ids_[i]) != 0;
  absl::erase_if(map_, [&](const auto& kv) { return gone[kv.second.pack]; });
}

// Pack ids in `loaded` whose index key is not in `listing` (deleted by garbage collection).
static std::set<std::string> GonePacks(const std::set<std::string>& loaded,
                                       const std::vector<ObjectInfo>& listing) {
  std::set<std::string> listed;
  for (const auto& o : listing) listed.insert(PackIdFromIndexKey(o.key));
  std::set<std::string> gone;
  for (const auto& id : loaded)
    if (!listed.count(id)) gone.insert(id);
  return gone;
}

StatusOr<std::unique_ptr<Repository>> Repository::Open(std::unique_ptr<ObjectStore> store,
                                                       bool create, uint32_t block_size,
                                                       uint32_t pack_size,
                                                       const EncryptionSetup& enc) {
  std::string mode = enc.mode;
  if (mode.empty()) mode = enc.secret.empty() ? "none" : "aes-256-gcm";
  if (mode != "none" && mode != "aes-256-gcm")
    return InvalidArgumentError("encryption '" + mode + "': use 'aes-256-gcm' or 'none'");
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto bytes = store->GetAtMost(kDescriptorKey, kMaxDescriptorBytes);
    if (bytes.ok()) {
      VMB_ASSIGN_OR_RETURN(RepoDescriptor d, DecodeDescriptor(*bytes));
      return Unlock(std::move(store), std::move(d), enc, std::nullopt, "");
    }
    if (bytes.status().code() != StatusCode::kNotFound) return bytes.status();
    if (!create) return NotFoundError("no vmbackup repository at " + store->Describe());
    RepoDescriptor d;
    VMB_ASSIGN_OR_RETURN(d.id, RandomHex(16));
    d.block_size = block_size;
    d.pack_size = pack_size;
    d.created_at = NowRfc3339();
    std::optional<RepoKeys> keys;
    std::string slot_key;
    if (mode == "none") {
      if (!enc.secret.empty())
        return InvalidArgumentError(
            "a passphrase or key was given for a new repository whose encryption is 'none'");
    } else {
      VMB_RETURN_IF_ERROR(enc.secret.Validate().WithContext("encryption aes-256-gcm"));
      VMB_ASSIGN_OR_RETURN(keys, NewRepoKeys());
      d.version = kEncryptedDescriptorVersion;
      d.writer_version = kWriterVersion;
      d.encryption = mode;
      d.key_id = keys->key_id_hex();
      // The key slot first: a descriptor naming a key no slot holds would lock everyone out.
      VMB_ASSIGN_OR_RETURN(KeySlot slot, WrapMasterKey(*keys, enc.secret, d.id, enc.label));
      slot_key = KeySlotKey(slot.id);
      VMB_RETURN_IF_ERROR(store->Put(slot_key, EncodeKeySlot(slot), PutOptions{.if_absent = true})
                              .WithContext("initializing repository at " + store->Describe()));
      Status st = store->Put(kDescriptorKey, EncodeDescriptor(d), PutOptions{.if_absent = true});
      if (st.ok()) return Unlock(std::move(store), std::move(d), enc, std::move(keys), slot.id);
      // The put may have landed although it reported an error (a lost answer, or a retried
      // create-if-absent that met our own first attempt): our slot may then be the only one the
      // descriptor's key has. Remove it only once the descriptor is known to be someone else's.
      auto now = store->GetAtMost(kDescriptorKey, kMaxDescriptorBytes);
      if (now.ok()) {
        auto theirs = DecodeDescriptor(*now);
        if (theirs.ok() && theirs->key_id == d.key_id && theirs->id == d.id)
          return Unlock(std::move(store), std::move(*theirs), enc, std::move(keys), slot.id);
        (void)store->Delete({slot_key});  // another process initialized it first
        continue;                         // read theirs
      }
      if (now.status().code() == StatusCode::kNotFound) (void)store->Delete({slot_key});
      // Otherwise the slot stays: unknowable whether the descriptor landed, and a slot of a key
      // no descriptor names is ignored (FORMAT.md "Encryption").
      return (st.code() == StatusCode::kAlreadyExists ? now.status() : st)
          .WithContext("initializing repository at " + store->Describe());
    }
    Status st = store->Put(kDescriptorKey, EncodeDescriptor(d), PutOptions{.if_absent = true});
    if (st.ok()) return Unlock(std::move(store), std::move(d), enc, std::nullopt, "");
    if (st.code() != StatusCode::kAlreadyExists)
      return st.WithContext("initializing repository at " + store->Describe());
    // Another process initialized it first: read theirs.
  }
  return AbortedError("repository descriptor keeps changing at " + store->Describe());
}

StatusOr<std::unique_ptr<Repository>> Repository::Unlock(std::unique_ptr<ObjectStore> store,
                                                         RepoDescriptor d,
                                                         const EncryptionSetup& enc,
                                                         std::optional<RepoKeys> keys,
                                                         std::string slot_id) {
  const std::string where = store->Describe();
  if (d.encryption.empty()) {
    // A key for an unencrypted repository is refused: a target that replaced an encrypted
    // repository's descriptor must not receive plaintext from a host that meant to encrypt.
    if (!enc.secret.empty() || enc.mode == "aes-256-gcm")
      return FailedPreconditionError(
          "the repository at " + where +
          " is not encrypted, but a passphrase, a key or encryption aes-256-gcm was given: "
          "refusing to write unencrypted "
          "data where encrypted data was expected (open it without a key if it was made "
          "unencrypted on purpose)");
    return std::unique_ptr<Repository>(new Repository(std::move(store), std::move(d)));
  }
  if (!keys) {
    if (enc.secret.empty())
      return PermissionDeniedError("the repository at " + where + " is encrypted (key " + d.key_id +
                                   "): give its passphrase or raw key");
    VMB_RETURN_IF_ERROR(enc.secret.Validate());
    VMB_ASSIGN_OR_RETURN(auto listed, store->ListAll(kKeyPrefix));
    int tried = 0;
    std::string problems;
    size_t looked = 0;
    for (const auto& o : listed) {
      const std::string id = SlotIdFromKey(o.key);
      if (id.empty()) continue;
      // Bounded: at most 4 * kMaxKeySlots slot objects read and kMaxKeySlots unwraps tried (each
      // may cost a scrypt), whatever a hostile target lists.
      if (++looked > 4 * kMaxKeySlots || tried >= static_cast<int>(kMaxKeySlots)) {
        problems += "; more key slots than an unlock looks at, the rest skipped";
        break;
      }
      auto bytes = store->GetAtMost(o.key, kMaxKeySlotBytes);
      if (!bytes.ok()) {
        if (bytes.status().code() == StatusCode::kNotFound) continue;  // removed meanwhile
        if (bytes.status().code() != StatusCode::kDataLoss) return bytes.status();
        problems += "; " + bytes.status().message();
        continue;
      }
      auto slot = DecodeKeySlot(*bytes, id);
      if (!slot.ok()) {
        problems += "; " + slot.status().message();
        continue;
      }
      if (slot->key_id != d.key_id || slot->kind != enc.secret.kind()) continue;
      ++tried;
      auto master = UnwrapKeySlot(*slot, enc.secret, d.id);
      if (!master.ok()) {
        problems += "; key slot " + id + ": " + master.status().message();
        continue;
      }
      if (!master->has_value()) continue;
      auto derived = DeriveRepoKeys(**master);
      Wipe((*master)->data(), (*master)->size());
      VMB_RETURN_IF_ERROR(derived.status());
      if (derived->key_id_hex() != d.key_id) continue;  // a slot of another master key
      keys = std::move(*derived);
      slot_id = id;
      break;
    }
    if (!keys)
      return PermissionDeniedError("no key slot of the repository at " + where +
                                   " opens with the " + std::string(enc.secret.kind()) +
                                   " given (" + std::to_string(tried) + " " + enc.secret.kind() +
                                   " slot(s) of key " + d.key_id + " tried" + problems + ")");
  }
  std::shared_ptr<Runtime> runtime = store->runtime();
  auto sealed = MakeEncryptedStore(std::move(store), keys->objects, {kDescriptorKey, kKeyPrefix},
                                   std::move(runtime));
  auto repo = std::unique_ptr<Repository>(new Repository(std::move(sealed), std::move(d)));
  repo->namer_ = BlockNamer(keys->digest);
  repo->keys_ = std::move(keys);
  repo->slot_id_ = std::move(slot_id);
  return repo;
}

Repository::~Repository() {
  if (keys_) {
    Wipe(keys_->master.data(), keys_->master.size());
    Wipe(keys_->digest.data(), keys_->digest.size());
    Wipe(keys_->objects.data_key.data(), keys_->objects.data_key.size());
  }
}

StatusOr<KeySlot> Repository::AddKeySlot(const KeySecret& secret, const std::string& label) {
  if (!keys_)
    return FailedPreconditionError("the repository at " + store_->Describe() +
                                   " is not encrypted: it has no keys");
  VMB_ASSIGN_OR_RETURN(KeySlot slot, WrapMasterKey(*keys_, secret, desc_.id, label));
  VMB_RETURN_IF_ERROR(
      store_->Put(KeySlotKey(slot.id), EncodeKeySlot(slot), PutOptions{.if_absent = true}));
  return slot;
}

StatusOr<std::vector<KeySlot>> Repository::ListKeySlots(std::vector<std::string>* damaged) const {
  if (!keys_)
    return FailedPreconditionError("the repository at " + store_->Describe() +
                                   " is not encrypted: it has no keys");
  VMB_ASSIGN_OR_RETURN(auto listed, store_->ListAll(kKeyPrefix));
  std::vector<KeySlot> out;
  for (const auto& o : listed) {
    const std::string id = SlotIdFromKey(o.key);
    if (id.empty()) continue;
    auto bytes = store_->GetAtMost(o.key, kMaxKeySlotBytes);
    if (!bytes.ok() && bytes.status().code() == StatusCode::kNotFound) continue;
    if (!bytes.ok() && bytes.status().code() != StatusCode::kDataLoss) return bytes.status();
    auto slot = bytes.ok() ? DecodeKeySlot(*bytes, id) : StatusOr<KeySlot>(bytes.status());
    if (!slot.ok()) {
      if (damaged != nullptr) damaged->push_back(slot.status().message());
      continue;
    }
    if (slot->key_id != desc_.key_id) continue;  // a leftover of a failed initialization
    out.push_back(std::move(*slot));
  }
  std::stable_sort(out.begin(), out.end(), [](const KeySlot& a, const KeySlot& b) {
    return std::tie(a.created_at, a.id) < std::tie(b.created_at, b.id);
  });
  return out;
}

Status Repository::RemoveKeySlot(const std::string& id) {
  if (!keys_)
    return FailedPreconditionError("the repository at " + store_->Describe() +
                                   " is not encrypted: it has no keys");
  if (id == slot_id_)
    return FailedPreconditionError(
        "refusing to remove key slot " + id +
        ": this target was opened with it (open the target with another key to remove it)");
  const std::string key = KeySlotKey(id);
  if (SlotIdFromKey(key) != id) return InvalidArgumentError("'" + id + "' is not a key slot id");
  // The slot this repository was opened with stays, so a slot of this key always remains (two
  // hosts opened with different slots could still remove each other's: docs/encryption.md).
  VMB_ASSIGN_OR_RETURN(std::string bytes, store_->GetAtMost(key, kMaxKeySlotBytes));
  auto slot = DecodeKeySlot(bytes, id);
  if (slot.ok() && slot->key_id != desc_.key_id)
    return FailedPreconditionError("key slot " + id + " wraps another key (" + slot->key_id +
                                   "), not this repository's " + desc_.key_id);
  return store_->Delete({key});
}

StatusOr<std::shared_ptr<const RepoIndex>> Repository::LoadIndex() {
  std::lock_guard<std::mutex> l(index_mu_);
  VMB_ASSIGN_OR_RETURN(auto keys, store_->ListAll(kIndexPrefix));
  std::vector<std::string> fresh;
  for (const auto& o : keys) {
    std::string id = PackIdFromIndexKey(o.key);
    if (!id.empty() && !loaded_.count(id)) fresh.push_back(id);
  }
  const std::set<std::string> gone = GonePacks(loaded_, keys);
  if (index_ && fresh.empty() && gone.empty()) return index_;
  auto next = std::make_shared<RepoIndex>(index_ ? *index_ : RepoIndex());
  // Packs whose index garbage collection deleted are dropped: a backup must not deduplicate
  // against them. The new pack indexes are fetched kDefaultGetWindow at a time and added in the
  // order they arrive; `loaded_` changes only once all arrived (and the gone packs are forgotten
  // only then), so a failed load leaves index_ and loaded_ as they were and is retried whole.
  next->RemovePacks(gone);
  std::vector<std::string> done;
  done.reserve(fresh.size());
  VMB_RETURN_IF_ERROR(GetMany(
      *store_, fresh.size(), [&](size_t i) { return PackIndexKey(fresh[i]); }, kDefaultGetWindow,
      [&](size_t i, StatusOr<std::string> bytes) -> Status {
        const std::string& id = fresh[i];
        if (!bytes.ok()) {
          if (bytes.status().code() == StatusCode::kNotFound) return Status::Ok();  // deleted
          return bytes.status();
        }
        auto entries = DecodePackIndex(*bytes, id, "pack index " + PackIndexKey(id));
        done.push_back(id);
        if (!entries.ok()) {
          next->AddDamaged(entries.status().message());
          return Status::Ok();
        }
        next->AddPack(id, *entries);
        return Status::Ok();
      }));
  for (const auto& id : gone) loaded_.erase(id);
  loaded_.insert(done.begin(), done.end());
  index_ = std::move(next);
  return index_;
}

// Decodes records/<name>.json and checks that the record inside is backup `name` (a record copied
// or renamed to another key would otherwise impersonate a backup whose indexes it does not own).
static StatusOr<BackupInfo> DecodeRecordNamed(std::string_view bytes, const std::string& name) {
  const std::string what = "backup record " + RecordKey(name);
  VMB_ASSIGN_OR_RETURN(BackupInfo rec, DecodeRecord(bytes, what));
  if (rec.name != name)
    return DataLossError(what + " holds the record of backup '" + rec.name +
                         "' (misplaced or copied)");
  return rec;
}

StatusOr<BackupList> Repository::ListBackups() const {
  VMB_ASSIGN_OR_RETURN(auto keys, store_->ListAll(kRecordPrefix));
  BackupList out;
  // Cached records still listed as they were; the others are read (new, replaced, or not cached).
  std::vector<std::string> names;
  std::vector<ObjectInfo> to_read;
  {
    std::lock_guard<std::mutex> l(records_mu_);
    std::map<std::string, CachedRecord> kept;
    uint64_t kept_bytes = 0;
    for (auto& o : keys) {
      std::string name = BackupNameFromRecordKey(o.key);
      if (name.empty()) continue;
      auto it = records_.find(name);
      if (it != records_.end() && !o.version.empty() && it->second.version == o.version &&
          it->second.size == o.size) {
        out.backups.push_back(*it->second.info);
        kept_bytes += it->second.size;
        kept.emplace(std::move(name), std::move(it->second));
        continue;
      }
      names.push_back(std::move(name));
      to_read.push_back(std::move(o));
    }
    records_ = std::move(kept);  // records no longer listed (deleted, replaced) are forgotten
    records_bytes_ = kept_bytes;
  }
  // Records within the size bound are read in parallel at their listed size; any that fails that
  // way (too large, changed since the listing, a transient error) is read again the plain way,
  // whose answer decides.
  std::vector<ObjectInfo> parallel;
  std::vector<size_t> parallel_of;
  for (size_t i = 0; i < to_read.size(); ++i) {
    if (to_read[i].size == 0 || to_read[i].size > kMaxRecordBytes) continue;
    parallel.push_back(to_read[i]);
    parallel_of.push_back(i);
  }
  std::vector<std::optional<StatusOr<std::string>>> fetched(to_read.size());
  VMB_RETURN_IF_ERROR(GetMany(
      *store_, parallel.size(), [&](size_t k) { return parallel[k].key; },
      [&](size_t k) { return parallel[k].size; }, kRecordFetchWindow,
      [&](size_t k, StatusOr<std::string> got) {
        fetched[parallel_of[k]] = std::move(got);
        return Status::Ok();
      }));
  for (size_t i = 0; i < to_read.size(); ++i) {
    const std::string& name = names[i];
    std::optional<StatusOr<BackupInfo>> rec;
    if (fetched[i] && fetched[i]->ok()) {
      auto r = DecodeRecordNamed(**fetched[i], name);
      if (r.ok()) rec = std::move(r);
    }
    if (!rec) {
      auto bytes = store_->GetAtMost(to_read[i].key, kMaxRecordBytes);
      if (!bytes.ok()) {
        if (bytes.status().code() == StatusCode::kNotFound) continue;
        if (bytes.status().code() == StatusCode::kDataLoss) {
          out.damaged.push_back(name + ": " + bytes.status().message());
          continue;
        }
        return bytes.status();
      }
      rec = DecodeRecordNamed(*bytes, name);
      if (!rec->ok()) {
        out.damaged.push_back(name + ": " + rec->status().message());
        continue;
      }
    }
    out.backups.push_back(**rec);
    if (to_read[i].version.empty()) continue;
    std::lock_guard<std::mutex> l(records_mu_);
    if (records_bytes_ + to_read[i].size > kRecordCacheBytes) continue;
    records_bytes_ += to_read[i].size;
    records_[name] = CachedRecord{to_read[i].size, to_read[i].version,
                                  std::make_shared<const BackupInfo>(std::move(**rec))};
  }
  std::sort(out.backups.begin(), out.backups.end(), [](const BackupInfo& a, const BackupInfo& b) {
    return std::tie(a.created_at, a.name) < std::tie(b.created_at, b.name);
  });
  return out;
}

StatusOr<BackupInfo> Repository::GetBackup(const std::string& name) const {
  if (!IsValidBackupName(name)) return InvalidArgumentError("bad backup name '" + name + "'");
  auto bytes = store_->GetAtMost(RecordKey(name), kMaxRecordBytes);
  if (!bytes.ok()) {
    if (bytes.status().code() == StatusCode::kNotFound)
      return NotFoundError("backup '" + name + "' not found on " + store_->Describe());
    return bytes.status();
  }
  return DecodeRecordNamed(*bytes, name);
}

Status Repository::DeleteBackup(const std::string& name) {
  if (!IsValidBackupName(name)) return InvalidArgumentError("bad backup name '" + name + "'");
  auto head = store_->Head(RecordKey(name));
  if (!head.ok()) {
    if (head.status().code() == StatusCode::kNotFound)
      return NotFoundError("backup '" + name + "' not found on " + store_->Describe());
    return head.status();
  }
  // The record goes first: from then on the backup is not listed, and its indexes are garbage.
  VMB_RETURN_IF_ERROR(store_->Delete({RecordKey(name)}));
  {
    std::lock_guard<std::mutex> l(records_mu_);
    auto it = records_.find(name);
    if (it != records_.end()) {
      records_bytes_ -= it->second.size;
      records_.erase(it);
    }
  }
  VMB_ASSIGN_OR_RETURN(auto vidx, store_->ListAll("volumes/" + name + "/"));
  std::vector<std::string> keys;
  for (auto& o : vidx) keys.push_back(o.key);
  if (!keys.empty()) VMB_RETURN_IF_ERROR(store_->Delete(keys));
  return Status::Ok();
}

StatusOr<std::string> Repository::GetPinned(const std::string& key, const std::string& sha256_hex,
                                            uint64_t max_size, const std::string& what) const {
  auto bytes = store_->GetAtMost(key, max_size);
  if (!bytes.ok()) {
    if (bytes.status().code() == StatusCode::kNotFound) return DataLossError(what + " is missing");
    return bytes.status();
  }
  if (ToHex(Sha256(*bytes)) != sha256_hex)
    return DataLossError(what + " does not match the checksum in the backup record (corrupt)");
  return bytes;
}

StatusOr<VolumeIndex> Repository::LoadVolumeIndex(const std::string& backup,
                                                  const VolumeBackupInfo& v) const {
  const std::string what =
      "volume index " + v.index_key + " (backup '" + backup + "', volume '" + v.name + "')";
  // The record (checked by DecodeRecord) fixes the index's exact size: nothing larger is read.
  uint64_t expected = 0;
  if (!VolumeIndexSize(v.size, v.block_size, &expected))
    return DataLossError(what + ": the record gives an invalid size or block size");
  VMB_ASSIGN_OR_RETURN(std::string bytes, GetPinned(v.index_key, v.index_sha256, expected, what));
  VMB_ASSIGN_OR_RETURN(VolumeIndex idx, DecodeVolumeIndex(bytes, what));
  if (idx.volume_size != v.size || idx.block_size != v.block_size)
    return DataLossError(what + " disagrees with the record's size or block size");
  return idx;
}

StatusOr<VolumeFingerprints> Repository::LoadFingerprints(const std::string& backup,
                                                          const VolumeBackupInfo& v,
                                                          const FingerprintKeys& keys) const {
  const std::string what =
      "fingerprints " + v.fingerprints_key + " (backup '" + backup + "', volume '" + v.name + "')";
  if (v.fingerprints_key.empty()) return NotFoundError("backup '" + backup + "' has no " + what);
  VMB_ASSIGN_OR_RETURN(std::string bytes,
                       GetPinned(v.fingerprints_key, v.fingerprints_sha256,
                                 MaxFingerprintsSize(v.size, v.block_size), what));
  VMB_ASSIGN_OR_RETURN(VolumeFingerprints f, DecodeFingerprints(bytes, what));
  if (f.key_id != keys.id)
    return FailedPreconditionError(what + " was made with another host's key");
  if (!FingerprintsAuthentic(bytes, keys.auth))
    return DataLossError(what + " fails its authentication code (changed on the target)");
  if (ToHex(f.index_sha256) != v.index_sha256)
    return DataLossError(what + " belongs to another volume index than the record's");
  if (f.volume_size != v.size || f.block_size != v.block_size)
    return DataLossError(what + " disagrees with the record's size or block size");
  VMB_RETURN_IF_ERROR(ApplyFingerprintMasks(keys, f.salt, &f.entries));
  return f;
}

}  // namespace vmbackup::internal
