"""Fixtures for the vmbackup Python binding tests: a local-directory target and generated volumes."""

import os
import random

import pytest

import vmbackup

MIB = 1024 * 1024


def make_volume(path, size=5 * MIB + 12345, seed=1):
    """Writes a sparse test volume and returns its path.

    Layout: [0, 1 MiB) random; [1, 2 MiB) written zeros; [2, 3.5 MiB) a hole except 4 KiB of random
    data at 2.75 MiB; [3.5 MiB, size) random, ending in an odd-sized tail.
    """
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(rng.randbytes(MIB))
        f.write(bytes(MIB))
        f.seek(2 * MIB + 3 * MIB // 4)
        f.write(rng.randbytes(4096))
        start = 3 * MIB + MIB // 2
        f.seek(start)
        f.write(rng.randbytes(size - start))
    return str(path)


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x = fa.read(1 << 20)
            y = fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


@pytest.fixture
def target_dir(tmp_path):
    d = tmp_path / "target"
    d.mkdir()
    return d


@pytest.fixture
def target(target_dir):
    return vmbackup.BackupTarget.open({"type": "file", "endpoint": str(target_dir)})


@pytest.fixture
def volume(tmp_path):
    return make_volume(tmp_path / "source.img")


def names(target):
    return [b.name for b in target.list_backups()]
