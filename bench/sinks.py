"""What the alert sinks cost the detector, and how fast they deliver.

1. **handover**: :meth:`AlertSinks.submit` as the Kafka side calls it once a poll (with 0, 1 and
   10 alerts and one recovery), the dispatcher and a target running: microseconds a call;
2. **recoveries**: the engine side's share, finding the keys that completed their unflagged run
   in a poll of ``--poll`` events: ``np.flatnonzero(since_flag == N)`` and the tuples of the hits;
3. **delivery**: ``--alerts`` alerts of distinct keys handed over at once to a real Alertmanager
   (Debian's, started on a free port; ``--alertmanager URL`` to use another) and to a recording
   webhook receiver: notifications a second until the last is acknowledged, delivery latency
   p50 / p99 from ``streamrnn_sink_delivery_latency_seconds``;
4. **re-send**: a round re-sending every active alert to Alertmanager, in seconds.

    python -m bench.sinks [--alerts 10000] [--poll 5000] [--json FILE]

Needs the tests' helpers (tests/amtools.py) for Alertmanager and the receiver: run it from a
source checkout. Figures: docs/alerts.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from streamrnn.alerting import AlertSinks, Recovery
from streamrnn.alerting.metrics import SinkMetrics
from streamrnn.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from amtools import AlertmanagerServer, Recorder, ensure_alertmanager  # noqa: E402


def message(key: str, offset: int, ts: float) -> bytes:
    return orjson.dumps(
        {
            "key": key,
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts)),
            "value": 9.0,
            "expected": 1.0,
            "score": 0.99,
            "threshold": 0.8,
            "model": "bench",
            "source": {"topic": "readings", "partition": 0, "offset": offset},
        }
    )


def sinks_for(registry: CollectorRegistry, **overrides: Any) -> AlertSinks:
    raw = {f"alerts.{k}": v for k, v in overrides.items()}
    raw.setdefault("alerts.max_active", 1_000_000)
    raw.setdefault("alerts.delivery.queue_size", 1_000_000)
    sinks = AlertSinks(load_config(None, overrides=raw).alerts, SinkMetrics(registry))
    sinks.start()
    return sinks


def handover(url: str, calls: int = 5000) -> dict[str, float]:
    """Microseconds of one submit, by alerts in the poll."""
    reg = CollectorRegistry()
    sinks = sinks_for(reg, **{"sinks.webhook.urls": [url], "group_interval_s": 3600.0})
    out = {}
    now = time.time()
    rec = [Recovery("nobody", "readings", 0, 1, now)]
    for n_alerts in (0, 1, 10):
        polls = [
            [message(f"h{i % 50}", i * 10 + j, now) for j in range(n_alerts)] for i in range(calls)
        ]
        t0 = time.perf_counter()
        for alerts in polls:
            sinks.submit(alerts, rec)
        out[f"submit_us_{n_alerts}_alerts"] = (time.perf_counter() - t0) / calls * 1e6
        time.sleep(1.0)  # the dispatcher catches up before the next size
    sinks.close(5.0)
    return out


def recoveries(poll: int, repeat: int = 2000) -> dict[str, float]:
    """Microseconds to find a poll's recoveries (0.1% of its events complete a run)."""
    rng = np.random.default_rng(0)
    n = 100
    since = rng.integers(0, 1000, size=poll)  # (poll,) events since each key's last flag
    since[rng.choice(poll, size=max(1, poll // 1000), replace=False)] = n
    keys = [f"k{i}" for i in range(poll)]
    offsets = np.arange(poll, dtype=np.int64)
    times = np.arange(poll, dtype=np.float64)
    t0 = time.perf_counter()
    for _ in range(repeat):
        hit = np.flatnonzero(since == n)
        [(keys[i], "readings", 0, int(offsets[i]), float(times[i])) for i in hit.tolist()]
    return {"recoveries_us_per_poll": (time.perf_counter() - t0) / repeat * 1e6, "poll": poll}


def _quantile(reg: CollectorRegistry, labels: dict[str, str], q: float) -> float:
    name = "streamrnn_sink_delivery_latency_seconds"
    total = reg.get_sample_value(f"{name}_count", labels) or 0.0
    prev_le, prev_n = 0.0, 0.0
    for metric in reg.collect():
        if metric.name != name:
            continue
        buckets = [
            (float(s.labels["le"]), s.value)
            for s in metric.samples
            if s.name.endswith("_bucket") and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        for le, n in sorted(buckets):
            if n >= q * total:
                if le == float("inf"):
                    return prev_le
                return prev_le + (le - prev_le) * (q * total - prev_n) / max(n - prev_n, 1e-9)
            prev_le, prev_n = le, n
    return float("nan")


def delivery(sink: str, url: str, n: int) -> dict[str, float]:
    reg = CollectorRegistry()
    key = "sinks.alertmanager.urls" if sink == "alertmanager" else "sinks.webhook.urls"
    sinks = sinks_for(reg, **{key: [url]})
    labels = {"sink": sink, "target": sinks.targets[0].transport.display}
    now = time.time()
    alerts = [message(f"d{i}", i, now) for i in range(n)]
    t0 = time.perf_counter()
    sinks.submit(alerts)
    while (reg.get_sample_value("streamrnn_sink_sent_total", labels) or 0) < n:
        if time.perf_counter() - t0 > 600:
            raise RuntimeError(f"{sink}: not delivered in 600 s")
        time.sleep(0.01)
    seconds = time.perf_counter() - t0
    out = {
        f"{sink}_notifications_per_s": n / seconds,
        f"{sink}_latency_p50_s": _quantile(reg, labels, 0.5),
        f"{sink}_latency_p99_s": _quantile(reg, labels, 0.99),
    }
    if sink == "alertmanager":
        sent = reg.get_sample_value("streamrnn_sink_sent_total", labels) or 0
        t1 = time.perf_counter()
        sinks.resend_now()  # one re-send round of every active alert, timed
        while (reg.get_sample_value("streamrnn_sink_sent_total", labels) or 0) < sent + n:
            if time.perf_counter() - t1 > 600:
                raise RuntimeError("re-send round not delivered in 600 s")
            time.sleep(0.01)
        out["alertmanager_resend_round_s"] = time.perf_counter() - t1
    sinks.close(10.0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--alerts", type=int, default=10_000)
    p.add_argument("--poll", type=int, default=5000)
    p.add_argument("--alertmanager", help="an Alertmanager URL (default: start Debian's)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    figures: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    with Recorder() as recorder, tempfile.TemporaryDirectory() as tmp:
        figures.update(handover(recorder.url))
        figures.update(recoveries(args.poll))
        figures.update(delivery("webhook", recorder.url, min(args.alerts, 2000)))
        if args.alertmanager:
            figures.update(delivery("alertmanager", args.alertmanager, args.alerts))
        else:
            ensure_alertmanager()
            with AlertmanagerServer(tmp) as am:
                figures.update(delivery("alertmanager", am.url, args.alerts))
    for k, v in figures.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
