"""End-to-end tests of vmbackupctl: the real binary against a local-directory target."""

import hashlib
import json
import os
import random
import subprocess

import pytest

CTL = os.environ.get("VMBACKUPCTL", "vmbackupctl")
MIB = 1024 * 1024


def run(*args, env=None, check=None):
    full_env = dict(os.environ)
    # New repositories need an explicit encryption choice; tests that check that override it.
    full_env.setdefault("VMBACKUP_ENCRYPTION", "none")
    full_env.update(env or {})
    p = subprocess.run([CTL, "--progress", "none", *args], capture_output=True, text=True,
                       env=full_env, timeout=120)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def setup(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    vol = tmp_path / "disk0.img"
    vol.write_bytes(random.Random(5).randbytes(2 * MIB))
    return target, vol


def test_state_dir_holds_the_fingerprint_key_off_the_target(setup, tmp_path):
    target, vol = setup
    state = tmp_path / "state"
    run("--state-dir", str(state), "backup", "--target", str(target), "--name", "b1",
        "--volume", f"disk0={vol}", check=0)
    assert os.stat(state / "fingerprint.key").st_mode & 0o777 == 0o600
    assert "fingerprint" not in (target / "repository.json").read_text()
    assert list((target / "volumes" / "b1").glob("disk0.*.vfp")), "no fingerprints recorded"


def test_restore_mode_and_private_default(setup, tmp_path):
    target, vol = setup
    run("backup", "--target", str(target), "--name", "b1", "--volume", f"disk0={vol}", check=0)
    run("restore", "b1", "--target", str(target), "--dest-dir", str(tmp_path / "r1"), check=0)
    assert os.stat(tmp_path / "r1" / "disk0.img").st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "r1" / "vm.json").st_mode & 0o777 == 0o600
    assert sha(tmp_path / "r1" / "disk0.img") == sha(vol)
    run("restore", "b1", "--target", str(target), "--volume",
        f"disk0={tmp_path / 'shared.img'}", "--mode", "640", check=0)
    assert os.stat(tmp_path / "shared.img").st_mode & 0o777 == 0o640
    bad = run("restore", "b1", "--target", str(target), "--volume",
              f"disk0={tmp_path / 'x.img'}", "--mode", "9")
    assert bad.returncode == 2 and "--mode" in bad.stderr


def test_hostile_record_is_data_loss_and_writes_nothing_outside(setup, tmp_path):
    """A record whose volume is named ../../x (checksum recomputed) fails with exit code 9."""
    target, vol = setup
    run("backup", "--target", str(target), "--name", "b1", "--volume", f"disk0={vol}", check=0)
    doc = json.loads((target / "records" / "b1.json").read_text())
    body = doc["body"]
    body["name"] = "evil"
    body["volumes"][0]["name"] = "../../x"
    body["volumes"][0]["index_key"] = "volumes/evil/../../x.0123abcd.vidx"
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    doc["sha256"] = hashlib.sha256(canonical.encode()).hexdigest()
    (target / "records" / "evil.json").write_text(json.dumps(doc))
    dest = tmp_path / "a" / "b" / "dest"
    p = run("restore", "evil", "--target", str(target), "--dest-dir", str(dest))
    assert p.returncode == 9, (p.stdout, p.stderr)
    assert "field 'name'" in p.stderr
    assert not (tmp_path / "a" / "x.img").exists()
    assert not (tmp_path / "x.img").exists()
    listing = json.loads(run("--json", "list", "--target", str(target), check=0).stdout)
    assert any("evil" in d for d in listing["damaged"]), listing


def test_block_device_restore_needs_overwrite(setup, tmp_path):
    target, vol = setup
    if os.geteuid() != 0:
        pytest.fail("needs root for losetup (CI runs as root)")
    run("backup", "--target", str(target), "--name", "b1", "--volume", f"disk0={vol}", check=0)
    backing = tmp_path / "lv.raw"
    backing.write_bytes(b"\xab" * (4 * MIB))
    dev = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        link = tmp_path / "lv"
        os.symlink(dev, link)
        p = run("restore", "b1", "--target", str(target), "--volume", f"disk0={link}")
        assert p.returncode == 5 and "overwrite" in p.stderr, (p.returncode, p.stderr)
        run("restore", "b1", "--target", str(target), "--volume", f"disk0={link}",
            "--overwrite", check=0)
        assert os.path.islink(link)
        with open(dev, "rb") as f:
            assert f.read(2 * MIB) == vol.read_bytes()
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_vm_name_makes_volume_backups_reference_each_other(setup, tmp_path):
    """--vm-name names the VM of --volume backups; the name lands in the record, and --vm-name
    with --vm-dir is a usage error."""
    target, vol = setup
    run("backup", "--target", str(target), "--name", "n1", "--volume", f"disk0={vol}",
        "--vm-name", "web-01", "--vm-namespace", "prod", check=0)
    shown = json.loads(run("--json", "show", "n1", "--target", str(target), check=0).stdout)
    assert shown["backup"]["vm_name"] == "web-01"
    assert shown["backup"]["vm_namespace"] == "prod"
    bad = run("backup", "--target", str(target), "--volume", f"disk0={vol}", "--vm-name", "../x")
    assert bad.returncode == 3 and "name" in bad.stderr, (bad.returncode, bad.stderr)
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    (vm_dir / "vm.json").write_text(json.dumps({"name": "v", "volumes": [
        {"name": "disk0", "path": str(vol)}]}))
    p = run("backup", "--target", str(target), "--vm-dir", str(vm_dir), "--vm-name", "w")
    assert p.returncode == 2, (p.returncode, p.stderr)


def test_in_flight_mib_bounds_the_upload_and_is_validated(setup, tmp_path):
    target, vol = setup
    run("--in-flight-mib", "1", "--threads", "2", "backup", "--target", str(target), "--name",
        "b1", "--volume", f"disk0={vol}", check=0)
    run("restore", "b1", "--target", str(target), "--dest-dir", str(tmp_path / "r"), check=0)
    assert sha(tmp_path / "r" / "disk0.img") == sha(vol)
    for bad in ("0", "x", "65537"):
        p = run("--in-flight-mib", bad, "backup", "--target", str(target), "--name", "b2",
                "--volume", f"disk0={vol}")
        assert p.returncode == 2, (bad, p.returncode, p.stderr)
        assert "--in-flight-mib expects a number from 1 to 65536" in p.stderr
    listed = json.loads(run("--json", "list", "--target", str(target), check=0).stdout)
    assert [b["name"] for b in listed["backups"]] == ["b1"], listed


def test_verify_and_repair_exit_codes_and_json(setup, tmp_path):
    target, vol = setup
    run("backup", "--target", str(target), "--name", "b1", "--volume", f"disk0={vol}", check=0)
    ok = run("--json", "verify", "--target", str(target), "--read-data", check=0)
    doc = json.loads(ok.stdout)
    assert doc["ok"] is True and doc["blocks_checked"] > 0 and doc["backups"] == 1
    run("verify", "--target", str(target), "--read-data", "--read-data-subset", "1/3", check=0)
    bad = run("verify", "--target", str(target), "--read-data", "--read-data-subset", "lots")
    assert bad.returncode == 2 and "read-data-subset" in bad.stderr
    bad = run("verify", "--target", str(target), "--read-data-subset", "1/3")
    assert bad.returncode == 2 and "--read-data" in bad.stderr

    # Flip a byte of the first block of a pack: fast verify passes, full verify names the block.
    pack = sorted(target.glob("packs/*/*.pack"))[0]
    data = bytearray(pack.read_bytes())
    data[100] ^= 1
    pack.write_bytes(bytes(data))
    run("verify", "--target", str(target), check=0)
    damaged = run("--json", "verify", "--target", str(target), "--read-data", check=14)
    doc = json.loads(damaged.stdout)
    assert doc["ok"] is False and doc["bad_block_count"] == 1
    block = doc["bad_blocks"][0]
    assert (block["backup"], block["volume"], block["pack_id"], block["pack_offset"]) == (
        "b1", "disk0", pack.stem, 8)
    text = run("verify", "--target", str(target), "--read-data", check=14)
    assert f"bad block: backup b1, volume disk0, offset {block['offset']}, pack {pack.stem}" \
        in text.stdout

    dry = run("--json", "repair", "--target", str(target), "--read-data", "--dry-run", check=14)
    assert json.loads(dry.stdout)["actions"][0]["done"] is False
    rep = run("--json", "repair", "--target", str(target), "--read-data", check=14)
    doc = json.loads(rep.stdout)
    assert doc["actions"][0]["action"] == "repacked" and doc["actions"][0]["done"] is True
    assert doc["unrestorable_backups"] == ["b1"]

    # The next backup stores the lost block again; then everything verifies.
    run("backup", "--target", str(target), "--name", "b2", "--volume", f"disk0={vol}", check=0)
    run("verify", "--target", str(target), "--read-data", check=0)
    run("restore", "b1", "--target", str(target), "--dest-dir", str(tmp_path / "r"), check=0)
    assert sha(tmp_path / "r" / "disk0.img") == sha(vol)
    run("repair", "--target", str(target), check=0)
    # Errors are not "damage found": an unreachable target exits with its own code.
    missing = run("verify", "--target", str(tmp_path / "nope"))
    assert missing.returncode not in (0, 14)


def _pack_files(target):
    return sorted((target / "packs").rglob("*.pack"))


def test_forget_dry_run_then_prune_reclaims_packs(setup, tmp_path):
    target, vol = setup
    other = tmp_path / "other.img"
    other.write_bytes(random.Random(6).randbytes(2 * MIB))
    for name, path in (("b-old", other), ("b-mid", other), ("b-new", vol)):
        run("backup", "--target", str(target), "--name", name, "--volume", f"disk0={path}",
            "--vm-name", "cli-vm", check=0)

    usage = run("forget", "--target", str(target))
    assert usage.returncode == 2 and "--keep" in usage.stderr
    assert run("forget", "--target", str(target), "--keep-last", "x").returncode == 2

    dry = run("--json", "forget", "--target", str(target), "--keep-last", "1", "--dry-run",
              check=0)
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] is True
    assert sorted(doc["forget"]) == ["b-mid", "b-old"]
    assert doc["deleted"] == []
    assert doc["keep"] == [{"name": "b-new", "reasons": ["last"]}]
    listed = json.loads(run("--json", "list", "--target", str(target), check=0).stdout)
    assert len(listed["backups"]) == 3

    text = run("forget", "--target", str(target), "--keep-last", "1", "--dry-run", check=0)
    assert "would forget" in text.stdout and "b-old" in text.stdout

    packs_before = _pack_files(target)
    res = run("--json", "forget", "--target", str(target), "--keep-last", "1", "--prune",
              "--grace", "0", check=0)
    doc = json.loads(res.stdout)
    assert sorted(doc["deleted"]) == ["b-mid", "b-old"]
    assert doc["gc"]["dead_packs"] > 0 and doc["gc"]["packs_deleted"] == 0
    dead = doc["gc"]["dead_packs"]
    # Two more runs: the pack indexes go, then the packs.
    run("gc", "--target", str(target), "--grace", "0", check=0)
    last = json.loads(run("--json", "gc", "--target", str(target), "--grace", "0",
                          check=0).stdout)
    assert last["packs_deleted"] == dead
    assert len(_pack_files(target)) == len(packs_before) - dead
    run("restore", "b-new", "--target", str(target), "--dest-dir", str(tmp_path / "r"), check=0)
    assert sha(tmp_path / "r" / "disk0.img") == sha(vol)


def test_gc_with_a_damaged_volume_index_exits_14_and_deletes_no_pack(setup, tmp_path):
    """Damage found by gc is exit 14, as for verify; the dead packs stay while blocks are unknown."""
    target, vol = setup
    run("backup", "--target", str(target), "--name", "b1", "--volume", f"disk0={vol}", check=0)
    vol2 = tmp_path / "other.img"
    vol2.write_bytes(os.urandom(1 << 20))
    run("backup", "--target", str(target), "--name", "b2", "--volume", f"disk0={vol2}", check=0)
    run("delete", "b1", "--target", str(target), check=0)
    (vidx,) = list((target / "volumes" / "b2").glob("*.vidx"))
    vidx.write_bytes(vidx.read_bytes()[:40])
    packs = _pack_files(target)
    for _ in range(2):  # the second run is the one that would delete packs
        p = run("gc", "--target", str(target), "--grace", "0")
        assert p.returncode == 14, (p.stdout, p.stderr)
        assert "damaged:" in p.stderr and "b2" in p.stderr, p.stderr
    assert _pack_files(target) == packs
    doc = json.loads(run("--json", "gc", "--target", str(target), "--grace", "0").stdout)
    assert doc["damaged"] and doc["packs_deleted"] == 0


def test_gc_dry_run_changes_nothing_and_flags_are_checked(setup, tmp_path):
    target, vol = setup
    run("backup", "--target", str(target), "--name", "b1", "--volume", f"disk0={vol}", check=0)
    run("delete", "b1", "--target", str(target), check=0)
    run("gc", "--target", str(target), "--grace", "0", check=0)

    def snapshot():
        return sorted((str(p.relative_to(target)), p.stat().st_size)
                      for p in target.rglob("*") if p.is_file())

    before = snapshot()
    dry = run("--json", "gc", "--target", str(target), "--dry-run", "--grace", "0", check=0)
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] is True and doc["indexes_deleted"] > 0
    assert doc["reclaimable_bytes"] > 0
    assert snapshot() == before
    text = run("gc", "--target", str(target), "--dry-run", check=0)
    assert "dry run" in text.stdout and "reclaimable" in text.stdout
    norepack = json.loads(run("--json", "gc", "--target", str(target), "--dry-run", "--no-repack",
                              check=0).stdout)
    assert norepack["repack_candidates"] == 0 and norepack["packs_repacked"] == 0
    every = json.loads(run("--json", "gc", "--target", str(target), "--dry-run", "--max-unused",
                           "0", check=0).stdout)
    assert every["repack_candidates"] == every["partly_live_packs"]
    none = json.loads(run("--json", "gc", "--target", str(target), "--dry-run", "--max-unused",
                          "100%", check=0).stdout)
    assert none["repack_candidates"] == 0
    for bad_pct in ("101", "-1", "ten", ""):
        bad = run("gc", "--target", str(target), "--dry-run", "--max-unused", bad_pct)
        assert bad.returncode == 2 and "--max-unused" in bad.stderr, bad_pct
    bad = run("gc", "--target", str(target), "--grace", "soon")
    assert bad.returncode == 2 and "--grace" in bad.stderr
    # Another run holding the lock: exit 11 (failed precondition) naming it.
    (target / "gc").mkdir(exist_ok=True)
    run("gc", "--target", str(target), check=0)
    import time
    lock_body = {"host": "elsewhere", "started": int(time.time()), "started_at": "now"}
    canonical = json.dumps(lock_body, sort_keys=True, separators=(",", ":"))
    lock = {"format": "vmbackup-gc-lock", "version": 1, "body": lock_body,
            "sha256": hashlib.sha256(canonical.encode()).hexdigest()}
    (target / "gc" / "lock.json").write_text(json.dumps(lock))
    held = run("gc", "--target", str(target))
    assert held.returncode == 11 and "elsewhere" in held.stderr


# ---- encryption ---------------------------------------------------------------------------------


def test_a_new_repository_needs_an_explicit_encryption_choice(setup):
    target, vol = setup
    p = run("backup", "--target", str(target), "--name", "b1", "--volume", f"disk0={vol}",
            env={"VMBACKUP_ENCRYPTION": ""})
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert "--encryption aes-256-gcm" in p.stderr and "--encryption none" in p.stderr
    assert list(target.iterdir()) == [], "nothing may be written before the choice is made"
    bad = run("backup", "--target", str(target), "--volume", f"disk0={vol}",
              "--encryption", "rot13")
    assert bad.returncode == 2 and "aes-256-gcm or none" in bad.stderr
    # An existing repository needs no choice.
    run("backup", "--target", str(target), "--name", "b1", "--volume", f"disk0={vol}", check=0)
    run("list", "--target", str(target), env={"VMBACKUP_ENCRYPTION": ""}, check=0)


def test_encrypted_backup_restore_and_key_rotation(setup, tmp_path):
    target, vol = setup
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery\n")
    key = tmp_path / "key.hex"
    key.write_text("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n")
    run("--encryption", "aes-256-gcm", "--passphrase-file", str(pw), "backup", "--target",
        str(target), "--name", "b1", "--volume", f"disk0={vol}", "--vm-name", "vm-topsecret",
        check=0)
    for f in target.rglob("*"):
        if f.is_file():
            assert b"vm-topsecret" not in f.read_bytes(), f
    p = run("list", "--target", str(target))
    assert p.returncode == 6 and "is encrypted" in p.stderr, (p.stdout, p.stderr)
    p = run("list", "--target", str(target), env={"VMBACKUP_PASSPHRASE": ""})
    assert p.returncode == 3 and "set but empty" in p.stderr, (p.stdout, p.stderr)
    p = run("list", "--target", str(target), env={"VMBACKUP_PASSPHRASE": "wrong"})
    assert p.returncode == 6 and "no key slot" in p.stderr, (p.stdout, p.stderr)
    listed = json.loads(run("--json", "list", "--target", str(target),
                            env={"VMBACKUP_PASSPHRASE": "correct horse battery"}, check=0).stdout)
    assert [b["vm_name"] for b in listed["backups"]] == ["vm-topsecret"]

    run("--passphrase-file", str(pw), "key", "add", "--target", str(target), "--new-key-file",
        str(key), "--label", "kms", check=0)
    keys = json.loads(run("--json", "--key-file", str(key), "key", "list", "--target",
                          str(target), check=0).stdout)["keys"]
    assert [(k["kind"], k["current"]) for k in keys] == [("passphrase", False), ("raw", True)]
    assert keys[1]["label"] == "kms"
    p = run("--key-file", str(key), "key", "remove", keys[1]["id"], "--target", str(target))
    assert p.returncode == 11 and "opened with it" in p.stderr
    run("--key-file", str(key), "key", "remove", keys[0]["id"], "--target", str(target), check=0)
    p = run("--passphrase-file", str(pw), "list", "--target", str(target))
    assert p.returncode == 6
    run("--key-file", str(key), "restore", "b1", "--target", str(target), "--dest-dir",
        str(tmp_path / "out"), check=0)
    assert sha(tmp_path / "out" / "disk0.img") == sha(vol)
    p = run("key", "list", "--target", str(target), "--passphrase-file", str(pw), "--key-file",
            str(key))
    assert p.returncode == 2 and "not both" in p.stderr


def test_freeze_and_thaw_commands_run_once_per_backup(setup, tmp_path):
    target, vol = setup
    log = tmp_path / "hooks.log"
    freeze = f"echo freeze >> {log}"
    thaw = f"echo thaw >> {log}"
    out = run("--json", "backup", "--target", str(target), "--name", "b1", "--volume",
              f"disk0={vol}", "--volume", f"disk1={vol}", "--freeze-cmd", freeze, "--thaw-cmd",
              thaw, check=0)
    assert log.read_text().split() == ["freeze", "thaw"]  # one window for both volumes
    shown = json.loads(run("--json", "show", "b1", "--target", str(target), check=0).stdout)
    backup = shown["backup"]
    assert backup["freeze_seconds"] >= 0
    assert [v["consistency"] for v in backup["volumes"]] == ["fs-frozen", "fs-frozen"]
    text = run("show", "b1", "--target", str(target), check=0).stdout
    assert "one window, all volumes" in text and "fs-frozen" in text
    assert out.returncode == 0

    # A freeze command that fails: exit 11 naming it, no backup, no thaw.
    log.write_text("")
    bad = run("backup", "--target", str(target), "--name", "b2", "--volume", f"disk0={vol}",
              "--freeze-cmd", f"echo freeze >> {log}; exit 3", "--thaw-cmd", thaw)
    assert bad.returncode == 11 and "exited 3" in bad.stderr, bad.stderr
    assert log.read_text().split() == ["freeze"]
    assert run("show", "b2", "--target", str(target)).returncode != 0
    half = run("backup", "--target", str(target), "--name", "b3", "--volume", f"disk0={vol}",
               "--freeze-cmd", freeze)
    assert half.returncode == 2 and "--thaw-cmd" in half.stderr
    for bad_secs in ("-1", "x", "90000"):
        p = run("backup", "--target", str(target), "--name", "b4", "--volume", f"disk0={vol}",
                "--freeze-cmd", freeze, "--thaw-cmd", thaw, "--freeze-timeout", bad_secs)
        assert p.returncode == 2 and "--freeze-timeout" in p.stderr, p.stderr
    lonely = run("backup", "--target", str(target), "--name", "b4", "--volume", f"disk0={vol}",
                 "--freeze-timeout", "5")
    assert lonely.returncode == 2 and "--freeze-cmd" in lonely.stderr
    run("backup", "--target", str(target), "--name", "b4", "--volume", f"disk0={vol}",
        "--freeze-cmd", freeze, "--thaw-cmd", thaw, "--freeze-timeout", "0", check=0)


def test_vm_state_running_and_stopped(setup, tmp_path):
    target, vol = setup
    probe = json.loads(run("--json", "backup", "--target", str(target), "--name", "probe",
                           "--volume", f"disk0={vol}", check=0).stdout)
    record = probe.get("backup", probe)
    clones = record["volumes"][0]["snapshot"] == "reflink"
    running = run("backup", "--target", str(target), "--name", "r1", "--volume", f"disk0={vol}",
                  "--vm-state", "running")
    if clones:
        assert running.returncode == 0
    else:
        assert running.returncode == 11 and "running VM" in running.stderr, running.stderr
        run("backup", "--target", str(target), "--name", "r2", "--volume", f"disk0={vol}",
            "--vm-state", "running", "--allow-inconsistent", check=0)
        shown = json.loads(run("--json", "show", "r2", "--target", str(target), check=0).stdout)
        assert shown["backup"]["volumes"][0]["consistency"] == "unknown"
    if not clones:  # a bare file read directly: recorded "unknown", and said so
        assert "consistency is unknown" in run("backup", "--target", str(target), "--name",
                                                "bare", "--volume", f"disk0={vol}",
                                                check=0).stderr
    quiet = run("backup", "--target", str(target), "--name", "s1", "--volume", f"disk0={vol}",
                "--vm-state", "stopped", check=0)
    assert "consistency is unknown" not in quiet.stderr
    assert "stopped" in run("show", "s1", "--target", str(target), check=0).stdout
    bad = run("backup", "--target", str(target), "--name", "x", "--volume", f"disk0={vol}",
              "--vm-state", "paused")
    assert bad.returncode == 2 and "--vm-state" in bad.stderr
    lone = run("backup", "--target", str(target), "--name", "y", "--volume", f"disk0={vol}",
               "--allow-inconsistent")
    assert lone.returncode == 2 and "--allow-inconsistent" in lone.stderr


def test_qemu_drives_by_flag_and_by_vm_json(tmp_path):
    """--qmp/--drive and a vm.json "location" back up a running QEMU's disks; show names the
    provider, the checkpoint and the changed bytes of the incremental (docs/providers/qemu.md)."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "support"))
    from qemu_vm import QemuVm

    target = tmp_path / "target"
    target.mkdir()
    vm = QemuVm(tmp_path, disks=2, size=8 * MIB)
    try:
        vm.fill(0, 2 * MIB, 0x31, disk=0)
        vm.fill(MIB, MIB, 0x32, disk=1)
        run("backup", "--target", str(target), "--name", "q1", "--vm-name", "qvm",
            "--qmp", vm.qmp, "--drive", "disk0", "--drive", "disk1=data", check=0)
        shown = run("show", "q1", "--target", str(target), check=0).stdout
        assert "qemu" in shown and "fleece" in shown and "Checkpoints:" in shown, shown

        vm.fill(4 * MIB, 64 * 1024, 0x41, disk=0)
        run("backup", "--target", str(target), "--name", "q2", "--vm-name", "qvm",
            "--qmp", vm.qmp, "--drive", "disk0", "--drive", "disk1=data", check=0)
        rec = json.loads(run("--json", "show", "q2", "--target", str(target), check=0).stdout)["backup"]
        assert rec["parent"] == "q1"
        changed = {v["name"]: v["changed_bytes"] for v in rec["volumes"]}
        assert changed == {"disk0": 64 * 1024, "data": 0}, rec
        shown = run("show", "q2", "--target", str(target), check=0).stdout
        assert "64.0 KiB changed since the parent's checkpoint" in shown, shown
        run("restore", "q2", "--target", str(target), "--volume",
            f"disk0={tmp_path / 'r0.img'}", "--volume", f"data={tmp_path / 'r1.img'}", check=0)
        assert (tmp_path / "r0.img").read_bytes() == bytes(vm.models[0])
        assert (tmp_path / "r1.img").read_bytes() == bytes(vm.models[1])

        vmdir = tmp_path / "vmdir"
        vmdir.mkdir()
        (vmdir / "vm.json").write_text(json.dumps(
            {"name": "qvm", "volumes": [{"name": "disk0", "location": vm.location(0)},
                                        {"name": "data", "location": vm.location(1)}]}))
        vm.fill(0, 64 * 1024, 0x51, disk=1)
        run("backup", "--target", str(target), "--name", "q3", "--vm-dir", str(vmdir), check=0)
        rec = json.loads(run("--json", "show", "q3", "--target", str(target), check=0).stdout)["backup"]
        assert rec["parent"] == "q2"
        assert {v["name"]: v["changed_bytes"] for v in rec["volumes"]} == {"disk0": 0,
                                                                           "data": 64 * 1024}
    finally:
        vm.close()
    bad = run("backup", "--target", str(target), "--drive", "disk0")
    assert bad.returncode == 2 and "--qmp" in bad.stderr, bad.stderr
    bad = run("backup", "--target", str(target), "--volume", "disk0=qemu:/x.sock")
    assert bad.returncode == 2 and "no node" in bad.stderr, bad.stderr
    bad = run("backup", "--target", str(target), "--volume", "disk0=rbd:pool")
    assert bad.returncode == 2 and "rbd:POOL/IMAGE" in bad.stderr, bad.stderr


def test_rbd_images_by_flag_full_then_incremental(setup, tmp_path):
    """--rbd backs up a Ceph RBD image from an RBD snapshot; the incremental of the same VM reads
    what rbd diff reports changed since the previous snapshot (docs/providers/rbd.md)."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "support"))
    from rbd_image import RbdImage

    target, vol = setup
    img = RbdImage(vol)
    try:
        run("backup", "--target", str(target), "--name", "r1", "--vm-name", "rvm",
            "--rbd", f"disk0={img.spec}", "--ceph-conf", img.conf, check=0)
        rec = json.loads(run("--json", "show", "r1", "--target", str(target), check=0).stdout)
        v = rec["backup"]["volumes"][0]
        assert (v["provider"], v["snapshot"]) == ("rbd", "rbd"), v
        assert img.snapshots() == [v["checkpoint"]]
        at1 = img.export(v["checkpoint"], tmp_path / "at1.img")
        img.write_random()
        run("backup", "--target", str(target), "--name", "r2", "--vm-name", "rvm",
            "--rbd", f"disk0={img.spec}", "--ceph-conf", img.conf, check=0)
        rec = json.loads(run("--json", "show", "r2", "--target", str(target), check=0).stdout)
        v2 = rec["backup"]["volumes"][0]
        assert rec["backup"]["parent"] == "r1"
        assert 0 < v2["changed_bytes"] <= 4 * 64 * 1024, v2
        assert img.snapshots() == [v2["checkpoint"]]  # the parent's snapshot went
        at2 = img.export(v2["checkpoint"], tmp_path / "at2.img")
        for name, want in (("r1", at1), ("r2", at2)):
            out = tmp_path / f"{name}.img"
            run("restore", name, "--target", str(target), "--volume", f"disk0={out}", check=0)
            assert out.read_bytes() == want, name
        missing = run("backup", "--target", str(target), "--name", "r3",
                      "--volume", f"disk0=rbd:{img.spec}-missing?conf={img.conf}")
        assert missing.returncode == 4 and "does not exist" in missing.stderr, missing.stderr
    finally:
        img.remove()
    lonely = run("backup", "--target", str(target), "--volume", f"disk0={vol}", "--ceph-id", "x")
    assert lonely.returncode == 2 and "--rbd" in lonely.stderr
