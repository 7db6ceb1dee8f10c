"""The incident tracker (firing, updates, resolution by events and by timeout, label changes,
the cap) and the keyed queue (collapse within a group interval, bounds, retries, expiry)."""

from __future__ import annotations

from alerttools import Clock, alert

from streamrnn.alerting.incidents import IncidentTracker, Recovery
from streamrnn.alerting.queue import KeyedQueue
from streamrnn.config import AlertsConfig, load_config


def tracker(clock: Clock, **alerts: object) -> IncidentTracker:
    cfg = load_config(None, overrides={f"alerts.{k}": v for k, v in alerts.items()}).alerts
    return IncidentTracker(cfg, clock=clock.time, monotonic=clock.monotonic)


def test_first_flag_fires_later_flags_update_one_incident() -> None:
    clock = Clock()
    tr = tracker(clock)
    t0 = clock.wall - 60
    (n1,) = tr.flagged(alert("m1", 10, t0))
    (n2,) = tr.flagged(alert("m1", 14, t0 + 20, value=12.0))
    assert (n1.status, n1.flagged, n1.starts_at) == ("firing", 1, t0)
    assert (n2.status, n2.flagged, n2.starts_at, n2.incident) == ("firing", 2, t0, n1.incident)
    assert n2.first.offset == 10 and n2.last.offset == 14
    assert n2.labels == {
        "alertname": "StreamrnnAnomaly",
        "key": "m1",
        "topic": "readings",
        "model": "v1",
        "severity": "warning",
    }
    assert len(tr) == 1


def test_recovery_resolves_at_the_recovery_event_time() -> None:
    clock = Clock()
    tr = tracker(clock)
    t0 = clock.wall - 100
    tr.flagged(alert("m1", 10, t0))
    assert tr.recovered(Recovery("other", "readings", 0, 50, t0 + 5)) == []
    (n,) = tr.recovered(Recovery("m1", "readings", 0, 50, t0 + 40))
    assert (n.status, n.ends_at, n.resolved_by) == ("resolved", t0 + 40, "events")
    assert len(tr) == 0 and tr.resolved_total["events"] == 1
    assert tr.recovered(Recovery("m1", "readings", 0, 60, t0 + 50)) == []  # nothing active


def test_a_recovery_older_than_the_latest_flag_is_stale() -> None:
    clock = Clock()
    tr = tracker(clock)
    tr.flagged(alert("m1", 10, clock.wall - 50))
    tr.flagged(alert("m1", 90, clock.wall - 10))
    assert tr.recovered(Recovery("m1", "readings", 0, 60, clock.wall - 20)) == []
    assert "m1" in tr


def test_future_event_times_are_clamped_to_the_wall_clock() -> None:
    clock = Clock()
    tr = tracker(clock)
    (n,) = tr.flagged(alert("m1", 1, clock.wall + 3600))
    assert n.starts_at == clock.wall
    (r,) = tr.recovered(Recovery("m1", "readings", 0, 5, clock.wall + 7200))
    assert r.ends_at == clock.wall


def test_timeout_resolves_the_oldest_first_and_a_new_flag_restarts_the_clock() -> None:
    clock = Clock()
    tr = tracker(clock, resolve_timeout_s=100.0)
    tr.flagged(alert("a", 1, clock.wall))
    clock.advance(30)
    tr.flagged(alert("b", 2, clock.wall))
    clock.advance(30)
    tr.flagged(alert("a", 3, clock.wall))  # a's clock restarts
    assert tr.next_expiry() == clock.mono + 70  # b: flagged 30 s ago
    clock.advance(69)
    assert tr.expire() == []
    clock.advance(1)
    (n,) = tr.expire()
    assert (n.key, n.status, n.resolved_by, n.ends_at) == ("b", "resolved", "timeout", clock.wall)
    clock.advance(29)
    assert tr.expire() == []
    clock.advance(1)
    assert [x.key for x in tr.expire()] == ["a"]
    assert tr.next_expiry() is None


def test_new_labels_supersede_the_active_incident() -> None:
    clock = Clock()
    tr = tracker(clock)
    tr.flagged(alert("m1", 1, clock.wall - 10, model="v1"))
    old, new = tr.flagged(alert("m1", 2, clock.wall - 5, model="v2"))
    assert (old.status, old.resolved_by, old.labels["model"]) == ("resolved", "superseded", "v1")
    assert (new.status, new.flagged, new.labels["model"]) == ("firing", 1, "v2")
    assert new.incident != old.incident


def test_labels_from_event_fields() -> None:
    clock = Clock()
    tr = tracker(clock, labels={"site": "site", "floor": "level", "ok": "ok", "gone": "none"})
    fields = {"site": "north", "level": 3, "ok": True, "none": None}
    (n,) = tr.flagged(alert("m1", 1, clock.wall, fields=fields))
    assert {k: n.labels[k] for k in ("site", "floor", "ok")} == {
        "site": "north",
        "floor": "3",
        "ok": "true",
    }
    assert "gone" not in n.labels


def test_max_active_refuses_new_incidents_but_updates_old_ones() -> None:
    clock = Clock()
    tr = tracker(clock, max_active=2)
    tr.flagged(alert("a", 1, clock.wall))
    tr.flagged(alert("b", 2, clock.wall))
    assert tr.flagged(alert("c", 3, clock.wall)) == []
    assert tr.overflow_total == 1
    (n,) = tr.flagged(alert("a", 4, clock.wall))
    assert n.flagged == 2


def test_forget_drops_incidents_of_revoked_partitions_without_a_notice() -> None:
    clock = Clock()
    tr = tracker(clock)
    tr.flagged(alert("a", 1, clock.wall, partition=0))
    tr.flagged(alert("b", 1, clock.wall, partition=1))
    assert tr.forget([("readings", 1)]) == 1
    assert [n.key for n in tr.active()] == ["a"]


# ----------------------------------------------------------------------------------------------
# KeyedQueue


def test_queue_collapses_a_keys_notifications_within_the_group_interval() -> None:
    clock = Clock()
    q: KeyedQueue[str] = KeyedQueue(10, 60.0, monotonic=clock.monotonic)
    assert q.offer("k", "first") == "queued"
    ((entry, item, version),) = q.take(10)
    assert item == "first"
    q.done(entry, version)
    clock.advance(5)
    assert q.offer("k", "second") == "queued"
    assert q.offer("k", "third") == "merged"
    assert q.take(10) == []  # due 60 s after the delivery
    assert q.next_due() == clock.mono + 55
    clock.advance(55)
    ((_, item, _),) = q.take(10)
    assert item == "third"


def test_queue_first_notification_of_a_key_is_due_at_once_and_others_keep_their_order() -> None:
    clock = Clock()
    q: KeyedQueue[str] = KeyedQueue(10, 60.0, monotonic=clock.monotonic)
    for k in ("a", "b", "c"):
        q.offer(k, k)
        clock.advance(0.001)
    assert [item for _, item, _ in q.take(2)] == ["a", "b"]
    assert [item for _, item, _ in q.take(2)] == ["c"]


def test_queue_is_bounded_per_key_and_merges_never_need_room() -> None:
    clock = Clock()
    q: KeyedQueue[int] = KeyedQueue(2, 0.0, monotonic=clock.monotonic)
    assert [q.offer(k, 1) for k in ("a", "b", "c")] == ["queued", "queued", "dropped"]
    assert q.offer("a", 2) == "merged"
    assert len(q) == 2


def test_queue_replacement_while_out_is_kept_and_released_entries_come_back() -> None:
    clock = Clock()
    q: KeyedQueue[str] = KeyedQueue(10, 30.0, monotonic=clock.monotonic)
    q.offer("k", "v1")
    ((entry, _, version),) = q.take(1)
    q.offer("k", "v2")  # arrives while v1 is being sent
    q.done(entry, version)
    assert len(q) == 1 and q.take(1) == []
    clock.advance(30)
    ((entry, item, _),) = q.take(1)
    assert item == "v2"
    q.release(entry)  # failed: due again at once
    ((entry, item, _),) = q.take(1)
    assert item == "v2"
    q.discard(entry)
    assert len(q) == 0


def test_queue_expires_old_entries_but_not_those_out() -> None:
    clock = Clock()
    q: KeyedQueue[str] = KeyedQueue(10, 0.0, monotonic=clock.monotonic)
    q.offer("out", "y")
    ((taken, _, _),) = q.take(1)  # being sent
    q.offer("old", "x")
    clock.advance(100)
    q.offer("new", "z")
    assert [e.key for e in q.expire(50)] == ["old"]
    assert len(q) == 2
    assert taken.key == "out" and taken.out


def test_queue_take_ignoring_due_times_is_the_shutdown_flush() -> None:
    clock = Clock()
    q: KeyedQueue[str] = KeyedQueue(10, 60.0, monotonic=clock.monotonic)
    q.offer("k", "v1")
    ((entry, _, version),) = q.take(1)
    q.done(entry, version)
    q.offer("k", "v2")
    assert q.take(5) == []
    assert [item for _, item, _ in q.take(5, ignore_due=True)] == ["v2"]


def test_alerts_config_defaults_keep_a_sustained_anomaly_one_alert() -> None:
    cfg = load_config(None)
    assert cfg.alerts == AlertsConfig()
    assert cfg.alerts.resolve_after_events > cfg.scoring.cooldown


def test_queue_keep_alive_is_not_held_by_the_group_interval() -> None:
    clock = Clock()
    q: KeyedQueue[str] = KeyedQueue(10, 60.0, monotonic=clock.monotonic)
    q.offer("k", "v1")
    ((entry, _, version),) = q.take(1)
    q.done(entry, version)
    clock.advance(1)
    assert q.offer("k", "again", hold=False) == "queued"
    assert [item for _, item, _ in q.take(1)] == ["again"]


def test_queue_serves_equal_due_times_first_come_first_served_and_merges_keep_their_place() -> None:
    clock = Clock()
    q: KeyedQueue[str] = KeyedQueue(10, 0.0, monotonic=clock.monotonic)
    for k in ("z", "a", "m"):
        q.offer(k, k + "1")
    q.offer("z", "z2")
    assert [item for _, item, _ in q.take(3)] == ["z2", "a1", "m1"]


def test_queue_a_resolution_waits_behind_a_page_not_yet_delivered() -> None:
    clock = Clock()
    q: KeyedQueue[str] = KeyedQueue(10, 30.0, monotonic=clock.monotonic)

    def behind(pending: str, new: str) -> bool:
        return new.startswith("resolved") and pending.startswith("firing")

    q.offer("k", "firing 1", behind=behind)
    assert q.offer("k", "resolved 1", behind=behind) == "merged"
    ((entry, item, version),) = q.take(5)
    assert item == "firing 1"  # the page goes out first
    q.done(entry, version)
    assert q.take(5) == []  # the resolution follows a group interval later
    clock.advance(30)
    ((entry, item, version),) = q.take(5)
    assert item == "resolved 1"
    q.done(entry, version)
    assert len(q) == 0
    # A flap behind a page: the latest state waits behind it.
    q.offer("j", "firing 1", behind=behind)
    q.offer("j", "resolved 1", behind=behind)
    q.offer("j", "firing 2", behind=behind)
    ((entry, item, version),) = q.take(5)
    q.done(entry, version)
    clock.advance(30)
    assert [i for _, i, _ in q.take(5)] == ["firing 2"]
