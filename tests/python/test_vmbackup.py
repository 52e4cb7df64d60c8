"""End-to-end tests of the vmbackup Python bindings against a local-directory target."""

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import vmbackup
from conftest import make_volume, names, same_bytes


def test_version_matches_version_info():
    assert vmbackup.__version__ == ".".join(str(n) for n in vmbackup.version_info)


# ---- backup, list, restore --------------------------------------------------------------------------


def test_backup_and_restore_are_byte_identical(target, volume, tmp_path):
    reports = []
    info = vmbackup.backup(target, "py-1", volumes={"disk0": volume},
                           vm_metadata={"name": "py-vm", "namespace": "default"},
                           progress=reports.append, progress_interval_ms=0)
    assert info.name == "py-1"
    assert info.vm_name == "py-vm"
    assert info.vm_namespace == "default"
    assert info.vm_metadata == {"name": "py-vm", "namespace": "default"}
    assert [v.name for v in info.volumes] == ["disk0"]
    assert info.volumes[0].size == os.path.getsize(volume)
    assert info.bytes_total == os.path.getsize(volume)
    assert reports, "the progress callback was never called"
    assert isinstance(reports[-1], vmbackup.Progress)
    assert reports[-1].bytes_total == os.path.getsize(volume)
    scanned = [p.bytes_scanned for p in reports]
    assert scanned == sorted(scanned), "cumulative progress went backwards"

    dest = tmp_path / "restored.img"
    assert vmbackup.restore(target, "py-1", volumes=[("disk0", dest)]) == {"disk0": str(dest)}
    assert same_bytes(volume, dest)


def test_incremental_with_and_without_fingerprints(target, volume, tmp_path):
    full = vmbackup.backup(target, "fp-full", volumes={"disk0": volume})
    assert full.volumes[0].fingerprints_key.endswith(".vfp")
    assert len(full.volumes[0].fingerprints_sha256) == 64
    with open(volume, "r+b") as f:
        f.seek(4096)
        f.write(b"changed" * 100)
    for name, use in (("fp-on", True), ("fp-off", False)):
        info = vmbackup.backup(target, name, volumes={"disk0": volume}, use_fingerprints=use)
        assert info.volumes[0].bytes_reused > 0
        dest = tmp_path / (name + ".img")
        vmbackup.restore(target, name, volumes=[("disk0", dest)])
        assert same_bytes(volume, dest)


def test_restore_to_dest_dir_writes_volumes_and_vm_json(target, volume, tmp_path):
    vmbackup.backup(target, "py-dir", volumes={"disk0": volume}, vm_metadata={"name": "orig"})
    out = tmp_path / "out"
    out.mkdir()
    dests = vmbackup.restore(target, "py-dir", dest_dir=out, new_vm_name="copy")
    assert dests == {"disk0": str(out / "disk0.img")}
    assert same_bytes(volume, out / "disk0.img")
    with open(out / "vm.json") as f:
        assert json.load(f)["name"] == "copy"


def test_list_and_get_backups(target, volume):
    assert target.list_backups() == []
    vmbackup.backup(target, "first", volumes=[("disk0", volume)])
    vmbackup.backup(target, "second", volumes=[("disk0", volume)])
    assert names(target) == ["first", "second"]  # oldest first
    backups, damaged = target.list_backups(return_damaged=True)
    assert [b.name for b in backups] == ["first", "second"]
    assert damaged == []
    got = target.get_backup("second")
    assert got.name == "second"
    assert got.state == "Ready"
    # The second backup of the same data stores nothing new: it is deduplicated.
    assert got.bytes_new == 0
    assert got.bytes_reused > 0


def test_delete_backup(target, volume, tmp_path):
    vmbackup.backup(target, "keep", volumes={"disk0": volume})
    vmbackup.backup(target, "drop", volumes={"disk0": volume})
    target.delete_backup("drop")
    assert names(target) == ["keep"]
    with pytest.raises(vmbackup.NotFoundError):
        target.get_backup("drop")
    with pytest.raises(vmbackup.NotFoundError):
        target.delete_backup("drop")
    # The remaining backup shares every block with the deleted one and still restores.
    vmbackup.restore(target, "keep", volumes={"disk0": tmp_path / "keep.img"})
    assert same_bytes(volume, tmp_path / "keep.img")


def test_backup_from_vm_dir(target, tmp_path):
    vm = tmp_path / "vm"
    vm.mkdir()
    make_volume(vm / "root.img", seed=7)
    (vm / "vm.json").write_text(json.dumps(
        {"name": "demo", "volumes": [{"name": "rootdisk", "path": "root.img"}]}))
    info = vmbackup.backup(target, "from-dir", vm_dir=vm)
    assert info.vm_name == "demo"
    assert [v.name for v in info.volumes] == ["rootdisk"]
    with pytest.raises(vmbackup.NotFoundError):
        vmbackup.backup(target, "no-vm-json", vm_dir=tmp_path / "target")


def test_block_size_and_open_options(target_dir, tmp_path):
    t = vmbackup.BackupTarget.open(json.dumps({"type": "file", "endpoint": str(target_dir)}),
                                   block_size=64 * 1024)
    assert t.block_size == 64 * 1024
    assert t.repository_id
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(vmbackup.NotFoundError):
        vmbackup.BackupTarget.open({"type": "file", "endpoint": str(empty)},
                                   create_if_missing=False)


def test_state_dir_holds_the_fingerprint_key_and_file_mode_sets_restored_modes(target_dir, volume,
                                                                               tmp_path):
    state = tmp_path / "state"
    t = vmbackup.BackupTarget.open({"type": "file", "endpoint": str(target_dir)}, state_dir=state)
    info = vmbackup.backup(t, "st", volumes={"disk0": volume}, vm_metadata={"name": "py-vm"})
    assert info.volumes[0].fingerprints_key.endswith(".vfp")
    assert os.stat(state).st_mode & 0o777 == 0o700
    assert os.stat(state / "fingerprint.key").st_mode & 0o777 == 0o600
    assert "fingerprint" not in (target_dir / "repository.json").read_text()

    dest = tmp_path / "private.img"
    vmbackup.restore(t, "st", volumes={"disk0": dest})
    assert os.stat(dest).st_mode & 0o777 == 0o600
    shared = tmp_path / "shared.img"
    vmbackup.restore(t, "st", volumes={"disk0": shared}, file_mode=0o640)
    assert os.stat(shared).st_mode & 0o777 == 0o640
    assert same_bytes(volume, shared)
    with pytest.raises(vmbackup.InvalidArgumentError, match="file_mode"):
        vmbackup.restore(t, "st", volumes={"disk0": tmp_path / "x.img"}, file_mode=0o1777)


def test_own_runtime(target_dir, volume, tmp_path):
    rt = vmbackup.Runtime(worker_threads=2, blocking_threads=2, io_threads=1, job_threads=1,
                          max_in_flight_bytes=1 << 20)
    assert rt.worker_threads == 2
    assert rt.thread_count == 6
    assert rt.max_in_flight_bytes == 1 << 20
    assert vmbackup.Runtime().max_in_flight_bytes == 256 << 20
    t = vmbackup.BackupTarget.open({"type": "file", "endpoint": str(target_dir)}, runtime=rt)
    # Two backups started together on a runtime that runs one job at a time: both complete.
    jobs = [vmbackup.BackupJob(t, n, volumes={"disk0": volume}) for n in ("rt", "rt2")]
    for j in jobs:
        j.start()
    for j in jobs:
        j.wait()
    assert names(t) == ["rt", "rt2"]
    dest = tmp_path / "rt2.img"
    vmbackup.restore(t, "rt2", volumes={"disk0": dest})
    assert same_bytes(volume, dest)
    with pytest.raises(ValueError, match="job_threads"):
        vmbackup.Runtime(job_threads=-1)


# ---- errors -----------------------------------------------------------------------------------------


def test_bad_config_is_value_error_naming_the_field(target_dir):
    with pytest.raises(vmbackup.InvalidArgumentError) as e:
        vmbackup.BackupTarget.open({"type": "file", "endpoint": str(target_dir), "endpiont": "x"})
    assert isinstance(e.value, ValueError)
    assert isinstance(e.value, vmbackup.Error)
    assert "endpiont" in str(e.value)
    assert e.value.code == 3 and e.value.code_name == "INVALID_ARGUMENT"
    assert not e.value.retryable

    with pytest.raises(ValueError, match="endpoint"):
        vmbackup.BackupTarget.open({"type": "file"})
    with pytest.raises(ValueError, match="endpoint"):
        vmbackup.BackupTarget.open({"type": "file", "endpoint": 42})
    with pytest.raises(ValueError, match="type"):
        vmbackup.BackupTarget.open({"type": "tape", "endpoint": "/x"})
    with pytest.raises(ValueError):
        vmbackup.BackupTarget.open('{"type": "file",')


def test_not_found_is_file_not_found_error(target, volume, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        target.get_backup("no-such-backup")
    assert isinstance(e.value, vmbackup.NotFoundError)
    assert e.value.code == 5
    assert "no-such-backup" in e.value.message
    with pytest.raises(vmbackup.NotFoundError):
        vmbackup.restore(target, "no-such-backup", dest_dir=tmp_path)
    missing = tmp_path / "missing.img"
    with pytest.raises(vmbackup.NotFoundError):
        vmbackup.backup(target, "missing-volume", volumes={"disk0": missing})
    assert "missing-volume" not in names(target)


def test_already_exists_is_file_exists_error(target, volume, tmp_path):
    vmbackup.backup(target, "dup", volumes={"disk0": volume})
    with pytest.raises(FileExistsError) as e:
        vmbackup.backup(target, "dup", volumes={"disk0": volume})
    assert isinstance(e.value, vmbackup.AlreadyExistsError)

    dest = tmp_path / "exists.img"
    dest.write_bytes(b"precious")
    with pytest.raises(vmbackup.AlreadyExistsError):
        vmbackup.restore(target, "dup", volumes={"disk0": dest})
    assert dest.read_bytes() == b"precious"  # nothing written
    vmbackup.restore(target, "dup", volumes={"disk0": dest}, overwrite=True)
    assert same_bytes(volume, dest)


def test_invalid_backup_arguments(target, volume, tmp_path):
    with pytest.raises(vmbackup.InvalidArgumentError, match="volumes"):
        vmbackup.backup(target, "x", volumes=["disk0"])
    with pytest.raises(ValueError, match="vm_dir"):
        vmbackup.backup(target, "x", vm_dir=tmp_path, volumes={"disk0": volume})
    with pytest.raises(ValueError):
        vmbackup.backup(target, "x", volumes={})
    with pytest.raises(ValueError):
        vmbackup.backup(target, "x", volumes={"disk0": volume}, vm_metadata=[1, 2])
    with pytest.raises(ValueError, match="progress"):
        vmbackup.backup(target, "x", volumes={"disk0": volume}, progress=42)
    assert names(target) == []


# ---- cancellation -----------------------------------------------------------------------------------


def test_progress_returning_false_cancels(target, volume):
    calls = []

    def stop(p):
        calls.append(p)
        return False

    with pytest.raises(vmbackup.CancelledError) as e:
        vmbackup.backup(target, "stopped", volumes={"disk0": volume}, progress=stop,
                        progress_interval_ms=0)
    assert e.value.code == 1
    assert len(calls) >= 1
    assert "stopped" not in names(target)


class Boom(Exception):
    pass


def test_exception_in_progress_callback_cancels_and_is_reraised(target, volume, tmp_path):
    def explode(p):
        raise Boom("from the callback")

    with pytest.raises(Boom, match="from the callback") as e:
        vmbackup.backup(target, "exploded", volumes={"disk0": volume}, progress=explode,
                        progress_interval_ms=0)
    assert any(entry.name == "explode" for entry in e.traceback)
    assert "exploded" not in names(target)

    vmbackup.backup(target, "ok", volumes={"disk0": volume})
    with pytest.raises(Boom):
        vmbackup.restore(target, "ok", volumes={"disk0": tmp_path / "r.img"}, progress=explode,
                         progress_interval_ms=0)
    assert not (tmp_path / "r.img").exists()


class Gate:
    """A progress callback that blocks the first report of a running job until released."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, p):
        if p.phase != vmbackup.Phase.DONE and not self.entered.is_set():
            self.entered.set()
            self.release.wait(30)


def test_cancel_running_backup_job(target, volume):
    gate = Gate()
    job = vmbackup.BackupJob(target, "cancel-me", volumes={"disk0": volume}, progress=gate,
                             progress_interval_ms=0)
    assert job.name == "cancel-me"
    assert job.state == vmbackup.JobState.PENDING
    job.start()
    assert gate.entered.wait(30), "the job never reported progress"
    assert job.wait(timeout=0.05) is False  # still blocked in the callback
    assert not job.done()
    job.cancel()
    gate.release.set()
    with pytest.raises(vmbackup.CancelledError):
        job.wait()
    assert job.done()
    assert job.state == vmbackup.JobState.ERROR
    with pytest.raises(vmbackup.CancelledError):  # the final status stays on the job
        job.wait()
    with pytest.raises(vmbackup.FailedPreconditionError):
        job.result
    assert "cancel-me" not in names(target)


def test_done_callbacks_get_none_or_the_error_before_wait_returns(target, volume, tmp_path):
    calls = []
    job = vmbackup.BackupJob(target, "done-cb", volumes={"disk0": volume})
    job.add_done_callback(lambda err: calls.append(("first", err, threading.get_ident())))
    job.add_done_callback(lambda err: 1 / 0)  # goes to sys.unraisablehook; the job is unharmed
    assert job.wait() is True
    assert [c[:2] for c in calls] == [("first", None)]
    assert calls[0][2] != threading.get_ident()  # ran on a library thread
    job.add_done_callback(lambda err: calls.append(("late", err, threading.get_ident())))
    assert calls[-1][:2] == ("late", None) and calls[-1][2] == threading.get_ident()
    with pytest.raises(TypeError):
        job.add_done_callback()

    gate = Gate()
    errors = []
    bad = vmbackup.BackupJob(target, "done-cb-cancelled", volumes={"disk0": volume},
                             progress=gate, progress_interval_ms=0)
    bad.add_done_callback(errors.append)
    bad.start()
    assert gate.entered.wait(30), "the job never reported progress"
    bad.cancel()
    gate.release.set()
    with pytest.raises(vmbackup.CancelledError):
        bad.wait()
    assert len(errors) == 1 and isinstance(errors[0], vmbackup.CancelledError)
    with pytest.raises(vmbackup.InvalidArgumentError):
        bad.add_done_callback(42)

    dest = tmp_path / "restored"
    dest.mkdir()
    restored = []
    plan = vmbackup.RestorePlan(target, "done-cb", dest_dir=str(dest))
    plan.add_done_callback(restored.append)
    plan.wait()
    assert restored == [None]
    assert same_bytes(volume, str(dest / "disk0.img"))


def test_backup_job_class(target, volume):
    job = vmbackup.BackupJob(target, volumes={"disk0": volume})  # generated name
    assert job.name
    job.start()
    with pytest.raises(vmbackup.FailedPreconditionError):
        job.start()
    assert job.wait() is True
    assert job.state == vmbackup.JobState.READY
    assert job.result.name == job.name
    assert job.progress.bytes_scanned == os.path.getsize(volume)
    assert names(target) == [job.name]


def test_restore_plan_class(target, volume, tmp_path):
    vmbackup.backup(target, "src", volumes={"disk0": volume}, vm_metadata={"name": "vm"})
    dest = tmp_path / "plan.img"
    plan = vmbackup.RestorePlan(target, "src", volumes={"disk0": dest})
    assert plan.backup.name == "src"
    assert plan.destinations == {"disk0": str(dest)}
    assert plan.run() == {"disk0": str(dest)}
    assert plan.state == vmbackup.JobState.READY
    assert same_bytes(volume, dest)


def test_dropping_a_running_job_does_not_hang(target, volume):
    seen = []
    job = vmbackup.BackupJob(target, "dropped", volumes={"disk0": volume},
                             progress=lambda p: seen.append(p.bytes_scanned),
                             progress_interval_ms=0)
    job.start()
    del job  # cancels and waits with the GIL released while callbacks need the GIL
    gc.collect()
    # The target is still usable afterwards.
    vmbackup.backup(target, "after", volumes={"disk0": volume})
    assert "after" in names(target)


def test_concurrent_backups_from_threads(target, tmp_path):
    volumes = [make_volume(tmp_path / f"v{i}.img", seed=10 + i) for i in range(2)]
    errors = []

    def run(i):
        try:
            vmbackup.backup(target, f"thread-{i}", volumes={"disk0": volumes[i]},
                            progress=lambda p: None, progress_interval_ms=0)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted(names(target)) == ["thread-0", "thread-1"]
    for i in range(2):
        out = tmp_path / f"out{i}.img"
        vmbackup.restore(target, f"thread-{i}", volumes={"disk0": out})
        assert same_bytes(volumes[i], out)


CTRL_C_SCRIPT = textwrap.dedent("""
    import signal, sys, threading
    import vmbackup

    target = vmbackup.BackupTarget.open({"type": "file", "endpoint": sys.argv[1]})
    interrupted = threading.Event()

    def on_sigint(signum, frame):
        interrupted.set()
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)

    def progress(p):
        if p.phase != vmbackup.Phase.DONE and not interrupted.is_set():
            print("started", flush=True)
            interrupted.wait(30)  # hold the job until Ctrl-C was handled

    try:
        vmbackup.backup(target, "interrupted", volumes={"disk0": sys.argv[2]},
                        progress=progress, progress_interval_ms=0)
        print("finished")
    except KeyboardInterrupt:
        print("keyboard-interrupt")
    print("listed", [b.name for b in target.list_backups()])
""")


def test_ctrl_c_cancels_a_blocking_backup(target_dir, volume):
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, str(target_dir), volume],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    try:
        first = proc.stdout.readline()
        assert first.strip() == "started", first + proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert "keyboard-interrupt" in lines, out + err
    assert "listed []" in lines, out + err


EXIT_WITH_RUNNING_JOB_SCRIPT = textwrap.dedent("""
    import sys, threading, time
    import vmbackup

    target = vmbackup.BackupTarget.open({"type": "file", "endpoint": sys.argv[1]})
    started = threading.Event()

    def progress(p):
        if not started.is_set():
            started.set()
            time.sleep(1)  # the interpreter starts exiting meanwhile

    def run():
        try:
            vmbackup.backup(target, "at-exit", volumes={"disk0": sys.argv[2]}, progress=progress,
                            progress_interval_ms=0)
        except vmbackup.CancelledError:
            pass

    if sys.argv[3] == "daemon-thread":
        threading.Thread(target=run, daemon=True).start()
    else:
        job = vmbackup.BackupJob(target, "at-exit", volumes={"disk0": sys.argv[2]},
                                 progress=progress, progress_interval_ms=0)
        job.start()
    started.wait(30)
    print("exiting", flush=True)
""")


@pytest.mark.parametrize("mode", ["job-object", "daemon-thread"])
def test_interpreter_exit_with_running_job_cancels_it_without_crashing(target_dir, target, volume,
                                                                        mode):
    # Regression: a daemon thread waiting in backup() when the interpreter finalized was ended by
    # CPython (forced unwind) inside a noexcept GIL guard, and the process aborted.
    for _ in range(3):
        proc = subprocess.run(
            [sys.executable, "-c", EXIT_WITH_RUNNING_JOB_SCRIPT, str(target_dir), volume, mode],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "exiting"
        assert "at-exit" not in names(target)


# ---- verify and repair ----------------------------------------------------------------------------


def _flip_first_block(target_dir):
    """Flips a byte of the first stored block of one pack; returns that pack's id."""
    packs = sorted(target_dir.glob("packs/*/*.pack"))
    assert packs, "no pack on the target"
    pack = packs[0]
    data = bytearray(pack.read_bytes())
    data[100] ^= 0x20  # the first block starts right after the 8-byte magic
    os.chmod(pack, 0o600)
    pack.write_bytes(bytes(data))
    return pack.stem


def test_verify_finds_a_flipped_byte_and_repair_makes_the_next_backup_store_it(
        target, target_dir, volume, tmp_path):
    vmbackup.backup(target, "py-v", volumes={"disk0": volume},
                    vm_metadata={"name": "py-vm", "namespace": "default"})
    report = target.verify()
    assert report["ok"] is True
    assert report["backups"] == 1 and report["blocks_checked"] == 0
    full = target.verify(read_data=True)
    assert full["ok"] is True and full["blocks_checked"] == full["unique_blocks"] > 0

    pack_id = _flip_first_block(target_dir)
    assert target.verify()["ok"] is True, "sizes and indexes are intact: only reading finds it"
    seen = []
    full = target.verify(read_data=True, progress=seen.append, progress_interval_ms=0)
    assert seen and isinstance(seen[-1], vmbackup.Progress)
    assert full["ok"] is False
    assert full["bad_block_count"] == 1
    bad = full["bad_blocks"][0]
    assert (bad["backup"], bad["volume"], bad["pack_id"], bad["pack_offset"]) == (
        "py-v", "disk0", pack_id, 8)
    assert bad["offset"] % target.block_size == 0
    assert "digest mismatch" in bad["problem"]
    assert full["damaged_backups"] == ["py-v"]

    dry = target.repair(read_data=True, dry_run=True)
    assert [a["action"] for a in dry["actions"]] == ["repacked"]
    assert dry["actions"][0]["done"] is False
    rep = target.repair(read_data=True)
    assert rep["actions"][0]["done"] is True, rep
    assert rep["actions"][0]["blocks_lost"] == 1
    assert rep["unrestorable_backups"] == ["py-v"]

    fresh = vmbackup.BackupTarget.open({"type": "file", "endpoint": str(target_dir)})
    again = vmbackup.backup(fresh, "py-v2", volumes={"disk0": volume},
                            vm_metadata={"name": "py-vm", "namespace": "default"})
    assert again.bytes_new > 0, "the lost block was stored again"
    dest = tmp_path / "healed.img"
    vmbackup.restore(fresh, "py-v", volumes=[("disk0", dest)])
    assert same_bytes(volume, dest)
    assert fresh.verify(read_data=True)["ok"] is True


def test_verify_subsets_bad_options_and_cancel(target, volume):
    vmbackup.backup(target, "py-s", volumes={"disk0": volume})
    assert target.verify(read_data=True, read_data_subset="1/2")["ok"] is True
    assert target.verify(read_data=True, read_data_subset=0.5)["ok"] is True
    assert target.verify(read_data=True, read_data_subset="10%")["ok"] is True
    with pytest.raises(vmbackup.InvalidArgumentError, match="read_data_subset"):
        target.verify(read_data=True, read_data_subset="most")
    with pytest.raises(ValueError):
        target.verify(read_data=True, read_data_subset=2.0)
    with pytest.raises(vmbackup.CancelledError):
        target.verify(read_data=True, progress=lambda p: False, progress_interval_ms=0)

    def boom(p):
        raise RuntimeError("from the callback")

    with pytest.raises(RuntimeError, match="from the callback"):
        target.verify(progress=boom, progress_interval_ms=0)


# ---- retention and garbage collection ----------------------------------------------------------


def _packs(target_dir):
    return sorted(p for p in (target_dir / "packs").rglob("*.pack"))


def test_forget_then_gc_reclaims_the_forgotten_backups_packs(target, target_dir, tmp_path):
    old = make_volume(tmp_path / "old.img", seed=11)
    new = make_volume(tmp_path / "new.img", seed=12)
    meta = {"name": "py-gc-vm", "namespace": "default"}
    vmbackup.backup(target, "gc-old", volumes={"disk0": old}, vm_metadata=meta)
    vmbackup.backup(target, "gc-new", volumes={"disk0": new}, vm_metadata=meta)
    vmbackup.backup(target, "other-vm", volumes={"disk0": old},
                    vm_metadata={"name": "py-other", "namespace": "default"})

    with pytest.raises(vmbackup.InvalidArgumentError, match="keep"):
        target.forget()
    dry = target.forget(keep_last=1, dry_run=True)
    assert dry["forget"] == ["gc-old"]
    assert dry["deleted"] == []
    assert {k["name"] for k in dry["keep"]} == {"gc-new", "other-vm"}
    assert {b.name for b in target.list_backups()} == {"gc-old", "gc-new", "other-vm"}

    # Scoped to one VM: the other VM's only backup is never considered.
    res = target.forget(keep_last=1, vm_name="py-gc-vm", vm_namespace="default")
    assert res["deleted"] == ["gc-old"]
    assert {b.name for b in target.list_backups()} == {"gc-new", "other-vm"}

    # other-vm shares gc-old's data, so only gc-old's unique packs could go: none here.
    packs_before = _packs(target_dir)
    report = target.gc(dry_run=True, grace_seconds=0)
    assert report["dry_run"] is True and report["run"] == ""
    assert target.gc(dry_run=True, repack=False)["repack_candidates"] == 0
    every = target.gc(dry_run=True, max_unused_percent=0)
    assert every["repack_candidates"] == every["partly_live_packs"]
    assert target.gc(dry_run=True, max_unused_percent=100)["repack_candidates"] == 0
    with pytest.raises(vmbackup.InvalidArgumentError, match="max_unused_percent"):
        target.gc(dry_run=True, max_unused_percent=101)
    assert _packs(target_dir) == packs_before
    phases = []
    for _ in range(3):
        report = target.gc(grace_seconds=0, progress=lambda p, d, t: phases.append(p))
    assert "done" in phases and "records" in phases
    assert report["damaged"] == []
    assert _packs(target_dir) == packs_before  # every pack is still referenced

    target.delete_backup("other-vm")
    deleted = 0
    for _ in range(3):
        deleted += target.gc(grace_seconds=0)["packs_deleted"]
    assert deleted > 0
    assert len(_packs(target_dir)) == len(packs_before) - deleted
    dest = tmp_path / "restored.img"
    vmbackup.restore(target, "gc-new", volumes=[("disk0", dest)])
    assert same_bytes(new, dest)


def test_gc_progress_can_stop_the_run_and_its_exception_propagates(target, volume):
    vmbackup.backup(target, "gc-p", volumes={"disk0": volume})
    with pytest.raises(vmbackup.CancelledError):
        target.gc(progress=lambda phase, done, total: phase != "records")

    def boom(phase, done, total):
        raise RuntimeError("from the callback")

    with pytest.raises(RuntimeError, match="from the callback"):
        target.gc(progress=boom)
    with pytest.raises(vmbackup.InvalidArgumentError):
        target.gc(grace_seconds=-5)
    # A cancelled or failed run leaves no lock behind.
    assert target.gc()["damaged"] == []


# ---- encryption ---------------------------------------------------------------------------------


def test_encrypted_repository_round_trip_keys_and_refusals(target_dir, volume, tmp_path):
    cfg = {"type": "file", "endpoint": str(target_dir)}
    raw = bytes(range(32))
    t = vmbackup.BackupTarget.open(cfg, encryption="aes-256-gcm", raw_key=raw, key_label="kms")
    assert t.encryption == "aes-256-gcm"
    vmbackup.backup(t, "enc-1", volumes={"disk0": volume},
                    vm_metadata={"name": "secret-vm-name", "password": "pw-hunter2"})
    for root, _, files in os.walk(target_dir):
        for f in files:
            data = open(os.path.join(root, f), "rb").read()
            assert b"pw-hunter2" not in data and b"secret-vm-name" not in data, f

    with pytest.raises(vmbackup.PermissionDeniedError, match="is encrypted"):
        vmbackup.BackupTarget.open(cfg)
    with pytest.raises(vmbackup.PermissionDeniedError, match="no key slot"):
        vmbackup.BackupTarget.open(cfg, passphrase="guess")
    with pytest.raises(TypeError):
        vmbackup.BackupTarget.open(cfg, raw_key="not bytes")
    with pytest.raises(ValueError):  # an empty secret is never "no secret"
        vmbackup.BackupTarget.open(cfg, passphrase="")

    new_id = t.add_key(passphrase="ops pass", label="ops")
    keys = t.list_keys()
    assert [k["kind"] for k in keys] == ["raw", "passphrase"]
    assert keys[0]["current"] and not keys[1]["current"] and keys[1]["id"] == new_id
    with pytest.raises(vmbackup.FailedPreconditionError, match="opened with it"):
        t.remove_key(keys[0]["id"])
    t2 = vmbackup.BackupTarget.open(cfg, passphrase=b"ops pass")
    t2.remove_key(keys[0]["id"])
    with pytest.raises(vmbackup.NotFoundError):
        t2.remove_key(keys[0]["id"])
    dest = tmp_path / "enc.img"
    vmbackup.restore(t2, "enc-1", volumes=[("disk0", dest)])
    assert same_bytes(volume, dest)
    assert t2.get_backup("enc-1").vm_metadata["password"] == "pw-hunter2"


def test_a_key_for_an_unencrypted_repository_is_refused(target, target_dir):
    assert target.encryption == "none"
    with pytest.raises(vmbackup.FailedPreconditionError, match="not encrypted"):
        vmbackup.BackupTarget.open({"type": "file", "endpoint": str(target_dir)}, passphrase="p")
    with pytest.raises(vmbackup.FailedPreconditionError):
        target.list_keys()


def test_freeze_and_thaw_hooks_open_one_window_for_all_volumes(target, volume):
    calls = []
    info = vmbackup.backup(target, "py-frozen", volumes={"a": str(volume), "b": str(volume)},
                           freeze=lambda: calls.append("freeze"),
                           thaw=lambda: calls.append("thaw"))
    assert calls == ["freeze", "thaw"]
    assert info.freeze_seconds is not None and 0 <= info.freeze_seconds <= info.seconds + 1
    assert [v.consistency for v in info.volumes] == ["fs-frozen", "fs-frozen"]
    assert {v.snapshot for v in info.volumes} <= {"reflink", "direct"}
    assert target.get_backup("py-frozen").freeze_seconds == info.freeze_seconds

    plain = vmbackup.backup(target, "py-not-frozen", volumes={"a": str(volume)})
    assert plain.freeze_seconds is None
    assert plain.volumes[0].consistency in ("crash-consistent", "unknown")

    def refuse():
        raise RuntimeError("guest agent is not answering")

    calls.clear()
    with pytest.raises(vmbackup.FailedPreconditionError, match="guest agent is not answering"):
        vmbackup.backup(target, "py-refused", volumes={"a": str(volume)}, freeze=refuse,
                        thaw=lambda: calls.append("thaw"))
    assert calls == []  # nothing froze, so nothing thaws
    assert "py-refused" not in {b.name for b in target.list_backups()}
    with pytest.raises(vmbackup.InvalidArgumentError, match="freeze"):
        vmbackup.backup(target, "py-bad-hook", volumes={"a": str(volume)}, freeze=42)
    with pytest.raises(vmbackup.InvalidArgumentError, match="freeze_timeout"):
        vmbackup.backup(target, "py-bad-deadline", volumes={"a": str(volume)}, freeze_timeout=-1)
    unbounded = vmbackup.backup(target, "py-no-deadline", volumes={"a": str(volume)},
                                freeze=lambda: None, thaw=lambda: None, freeze_timeout=0)
    assert unbounded.freeze_seconds is not None


def test_vm_state_running_refuses_unfrozen_direct_reads_and_stopped_is_recorded(target, volume):
    # Whether this filesystem can clone decides what a running VM's backup may do.
    probe = vmbackup.backup(target, "py-probe", volumes={"a": str(volume)})
    clones = probe.volumes[0].snapshot == "reflink"
    if clones:
        info = vmbackup.backup(target, "py-running", volumes={"a": str(volume)},
                               vm_state="running")
        assert info.volumes[0].consistency == "crash-consistent"
    else:
        assert probe.volumes[0].snapshot == "direct"
        with pytest.raises(vmbackup.FailedPreconditionError, match="running VM"):
            vmbackup.backup(target, "py-running", volumes={"a": str(volume)}, vm_state="running")
        info = vmbackup.backup(target, "py-running", volumes={"a": str(volume)},
                               vm_state="running", allow_inconsistent=True)
        assert info.volumes[0].consistency == "unknown"
        kept = vmbackup.backup(target, "py-running-frozen", volumes={"a": str(volume)},
                               vm_state="running", freeze=lambda: None, thaw=lambda: None)
        assert kept.volumes[0].consistency == "fs-frozen"
    stopped = vmbackup.backup(target, "py-stopped", volumes={"a": str(volume)},
                              vm_state="stopped")
    assert stopped.volumes[0].consistency == "stopped"
    with pytest.raises(vmbackup.InvalidArgumentError, match="vm_state"):
        vmbackup.backup(target, "py-bad-state", volumes={"a": str(volume)}, vm_state="paused")


def test_qemu_disk_full_then_incremental_from_the_dirty_bitmap(target, tmp_path):
    """A disk of a running QEMU (docs/providers/qemu.md): the location string selects the provider;
    the second backup of the same VM reads only what the bitmap says changed."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "support"))
    from qemu_vm import QemuVm

    mib = 1024 * 1024
    vm = QemuVm(tmp_path, disks=1, size=16 * mib)
    try:
        vm.fill(0, 4 * mib, 0x11)
        full = vmbackup.backup(target, "py-q1", volumes={"disk0": vm.location()},
                               vm_metadata={"name": "pyvm"})
        v = full.volumes[0]
        assert (v.provider, v.snapshot, v.consistency) == ("qemu", "fleece", "crash-consistent")
        assert v.checkpoint.startswith("vmbackup-") and v.changed_bytes is None
        assert vm.bitmaps() == [v.checkpoint]

        vm.fill(2 * mib, 64 * 1024, 0x22)
        inc = vmbackup.backup(target, "py-q2", volumes={"disk0": vm.location()},
                              vm_metadata={"name": "pyvm"})
        assert inc.parent == "py-q1"
        assert inc.volumes[0].changed_bytes == 64 * 1024
        assert vm.bitmaps() == [inc.volumes[0].checkpoint]
        out = tmp_path / "restored.img"
        vmbackup.restore(target, "py-q2", volumes={"disk0": str(out)})
        assert out.read_bytes() == bytes(vm.models[0])

        with pytest.raises(vmbackup.InvalidArgumentError, match="no node"):
            vmbackup.backup(target, "py-q3", volumes={"disk0": f"qemu:{vm.qmp}"})
        with pytest.raises(vmbackup.NotFoundError, match="nosuch"):
            vmbackup.backup(target, "py-q3", volumes={"disk0": f"qemu:{vm.qmp}?node=nosuch"})
    finally:
        vm.close()


def test_rbd_image_full_then_incremental_from_rbd_diff(target, volume, tmp_path):
    """A Ceph RBD image (docs/providers/rbd.md) through its location string."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "support"))
    from rbd_image import RbdImage

    img = RbdImage(volume)
    try:
        full = vmbackup.backup(target, "py-r1", volumes={"disk0": img.location()},
                               vm_metadata={"name": "pyrvm"})
        v = full.volumes[0]
        assert (v.provider, v.snapshot, v.changed_bytes) == ("rbd", "rbd", None)
        img.write_random(64 * 1024)
        inc = vmbackup.backup(target, "py-r2", volumes={"disk0": img.location()},
                              vm_metadata={"name": "pyrvm"})
        assert inc.parent == "py-r1" and 0 < inc.volumes[0].changed_bytes <= 64 * 1024
        want = img.export(inc.volumes[0].checkpoint, tmp_path / "want.img")
        out = tmp_path / "restored.img"
        vmbackup.restore(target, "py-r2", volumes={"disk0": str(out)})
        assert out.read_bytes() == want
        with pytest.raises(vmbackup.NotFoundError, match="does not exist"):
            vmbackup.backup(target, "py-r3",
                            volumes={"disk0": f"rbd:{img.spec}-missing?conf={img.conf}"})
    finally:
        img.remove()
