#!/usr/bin/env python
"""Wall-clock of the whole ``scllm-jax cluster`` command on worm_neuron (4,186 cells x 13,488 genes), or of ``scllm-jax demo``.

Times ``scllm-jax cluster ../shared/data/worm_neuron.h5ad --out /tmp/x.h5ad --n-clusters 10 --quiet``
end to end (interpreter start, imports, load, preprocess, graph, training, clustering,
writing) ``--repeats`` times with the environment as it is, then as many times with
``OPENBLAS_NUM_THREADS=1``, and reports the median of each. Every run's wall-clock,
user + system CPU seconds and peak resident memory (from ``os.wait4``, so per run)
are appended to ``benchmarks/results/speed.tsv``.

With ``--demo`` it times ``scllm-jax demo --out SCRATCH`` instead (the bundled pancreas
data, the full default method), each run with ``SCLLM_JAX_CACHE`` pointing at a new empty
folder, as on a fresh install.

Example
-------
    python benchmarks/speed_worm.py                 # 3 + 3 runs
    python benchmarks/speed_worm.py --repeats 1 --no-single-thread
    python benchmarks/speed_worm.py --demo --no-single-thread
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "worm_neuron.h5ad"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "speed.tsv"
COLUMNS = ("date", "setting", "run", "wall_seconds", "cpu_seconds", "peak_memory_gb", "exit_code", "n_clusters",
           "input", "command", "cores", "platform", "scllm_jax_version", "git_commit")


def scllm_command() -> list[str]:
    """The ``scllm-jax`` console script of this interpreter's environment, else the one on PATH."""
    local = Path(sys.executable).with_name("scllm-jax")
    if local.exists():
        return [str(local)]
    found = shutil.which("scllm-jax")
    if found:
        return [found]
    return [sys.executable, "-m", "scllm_jax.cli"]


def time_once(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command`` once; wall-clock, CPU seconds and peak RSS of that one child process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    return {"wall_seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_memory_gb": usage.ru_maxrss * 1024 / 1e9, "exit_code": process.returncode, "output": output}


def _git() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scllm-jax")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help=f"input .h5ad (default {DEFAULT_INPUT})")
    parser.add_argument("--n-clusters", type=int, default=10, help="K (default 10, worm_neuron's types)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (default 3)")
    parser.add_argument("--single-thread", action=argparse.BooleanOptionalAction, default=True,
                        help="also time with OPENBLAS_NUM_THREADS=1 (default on)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"TSV to append to (default {DEFAULT_OUT})")
    parser.add_argument("--demo", action="store_true",
                        help="time `scllm-jax demo` with an empty language-model cache instead")
    args = parser.parse_args(argv)
    if args.demo:
        args.input, args.n_clusters = Path("bundled:baron_mouse1"), 13
    elif not args.input.exists():
        parser.error(f"no such input file: {args.input}")

    settings = [("as is", {})]
    if args.single_thread:
        settings.append(("OPENBLAS_NUM_THREADS=1", {"OPENBLAS_NUM_THREADS": "1"}))
    common = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "n_clusters": args.n_clusters,
              "input": str(args.input), "cores": os.cpu_count(), "platform": platform.platform(),
              "scllm_jax_version": _version(), "git_commit": _git()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new = not args.out.exists() or args.out.stat().st_size == 0
    medians = {}
    with tempfile.TemporaryDirectory() as scratch, args.out.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        if new:
            writer.writeheader()
        if args.demo:
            command = scllm_command() + ["demo", "--out", str(Path(scratch) / "demo")]
        else:
            command = scllm_command() + ["cluster", str(args.input), "--out", str(Path(scratch) / "x.h5ad"),
                                         "--n-clusters", str(args.n_clusters), "--quiet"]
        shown = " ".join(Path(command[0]).name if i == 0 else c for i, c in enumerate(command))
        print(f"timing: {shown}", flush=True)
        for setting, extra in settings:
            walls = []
            for run in range(1, args.repeats + 1):
                env = {**os.environ, **extra}
                if args.demo:  # a fresh install: nothing cached
                    env["SCLLM_JAX_CACHE"] = tempfile.mkdtemp(dir=scratch, prefix="cache")
                result = time_once(command, env)
                if result["exit_code"] != 0:
                    print(result["output"][-3000:], file=sys.stderr)
                print(f"  [{setting}] run {run}/{args.repeats}: {result['wall_seconds']:.1f} s wall, "
                      f"{result['cpu_seconds']:.1f} s CPU, peak {result['peak_memory_gb']:.2f} GB, "
                      f"exit {result['exit_code']}", flush=True)
                label = f"{setting}, empty cache" if args.demo else setting
                writer.writerow({**common, "setting": label, "run": run, "command": shown,
                                 **{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in result.items()
                                    if k in COLUMNS}})
                handle.flush()
                if result["exit_code"] == 0:
                    walls.append(result["wall_seconds"])
            medians[setting] = statistics.median(walls) if walls else float("nan")
            print(f"  [{setting}] median of {len(walls)} successful runs: {medians[setting]:.1f} s", flush=True)
    print(f"appended to {args.out}")
    return 0 if all(m == m for m in medians.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
