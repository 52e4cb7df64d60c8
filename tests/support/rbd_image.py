"""A Ceph RBD image for the Python and CLI tests of the rbd provider (issue #12).

Uses the cluster scripts/s3-server.sh starts (mon + memstore OSD; it exports CEPH_CONF, which
scripts/test.sh passes on) through the `ceph` and `rbd` command-line tools of ceph-common. Without
CEPH_CONF the tests fail and say how to start the cluster.
"""

import os
import subprocess
import uuid

POOL = "vmbackup-rbd-test"


def ceph_conf():
    conf = os.environ.get("CEPH_CONF", "")
    assert conf and os.path.exists(conf), (
        "CEPH_CONF is not set: start the test cluster with "
        "`eval \"$(bash scripts/s3-server.sh start)\"` (scripts/test.sh does)")
    return conf


def _run(*args):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout


class RbdImage:
    """A fresh image holding the bytes of `source` (a file)."""

    def __init__(self, source):
        self.conf = ceph_conf()
        pools = _run("ceph", "-c", self.conf, "osd", "pool", "ls").split()
        if POOL not in pools:
            _run("ceph", "-c", self.conf, "osd", "pool", "create", POOL, "8")
            _run("rbd", "-c", self.conf, "pool", "init", POOL)
        self.name = "img-" + uuid.uuid4().hex[:12]
        self.spec = f"{POOL}/{self.name}"
        _run("rbd", "-c", self.conf, "import", "--no-progress", str(source), self.spec)

    def location(self):
        return f"rbd:{self.spec}?conf={self.conf}"

    def write_random(self, total=256 * 1024):
        """Writes `total` bytes in 64 KiB random writes at random offsets."""
        _run("rbd", "-c", self.conf, "bench", "--io-type", "write", "--io-size", "65536",
             "--io-total", str(total), "--io-pattern", "rand", self.spec)

    def export(self, snapshot, dest):
        _run("rbd", "-c", self.conf, "export", "--no-progress", f"{self.spec}@{snapshot}",
             str(dest))
        with open(dest, "rb") as f:
            return f.read()

    def snapshots(self):
        out = _run("rbd", "-c", self.conf, "snap", "ls", "--format", "json", self.spec)
        import json
        return sorted(s["name"] for s in json.loads(out))

    def remove(self):
        subprocess.run(["rbd", "-c", self.conf, "snap", "purge", self.spec], capture_output=True)
        subprocess.run(["rbd", "-c", self.conf, "rm", "--no-progress", self.spec],
                       capture_output=True)
