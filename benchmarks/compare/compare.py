#!/usr/bin/env python3
"""Side-by-side benchmark: vmbackupctl against restic and borg on a synthetic VM disk (issue #3).

Run through benchmarks/compare.sh, which builds vmbackupctl and gen_disk and installs the peers.
Standard library only (Debian's /usr/bin/python3 is enough).

What one run does (repeated --runs times; every figure reported is the median over the runs):
  1. measure the machine: durable sequential write (dd conv=fdatasync), page-cache and cold read;
  2. per tool, into a fresh repository: full backup; rewrite 1 % of the disk as scattered 64 KiB
     writes, incremental; (vmbackupctl only) incremental with the host's dirty map, into a hard-link
     clone of the repository as it was after the full backup; put the base content back, rewrite the
     same bytes as a few contiguous runs ("clustered"), incremental; put the base content back;
  3. per tool: drop the page cache, restore the full backup, until durable.
Then (vmbackupctl only) the sparse volumes: 64 GiB holding little data, 1 GiB vs 1 TiB holding the same
1 GiB. Every timed command runs until its output is durable: `sync -f <output dir>` is inside the
timed region. CPU seconds (user+sys) and peak RSS come from wait4() of the tool's process tree.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
GiB = 1 << 30
TOOLS = ("vmbackupctl", "restic", "borg")


def log(msg=""):
    print(msg, flush=True)


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def run(cmd, **kw):
    """Untimed helper command; raises on failure."""
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def timed(cmd, sync_dir, cwd=None, env=None):
    """Runs cmd, then `sync -f sync_dir`, all inside the timed region.

    Returns dict(seconds, cpu (user+sys of the tool's process tree), rss_kib (peak), stdout)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n"
                               f"{err.read()[-3000:]}")
        s = subprocess.run(["sync", "-f", sync_dir])
        t1 = time.monotonic()
        if s.returncode != 0:
            raise RuntimeError(f"sync -f {sync_dir} failed")
        out.seek(0)
        return {"seconds": t1 - t0, "cpu": ru.ru_utime + ru.ru_stime, "user": ru.ru_utime,
                "sys": ru.ru_stime, "rss_kib": ru.ru_maxrss, "stdout": out.read(),
                "load": loadavg()}


def du(path):
    """(apparent bytes, on-disk bytes) of a directory tree, hard links counted once."""
    seen = set()
    apparent = ondisk = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            apparent += st.st_size
            ondisk += st.st_blocks * 512
    return apparent, ondisk


def drop_caches():
    """sync + drop the page cache; False when not permitted."""
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def rmtree(path):
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 * MiB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def warm(path):
    with open(path, "rb", buffering=0) as f:
        while f.read(16 * MiB):
            pass


# ---------------------------------------------------------------------------------------------
# machine limits

def dd_rate(args):
    """Runs dd, returns bytes/s from its summary line."""
    r = subprocess.run(["dd", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError("dd failed: " + r.stderr)
    m = re.search(r"^(\d+) bytes.*copied, ([\d.]+) s", r.stderr, re.M)
    return int(m.group(1)) / float(m.group(2))


def measure_disk(work, mb=1500):
    f = os.path.join(work, "ddtest.bin")
    count = mb * 1000 * 1000 // (4 * MiB)
    w = dd_rate(["if=/dev/zero", f"of={f}", "bs=4M", f"count={count}", "conv=fdatasync"])
    r_cache = dd_rate([f"if={f}", "of=/dev/null", "bs=4M"])
    r_cold = None
    if drop_caches():
        r_cold = dd_rate([f"if={f}", "of=/dev/null", "bs=4M"])
    os.unlink(f)
    return {"write": w, "read_cache": r_cache, "read_cold": r_cold, "load": loadavg()}


def measure_cpu(work, disk):
    """Single-core rates of the stages on 16 MiB of the disk's compressible and of its random
    regions: SHA-256 (OpenSSL through hashlib, 256 KiB buffers) from CPU time, so that other load
    on the machine does not lower it; LZ4 -1 in independent 256 KiB blocks from the lz4 CLI's
    in-memory benchmark (wall time: lower when the machine is busy, which makes the limit lenient)."""
    res = {}
    for name, region in (("text", 1), ("random", 0)):
        sample = os.path.join(work, f"lz4sample-{name}.bin")
        with open(disk, "rb") as src, open(sample, "wb") as dst:
            for i in range(4):  # 4 regions of this kind = 16 MiB
                src.seek((16 * i + region) * 4 * MiB)
                dst.write(src.read(4 * MiB))
        size = os.path.getsize(sample)
        reps = 8
        big = sample + ".x8"
        with open(sample, "rb") as f:
            data = f.read()
        with open(big, "wb") as f:
            for _ in range(reps):
                f.write(data)
        if name != "random":
            h = hashlib.sha256
            t0 = time.process_time()
            for _ in range(reps):
                for off in range(0, size, 256 * 1024):
                    h(data[off:off + 256 * 1024]).digest()
            res["sha256"] = reps * size / (time.process_time() - t0)
        # LZ4: the CLI's in-memory benchmark (wall time, best of its iterations)
        r = subprocess.run(["lz4", "-b1", "-B5", "-i3", sample], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        lines = [l for l in r.stdout.replace("\r", "\n").split("\n") if "MB/s" in l]
        m = re.search(r"\(\s*([\d.]+)\),\s*([\d.]+) MB/s ,\s*([\d.]+) MB/s", lines[-1])
        res[f"lz4_ratio_{name}"] = float(m.group(1))
        res[f"lz4c_{name}"] = float(m.group(2)) * 1e6
        res[f"lz4d_{name}"] = float(m.group(3)) * 1e6
        for p in (sample, big):
            os.unlink(p)
    return res


# ---------------------------------------------------------------------------------------------
# tools

class Tool:
    name = ""

    def __init__(self, work, disk, env):
        self.work, self.disk, self.env = work, disk, env
        self.repo = os.path.join(work, f"repo-{self.name}")
        self.ids = {}

    def init(self):
        raise NotImplementedError

    def backup(self, label):
        raise NotImplementedError

    def restore(self, label, dest):
        """Timed restore of backup `label` into directory dest; returns (timing, restored file)."""
        raise NotImplementedError

    def cleanup(self):
        rmtree(self.repo)


class Vmb(Tool):
    name = "vmbackupctl"

    def __init__(self, work, disk, env, exe, threads):
        super().__init__(work, disk, env)
        self.exe = exe
        self.glob = ["--threads", str(threads)] if threads else []

    def init(self):
        rmtree(self.repo)
        os.makedirs(self.repo)
        run([self.exe, "target", "test", "--target", self.repo, "--json"])

    def backup(self, label, repo=None, parent=None, dirty_map=None, disk=None, volume="disk"):
        repo = repo or self.repo
        # A named VM: its backups are each other's fingerprint references (unnamed ones never are).
        cmd = [self.exe, *self.glob, "backup", "--target", repo, "--volume",
               f"{volume}={disk or self.disk}", "--vm-name", "bench-vm", "--name", label, "--json"]
        if parent:
            cmd += ["--parent", parent]
        if dirty_map:
            cmd += ["--dirty-map", dirty_map]
        t = timed(cmd, repo)
        t["info"] = json.loads(t.pop("stdout"))["backup"]
        return t

    def restore(self, label, dest):
        t = timed([self.exe, *self.glob, "restore", label, "--target", self.repo, "--dest-dir",
                   dest, "--json"], dest)
        t["info"] = json.loads(t.pop("stdout"))["restore"]
        return t, os.path.join(dest, "disk.img")


class Restic(Tool):
    name = "restic"

    def init(self):
        rmtree(self.repo)
        run(["restic", "init", "-q", "-r", self.repo], env=self.env)

    def backup(self, label):
        t = timed(["restic", "-r", self.repo, "backup", "--json", "--host", "bench", self.disk],
                  self.repo, env=self.env)
        summary = [json.loads(l) for l in t.pop("stdout").splitlines()
                   if '"summary"' in l][-1]
        self.ids[label] = summary["snapshot_id"]
        t["info"] = {k: summary.get(k) for k in ("data_added", "total_bytes_processed",
                                                  "snapshot_id")}
        return t

    def restore(self, label, dest):
        t = timed(["restic", "-r", self.repo, "restore", self.ids[label], "--target", dest],
                  dest, env=self.env)
        t.pop("stdout")
        return t, os.path.join(dest, self.disk.lstrip("/"))


class Borg(Tool):
    name = "borg"
    create_opts = ["-C", "lz4", "--chunker-params", "fixed,4194304"]

    def init(self):
        rmtree(self.repo)
        run(["borg", "init", "-e", "none", self.repo], env=self.env)

    def backup(self, label):
        t = timed(["borg", "create", *self.create_opts, f"{self.repo}::{label}", self.disk],
                  self.repo, env=self.env)
        t.pop("stdout")
        return t

    def restore(self, label, dest):
        t = timed(["borg", "extract", "--sparse", f"{self.repo}::{label}"], dest, cwd=dest,
                  env=self.env)
        t.pop("stdout")
        return t, os.path.join(dest, self.disk.lstrip("/"))


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/var/tmp/vmb-perf")
    ap.add_argument("--vmbackupctl")
    ap.add_argument("--gen", help="gen_disk binary")
    ap.add_argument("--report", metavar="JSON",
                    help="only print the tables and goals of an earlier run's JSON file")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=4096)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--threads", type=int, default=0, help="vmbackupctl --threads (0: default)")
    ap.add_argument("--no-sparse", action="store_true", help="skip the 64 GiB / 1 TiB volumes")
    ap.add_argument("--no-verify", action="store_true",
                    help="do not check the restored images of run 1 against the source")
    ap.add_argument("--borg-create-opts", default=None,
                    help="replace borg create options (default: -C lz4 --chunker-params "
                         "fixed,4194304)")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the disk images")
    a = ap.parse_args()
    if a.report:
        doc = json.load(open(a.report))
        report(doc, doc["config"]["tools"])
        return
    if not a.vmbackupctl or not a.gen:
        sys.exit("--vmbackupctl and --gen are required")
    tools = [t for t in a.tools.split(",") if t]
    for t in tools:
        if t not in TOOLS:
            sys.exit(f"unknown tool {t}")
    if a.borg_create_opts is not None:
        Borg.create_opts = a.borg_create_opts.split()
    os.makedirs(a.work, exist_ok=True)
    work = os.path.realpath(a.work)
    env = dict(os.environ, RESTIC_PASSWORD="vmb-bench",
               RESTIC_CACHE_DIR=os.path.join(work, "restic-cache"),
               BORG_BASE_DIR=os.path.join(work, "borg-base"),
               BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
    disk = os.path.join(work, "disk.img")
    gen = a.gen
    started = datetime.datetime.now()
    doc = {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": {"nproc": os.cpu_count(), "kernel": platform.release(),
                    "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                 if l.startswith("model name")), "?")},
        "versions": {},
        "config": {"runs": a.runs, "size_mib": a.size_mib, "tools": tools,
                   "threads": a.threads or None, "borg_create_opts": Borg.create_opts,
                   "write_size": 65536, "fraction": 0.01},
        "load": {"start": loadavg()},
        "limits_samples": [],
        "samples": {},  # tool -> op -> [sample]
        "notes": [],
    }
    vers = {"vmbackupctl": [a.vmbackupctl, "version"], "restic": ["restic", "version"],
            "borg": ["borg", "--version"]}
    for t in tools:
        doc["versions"][t] = run(vers[t]).strip().splitlines()[0]
    log(f"== vmbackup side-by-side benchmark, {doc['date']}, work dir {work}")
    log(f"   tools: {', '.join(doc['versions'][t] for t in tools)}")
    log(f"   load average at start: {doc['load']['start']}")

    # ---- the disk
    t0 = time.monotonic()
    run([gen, "base", disk, "--size-mib", str(a.size_mib)])
    log(f"-- generated {a.size_mib} MiB disk in {time.monotonic() - t0:.1f} s: "
        f"{os.stat(disk).st_blocks * 512 / MiB:.0f} MiB allocated")
    base_sha = None if a.no_verify else sha256_file(disk)
    cpu_rates = measure_cpu(work, disk)
    doc["cpu_rates"] = cpu_rates
    log("-- stage rates (1 core): SHA-256 %.2f GB/s; LZ4 -1 256 KiB blocks: text %.2fx %.0f MB/s "
        "(decode %.0f MB/s), random %.0f MB/s (decode %.0f MB/s)" % (
            cpu_rates["sha256"] / 1e9, cpu_rates["lz4_ratio_text"], cpu_rates["lz4c_text"] / 1e6,
            cpu_rates["lz4d_text"] / 1e6, cpu_rates["lz4c_random"] / 1e6,
            cpu_rates["lz4d_random"] / 1e6))

    samples = doc["samples"]

    def add(tool, op, s):
        samples.setdefault(tool, {}).setdefault(op, []).append(s)

    dm_scattered = os.path.join(work, "dirty-scattered.json")
    dm_clustered = os.path.join(work, "dirty-clustered.json")
    cache_dropped = True
    for r in range(a.runs):
        lim = measure_disk(work)
        doc["limits_samples"].append(lim)
        log(f"\n== run {r + 1}/{a.runs}: disk write {lim['write'] / 1e6:.0f} MB/s (fdatasync), "
            f"read {lim['read_cache'] / 1e9:.1f} GB/s cached, "
            f"{(lim['read_cold'] or 0) / 1e6:.0f} MB/s cold; load {lim['load']}")
        warm(disk)  # backups read the disk from the page cache, for every tool
        objs = {}
        for name in tools:
            tool = (Vmb(work, disk, env, a.vmbackupctl, a.threads) if name == "vmbackupctl"
                    else Restic(work, disk, env) if name == "restic" else Borg(work, disk, env))
            objs[name] = tool
            l0 = loadavg()
            tool.init()
            s = tool.backup("full")
            s["storage"] = du(tool.repo)
            add(name, "full", s)
            if name == "vmbackupctl":
                clone = tool.repo + "-dm"
                rmtree(clone)
                run(["cp", "-al", tool.repo, clone])
            run([gen, "mutate", disk, "--mode", "scattered", "--dirty-map", dm_scattered])
            if "dirty_blocks" not in doc:
                bs = 256 * 1024
                if name == "vmbackupctl":
                    bs = samples[name]["full"][-1]["info"]["volumes"][0]["block_size"]
                blocks = set()
                for o, n in json.load(open(dm_scattered))["disk"]:
                    blocks.update(range(o // bs, (o + n - 1) // bs + 1))
                doc["dirty_blocks"] = len(blocks)
                doc["dirty_writes"] = len(json.load(open(dm_scattered))["disk"])
            before = du(tool.repo)
            s = tool.backup("incr-scattered")
            after = du(tool.repo)
            s["storage"] = [after[0] - before[0], after[1] - before[1]]
            add(name, "incr_scattered", s)
            if name == "vmbackupctl":
                before = du(clone)
                s = tool.backup("incr-dirty-map", repo=clone, parent="full",
                                dirty_map=dm_scattered)
                after = du(clone)
                s["storage"] = [after[0] - before[0], after[1] - before[1]]
                add(name, "incr_dirty_map", s)
                rmtree(clone)
            run([gen, "revert", disk, "--mode", "scattered"])
            run([gen, "mutate", disk, "--mode", "clustered", "--dirty-map", dm_clustered])
            before = du(tool.repo)
            s = tool.backup("incr-clustered")
            after = du(tool.repo)
            s["storage"] = [after[0] - before[0], after[1] - before[1]]
            add(name, "incr_clustered", s)
            run([gen, "revert", disk, "--mode", "clustered"])
            l1 = loadavg()
            line = "   %-12s full %6.2f s | incr scattered %6.2f s | " % (
                name, samples[name]["full"][-1]["seconds"],
                samples[name]["incr_scattered"][-1]["seconds"])
            if name == "vmbackupctl":
                line += "dirty map %5.2f s | " % samples[name]["incr_dirty_map"][-1]["seconds"]
            line += "clustered %6.2f s   (load %s -> %s)" % (
                samples[name]["incr_clustered"][-1]["seconds"], l0, l1)
            log(line)
            doc.setdefault("load_per_tool", []).append(
                {"run": r + 1, "tool": name, "phase": "backups", "start": l0, "end": l1})
        if r == 0 and base_sha and sha256_file(disk) != base_sha:
            raise RuntimeError("the disk differs from its base after the reverts")
        for name in tools:
            tool = objs[name]
            dest = os.path.join(work, f"restore-{name}")
            rmtree(dest)
            os.makedirs(dest)
            l0 = loadavg()
            cache_dropped = drop_caches() and cache_dropped
            s, path = tool.restore("full", dest)
            s["cache_dropped"] = cache_dropped
            st = os.stat(path)
            s["restored_allocated"] = st.st_blocks * 512
            add(name, "restore", s)
            ok = ""
            if r == 0 and base_sha:
                ok = "verified" if sha256_file(path) == base_sha else "MISMATCH"
                s["verified"] = ok == "verified"
                if ok != "verified":
                    doc["notes"].append(f"{name}: restored image differs from the source")
            l1 = loadavg()
            log("   %-12s restore %6.2f s, %5.0f MiB allocated %s  (load %s -> %s)" % (
                name, s["seconds"], st.st_blocks * 512 / MiB, ok, l0, l1))
            doc.setdefault("load_per_tool", []).append(
                {"run": r + 1, "tool": name, "phase": "restore", "start": l0, "end": l1})
            rmtree(dest)
            tool.cleanup()
        rmtree(env["RESTIC_CACHE_DIR"])
        rmtree(env["BORG_BASE_DIR"])
    if not cache_dropped:
        doc["notes"].append("the page cache could NOT be dropped before restores")
    lim = measure_disk(work)
    doc["limits_samples"].append(lim)
    if not a.keep:
        os.unlink(disk)

    # ---- sparse volumes (vmbackupctl only)
    if "vmbackupctl" in tools and not a.no_sparse:
        vols = {
            "sparse_64g_256m": ("sp64g.img", ["--size-mib", "65536", "--data-mib", "256"]),
            "vol_1g_1g": ("v1g.img", ["--size-mib", "1024", "--data-mib", "1024", "--data-kind",
                                      "rc"]),
            "sparse_1t_1g": ("sp1t.img", ["--size-mib", str(1 << 20), "--data-mib", "1024",
                                          "--data-kind", "rc"]),
        }
        log("\n== sparse volumes (vmbackupctl only)")
        paths = {}
        for key, (fname, args) in vols.items():
            paths[key] = os.path.join(work, fname)
            run([gen, "sparse", paths[key], *args])
        for r in range(a.runs):
            for key in vols:
                tool = Vmb(work, paths[key], env, a.vmbackupctl, a.threads)
                tool.init()
                l0 = loadavg()
                s = tool.backup("full")
                s["storage"] = du(tool.repo)
                s["volume_index_bytes"] = du(os.path.join(tool.repo, "volumes"))[0]
                add("vmbackupctl", key, s)
                log("   run %d %-16s %6.2f s, CPU %5.2f s, RSS %4.0f MiB, stored %5.0f MiB, "
                    "volume index %.1f MiB (load %s -> %s)" % (
                        r + 1, key, s["seconds"], s["cpu"], s["rss_kib"] / 1024,
                        s["storage"][0] / MiB, s["volume_index_bytes"] / MiB, l0, loadavg()))
                tool.cleanup()
        if not a.keep:
            for p in paths.values():
                os.unlink(p)
    doc["load"]["end"] = loadavg()
    doc["wall_seconds"] = time.monotonic() - t0

    report(doc, tools)
    out = a.json_out or os.path.join(
        os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "results",
        f"compare-{started.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
    log(f"\nJSON: {out}")


# ---------------------------------------------------------------------------------------------

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def report(doc, tools):
    S = doc["samples"]
    rates = doc["cpu_rates"]
    ls = doc["limits_samples"]
    write = med([l["write"] for l in ls])
    read_cache = med([l["read_cache"] for l in ls])
    read_cold = med([l["read_cold"] for l in ls]) or read_cache
    doc["limits"] = {"write_Bps": write, "read_cache_Bps": read_cache, "read_cold_Bps": read_cold}
    sha, lzc_t, lzc_r = rates["sha256"], rates["lz4c_text"], rates["lz4c_random"]
    lzd_t = rates["lz4d_text"]
    cores = 2

    summary = {}
    for tool, ops in S.items():
        summary[tool] = {}
        for op, xs in ops.items():
            e = {"n": len(xs), "seconds": med([x["seconds"] for x in xs]),
                 "seconds_min": min(x["seconds"] for x in xs),
                 "seconds_max": max(x["seconds"] for x in xs),
                 "cpu": med([x["cpu"] for x in xs]),
                 "rss_mib_max": max(x["rss_kib"] for x in xs) / 1024,
                 "rss_mib_median": med([x["rss_kib"] for x in xs]) / 1024}
            if all("storage" in x for x in xs):
                e["storage_apparent"] = med([x["storage"][0] for x in xs])
                e["storage_ondisk"] = med([x["storage"][1] for x in xs])
            summary[tool][op] = e
    doc["summary"] = summary

    # ---- the limit of each operation, from vmbackupctl's own byte counts (the same workload for
    # every tool): max(CPU work of SHA-256 + LZ4 over 2 cores, bytes written / write speed,
    # bytes read / read speed)
    limits = {}
    vs = S.get("vmbackupctl", {})

    def info(op):
        xs = vs.get(op) or []
        return xs[0].get("info") if xs else None

    def comp_cost(nbytes):  # LZ4 seconds for new data: half text, half random (as in the disk)
        return nbytes * (0.5 / lzc_t + 0.5 / lzc_r)

    full = info("full")
    if full:
        v = full["volumes"][0]
        data = v["data_blocks"] * v["block_size"]
        zero = v["zero_blocks"] * v["block_size"]
        cpu = (data / sha + comp_cost(full["bytes_new"])) / cores
        wr = full["bytes_stored"] / write
        rd = (data + zero) / read_cache
        limits["full"] = {"cpu": cpu, "write": wr, "read": rd, "limit": max(cpu, wr, rd),
                          "bytes_read": data + zero, "bytes_hashed": data,
                          "bytes_written": full["bytes_stored"]}
        # restore: read the stored bytes cold, decode, verify SHA-256, write the data blocks
        stored_text = (full["bytes_new"] / 2) / rates["lz4_ratio_text"]
        cpu_r = (data / sha + (full["bytes_new"] / 2) / lzd_t) / cores
        wr_r = data / write
        rd_r = full["bytes_stored"] / read_cold
        limits["restore"] = {"cpu": cpu_r, "write": wr_r, "read": rd_r,
                             "limit": max(cpu_r, wr_r, rd_r), "bytes_read": full["bytes_stored"],
                             "bytes_written": data, "stored_text_estimate": stored_text}
    for op in ("incr_scattered", "incr_clustered", "incr_dirty_map"):
        i = info(op)
        if not i:
            continue
        v = i["volumes"][0]
        bs = v["block_size"]
        if op == "incr_dirty_map":
            # only the blocks the dirty map touches are read and hashed
            hashed = rd_bytes = doc.get("dirty_blocks", 0) * bs
        else:
            hashed = v["data_blocks"] * bs
            rd_bytes = (v["data_blocks"] + v["zero_blocks"]) * bs
        cpu = (hashed / sha + comp_cost(i["bytes_new"])) / cores
        wr = i["bytes_stored"] / write
        rd = rd_bytes / read_cache
        limits[op] = {"cpu": cpu, "write": wr, "read": rd, "limit": max(cpu, wr, rd),
                      "bytes_read": rd_bytes, "bytes_hashed": hashed,
                      "bytes_written": i["bytes_stored"]}
    doc["op_limits"] = limits

    # ---- table
    ops = [("full", "full backup"), ("incr_scattered", "incr, 1 % scattered"),
           ("incr_clustered", "incr, 1 % clustered"), ("incr_dirty_map", "incr, dirty map"),
           ("restore", "restore full")]
    log("\n== results: medians of %d runs (wall time includes sync -f of the output)" %
        doc["config"]["runs"])
    log("   limits: write %.0f MB/s (fdatasync), read %.1f GB/s cached / %.0f MB/s cold; "
        "SHA-256 %.2f GB/s, LZ4 text %.0f MB/s, random %.0f MB/s per core; %d cores" % (
            write / 1e6, read_cache / 1e9, read_cold / 1e6, sha / 1e9, lzc_t / 1e6,
            lzc_r / 1e6, cores))
    hdr = ("| operation | tool | median s (min–max) | × limit | restic / this | borg / this | "
           "CPU s | peak RSS MiB | storage added MB (apparent / on disk) |")
    log(hdr)
    log("|" + "---|" * 9)
    for op, label in ops:
        lim = limits.get(op, {}).get("limit")
        for tool in tools:
            e = summary.get(tool, {}).get(op)
            if not e:
                continue
            ratios = []
            for peer in ("restic", "borg"):
                pe = summary.get(peer, {}).get(op)
                ratios.append("%.2f×" % (pe["seconds"] / e["seconds"]) if pe and peer != tool
                              else "")
            st = ("%.0f / %.0f" % (e["storage_apparent"] / 1e6, e["storage_ondisk"] / 1e6)
                  if "storage_apparent" in e else "")
            log("| %s | %s | %.2f (%.2f–%.2f) | %s | %s | %s | %.2f | %.0f | %s |" % (
                label, tool, e["seconds"], e["seconds_min"], e["seconds_max"],
                "%.2f" % (e["seconds"] / lim) if lim else "", ratios[0], ratios[1], e["cpu"],
                e["rss_mib_max"], st))
    log("\n   limit per operation (s): " + "; ".join(
        "%s %.2f (cpu %.2f, write %.2f, read %.2f)" % (k, v["limit"], v["cpu"], v["write"],
                                                        v["read"]) for k, v in limits.items()))
    for k in ("sparse_64g_256m", "vol_1g_1g", "sparse_1t_1g"):
        e = summary.get("vmbackupctl", {}).get(k)
        if e:
            log("   %-16s %.2f s (%.2f–%.2f), CPU %.2f s, peak RSS %.0f MiB, stored %.0f MB" % (
                k, e["seconds"], e["seconds_min"], e["seconds_max"], e["cpu"], e["rss_mib_max"],
                e.get("storage_apparent", 0) / 1e6))

    # ---- goals
    g = []
    v = summary.get("vmbackupctl", {})
    r = summary.get("restic", {})
    b = summary.get("borg", {})

    def goal(name, value, target, ok, unit=""):
        g.append({"goal": name, "value": value, "target": target, "met": bool(ok)})

    if "full" in v and "full" in limits:
        x = v["full"]["seconds"] / limits["full"]["limit"]
        goal("full backup <= 1.3x limit", x, 1.3, x <= 1.3)
        if "full" in r:
            x = r["full"]["seconds"] / v["full"]["seconds"]
            goal("full backup >= 5x faster than restic", x, 5, x >= 5)
        if "full" in b:
            x = b["full"]["seconds"] / v["full"]["seconds"]
            goal("full backup >= 3x faster than borg", x, 3, x >= 3)
        for op, t in (("incr_scattered", 0.40), ("incr_clustered", 0.40),
                      ("incr_dirty_map", 0.05)):
            if op in v:
                x = v[op]["seconds"] / v["full"]["seconds"]
                goal(f"{op} <= {t:.0%} of full", x, t, x <= t)
        x = v["full"]["rss_mib_max"]
        goal("peak RSS <= 256 MiB, 4 GiB volume", x, 256, x <= 256)
    if "restore" in v and "restore" in limits:
        x = v["restore"]["seconds"] / limits["restore"]["limit"]
        goal("restore <= 1.3x limit", x, 1.3, x <= 1.3)
        if "restore" in r:
            x = r["restore"]["seconds"] / v["restore"]["seconds"]
            goal("restore >= 3.5x faster than restic", x, 3.5, x >= 3.5)
    if "sparse_64g_256m" in v:
        x = v["sparse_64g_256m"]["rss_mib_max"]
        goal("peak RSS <= 256 MiB, 64 GiB sparse volume", x, 256, x <= 256)
    if "incr_scattered" in v and "incr_scattered" in r:
        x = v["incr_scattered"]["storage_apparent"] / max(1, r["incr_scattered"][
            "storage_apparent"])
        goal("storage of scattered incr <= restic's", x, 1.0, x <= 1.0)
    if "sparse_1t_1g" in v and "vol_1g_1g" in v:
        x = v["sparse_1t_1g"]["seconds"] / v["vol_1g_1g"]["seconds"]
        goal("1 TiB sparse holding 1 GiB <= 1.5x time of 1 GiB volume", x, 1.5, x <= 1.5)
    doc["goals"] = g
    log("\n== goals of issue #3")
    for e in g:
        log("   %-58s %8.3f (target %g)  %s" % (e["goal"], e["value"], e["target"],
                                                 "met" if e["met"] else "MISSED"))
    log("   load average: start %s, end %s" % (doc["load"]["start"], doc["load"]["end"]))
    for n in doc["notes"]:
        log("   note: " + n)


if __name__ == "__main__":
    main()
