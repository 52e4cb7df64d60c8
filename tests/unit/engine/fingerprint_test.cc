// Block fingerprints (docs/FORMAT.md "Block fingerprints", version 2): the keyed GMAC, the masked
// and authenticated fingerprint objects, the host's keys, and their use by incremental backups to
// skip hashing unchanged blocks — including the forgery that version 1 allowed (issue #9,
// finding 4), mounted against a repository made by an earlier version.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include <fstream>

#include "core/host_secret.h"
#include "core/util.h"
#include "repo/fingerprints.h"
#include "repo/format.h"
#include "support/test_util.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup {
namespace {

using internal::BlockFingerprint;
using internal::Fingerprint;
using internal::FingerprintKey;
using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::ReadAll;
using ::vmbackup::testing::TempDir;
using ::vmbackup::testing::WriteAll;

constexpr size_t kBlock = 256 << 10;

TEST(BlockFingerprintTest, DependsOnKeyContentAndLength) {
  FingerprintKey k1{}, k2{};
  k2[0] = 1;
  std::string a(kBlock, 'a');
  const Fingerprint f = BlockFingerprint(k1, a.data(), a.size());
  EXPECT_EQ(f, BlockFingerprint(k1, a.data(), a.size()));  // deterministic
  EXPECT_NE(f, BlockFingerprint(k2, a.data(), a.size()));  // keyed
  std::string b = a;
  b[12345] ^= 1;
  EXPECT_NE(f, BlockFingerprint(k1, b.data(), b.size()));  // one bit of content
  std::string c = a + std::string(1, '\0');
  EXPECT_NE(f, BlockFingerprint(k1, c.data(), c.size()));  // a trailing zero byte (length)
}

// ---- the attack on version 1: GHASH is linear, so whoever knows H forges collisions ----

using Gf128 = std::array<uint8_t, 16>;

// Multiplication in GF(2^128) with GCM's bit order (NIST SP 800-38D, algorithm 1).
Gf128 GfMul(const Gf128& x, const Gf128& y) {
  Gf128 z{}, v = y;
  for (int i = 0; i < 128; ++i) {
    if ((x[i / 8] >> (7 - i % 8)) & 1)
      for (int k = 0; k < 16; ++k) z[k] ^= v[k];
    const bool lsb = v[15] & 1;
    for (int k = 15; k > 0; --k) v[k] = static_cast<uint8_t>((v[k] >> 1) | (v[k - 1] << 7));
    v[0] >>= 1;
    if (lsb) v[0] ^= 0xe1;
  }
  return z;
}

// H = AES-128(key, 0^128): GMAC's hash key.
Gf128 GhashKey(const FingerprintKey& key) {
  Gf128 zero{}, h{};
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int n = 0;
  EXPECT_EQ(EVP_EncryptInit_ex(ctx, EVP_aes_128_ecb(), nullptr, key.data(), nullptr), 1);
  EVP_CIPHER_CTX_set_padding(ctx, 0);
  EXPECT_EQ(EVP_EncryptUpdate(ctx, h.data(), &n, zero.data(), 16), 1);
  EVP_CIPHER_CTX_free(ctx);
  return h;
}

// A block that differs from `block` in its first two 16-byte words yet has the same GHASH under
// H (and so the same version-1 fingerprint): adding d to word 0 and d*H to word 1 changes the
// polynomial by d*H^e + d*H*H^(e-1) = 0.
std::string ForgeCollision(const std::string& block, const Gf128& h) {
  Gf128 d{};
  d[0] = 0x80;  // the field's 1
  d[5] = 0x42;
  const Gf128 dh = GfMul(d, h);
  std::string forged = block;
  for (int k = 0; k < 16; ++k) {
    forged[k] = static_cast<char>(forged[k] ^ d[k]);
    forged[16 + k] = static_cast<char>(forged[16 + k] ^ dh[k]);
  }
  return forged;
}

TEST(FingerprintForgeryTest, KnowingTheKeyForgesAVersion1Collision) {
  FingerprintKey key{};
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(17 * i + 3);
  std::string block(kBlock, '\0');
  for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>((i * 2654435761u) >> 13);
  const std::string forged = ForgeCollision(block, GhashKey(key));
  ASSERT_NE(forged, block);
  EXPECT_EQ(BlockFingerprint(key, forged.data(), forged.size()),
            BlockFingerprint(key, block.data(), block.size()));
  EXPECT_NE(internal::Sha256(forged), internal::Sha256(block));
}

// ---- version-2 objects ----

internal::FingerprintKeys TestKeys(uint8_t seed) {
  internal::HostSecret secret{};
  secret.fill(seed);
  return internal::DeriveFingerprintKeys(secret, "0123456789abcdef0123456789abcdef");
}

TEST(FingerprintFormatTest, RoundTripsAuthenticatesAndRejectsCorruption) {
  const auto keys = TestKeys(1);
  internal::VolumeFingerprints f;
  f.volume_size = 10 << 20;
  f.block_size = kBlock;
  f.key_id = keys.id;
  f.salt.fill(7);
  f.index_sha256.fill(9);
  for (uint64_t b : {0, 3, 39}) {
    internal::BlockFingerprintEntry e;
    e.block = b;
    e.fp.fill(static_cast<uint8_t>(b + 1));
    f.entries.push_back(e);
  }
  const std::string bytes = internal::EncodeFingerprints(f, keys.auth);
  auto back = internal::DecodeFingerprints(bytes, "fp");
  ASSERT_OK(back);
  EXPECT_TRUE(internal::FingerprintsAuthentic(bytes, keys.auth));
  EXPECT_FALSE(internal::FingerprintsAuthentic(bytes, TestKeys(2).auth));
  EXPECT_EQ(back->volume_size, f.volume_size);
  EXPECT_EQ(back->key_id, keys.id);
  EXPECT_EQ(back->salt, f.salt);
  EXPECT_EQ(back->index_sha256, f.index_sha256);
  ASSERT_EQ(back->entries.size(), 3u);
  ASSERT_NE(back->Find(3), nullptr);
  EXPECT_EQ((*back->Find(3))[0], 4);
  EXPECT_EQ(back->Find(4), nullptr);
  // A changed tag still parses but no longer authenticates.
  std::string bad = bytes;
  bad[bytes.size() - 40] ^= 1;
  EXPECT_OK(internal::DecodeFingerprints(bad, "fp"));
  EXPECT_FALSE(internal::FingerprintsAuthentic(bad, keys.auth));
  EXPECT_THAT(internal::DecodeFingerprints(bytes.substr(0, 50), "fp"),
              StatusIs(StatusCode::kDataLoss, "fp"));
  std::swap(f.entries[0], f.entries[1]);
  EXPECT_THAT(internal::DecodeFingerprints(internal::EncodeFingerprints(f, keys.auth), "fp"),
              StatusIs(StatusCode::kDataLoss, "sorted"));
  std::swap(f.entries[0], f.entries[1]);
  f.entries.back().block = 40;  // 10 MiB / 256 KiB = 40 blocks: 0..39
  EXPECT_THAT(internal::DecodeFingerprints(internal::EncodeFingerprints(f, keys.auth), "fp"),
              StatusIs(StatusCode::kDataLoss, "past the end"));
  std::string v1 = bytes;
  v1[7] = '1';  // "VMBVFP01"
  EXPECT_THAT(internal::DecodeFingerprints(v1, "fp"),
              StatusIs(StatusCode::kFailedPrecondition, "version-1"));
}

TEST(FingerprintMaskTest, MasksAreUniquePerSaltAndBlockAndUndoThemselves) {
  const auto keys = TestKeys(3);
  std::vector<internal::BlockFingerprintEntry> a(3), b;
  for (size_t i = 0; i < a.size(); ++i) {
    a[i].block = i;
    a[i].fp.fill(0x5a);  // the same fingerprint at every block
  }
  b = a;
  internal::FingerprintSalt s1{}, s2{};
  s2[0] = 1;
  ASSERT_OK(internal::ApplyFingerprintMasks(keys, s1, &a));
  ASSERT_OK(internal::ApplyFingerprintMasks(keys, s2, &b));
  EXPECT_NE(a[0].fp, a[1].fp);  // same content, other block: other stored value
  EXPECT_NE(a[0].fp, b[0].fp);  // same block, other object: other stored value
  ASSERT_OK(internal::ApplyFingerprintMasks(keys, s1, &a));
  Fingerprint plain;
  plain.fill(0x5a);
  EXPECT_EQ(a[2].fp, plain);
}

TEST(FingerprintKeysTest, DependOnHostSecretAndRepository) {
  internal::HostSecret s{};
  const auto a = internal::DeriveFingerprintKeys(s, "repo-a");
  EXPECT_EQ(a.id, internal::DeriveFingerprintKeys(s, "repo-a").id);
  EXPECT_NE(a.id, internal::DeriveFingerprintKeys(s, "repo-b").id);
  EXPECT_NE(a.gmac, internal::DeriveFingerprintKeys(s, "repo-b").gmac);
  s[0] = 1;
  EXPECT_NE(a.gmac, internal::DeriveFingerprintKeys(s, "repo-a").gmac);
  EXPECT_NE(a.auth, internal::DeriveFingerprintKeys(s, "repo-a").auth);
}

// ---- backups ----

class FingerprintBackupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::mkdir(dir_.Sub("target").c_str(), 0755), 0);
    target_ = Open(dir_.Sub("state"));
    vol_ = dir_.Sub("disk0.img");
    ::vmbackup::testing::MakeVolume(vol_, 16 << 20, 5);
  }
  std::shared_ptr<BackupTarget> Open(const std::string& state_dir) {
    TargetOptions o;
    o.state_dir = state_dir;
    auto t = BackupTarget::Open(R"({"type":"file","endpoint":")" + dir_.Sub("target") + R"("})", o);
    EXPECT_OK(t);
    return t.ok() ? *t : nullptr;
  }
  StatusOr<BackupInfo> Backup(const std::string& name, bool use_fingerprints = true,
                              const std::string& meta = R"({"name":"vm1","namespace":"default"})",
                              const std::string& parent = "") {
    BackupSpec spec;
    spec.name = name;
    spec.parent = parent;
    spec.vm_metadata_json = meta;
    spec.volumes.push_back({"disk0", vol_, false, {}});
    spec.use_fingerprints = use_fingerprints;
    auto job = BackupJob::Create(target_, spec);
    if (!job.ok()) return job.status();
    Status st = (*job)->Run();
    if (!st.ok()) return st;
    return (*job)->result();
  }
  std::string RestoreSha(const std::string& name) {
    RestoreSpec spec;
    spec.backup = name;
    const std::string dest = dir_.Sub("restored-" + name + ".img");
    spec.volumes = {{"disk0", dest}};
    auto plan = RestorePlan::Create(target_, spec);
    EXPECT_OK(plan);
    if (!plan.ok()) return "";
    EXPECT_OK((*plan)->Run());
    return FileSha256(dest);
  }
  // Overwrites `len` bytes at `off` of the volume with `byte`.
  void Scribble(uint64_t off, size_t len, char byte) {
    std::fstream f(vol_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(off));
    std::string s(len, byte);
    f.write(s.data(), static_cast<std::streamsize>(s.size()));
  }
  void WriteBlock0(const std::string& data) {
    std::fstream f(vol_, std::ios::in | std::ios::out | std::ios::binary);
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  std::string Root() const { return dir_.Sub("target") + "/"; }
  // This host's keys, as the library derives them.
  internal::FingerprintKeys HostKeys(const std::string& state_dir) {
    auto secret = internal::LoadOrCreateHostSecret(state_dir);
    EXPECT_OK(secret);
    return internal::DeriveFingerprintKeys(secret.value(), target_->repository_id());
  }
  // Replaces backup `name`'s stored fingerprint of block 0 with `fp` (masked and authenticated
  // under `keys`, or left as the raw bytes when `keys` is null), and re-pins the record.
  void PlantBlock0Fingerprint(const BackupInfo& rec, const Fingerprint& fp,
                              const internal::FingerprintKeys* keys) {
    const auto& v = rec.volumes[0];
    std::string bytes = ReadAll(Root() + v.fingerprints_key);
    auto fps = internal::DecodeFingerprints(bytes, "fp");
    ASSERT_OK(fps);
    ASSERT_NE(fps->Find(0), nullptr);
    std::string planted;
    if (keys != nullptr) {
      ASSERT_OK(internal::ApplyFingerprintMasks(*keys, fps->salt, &fps->entries));
      fps->entries[0].fp = fp;
      ASSERT_OK(internal::ApplyFingerprintMasks(*keys, fps->salt, &fps->entries));
      planted = internal::EncodeFingerprints(*fps, keys->auth);
    } else {
      // Without the host's key: write the tag in place, keep the old authentication code.
      planted = bytes;
      const size_t header = 96;
      std::memcpy(planted.data() + header + 8, fp.data(), 16);
    }
    WriteAll(Root() + v.fingerprints_key, planted);
    BackupInfo changed = rec;
    changed.volumes[0].fingerprints_sha256 = internal::ToHex(internal::Sha256(planted));
    WriteAll(Root() + "records/" + rec.name + ".json", internal::EncodeRecord(changed));
  }
  TempDir dir_;
  std::shared_ptr<BackupTarget> target_;
  std::string vol_;
};

TEST_F(FingerprintBackupTest, IncrementalsRecordFingerprintsAndRestoreExactly) {
  auto full = Backup("full");
  ASSERT_OK(full);
  ASSERT_FALSE(full->volumes[0].fingerprints_key.empty());
  EXPECT_EQ(full->volumes[0].fingerprints_sha256.size(), 64u);
  // Changes inside blocks, across a block boundary, and in the last block.
  Scribble(100, 10, 'x');
  Scribble((1 << 20) - 5, 10, 'y');
  Scribble((16 << 20) - 3, 3, 'z');
  const std::string want = FileSha256(vol_);
  auto inc = Backup("inc");
  ASSERT_OK(inc);
  EXPECT_GT(inc->volumes[0].bytes_reused, 0u);
  EXPECT_GT(inc->volumes[0].bytes_new, 0u);
  EXPECT_EQ(RestoreSha("inc"), want);
  // A third backup with no change reuses every data block.
  auto again = Backup("again");
  ASSERT_OK(again);
  EXPECT_EQ(again->volumes[0].bytes_new, 0u);
  EXPECT_EQ(RestoreSha("again"), want);
}

// Finding 4, regression: a repository made by an earlier version keeps its version-1 fingerprint
// key in repository.json. Whoever reads the target takes H from it, and the guest writes a block
// whose version-1 fingerprint equals that of the block it replaces. An earlier version's next
// incremental recorded the OLD block (its restore "verified" it); now the change is caught.
TEST_F(FingerprintBackupTest, ForgedCollisionFromTheTargetsKeyIsCaughtByTheIncremental) {
  // An earlier version's repository: its descriptor holds a fingerprint key.
  auto desc = internal::DecodeDescriptor(ReadAll(Root() + "repository.json"));
  ASSERT_OK(desc);
  EXPECT_TRUE(desc->fingerprint_key.empty()) << "new repositories keep no key on the target";
  desc->fingerprint_key = "000102030405060708090a0b0c0d0e0f";
  WriteAll(Root() + "repository.json", internal::EncodeDescriptor(*desc));
  target_ = Open(dir_.Sub("state"));

  auto full = Backup("full");
  ASSERT_OK(full);
  // The attacker reads the key from the target and forges block 0 (the guest writes it).
  FingerprintKey key{};
  ASSERT_TRUE(internal::BytesFromHex(desc->fingerprint_key, key.data(), key.size()));
  const std::string block0 = ReadAll(vol_).substr(0, kBlock);
  const std::string forged = ForgeCollision(block0, GhashKey(key));
  ASSERT_EQ(BlockFingerprint(key, forged.data(), forged.size()),
            BlockFingerprint(key, block0.data(), block0.size()));
  WriteBlock0(forged);
  const std::string want = FileSha256(vol_);
  auto inc = Backup("inc");
  ASSERT_OK(inc);
  EXPECT_EQ(RestoreSha("inc"), want) << "the incremental recorded the old block";
}

// What the target holds says nothing about H: the same unchanged block is stored under a new
// mask by every backup, so tags cannot be combined into equations in the key.
TEST_F(FingerprintBackupTest, StoredTagsOfAnUnchangedBlockDifferBetweenBackups) {
  auto a = Backup("a");
  ASSERT_OK(a);
  auto b = Backup("b");
  ASSERT_OK(b);
  auto fa = internal::DecodeFingerprints(ReadAll(Root() + a->volumes[0].fingerprints_key), "a");
  auto fb = internal::DecodeFingerprints(ReadAll(Root() + b->volumes[0].fingerprints_key), "b");
  ASSERT_OK(fa);
  ASSERT_OK(fb);
  ASSERT_NE(fa->Find(0), nullptr);
  ASSERT_NE(fb->Find(0), nullptr);
  EXPECT_NE(*fa->Find(0), *fb->Find(0));
  EXPECT_NE(fa->salt, fb->salt);
  EXPECT_EQ(ReadAll(Root() + "repository.json").find("fingerprint_key"), std::string::npos);
}

// White-box: plant a fingerprint "match" in the reference (its block-0 fingerprint becomes that
// of the block's new content; its digest stays the old one). Planted with the host's keys, the
// incremental trusts it and records the old digest — proof that matches are taken without
// hashing; with fingerprints off every block is hashed. Planted without the host's keys (an
// attacker with write access to the target), the authentication code fails and the change is
// caught.
TEST_F(FingerprintBackupTest, MatchesNeedTheHostsKeysAndAreSkippedWhenTurnedOff) {
  auto full = Backup("full");
  ASSERT_OK(full);
  const std::string old_sha = FileSha256(vol_);
  Scribble(0, 4096, 'n');  // block 0 holds random data in MakeVolume's layout
  const std::string new_sha = FileSha256(vol_);
  const auto keys = HostKeys(dir_.Sub("state"));
  const std::string block0 = ReadAll(vol_).substr(0, kBlock);
  const Fingerprint fp = BlockFingerprint(keys.gmac, block0.data(), block0.size());

  PlantBlock0Fingerprint(*full, fp, nullptr);  // no key: tag changed, HMAC stale
  auto attacked = Backup("attacked");
  ASSERT_OK(attacked);
  EXPECT_EQ(RestoreSha("attacked"), new_sha);

  PlantBlock0Fingerprint(*full, fp, &keys);
  auto trusted = Backup("trusted", true, R"({"name":"vm1","namespace":"default"})", "full");
  ASSERT_OK(trusted);
  EXPECT_EQ(RestoreSha("trusted"), old_sha) << "the planted match was not used";
  auto hashed = Backup("hashed", /*use_fingerprints=*/false);
  ASSERT_OK(hashed);
  EXPECT_EQ(RestoreSha("hashed"), new_sha);
}

// The reference is always a backup of the same named VM: never another VM's, never an unnamed
// one's (the CLI's --volume backups), not even as an explicit parent; and never one made with
// another host's key.
TEST_F(FingerprintBackupTest, ReferenceIsOnlyTheSameNamedVmWithThisHostsKey) {
  auto full = Backup("full");
  ASSERT_OK(full);
  const std::string old_sha = FileSha256(vol_);
  Scribble(0, 4096, 'm');
  const std::string new_sha = FileSha256(vol_);
  const auto keys = HostKeys(dir_.Sub("state"));
  const std::string block0 = ReadAll(vol_).substr(0, kBlock);
  PlantBlock0Fingerprint(*full, BlockFingerprint(keys.gmac, block0.data(), block0.size()), &keys);

  auto other_vm = Backup("other-vm", true, R"({"name":"vm2","namespace":"default"})");
  ASSERT_OK(other_vm);
  EXPECT_EQ(RestoreSha("other-vm"), new_sha);
  auto other_ns = Backup("other-ns", true, R"({"name":"vm1","namespace":"prod"})");
  ASSERT_OK(other_ns);
  EXPECT_EQ(RestoreSha("other-ns"), new_sha);
  auto unnamed = Backup("unnamed", true, "{}", "full");
  ASSERT_OK(unnamed);
  EXPECT_EQ(RestoreSha("unnamed"), new_sha);
  // Another host (another state directory, so another key) does not use it either.
  target_ = Open(dir_.Sub("state-host2"));
  auto host2 = Backup("host2");
  ASSERT_OK(host2);
  EXPECT_EQ(RestoreSha("host2"), new_sha);
  // The planted reference is still used by this host for vm1 (the test would prove nothing
  // otherwise).
  target_ = Open(dir_.Sub("state"));
  auto same = Backup("same", true, R"({"name":"vm1","namespace":"default"})", "full");
  ASSERT_OK(same);
  EXPECT_EQ(RestoreSha("same"), old_sha);
}

TEST_F(FingerprintBackupTest, DamagedReferenceFingerprintsOnlyCostSpeed) {
  auto full = Backup("full");
  ASSERT_OK(full);
  std::string bytes = ReadAll(Root() + full->volumes[0].fingerprints_key);
  bytes[30] ^= 0x55;
  WriteAll(Root() + full->volumes[0].fingerprints_key, bytes);
  Scribble(5000, 100, 'q');
  auto inc = Backup("inc");
  ASSERT_OK(inc);
  EXPECT_EQ(RestoreSha("inc"), FileSha256(vol_));
}

// A host whose state directory cannot hold a private key backs up without fingerprints: every
// block hashed, nothing recorded, restores exact.
TEST_F(FingerprintBackupTest, UnusableStateDirectoryMeansNoFingerprints) {
  const std::string state = dir_.Sub("open-state");
  ASSERT_EQ(::mkdir(state.c_str(), 0777), 0);
  ASSERT_EQ(::chmod(state.c_str(), 0777), 0);  // writable by others: refused
  target_ = Open(state);
  auto full = Backup("full");
  ASSERT_OK(full);
  EXPECT_TRUE(full->volumes[0].fingerprints_key.empty());
  Scribble(0, 10, 'k');
  auto inc = Backup("inc");
  ASSERT_OK(inc);
  EXPECT_EQ(RestoreSha("inc"), FileSha256(vol_));
  for (const auto& f : ::vmbackup::testing::ListFiles(dir_.Sub("target")))
    EXPECT_EQ(f.find(".vfp"), std::string::npos) << f;
}

}  // namespace
}  // namespace vmbackup
