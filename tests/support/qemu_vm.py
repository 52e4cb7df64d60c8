"""A QEMU process for the Python and CLI tests of the qemu provider (issue #12).

qemu-system-x86_64 -machine none (no KVM, no guest) with qcow2 disks disk0, disk1, ... attached by
-blockdev; the provider's QMP socket (qmp.sock) and the test's own monitor (test-qmp.sock). The test
writes with HMP qemu-io between backups and keeps a model of what each disk holds. Needs
qemu-system-x86 and qemu-utils (scripts/test.sh installs them); without them the fixture fails and
says so.
"""

import json
import os
import signal
import socket
import subprocess

MIB = 1024 * 1024


class QemuVm:
    def __init__(self, workdir, disks=1, size=16 * MIB):
        self.dir = str(workdir)
        self.size = size
        self.qmp = os.path.join(self.dir, "qmp.sock")
        self.models = [bytearray(size) for _ in range(disks)]
        args = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
                "-daemonize", "-pidfile", os.path.join(self.dir, "qemu.pid"),
                "-qmp", f"unix:{self.qmp},server=on,wait=off",
                "-qmp", f"unix:{self.dir}/test-qmp.sock,server=on,wait=off"]
        for i in range(disks):
            img = os.path.join(self.dir, f"disk{i}.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, str(size)], check=True)
            args += ["-blockdev", f"driver=file,filename={img},node-name=file{i}",
                     "-blockdev", f"driver=qcow2,file=file{i},node-name=disk{i}"]
        try:
            subprocess.run(args, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise AssertionError("cannot start QEMU (scripts/test.sh installs qemu-system-x86 and "
                                 f"qemu-utils): {e}") from e
        with open(os.path.join(self.dir, "qemu.pid")) as f:
            self.pid = int(f.read().strip())
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.connect(os.path.join(self.dir, "test-qmp.sock"))
        self._f = self._sock.makefile("rw")
        json.loads(self._f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, name, args=None):
        self._f.write(json.dumps({"execute": name, "arguments": args or {}}) + "\n")
        self._f.flush()
        while True:
            r = json.loads(self._f.readline())
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise AssertionError(f"{name}: {r['error']}")

    def location(self, disk=0):
        return f"qemu:{self.qmp}?node=disk{disk}"

    def fill(self, offset, length, byte, disk=0):
        """Writes `length` bytes of `byte` at `offset` (no backup may be running)."""
        out = self.cmd("human-monitor-command",
                       {"command-line": f'qemu-io disk{disk} "write -P {byte} {offset} {length}"'})
        assert "rror" not in out, out
        self.models[disk][offset:offset + length] = bytes([byte]) * length

    def bitmaps(self, disk=0):
        for n in self.cmd("query-named-block-nodes", {"flat": True}):
            if n.get("node-name") == f"disk{disk}":
                return sorted(b["name"] for b in n.get("dirty-bitmaps", []))
        return []

    def close(self):
        try:
            self._sock.close()
        finally:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
