// EncryptedStore: AES-256-GCM sealing of every object (layout in encrypted_store.h).
#include "store/encrypted_store.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "core/buffer_pool.h"
#include "core/errors.h"
#include "core/runtime.h"
#include "core/util.h"

namespace vmbackup::internal {
namespace {

constexpr uint64_t kSegStride = kSealedSegment + kGcmTagSize;
// Objects at least this large that an async read returns are opened on the blocking pool.
constexpr size_t kOffloadBytes = 1 << 20;
// Objects at least this large (packs) are sealed into buffers of the Runtime's pack-buffer pool.
constexpr size_t kPooledSealBytes = 8 << 20;
// Headers kept for ranged reads (packs): the cache is dropped whole when it grows past this.
constexpr size_t kMaxCachedHeaders = 8192;

// SetSealSaltForTest's salt.
std::optional<std::array<uint8_t, 32>> g_test_salt;

struct Header {
  KeyId key_id{};
  std::array<uint8_t, 32> salt{};
  uint64_t size = 0;
};

uint64_t SegmentCount(uint64_t plain) {
  return plain == 0 ? 1 : (plain + kSealedSegment - 1) / kSealedSegment;
}
uint64_t SegmentStart(uint64_t i) { return kSealedHeaderSize + i * kSegStride; }
uint64_t SegmentPlainLen(const Header& h, uint64_t i) {
  return std::min<uint64_t>(kSealedSegment, h.size - std::min(h.size, i * kSealedSegment));
}

void PutU64Le(uint64_t v, char* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(v >> (8 * i));
}
uint64_t GetU64Le(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

std::string EncodeHeader(const Header& h) {
  std::string out(kSealedMagic);
  out.append(reinterpret_cast<const char*>(h.key_id.data()), h.key_id.size());
  out.append(reinterpret_cast<const char*>(h.salt.data()), h.salt.size());
  char size[8];
  PutU64Le(h.size, size);
  out.append(size, 8);
  return out;
}

// The associated data of an object's segments, "VMBENC01" ‖ key id ‖ size (u64 LE) ‖ i (u64 LE)
// ‖ object name, built once per object: only i changes from one segment to the next.
class SegmentAad {
 public:
  SegmentAad(const Header& h, const std::string& name) {
    aad_.reserve(kIndexAt + 8 + name.size());
    aad_.append(kSealedMagic);
    aad_.append(reinterpret_cast<const char*>(h.key_id.data()), h.key_id.size());
    char num[8];
    PutU64Le(h.size, num);
    aad_.append(num, 8);
    aad_.append(8, '\0');
    aad_.append(name);
  }
  std::string_view For(uint64_t i) {
    PutU64Le(i, aad_.data() + kIndexAt);
    return aad_;
  }

 private:
  static constexpr size_t kIndexAt = 24;
  std::string aad_;
};

void Nonce(uint64_t i, uint8_t out[kGcmNonceSize]) {
  std::memset(out, 0, 4);
  for (int b = 0; b < 8; ++b) out[4 + b] = static_cast<uint8_t>(i >> (8 * (7 - b)));
}

StatusOr<Key256> ObjectKey(const Key256& data_key, const std::array<uint8_t, 32>& salt) {
  std::string label = "vmbackup object key\n";
  label.append(reinterpret_cast<const char*>(salt.data()), salt.size());
  return DeriveKey(data_key, label);
}

Status NotSealed(const std::string& name, const std::string& why) {
  return DataLossError("object " + name + " is not an object sealed by this repository (" + why +
                       "; corrupt or hostile target)");
}

Status Unauthentic(const std::string& name) {
  return DataLossError("object " + name +
                       " failed authentication: its bytes were changed, truncated or moved on the "
                       "target (corrupt or hostile target)");
}

// Parses and checks the header at the start of `bytes` (at least kSealedHeaderSize bytes).
Status ParseHeader(const ObjectKeys& keys, const std::string& name, std::string_view bytes,
                   Header* h) {
  if (bytes.size() < kSealedHeaderSize) return NotSealed(name, "shorter than its header");
  if (bytes.substr(0, kSealedMagic.size()) != kSealedMagic) return NotSealed(name, "bad magic");
  std::memcpy(h->key_id.data(), bytes.data() + 8, h->key_id.size());
  std::memcpy(h->salt.data(), bytes.data() + 16, h->salt.size());
  h->size = GetU64Le(bytes.data() + 48);
  if (h->key_id != keys.key_id)
    return DataLossError(
        "object " + name + " was sealed with key " + ToHex(h->key_id.data(), h->key_id.size()) +
        ", not this repository's key " + ToHex(keys.key_id.data(), keys.key_id.size()) +
        " (copied from another repository, or a hostile target)");
  if (h->size > (1ull << 50)) return NotSealed(name, "impossible plaintext size");
  return Status::Ok();
}

// Opens segments first, first+1, … held back to back in sealed[0, sealed_len) in place, and
// moves the plaintext bytes [from, to) (offsets in the object) down to sealed[skip, skip + to -
// from), where `skip` ≤ 0 says how far before `sealed` the plaintext starts (the header of a whole
// object is overwritten, for one). Every piece moves down over bytes already opened, so one buffer
// holds the sealed bytes and then the plaintext: no second buffer, no copy of the object. On
// failure the buffer holds garbage that must not be used.
Status OpenSegmentsInPlace(const Key256& okey, const Header& h, const std::string& name,
                           uint64_t first, char* sealed, uint64_t sealed_len, ptrdiff_t skip,
                           uint64_t from, uint64_t to) {
  const uint64_t begin = from;  // sealed[skip] receives plaintext byte `begin`
  uint64_t pos = 0;             // in `sealed`
  SegmentAad aad(h, name);
  for (uint64_t i = first; from < to; ++i) {
    const uint64_t plen = SegmentPlainLen(h, i);
    if (pos + plen + kGcmTagSize > sealed_len) return Unauthentic(name);
    const uint64_t seg_from = i * kSealedSegment;
    uint8_t nonce[kGcmNonceSize];
    Nonce(i, nonce);
    char* seg = sealed + pos;
    if (!GcmOpen(okey, nonce, aad.For(i), seg, plen, seg)) return Unauthentic(name);
    const uint64_t lo = std::max(from, seg_from), hi = std::min(to, seg_from + plen);
    if (hi <= lo) return Unauthentic(name);  // a segment that holds nothing of the range
    char* dst = sealed + skip + (lo - begin);
    const char* src = seg + (lo - seg_from);
    if (dst != src) std::memmove(dst, src, hi - lo);
    from = hi;
    pos += plen + kGcmTagSize;
  }
  return Status::Ok();
}

// Opens the whole sealed object `name` held in *buf in place: *buf then holds its plaintext.
// kDataLoss as OpenObject; *buf is then cleared.
Status OpenObjectInPlace(const ObjectKeys& keys, const std::string& name, std::string* buf) {
  Header h;
  Status st = ParseHeader(keys, name, *buf, &h);
  if (st.ok() && SealedSize(h.size) != buf->size()) st = Unauthentic(name);
  Key256 okey{};
  if (st.ok()) {
    auto k = ObjectKey(keys.data_key, h.salt);
    if (k.ok())
      okey = *k;
    else
      st = k.status();
  }
  if (st.ok()) {
    if (h.size == 0) {  // one empty segment: only its tag, which must still verify
      uint8_t nonce[kGcmNonceSize];
      Nonce(0, nonce);
      char none = 0;
      if (!GcmOpen(okey, nonce, SegmentAad(h, name).For(0), buf->data() + kSealedHeaderSize, 0,
                   &none))
        st = Unauthentic(name);
    } else {
      st = OpenSegmentsInPlace(okey, h, name, 0, buf->data() + kSealedHeaderSize,
                               buf->size() - kSealedHeaderSize,
                               -static_cast<ptrdiff_t>(kSealedHeaderSize), 0, h.size);
    }
  }
  Wipe(okey.data(), okey.size());
  if (!st.ok()) {
    buf->clear();
    return st;
  }
  buf->resize(h.size);
  return Status::Ok();
}

// Seals `plain` as object `name` into *out, reusing its capacity (`plain` must not overlap it).
// Errors as SealObject.
Status SealObjectInto(const ObjectKeys& keys, const std::string& name, std::string_view plain,
                      std::string* out) {
  Header h;
  h.key_id = keys.key_id;
  h.size = plain.size();
  if (g_test_salt)
    h.salt = *g_test_salt;
  else
    VMB_RETURN_IF_ERROR(RandomBytes(h.salt.data(), h.salt.size()));
  VMB_ASSIGN_OR_RETURN(Key256 okey, ObjectKey(keys.data_key, h.salt));
  out->clear();
  out->reserve(SealedSize(plain.size()));
  out->append(EncodeHeader(h));
  SegmentAad aad(h, name);
  const uint64_t k = SegmentCount(plain.size());
  Status st;
  for (uint64_t i = 0; i < k && st.ok(); ++i) {
    const uint64_t plen = SegmentPlainLen(h, i);
    uint8_t nonce[kGcmNonceSize];
    Nonce(i, nonce);
    // Grown one segment at a time: the bytes zeroed here are still in the cache when the
    // cipher overwrites them (zeroing the whole object first is a pass over memory of its own).
    const size_t at = out->size();
    out->resize(at + plen + kGcmTagSize);
    st =
        GcmSeal(okey, nonce, aad.For(i), plain.data() + i * kSealedSegment, plen, out->data() + at);
  }
  Wipe(okey.data(), okey.size());
  if (!st.ok()) out->clear();
  return st;
}

class EncryptedStore final : public ObjectStore {
 public:
  EncryptedStore(std::unique_ptr<ObjectStore> inner, const ObjectKeys& keys,
                 std::vector<std::string> clear, std::shared_ptr<Runtime> runtime)
      : ObjectStore(std::move(runtime)),
        inner_(std::move(inner)),
        keys_(keys),
        clear_(std::move(clear)) {}
  ~EncryptedStore() override {
    Wipe(keys_.data_key.data(), keys_.data_key.size());
    for (auto& [k, e] : headers_) Wipe(e.okey.data(), e.okey.size());
  }

  std::string Describe() const override { return inner_->Describe(); }
  Status Ping() override { return inner_->Ping(); }

  Status Put(const std::string& key, std::string_view data, const PutOptions& opts) override {
    if (IsClear(key)) return inner_->Put(key, data, opts);
    VMB_RETURN_IF_ERROR(ValidateKey(key));
    Forget(key);
    VMB_ASSIGN_OR_RETURN(std::shared_ptr<const std::string> sealed, Seal(key, data));
    return inner_->Put(key, *sealed, opts);
  }

  StatusOr<std::string> Get(const std::string& key, uint64_t offset, uint64_t length) override {
    if (IsClear(key)) return inner_->Get(key, offset, length);
    std::string out;
    VMB_RETURN_IF_ERROR(GetInto(key, offset, length, &out));
    return out;
  }

  Status GetInto(const std::string& key, uint64_t offset, uint64_t length,
                 std::string* out) override {
    if (IsClear(key)) return inner_->GetInto(key, offset, length, out);
    // Every read lands in `*out` (its capacity reused) and is opened there in place. On error
    // `*out` is left empty: never unauthenticated plaintext.
    out->clear();
    if (offset == 0 && length == 0) {
      Status st = inner_->GetInto(key, 0, 0, out);
      if (!st.ok()) {
        out->clear();
        return st;
      }
      return OpenObjectInPlace(keys_, key, out);
    }
    if (offset == 0) {
      // Usually the whole object at its listed size (pack indexes, records): one read of exactly
      // its sealed size, no header fetch first.
      Status st = inner_->GetInto(key, 0, SealedSize(length), out);
      if (!st.ok() && !ReadAgainRanged(st)) {
        out->clear();
        return st;
      }
      if (st.ok() && IsWholeObject(key, *out, length)) return OpenObjectInPlace(keys_, key, out);
      out->clear();
    }
    for (int attempt = 0;; ++attempt) {
      bool cached = false;
      VMB_ASSIGN_OR_RETURN(Entry e, HeaderOf(key, &cached));
      uint64_t off = offset, len = length, cstart = 0, cend = 0;  // the caller's, each attempt
      Status st = PlanRange(key, e.h, &off, &len, &cstart, &cend);
      if (st.ok()) {
        st = inner_->GetInto(key, cstart, cend - cstart, out);
        // The header promises these bytes: an object that ends before them was truncated.
        if (st.code() == StatusCode::kOutOfRange) st = Unauthentic(key);
        if (st.ok())
          st = OpenSegmentsInPlace(e.okey, e.h, key, off / kSealedSegment, out->data(), out->size(),
                                   0, off, off + len);
        if (st.ok()) {
          out->resize(len);
          return st;
        }
      }
      out->clear();  // never leave unauthenticated plaintext behind
      if (!cached || attempt > 0) return st;
      Forget(key);  // the object may have been replaced since its header was cached
    }
  }

  StatusOr<ObjectInfo> Head(const std::string& key) override {
    VMB_ASSIGN_OR_RETURN(ObjectInfo info, inner_->Head(key));
    if (IsClear(key)) return info;
    uint64_t plain = 0;
    if (!PlainSizeOf(info.size, &plain))
      return NotSealed(key, "its size " + std::to_string(info.size) + " fits no sealed object");
    info.size = plain;
    return info;
  }

  // Sizes are plaintext sizes; an object whose size fits no sealed object is listed with size 0
  // (verify reports it; reading it fails with kDataLoss).
  StatusOr<ListPage> List(const std::string& prefix, const std::string& token,
                          int max_keys) override {
    VMB_ASSIGN_OR_RETURN(ListPage page, inner_->List(prefix, token, max_keys));
    for (auto& o : page.objects) {
      if (IsClear(o.key)) continue;
      uint64_t plain = 0;
      o.size = PlainSizeOf(o.size, &plain) ? plain : 0;
    }
    return page;
  }

  Status Delete(const std::vector<std::string>& keys) override {
    for (const auto& k : keys) Forget(k);
    return inner_->Delete(keys);
  }

  void PutAsync(std::string key, std::shared_ptr<const std::string> data, PutOptions opts,
                std::function<void(Status)> done) override {
    if (IsClear(key))
      return inner_->PutAsync(std::move(key), std::move(data), opts, std::move(done));
    auto seal_and_put = [this, key = std::move(key), data = std::move(data), opts,
                         done = std::move(done)]() mutable {
      Status st = ValidateKey(key);
      StatusOr<std::shared_ptr<const std::string>> sealed = st;
      if (st.ok()) sealed = Seal(key, *data);
      if (!sealed.ok()) return done(sealed.status());
      data.reset();  // the caller may recycle its buffer once we hold the sealed copy
      Forget(key);
      inner_->PutAsync(std::move(key), std::move(*sealed), opts, std::move(done));
    };
    // Sealed on the calling thread: for packs that is the worker that built the pack, which holds
    // upload budget. Posting the seal to the worker pool deadlocked: every worker blocked in
    // PackUploader::Submit waiting for budget that only a queued seal would release.
    seal_and_put();
  }

  void GetAsync(std::string key, uint64_t offset, uint64_t length,
                std::function<void(StatusOr<std::string>)> done) override {
    if (IsClear(key)) return inner_->GetAsync(std::move(key), offset, length, std::move(done));
    if (offset == 0 && length == 0) {
      inner_->GetAsync(key, 0, 0,
                       [this, key, done = std::move(done)](StatusOr<std::string> r) mutable {
                         if (!r.ok()) return done(r.status());
                         OpenWholeAsync(std::move(key), std::move(*r), std::move(done));
                       });
      return;
    }
    if (offset == 0) {  // usually a whole object at its listed size (see GetInto)
      inner_->GetAsync(
          key, 0, SealedSize(length),
          [this, key, length, done = std::move(done)](StatusOr<std::string> r) mutable {
            if (!r.ok() && !ReadAgainRanged(r.status())) return done(r.status());
            if (!r.ok() || !IsWholeObject(key, *r, length)) {
              return ObjectStore::GetAsync(std::move(key), 0, length, std::move(done));
            }
            OpenWholeAsync(std::move(key), std::move(*r), std::move(done));
          });
      return;
    }
    // Other ranged reads are rare outside restores, which use the blocking forms: run the
    // blocking form on the blocking pool (the default async form does exactly that).
    ObjectStore::GetAsync(std::move(key), offset, length, std::move(done));
  }

 private:
  struct Entry {
    Header h;
    Key256 okey{};
  };

  bool IsClear(const std::string& key) const {
    for (const auto& c : clear_) {
      if (c.back() == '/' ? key.compare(0, c.size(), c) == 0 : key == c) return true;
    }
    return false;
  }

  // Whether `sealed`, the first SealedSize(length) bytes of `key`, is the whole object: its header
  // says `length` plaintext bytes (anything else is read again through the ranged path, which
  // checks it).
  bool IsWholeObject(const std::string& key, std::string_view sealed, uint64_t length) const {
    Header h;
    return sealed.size() == SealedSize(length) && ParseHeader(keys_, key, sealed, &h).ok() &&
           h.size == length;
  }

  // A short or out-of-range read of the presumed whole object: the ranged path (header first) then
  // says precisely what is wrong.
  static bool ReadAgainRanged(const Status& st) {
    return st.code() == StatusCode::kDataLoss || st.code() == StatusCode::kOutOfRange;
  }

  // Opens the whole sealed object `sealed` and hands the result to `done` (see Offload).
  void OpenWholeAsync(std::string key, std::string sealed,
                      std::function<void(StatusOr<std::string>)> done) {
    const size_t bytes = sealed.size();
    Offload(bytes, [this, key = std::move(key), sealed = std::move(sealed),
                    done = std::move(done)]() mutable {
      Status st = OpenObjectInPlace(keys_, key, &sealed);
      if (!st.ok()) return done(st);
      done(std::move(sealed));
    });
  }

  // Large objects are opened on the blocking pool, never on an io thread (and never on the worker
  // pool, whose threads may all be waiting for something this completion releases).
  void Offload(size_t bytes, std::function<void()> fn) {
    if (bytes >= kOffloadBytes)
      ImplOf(runtime_)->PostBlocking(std::move(fn));
    else
      fn();
  }

  // The sealed form of `data` as object `key`. Large objects (packs) are sealed into a buffer of
  // the Runtime's pack-buffer pool, which goes back to the pool when the last holder (the inner
  // store) lets go of it: a fresh string per 32 MiB pack cost more than sealing it (page faults
  // and zeroing of new pages, unmapping when freed). Errors as SealObject.
  StatusOr<std::shared_ptr<const std::string>> Seal(const std::string& key, std::string_view data) {
    std::shared_ptr<BufferPool> pool;
    if (data.size() >= kPooledSealBytes && runtime_ != nullptr)
      pool = ImplOf(runtime_)->pack_buffers();
    if (pool == nullptr) {
      auto sealed = std::make_shared<std::string>();
      VMB_RETURN_IF_ERROR(SealObjectInto(keys_, key, data, sealed.get()));
      return std::shared_ptr<const std::string>(std::move(sealed));
    }
    // With the slack a pack builder asks for (an eighth): a sealed pack's buffer serves a builder
    // next, and a builder's serves a sealed pack.
    const size_t size = SealedSize(data.size());
    std::unique_ptr<std::string> buf(new std::string(pool->Take(size + size / 8)));
    Status st = SealObjectInto(keys_, key, data, buf.get());
    std::shared_ptr<const std::string> sealed(buf.release(), [pool](std::string* s) {
      pool->Give(std::move(*s));
      delete s;
    });
    if (!st.ok()) return st;
    return sealed;
  }

  void Forget(const std::string& key) {
    std::lock_guard<std::mutex> l(mu_);
    headers_.erase(key);
  }

  // The header of `key` (cached, else read and cached); *cached says which.
  StatusOr<Entry> HeaderOf(const std::string& key, bool* cached) {
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = headers_.find(key);
      if (it != headers_.end()) {
        *cached = true;
        return it->second;
      }
    }
    *cached = false;
    auto bytes = inner_->Get(key, 0, kSealedHeaderSize);
    if (!bytes.ok()) {
      if (bytes.status().code() == StatusCode::kDataLoss ||
          bytes.status().code() == StatusCode::kOutOfRange)
        return NotSealed(key, "shorter than its header");
      return bytes.status();
    }
    Entry e;
    VMB_RETURN_IF_ERROR(ParseHeader(keys_, key, *bytes, &e.h));
    VMB_ASSIGN_OR_RETURN(e.okey, ObjectKey(keys_.data_key, e.h.salt));
    std::lock_guard<std::mutex> l(mu_);
    if (headers_.size() >= kMaxCachedHeaders) {
      for (auto& [k, old] : headers_) Wipe(old.okey.data(), old.okey.size());
      headers_.clear();
    }
    headers_[key] = e;
    return e;
  }

  // Checks [*offset, *offset + *length) against the object's size (length 0 = to the end) and
  // returns the sealed range [*cstart, *cend) of the segments that hold it.
  static Status PlanRange(const std::string& key, const Header& h, uint64_t* offset,
                          uint64_t* length, uint64_t* cstart, uint64_t* cend) {
    // An empty range at the end is out of range too: returning "" would trust the header's size
    // without opening a segment.
    if (*offset >= h.size)
      return OutOfRangeError("range at " + std::to_string(*offset) + " is past the end of object " +
                             key + " (" + std::to_string(h.size) + " bytes)");
    if (*length == 0) {
      *length = h.size - *offset;
      if (*length > kMaxWholeObjectRead) return TooLargeForWholeRead(key, *length);
    }
    if (*length > h.size - *offset)
      return DataLossError("object " + key + " is shorter than expected (wanted " +
                           std::to_string(*length) + " bytes at " + std::to_string(*offset) +
                           ", it holds " + std::to_string(h.size) + ")");
    const uint64_t first = *offset / kSealedSegment;
    const uint64_t last = *length == 0 ? first : (*offset + *length - 1) / kSealedSegment;
    *cstart = SegmentStart(first);
    *cend = SegmentStart(last) + SegmentPlainLen(h, last) + kGcmTagSize;
    return Status::Ok();
  }

  std::unique_ptr<ObjectStore> inner_;
  ObjectKeys keys_;
  const std::vector<std::string> clear_;
  std::mutex mu_;
  std::unordered_map<std::string, Entry> headers_;
};

}  // namespace

uint64_t SealedSize(uint64_t plain) {
  return kSealedHeaderSize + plain + kGcmTagSize * SegmentCount(plain);
}

bool PlainSizeOf(uint64_t sealed, uint64_t* plain) {
  // Above the largest plaintext a header may claim (2^50), the arithmetic below could wrap.
  if (sealed < kSealedHeaderSize + kGcmTagSize || sealed > SealedSize(1ull << 50)) return false;
  const uint64_t n = sealed - kSealedHeaderSize;
  const uint64_t k = (n + kSegStride - 1) / kSegStride;
  const uint64_t p = n - kGcmTagSize * k;
  if (SealedSize(p) != sealed) return false;
  *plain = p;
  return true;
}

StatusOr<std::string> SealObject(const ObjectKeys& keys, const std::string& name,
                                 std::string_view plain) {
  std::string out;
  VMB_RETURN_IF_ERROR(SealObjectInto(keys, name, plain, &out));
  return out;
}

StatusOr<std::string> OpenObject(const ObjectKeys& keys, const std::string& name,
                                 std::string_view sealed) {
  std::string buf(sealed);
  VMB_RETURN_IF_ERROR(OpenObjectInPlace(keys, name, &buf));
  return buf;
}

void SetSealSaltForTest(const std::array<uint8_t, 32>* salt) {
  if (salt != nullptr)
    g_test_salt = *salt;
  else
    g_test_salt.reset();
}

std::unique_ptr<ObjectStore> MakeEncryptedStore(std::unique_ptr<ObjectStore> inner,
                                                const ObjectKeys& keys,
                                                std::vector<std::string> clear,
                                                std::shared_ptr<Runtime> runtime) {
  return std::make_unique<EncryptedStore>(std::move(inner), keys, std::move(clear),
                                          std::move(runtime));
}

}  // namespace vmbackup::internal
