#!/usr/bin/env python3
"""Run `longclip inference` on a Spark cluster: one Spark task per partition.

`longclip inference --partition I --partition-count N` embeds the I-th of N
slices of a dataset (image files, or webdataset tar shards) into
clip-retrieval's layout (img_emb/, text_emb/, metadata/, stats/). This driver
runs the N partitions as N Spark tasks, the way clip-retrieval's
PysparkDistributor does, watches DIR/stats/ for progress (like its
LoggerReader) and prints a summary. It needs only pyspark and the standard
library, and Python 3.10 or later.

Every worker runs the same `longclip` binary, so:

* the binary must exist at the path given by --longclip on every worker
  (install it on the image, or put it on a shared filesystem);
* --input, --model and --output-folder must be paths that every worker sees
  the same way (NFS, Lustre, a mounted bucket such as /dbfs/... on
  Databricks): longclip reads and writes local paths only. The driver reads
  DIR/stats/ too, for progress and the summary;
* keep speculative execution off (spark.speculation=false, Spark's default):
  two copies of one partition would write the same files.

A failed task raises with its partition number and the last lines of the
binary's standard error, so Spark's retries (spark.task.maxFailures) apply;
a retried partition starts again from nothing (longclip skips partitions
that finished, and only those). The last attempt Spark allows returns its
failure instead, so the job runs to its end and the summary marks each
partition finished (stats/{i}.json with "finished": true), FAILED in this
run, or not finished. The driver then quotes each distinct error once and
exits non-zero. Rerunning the same command skips the finished partitions;
the driver suggests it only when some partition finished and the failures
differ (one error on every failed partition is a setup problem, such as an
output folder made with another --model, that a rerun would hit again).

Local, no cluster (local[*] unless --master is given):

    python spark/longclip_spark.py --longclip target/release/longclip \\
        --model long-clip-l.pt --input 'shards/{00000..00099}.tar' \\
        --input-format webdataset --enable-text --enable-metadata \\
        --output-folder embeddings --partition-count 100 --master 'local[4]'

A cluster (YARN; for Kubernetes use --master k8s://https://HOST:443 with
spark.kubernetes.container.image set to an image holding the binary; on
Databricks make it a "Spark Submit" or "Python script" task: the driver uses
the session the job already has):

    spark-submit --master yarn --deploy-mode client \\
        --conf spark.executor.instances=8 --conf spark.executor.cores=4 \\
        spark/longclip_spark.py --longclip /opt/longclip/bin/longclip \\
        --model /shared/long-clip-l.pt --input '/shared/laion/{00000..09999}.tar' \\
        --input-format webdataset --enable-metadata \\
        --output-folder /shared/laion-emb --partition-count 1000

Without --master the driver takes the session spark-submit (or a notebook)
made; only when there is none does it start local[*].

GPUs: let Spark schedule them, one per task. The driver then sets
CUDA_VISIBLE_DEVICES to the task's GPU address and passes --device cuda
(unless you gave --device):

    spark-submit --master yarn \\
        --conf spark.executor.resource.gpu.amount=4 \\
        --conf spark.executor.resource.gpu.discoveryScript=/opt/spark/examples/src/main/scripts/getGpusResources.sh \\
        --conf spark.task.resource.gpu.amount=1 \\
        --conf spark.executor.cores=4 --conf spark.task.cpus=1 \\
        spark/longclip_spark.py --longclip /opt/longclip/bin/longclip ... 

(the discovery script ships with Spark; on Kubernetes also set
spark.executor.resource.gpu.vendor=nvidia.com; Databricks GPU clusters set
these confs themselves). The binary must be a CUDA build
(`cargo build --release --features cuda`).

Progress goes to standard error every --progress-interval seconds; the
summary (one line per partition, then a total line) to standard output.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque

STDERR_TAIL = 20  # lines of the binary's stderr kept for a failure message
FAILURE_MARK = "longclip partition"  # starts every task failure message
STDERR_HEAD = "last lines of its stderr:"  # then the tail, indented


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="longclip_spark.py",
        description="Run `longclip inference` as one Spark task per partition "
        "(clip-retrieval's output layout), with progress and a summary.",
        epilog="The longclip binary must exist at the --longclip path on every worker, and "
        "--input, --model and --output-folder must be the same paths on every worker "
        "(a shared filesystem); relative paths are taken from the driver's folder. "
        "See the module docstring for spark-submit and GPU confs.",
    )
    p.add_argument("--longclip", required=True,
                   help="path of the longclip binary; it must exist at this path on EVERY worker")
    p.add_argument("--input", required=True,
                   help="image folder / list, or tar shards with brace ranges ('DS/{00000..00009}.tar')")
    p.add_argument("--output-folder", required=True, help="shared folder for img_emb/, text_emb/, metadata/, stats/")
    p.add_argument("--model", required=True, help="checkpoint path (the same on every worker)")
    p.add_argument("--input-format", choices=["files", "webdataset"], default="files")
    p.add_argument("--enable-text", action="store_true")
    p.add_argument("--enable-metadata", action="store_true")
    p.add_argument("--partition-count", type=int, default=1, help="N: partitions, one Spark task each (default 1)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="cpu, cuda or cuda:K (default: cuda when Spark gives the task a GPU, else longclip's)")
    p.add_argument("--master", help="Spark master URL (default: the spark-submit/active session, else local[*])")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark conf for the session this driver starts (repeatable); under spark-submit "
                   "give spark-submit's own --conf instead")
    p.add_argument("--progress-interval", type=float, default=5.0, help="seconds between progress lines (default 5)")
    args = p.parse_args(argv)
    if args.partition_count < 1:
        p.error("--partition-count must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    for kv in args.conf:
        if "=" not in kv:
            p.error(f"--conf {kv!r}: expected KEY=VALUE")
    # workers do not start in the driver's folder: relative paths are the driver's
    for name in ("longclip", "input", "output_folder", "model"):
        setattr(args, name, os.path.abspath(getattr(args, name)))
    return args


def longclip_command(args: argparse.Namespace | dict, partition: int, gpu: bool = False) -> list[str]:
    """The `longclip inference` command line of one partition."""
    a = args if isinstance(args, dict) else vars(args)
    cmd = [
        a["longclip"], "inference",
        "--input", a["input"],
        "--output-folder", a["output_folder"],
        "--model", a["model"],
        "--input-format", a["input_format"],
        "--partition", str(partition),
        "--partition-count", str(a["partition_count"]),
        "--no-progress",
    ]
    if a["enable_text"]:
        cmd.append("--enable-text")
    if a["enable_metadata"]:
        cmd.append("--enable-metadata")
    if a.get("batch_size") is not None:
        cmd += ["--batch-size", str(a["batch_size"])]
    if a.get("device"):
        cmd += ["--device", a["device"]]
    elif gpu:
        cmd += ["--device", "cuda"]
    return cmd


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the Python worker dies (Spark kills the
    workers of a cancelled job; the binary must not keep writing as an orphan). Linux only."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_partition(partition: int, plan: dict) -> dict:
    """Runs on an executor: one partition, the binary as a subprocess.

    When the binary fails, an attempt that Spark may still retry raises (with
    the partition number and the tail of the binary's standard error), so
    spark.task.maxFailures applies; the last allowed attempt returns the
    failure instead ({"partition", "host", "error", "detail"}), so the job
    goes on and the driver learns the outcome of every partition.
    """
    from pyspark import TaskContext  # executors have pyspark; keep the module importable without it

    host = socket.gethostname()
    env = dict(os.environ)
    gpu = False
    ctx = TaskContext.get()
    resources = ctx.resources() if ctx is not None else {}
    if "gpu" in resources and resources["gpu"].addresses:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(resources["gpu"].addresses)
        gpu = True
    attempt = ctx.attemptNumber() if ctx is not None and hasattr(ctx, "attemptNumber") else 0
    last_attempt = attempt + 1 >= int(plan.get("max_attempts", 1))

    def failed(message: str, detail: str) -> dict:
        if not last_attempt:
            raise RuntimeError(message)
        return {"partition": partition, "host": host, "error": message, "detail": detail}

    cmd = longclip_command(plan, partition, gpu)
    if not os.access(cmd[0], os.X_OK):
        detail = (f"{cmd[0]} is not an executable file there (the longclip binary must exist at that "
                  "path on every worker)")
        return failed(f"{FAILURE_MARK} {partition} failed on {host}: {detail}", detail)
    tail: deque[str] = deque(maxlen=STDERR_TAIL)
    start = time.time()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=subprocess.PIPE,
                            env=env, text=True, errors="replace", preexec_fn=_die_with_parent)
    assert proc.stderr is not None
    for line in proc.stderr:  # echoed to the executor's log, the tail kept
        sys.stderr.write(f"[partition {partition}] {line}")
        tail.append(line.rstrip("\n"))
    rc = proc.wait()
    if rc != 0:
        lines = "\n".join(f"    {l}" for l in tail) or "    (nothing on stderr)"
        where = f" (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']})" if gpu else ""
        return failed(f"{FAILURE_MARK} {partition} failed on {host}{where}: exit code {rc}\n"
                      f"  command: {' '.join(cmd)}\n  {STDERR_HEAD}\n{lines}",
                      f"exit code {rc}\n{lines}")
    return {"partition": partition, "host": host, "seconds": time.time() - start,
            "gpu": env.get("CUDA_VISIBLE_DEVICES") if gpu else None}


# ---------------------------------------------------------------------------
# Progress and summary, from DIR/stats/ (clip-retrieval's logger layout)

def read_stats(output_folder: str) -> dict[int, tuple[bool, dict]]:
    """partition -> (finished, stats): {i}.json when finished, else wip_{i}.json.

    A partition is finished only when {i}.json says "finished": true."""
    folder = os.path.join(output_folder, "stats")
    found: dict[int, tuple[bool, dict]] = {}
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return found
    for name in names:
        m = re.fullmatch(r"(wip_)?(\d+)\.json", name)
        if not m:
            continue
        part, finished = int(m.group(2)), m.group(1) is None
        if part in found and found[part][0]:
            continue  # the final file wins over a leftover wip file
        try:
            with open(os.path.join(folder, name)) as f:
                stats = json.load(f)
        except (OSError, ValueError):
            continue  # being rewritten, or removed meanwhile: next poll
        if isinstance(stats, dict):
            found[part] = (finished and stats.get("finished") is True, stats)
    return found


def progress_line(stats: dict[int, tuple[bool, dict]], count: int, start: float, now: float,
                  failed: frozenset[int] | set[int] = frozenset()) -> str:
    """The progress line; partitions in `failed` (this run's failures) are not done, whatever stats/ holds."""
    mine = {p: s for p, s in stats.items() if p < count and p not in failed}
    done = sum(1 for finished, _ in mine.values() if finished)
    # samples of this run: a partition finished before it started counts in "done" but not in the rate
    fresh = sum(int(s.get("sample_count", 0)) for _, s in mine.values() if float(s.get("start_time", now)) >= start - 1)
    total = sum(int(s.get("sample_count", 0)) for _, s in mine.values())
    rate = fresh / max(now - start, 1e-9)
    line = f"progress: {done}/{count} partitions done, {total} samples, {rate:.1f} samples/s"
    return line + (f", {len(failed)} failed" if failed else "")


def same_progress(a: str, b: str) -> bool:
    """Two progress lines with the same partitions, samples and failures (the rate aside)."""
    key = lambda line: [f for i, f in enumerate(line.split(", ")) if i != 2]
    return key(a) == key(b)


class ProgressReader(threading.Thread):
    """Polls DIR/stats/ and prints a line when the numbers change."""

    def __init__(self, output_folder: str, count: int, start: float, interval: float):
        super().__init__(daemon=True)
        self.output_folder, self.count, self.start_time, self.interval = output_folder, count, start, interval
        self.stopped = threading.Event()
        self.last = ""

    def show(self, line: str) -> None:
        """Prints `line` unless the last line printed says the same."""
        if not same_progress(line, self.last):
            print(line, file=sys.stderr, flush=True)
        self.last = line

    def poll(self) -> None:
        self.show(progress_line(read_stats(self.output_folder), self.count, self.start_time, time.time()))

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.poll()

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def summary(stats: dict[int, tuple[bool, dict]], count: int, start: float, wall: float,
            failed: dict[int, dict] | None = None) -> tuple[str, list[int]]:
    """The summary table and the partitions that neither finished nor failed (never ran)."""
    failed = failed or {}
    rows = [f"{'partition':>9} {'samples':>9} {'seconds':>9} {'images/s':>9} {'skipped':>9}"]
    missing, samples, fresh = [], 0, 0
    for p in range(count):
        finished, s = stats.get(p, (False, {}))
        if p in failed:
            rows.append(f"{p:>9} {'-':>9} {'-':>9} {'-':>9} {'-':>9}  FAILED on {failed[p].get('host', '?')}")
            continue
        if not finished:
            missing.append(p)
            rows.append(f"{p:>9} {'-':>9} {'-':>9} {'-':>9} {'-':>9}  not finished")
            continue
        n, secs = int(s.get("sample_count", 0)), float(s.get("total_duration", 0.0))
        before = float(s.get("end_time", start)) < start
        samples += n
        fresh += 0 if before else n
        rate = f"{n / secs:.1f}" if secs > 0 else "-"
        reasons = s.get("skipped") if isinstance(s.get("skipped"), dict) else {}
        skipped = sum(v for v in reasons.values() if isinstance(v, int))
        rows.append(f"{p:>9} {n:>9} {secs:>9.2f} {rate:>9} {skipped:>9}" + ("  (finished before this run)" if before else ""))
    done = count - len(missing) - len(failed)
    rows.append(f"{'total':>9} {samples:>9} {wall:>9.2f} {fresh / max(wall, 1e-9):>9.1f} {'':>9}"
                f"  ({done}/{count} partitions, wall time"
                + (f"; {samples - fresh} samples from earlier runs not in the rate)" if fresh != samples else ")"))
    return "\n".join(rows), missing


def failure_messages(error: BaseException) -> list[str]:
    """Our task failure messages out of a Py4J/Spark exception (or the whole text when none)."""
    text = str(error)
    found = []
    for m in re.finditer(rf"{FAILURE_MARK} \d+ failed.*?(?=\n\S|\n\s*\n|\n\tat |\Z)", text, re.S):
        if m.group(0) not in found:
            found.append(m.group(0))
    return found or [text.strip().splitlines()[0] if text.strip() else repr(error)]


def failure_of(message: str) -> dict | None:
    """A failure dict (as run_partition returns) out of one of our task failure messages."""
    m = re.match(rf"{FAILURE_MARK} (\d+) failed on (\S+?)(?: \(CUDA_VISIBLE_DEVICES=[^)]*\))?: (.*)", message, re.S)
    if not m:
        return None
    rest = m.group(3)
    code = re.match(r"exit code -?\d+", rest)
    tail = rest.split(STDERR_HEAD + "\n", 1)
    detail = f"{code.group(0)}\n{tail[1]}" if code and len(tail) == 2 else rest.split("\n", 1)[0]
    return {"partition": int(m.group(1)), "host": m.group(2), "error": message, "detail": detail}


def failure_key(failure: dict) -> str:
    """What the binary said, with the partition's own number taken out: equal keys, the same error."""
    return re.sub(rf"\b(partition) {failure['partition']}\b", r"\1 N", failure.get("detail", failure["error"]))


def max_attempts(master: str, conf) -> int:
    """Attempts Spark gives a task: local[N] gives 1 (local[N,F] gives F); the rest spark.task.maxFailures."""
    m = re.fullmatch(r"local(?:\[[^,\]]+(?:,\s*(\d+))?\])?", master.strip())
    if m:
        return max(int(m.group(1) or 1), 1)
    try:
        return max(int(conf.get("spark.task.maxFailures", "4")), 1)
    except (TypeError, ValueError):
        return 4


def parts(ps) -> str:
    ps = sorted(ps)
    return ("partition " if len(ps) == 1 else "partitions ") + ", ".join(map(str, ps))


def report_failures(failed: dict[int, dict], missing: list[int], other_errors: list[str], finished: int, n: int) -> None:
    """The error lines: each distinct error once, then what to do about it."""
    for message in other_errors:
        print(f"error: {message}", file=sys.stderr)
    groups: dict[str, list[dict]] = {}
    for p in sorted(failed):
        groups.setdefault(failure_key(failed[p]), []).append(failed[p])
    for group in groups.values():
        first = group[0]
        if len(group) == 1:
            print(f"error: {first['error']}", file=sys.stderr)
        else:
            hosts = sorted({f.get("host", "?") for f in group})
            # the first one's message, less its "longclip partition P failed on HOST: "
            said = re.sub(rf"^{FAILURE_MARK} \d+ failed on \S+?(?: \(CUDA_VISIBLE_DEVICES=[^)]*\))?: ", "", first["error"])
            print(f"error: {parts(f['partition'] for f in group)} failed on {', '.join(hosts)}, all with the same "
                  f"error (partition {first['partition']}'s shown): {said}", file=sys.stderr)
    if failed:
        what = f"{len(failed)} of {n} partitions failed: {', '.join(map(str, sorted(failed)))}"
        if missing:
            what += f" ({len(missing)} more did not run: {', '.join(map(str, missing))})"
        if len(groups) == 1 and (len(failed) > 1 or finished == 0):
            print(f"error: {what}, {'all ' if len(failed) > 1 else ''}with the error above: most likely a problem with "
                  "the command, its paths or the output folder, which rerunning as is would hit again; fix it first",
                  file=sys.stderr)
        elif finished == 0:
            print(f"error: {what} and none finished: rerunning as is would most likely fail again; fix the errors "
                  "above first", file=sys.stderr)
        else:
            print(f"error: {what} (errors above); if their cause has passed, rerun the same command to do just those "
                  "(finished partitions are skipped)", file=sys.stderr)
    elif missing:
        print(f"error: {len(missing)} of {n} partitions did not finish: {', '.join(map(str, missing))}; "
              "rerun the same command to do just those (finished partitions are skipped)", file=sys.stderr)


def spark_session(master: str | None, confs: list[str]):
    """(session, made here): the active session, or a new one."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active, False
    builder = SparkSession.builder.appName("longclip-inference")
    if master is not None:
        builder = builder.master(master)
    elif "PYSPARK_GATEWAY_PORT" not in os.environ:  # not under spark-submit: no master was given anywhere
        builder = builder.master("local[*]")
    for kv in confs:
        key, value = kv.split("=", 1)
        builder = builder.config(key, value)
    # our own progress lines replace Spark's console stage bar
    return builder.config("spark.ui.showConsoleProgress", "false").getOrCreate(), True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = {k: v for k, v in vars(args).items() if k not in ("master", "conf", "progress_interval")}
    n = args.partition_count
    if not os.path.isfile(args.longclip):
        print(f"note: {args.longclip} is not on this (driver) machine; it must be on every worker", file=sys.stderr)

    spark, made = spark_session(args.master, args.conf)
    sc = spark.sparkContext
    sc.setLogLevel("WARN")
    plan["max_attempts"] = max_attempts(sc.master, sc.getConf())
    if __name__ != "__main__":  # imported (a notebook): ship run_partition by value, not as a module import
        try:
            from pyspark import cloudpickle
            cloudpickle.register_pickle_by_value(sys.modules[__name__])
        except (ImportError, AttributeError, ValueError):
            pass

    start = time.time()
    print(f"longclip_spark: {n} partition{'s' if n != 1 else ''} of {args.input} on {sc.master} "
          f"({sc.defaultParallelism} task slots) -> {args.output_folder}", file=sys.stderr, flush=True)
    reader = ProgressReader(args.output_folder, n, start, args.progress_interval)
    reader.start()
    results: list[dict] = []
    other_errors: list[str] = []
    try:
        results = sc.parallelize(range(n), n).map(lambda i: run_partition(i, plan)).collect()
    except Exception as e:  # the job stopped: a task failed in a way we could not catch, or it was cancelled
        for message in failure_messages(e):
            failure = failure_of(message)
            if failure is not None:
                results.append(failure)
            else:
                other_errors.append(message)
    finally:
        reader.stop()
    wall = time.time() - start
    if made:
        spark.stop()
    failed = {r["partition"]: r for r in results if "error" in r}
    stats = read_stats(args.output_folder)
    reader.show(progress_line(stats, n, start, time.time(), set(failed)))  # the last line, unless just printed
    table, missing = summary(stats, n, start, wall, failed)
    print(table, flush=True)
    if failed or missing or other_errors:
        report_failures(failed, missing, other_errors, n - len(failed) - len(missing), n)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
