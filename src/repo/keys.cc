// Key slots: wrapping and unwrapping the master key.
#include "repo/keys.h"

#include <unistd.h>

#include <atomic>
#include <cstring>

#include "core/errors.h"
#include "core/util.h"

namespace vmbackup::internal {
namespace {

std::atomic<uint64_t> g_slot_scrypt_n{0};

std::string SlotAad(const std::string& repo_id, const std::string& slot_id) {
  return "vmbackup key slot\n" + repo_id + "\n" + slot_id;
}

// The key-encryption key of a slot.
StatusOr<Key256> SlotKek(const KeySlot& slot, const KeySecret& secret) {
  if (slot.kind == "passphrase")
    return Scrypt(secret.passphrase, slot.salt, slot.scrypt_n, slot.scrypt_r, slot.scrypt_p);
  Key256 raw{};
  std::memcpy(raw.data(), secret.raw_key.data(), raw.size());
  auto kek = DeriveKey(raw, "vmbackup raw key slot\n" + slot.salt);
  Wipe(raw.data(), raw.size());
  return kek;
}

std::string HostName() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "";
  return buf;
}

}  // namespace

Digest BlockNamer::operator()(const void* data, size_t len) const {
  return keyed_ ? HmacSha256(key_.data(), key_.size(), data, len) : Sha256(data, len);
}

const BlockNamer& BlockNamer::Plain() {
  static const BlockNamer plain;
  return plain;
}

Status KeySecret::Validate() const {
  if (!passphrase.empty() && !raw_key.empty())
    return InvalidArgumentError("give either a passphrase or a raw key, not both");
  if (passphrase.empty() && raw_key.empty())
    return InvalidArgumentError("no passphrase or raw key given");
  if (!raw_key.empty() && raw_key.size() != 32)
    return InvalidArgumentError("a raw key must be exactly 32 bytes (256 bits), not " +
                                std::to_string(raw_key.size()));
  return Status::Ok();
}

std::string RepoKeys::key_id_hex() const {
  return ToHex(objects.key_id.data(), objects.key_id.size());
}

StatusOr<RepoKeys> DeriveRepoKeys(const Key256& master) {
  RepoKeys k;
  k.master = master;
  VMB_ASSIGN_OR_RETURN(k.digest, DeriveKey(master, "vmbackup digest key"));
  VMB_ASSIGN_OR_RETURN(k.objects.data_key, DeriveKey(master, "vmbackup data key"));
  VMB_ASSIGN_OR_RETURN(Key256 id, DeriveKey(master, "vmbackup key id"));
  std::memcpy(k.objects.key_id.data(), id.data(), k.objects.key_id.size());
  return k;
}

StatusOr<RepoKeys> NewRepoKeys() {
  Key256 master{};
  VMB_RETURN_IF_ERROR(RandomBytes(master.data(), master.size()));
  auto k = DeriveRepoKeys(master);
  Wipe(master.data(), master.size());
  return k;
}

StatusOr<KeySlot> WrapMasterKey(const RepoKeys& keys, const KeySecret& secret,
                                const std::string& repo_id, const std::string& label) {
  VMB_RETURN_IF_ERROR(secret.Validate());
  if (label.size() > 200) return InvalidArgumentError("a key label is at most 200 bytes");
  KeySlot s;
  VMB_ASSIGN_OR_RETURN(s.id, RandomHex(8));
  s.kind = secret.kind();
  if (s.kind == std::string("passphrase")) {
    const uint64_t n = g_slot_scrypt_n.load();
    s.scrypt_n = n != 0 ? n : kDefaultScryptN;
    s.scrypt_r = kDefaultScryptR;
    s.scrypt_p = kDefaultScryptP;
  }
  s.salt.resize(32);
  VMB_RETURN_IF_ERROR(RandomBytes(s.salt.data(), s.salt.size()));
  VMB_ASSIGN_OR_RETURN(Key256 kek, SlotKek(s, secret));
  s.wrapped.resize(kGcmNonceSize + 32 + kGcmTagSize);
  uint8_t nonce[kGcmNonceSize];
  Status st = RandomBytes(nonce, sizeof nonce);
  if (st.ok()) {
    std::memcpy(s.wrapped.data(), nonce, sizeof nonce);
    st = GcmSeal(kek, nonce, SlotAad(repo_id, s.id),
                 reinterpret_cast<const char*>(keys.master.data()), keys.master.size(),
                 s.wrapped.data() + kGcmNonceSize);
  }
  Wipe(kek.data(), kek.size());
  VMB_RETURN_IF_ERROR(st);
  s.key_id = keys.key_id_hex();
  s.created_at = NowRfc3339();
  s.host = HostName();
  s.label = label;
  return s;
}

void SetNewSlotScryptNForTest(uint64_t n) { g_slot_scrypt_n = n; }

StatusOr<std::optional<Key256>> UnwrapKeySlot(const KeySlot& slot, const KeySecret& secret,
                                              const std::string& repo_id) {
  if (slot.kind != secret.kind() || slot.wrapped.size() != kGcmNonceSize + 32 + kGcmTagSize ||
      slot.salt.size() != 32)
    return std::optional<Key256>();
  VMB_ASSIGN_OR_RETURN(Key256 kek, SlotKek(slot, secret));
  Key256 master{};
  const bool ok = GcmOpen(kek, reinterpret_cast<const uint8_t*>(slot.wrapped.data()),
                          SlotAad(repo_id, slot.id), slot.wrapped.data() + kGcmNonceSize,
                          master.size(), reinterpret_cast<char*>(master.data()));
  Wipe(kek.data(), kek.size());
  if (!ok) {
    Wipe(master.data(), master.size());
    return std::optional<Key256>();
  }
  return std::optional<Key256>(master);
}

}  // namespace vmbackup::internal
