// Fuzzes what an encrypted repository reads before it trusts anything: sealed objects (whole and
// ranged reads through EncryptedStore, with any header, size and segment bytes) and key slots
// (keys/<id>.json, then unwrapping raw-key slots). The first input byte picks the part; the rest
// is the object. Every failure must be kDataLoss (or kOutOfRange for a ranged read past the end).
#include "fuzz_util.h"
#include "repo/format.h"
#include "repo/keys.h"
#include "store/encrypted_store.h"
#include "store/mem_store.h"
#include "vmbackup/runtime.h"

namespace vmbackup::fuzz {
namespace {

internal::ObjectKeys FixedKeys() {
  internal::ObjectKeys k;
  k.data_key.fill(0x42);
  k.key_id = {1, 2, 3, 4, 5, 6, 7, 8};  // fuzz_seeds seals with the same keys
  return k;
}

void CheckRead(const Status& st, bool ranged) {
  FUZZ_CHECK(st.ok() || st.code() == StatusCode::kDataLoss ||
             (ranged && st.code() == StatusCode::kOutOfRange));
}

void Sealed(std::string_view bytes, uint64_t off, uint64_t len) {
  const internal::ObjectKeys keys = FixedKeys();
  auto whole = internal::OpenObject(keys, "packs/x", bytes);
  CheckRead(whole.status(), false);
  uint64_t plain = 0;
  if (internal::PlainSizeOf(bytes.size(), &plain))
    FUZZ_CHECK(internal::SealedSize(plain) == bytes.size());
  if (whole.ok()) FUZZ_CHECK(internal::SealedSize(whole->size()) == bytes.size());
  static std::shared_ptr<Runtime> rt = Runtime::Default();
  auto mem = std::make_unique<internal::MemStore>(rt);
  internal::MemStore* raw = mem.get();
  auto store = internal::MakeEncryptedStore(std::move(mem), keys, {}, rt);
  raw->Overwrite("packs/x", std::string(bytes));
  auto part = store->Get("packs/x", off, len);
  CheckRead(part.status(), true);
  if (part.ok() && whole.ok() && len != 0) FUZZ_CHECK(*part == whole->substr(off, len));
  auto head = store->Head("packs/x");
  FUZZ_CHECK(head.ok() || head.status().code() == StatusCode::kDataLoss);
}

void Slot(std::string_view bytes) {
  auto slot = internal::DecodeKeySlot(bytes, "0123456789abcdef");
  if (!slot.ok()) {
    FUZZ_CHECK(slot.status().code() == StatusCode::kDataLoss ||
               slot.status().code() == StatusCode::kFailedPrecondition);
    return;
  }
  FUZZ_CHECK(slot->salt.size() == 32 && slot->wrapped.size() == 60 && slot->key_id.size() == 16);
  internal::KeySecret secret;
  secret.raw_key.assign(32, '\x11');
  // Raw slots unwrap with one HMAC; passphrase slots only with cheap scrypt parameters.
  if (slot->kind == "passphrase") {
    if (slot->scrypt_n > 1024 || slot->scrypt_r > 8 || slot->scrypt_p > 1) return;
    secret = internal::KeySecret{"fuzz", ""};
  }
  auto master = internal::UnwrapKeySlot(*slot, secret, "5f0c4b6e2d8a41f3a9e07c1d2b3a4f56");
  FUZZ_CHECK(master.ok() || master.status().code() == StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vmbackup::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmbackup::fuzz;
  if (size < 3) return 0;
  const std::string_view rest = AsView(data + 3, size - 3);
  if (data[0] & 1) {
    Slot(rest);
    if (std::optional<std::string> fixed = WithEnvelopeSha256(rest)) Slot(*fixed);
  } else {
    // Ranged reads at offsets and lengths around the segment size.
    const uint64_t off = static_cast<uint64_t>(data[1]) * 997;
    const uint64_t len = static_cast<uint64_t>(data[2]) * 389;
    Sealed(rest, off, len);
  }
  return 0;
}
