"""Benchmark 6, footprint: installed size of the runtime dependencies, idle RSS of `rollback-bot serve`, and the
time from starting it to `/healthz` answering 200.

Measured in a runtime-only virtualenv (build/bench-runtime-venv: `pip install -e .` without the test extra,
so no `mlflow` server package, no pandas), created on the first run and refreshed when pyproject.toml
changes; the project's .venv (with the test extra) is measured too, for comparison. The installed size
is the sum of the files listed in the RECORD of every distribution in the runtime dependency closure of
`rollback-bot` (importlib.metadata), without the `mlflow` server package. `serve` runs with a one-service
policy against the fake Slack Web API and a real Prometheus; RSS is VmRSS from /proc after 5 s idle.
Targets: idle RSS <= 150 MB, ready <= 3 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from _common import ONE_SERVICE_POLICY as POLICY
from _common import ROOT, Row, median, need_prometheus, report

from sandbox.servers import PrometheusServer, free_port
from sandbox.slack_api import FakeSlackAPI

RUNTIME_VENV = ROOT / "build" / "bench-runtime-venv"
RUNS = 3
IDLE_SECONDS = 5.0

# Run inside the measured interpreter: the runtime closure of rollback-bot and the bytes its files take.
CLOSURE = r"""
import json, re
from importlib import metadata
from packaging.requirements import Requirement
seen, todo, size, files = {}, ["rollback-bot"], 0, 0
while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in seen or name == "mlflow":
        continue
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        seen[name] = None
        continue
    total = 0
    for f in dist.files or []:
        path = f.locate()
        if path.is_file():
            total += path.stat().st_size
            files += 1
    seen[name] = total
    size += total
    for raw in dist.requires or []:
        req = Requirement(raw)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
seen.pop("rollback-bot", None)
print(json.dumps({"bytes": size, "files": files, "dists": len(seen),
                  "largest": sorted(((v or 0, k) for k, v in seen.items()), reverse=True)[:6],
                  "missing": sorted(k for k, v in seen.items() if v is None)}))
"""



def runtime_venv() -> tuple[Path | None, str]:
    """The runtime-only venv's python (created or refreshed if needed), or None with the reason."""
    stamp = RUNTIME_VENV / ".pyproject-sha"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    python = RUNTIME_VENV / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python, "runtime-only venv"
    print(f"creating {RUNTIME_VENV.relative_to(ROOT)} (runtime dependencies only; once per pyproject.toml)",
          flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(RUNTIME_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", str(ROOT)], check=True, cwd=ROOT)
    except (subprocess.CalledProcessError, OSError) as exc:  # e.g. no package index reachable: fall back
        return None, f"runtime-only venv not available ({exc})"
    stamp.write_text(wanted)
    return python, "runtime-only venv"


def closure(python: Path) -> dict[str, object]:
    out = subprocess.run([str(python), "-c", CLOSURE], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_once(python: Path, workdir: Path, slack_url: str, prom_url: str) -> tuple[float, float, float]:
    """Start `rollback-bot serve`; (seconds to /healthz 200, its CPU seconds until then, idle RSS in MB)."""
    port = free_port()
    env = {**os.environ, "SLACK_BOT_TOKEN": "xoxb-bench-0000", "SLACK_SIGNING_SECRET": "bench-secret",
           "SLACK_API_URL": slack_url, "PROMETHEUS_URL": prom_url, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
           "DATABASE_URL": f"sqlite:///{workdir / f'bot-{port}.db'}"}
    env.pop("SLACK_APP_TOKEN", None)
    cmd = [str(python), "-m", "bot.cli", "serve", "--policy", str(workdir / "policy.yaml"), "--host", "127.0.0.1",
           "--port", str(port)]
    with open(workdir / f"serve-{port}.log", "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        try:
            ready, cpu = None, 0.0
            while ready is None:
                if proc.poll() is not None or time.perf_counter() - started > 60:
                    raise RuntimeError(f"serve did not become ready: {(workdir / f'serve-{port}.log').read_text()}")
                try:
                    if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        ready = time.perf_counter() - started
                        cpu = cpu_seconds(proc.pid)
                except requests.ConnectionError:
                    time.sleep(0.01)  # not listening yet
            time.sleep(IDLE_SECONDS)
            return ready, cpu, rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)


def measure(python: Path, slack_url: str, prom_url: str) -> tuple[list[float], list[float], list[float]]:
    readies, cpus, rsses = [], [], []
    with tempfile.TemporaryDirectory(prefix="rollback-bench-") as tmp:
        (Path(tmp) / "policy.yaml").write_text(POLICY)
        for _ in range(RUNS):
            ready, cpu, rss = serve_once(python, Path(tmp), slack_url, prom_url)
            readies.append(ready)
            cpus.append(cpu)
            rsses.append(rss)
    return readies, cpus, rsses


def main() -> None:
    binary = need_prometheus()
    runtime, how = runtime_venv()
    python = runtime or Path(sys.executable)
    size = closure(python)
    with tempfile.TemporaryDirectory(prefix="rollback-bench-") as tmp, FakeSlackAPI() as slack, \
            PrometheusServer(Path(tmp) / "prom", targets=[], binary=binary) as prom:
        load = os.getloadavg()[0]
        readies, cpus, rsses = measure(python, slack.url, prom.url)
        dev_readies, _, dev_rsses = measure(Path(sys.executable), slack.url, prom.url) if runtime else ([], [], [])
    ready, rss = median(readies), median(rsses)
    largest = ", ".join(f"{name} {b / 1e6:.0f} MB" for b, name in size["largest"])  # type: ignore[attr-defined]
    rows = [
        Row("6 footprint", f"installed size of the runtime dependencies ({size['dists']} distributions, "
            "without the mlflow server package)", f"{int(size['bytes']) / 1e6:.0f} MB", "report", None),  # type: ignore[call-overload]
        Row("6 footprint", f"idle RSS of `rollback-bot serve` ({how}; median of {RUNS})", f"{rss:.0f} MB",
            "<= 150 MB", rss <= 150),
        Row("6 footprint", f"start to /healthz ready ({how}; median of {RUNS}; CPU used until then)",
            f"{ready:.2f} s ({median(cpus):.2f} s CPU)", "<= 3 s", ready <= 3),
    ]
    notes = [f"largest runtime dependencies: {largest}",
             f"runs: ready {', '.join(f'{r:.2f}' for r in readies)} s; CPU to ready "
             f"{', '.join(f'{c:.2f}' for c in cpus)} s; RSS {', '.join(f'{r:.0f}' for r in rsses)} MB; "
             f"1-min load average at the start {load:.1f} on {os.cpu_count()} CPUs (other work slows the start)"]
    if size["missing"]:
        notes.append(f"declared but not installed: {', '.join(size['missing'])}")  # type: ignore[arg-type]
    if dev_rsses:
        notes.append(f"in the dev .venv (test extra: full mlflow, pandas): ready {median(dev_readies):.2f} s, idle RSS "
                     f"{median(dev_rsses):.0f} MB")
    if runtime is None:
        notes.append(how)
    report("6 footprint", rows, notes)


if __name__ == "__main__":
    main()
