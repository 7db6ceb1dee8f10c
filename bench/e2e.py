"""End to end: the ``streamrnn run`` command line on each device, against one broker and topic.

One topic of ``--keys`` x ``--events-per-key`` events (the throughput benchmark's, produced once),
one randomly initialised model directory (default LSTM 2 x 64), then for each ``--devices`` entry
a fresh ``python -m streamrnn run --device DEVICE`` process in its own consumer group, read
through its ``/metrics`` endpoint: events/s of ``streamrnn_events_total{outcome="processed"}``
from its first processed event to the last, and the wall time from the process' start. The
command is stopped with SIGTERM after each run.

    python -m bench.e2e [--devices cuda,cpu] [--keys 10000] [--events-per-key 30] [--json FILE]

Results and what they mean: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from bench.throughput import (
    FAST_GROUP,
    ROOT,
    _broker,
    machine,
    produce_topic,
    write_model,
)

log = logging.getLogger("bench.e2e")

_PROCESSED = re.compile(r'^streamrnn_events_total\{[^}]*outcome="processed"[^}]*\}\s+(\S+)$', re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processed(port: int) -> int | None:
    """The command's processed-events counter, or None while its endpoint does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return int(sum(float(x) for x in _PROCESSED.findall(text)))


def run_device(
    bootstrap: str,
    topic: str,
    model: Path,
    work: Path,
    device: str,
    total: int,
    timeout_s: float,
    max_poll_records: int = 5000,
) -> dict[str, Any]:
    """One ``streamrnn run`` on ``device`` until it has processed ``total`` events."""
    group = f"e2e-{device.replace(':', '')}-{uuid.uuid4().hex[:6]}"
    port = _free_port()
    cfg = work / f"{group}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "service": {
                    "bootstrap_servers": [bootstrap],
                    "topics": [topic],
                    "group": group,
                    "model": str(model),
                    "state_dir": str(work / group),
                    "alerts_topic": f"{topic}.alerts",
                    "dlq_topic": f"{topic}.dlq",
                    "metrics_host": "127.0.0.1",
                    "metrics_port": port,
                    "model_poll_interval_s": 0.0,
                    "max_poll_records": max_poll_records,
                    **FAST_GROUP,
                },
                # Room for every key: the run measures stepping, not eviction.
                "state": {"max_keys": 1 << 22},
            }
        )
    )
    cmd = [sys.executable, "-m", "streamrnn", "run", "--config", str(cfg), "--device", device]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    log_path = work / f"{group}.log"
    t_start = time.monotonic()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT
        )
    first: tuple[float, int] | None = None
    last = (t_start, 0)
    deadline = t_start + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"streamrnn run --device {device} exited with {proc.returncode}:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamrnn run --device {device}: {last[1]} of {total} in time")
            n = processed(port)
            now = time.monotonic()
            if n:
                if first is None:
                    first = (now, n)
                last = (now, n)
                if n >= total:
                    break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    assert first is not None
    span = last[0] - first[0]
    return {
        "device": device,
        "command": shlex.join(cmd[1:]),
        "events": last[1],
        # From the first batch seen to the last: a run of one batch has no rate.
        "events_per_s": (last[1] - first[1]) / span if span > 0 else float("nan"),
        "seconds_to_first_event": first[0] - t_start,
        "seconds_total": last[0] - t_start,
        "exit_code": rc,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.e2e",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--devices", default="cuda,cpu", help="devices in turn (default cuda,cpu)")
    p.add_argument("--keys", type=int, default=10_000, help="keys in the topic (default 10000)")
    p.add_argument("--events-per-key", type=int, default=30, help="events per key (default 30)")
    p.add_argument("--partitions", type=int, default=4, help="topic partitions (default 4)")
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument(
        "--max-poll-records", type=int, default=5000, help="records per poll (default 5000)"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per run (default 300)")
    p.add_argument("--bootstrap-servers", default=None, help="use this broker")
    p.add_argument("--json", dest="json_path", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    from streamrnn.tools.broker import create_topics

    total = args.keys * args.events_per_key
    result: dict[str, Any] = {
        "machine": machine(),
        "command": shlex.join(["python -m bench.e2e", *(argv or sys.argv[1:])]),
        "config": {
            k: getattr(args, k)
            for k in ("keys", "events_per_key", "partitions", "cell", "hidden", "layers")
        },
        "runs": [],
    }
    with (
        tempfile.TemporaryDirectory(prefix="streamrnn-e2e-") as tmp,
        _broker(args.bootstrap_servers) as bootstrap,
    ):
        work = Path(tmp)
        topic = f"e2e-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, {topic: args.partitions})
        log.info("producing %s events to %s", f"{total:,}", topic)
        result["produce"] = produce_topic(
            bootstrap, topic, args.keys, args.events_per_key, args.seed
        )
        model = write_model(work / "model", args.cell, args.hidden, args.layers, args.seed)
        for device in [d.strip() for d in args.devices.split(",") if d.strip()]:
            r = run_device(
                bootstrap, topic, model, work, device, total, args.timeout, args.max_poll_records
            )
            log.info(
                "streamrnn run --device %s: %.0f events/s (first event after %.1f s)",
                device,
                r["events_per_s"],
                r["seconds_to_first_event"],
            )
            result["runs"].append(r)
    for r in result["runs"]:
        print(f"{r['device']:<8} {r['events_per_s']:>12,.0f} events/s  {r['events']:,} events")
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
