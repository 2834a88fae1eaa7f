"""The smart score of one candidate: integer arithmetic, every step named.

    priority_score = 100 - min(priority, 100)
    load_score     = 100 - min(in_flight, 100)
    latency_score  = 100 - min(floor(latency_ema_ms) // 10, 100)
    score          = (priority_score * w.priority + load_score * w.load + latency_score * w.latency) // 100

then, in this order: at the soft (or hard) budget limit an open-zone backend's score is halved
(`score //= 2`); a backend whose average TTFT (whole ms) exceeds `ttft_penalty_threshold_ms`
(thr >= 1) loses `score * min(ttft - thr, thr) // thr`.
"""

from __future__ import annotations

from typing import NamedTuple

from nexus_grpc.config.schema import Weights
from nexus_grpc.domain.enums import PrivacyZone
from nexus_grpc.pipeline.snapshot import Candidate

OPEN = PrivacyZone.OPEN


class Score(NamedTuple):
    score: int
    priority_score: int
    load_score: int
    latency_score: int
    halved: bool
    ttft_penalty: int | None  # None: the average TTFT is within the threshold


def base_score(c: Candidate, w: Weights) -> tuple[int, int, int, int]:
    """(score before adjustments, priority, load and latency scores)."""
    ps = c.priority_score
    inflight = len(c.live.in_flight)
    ls = 100 - inflight if inflight < 100 else 0
    ema = int(c.live.latency_ema_ms) // 10
    lat = 100 - ema if ema < 100 else 0
    return (ps * w.priority + ls * w.load + lat * w.latency) // 100, ps, ls, lat


def ttft_ms(c: Candidate, now: float) -> int:
    """The backend's average TTFT over the window, whole ms (0 without samples)."""
    stats = c.live.stats
    return int(stats.snapshot(now)[2]) if stats.ttft_n else 0


def adjusted(score: int, halve: bool, ttft: int, thr: int) -> tuple[int, int | None]:
    """(final score, TTFT penalty or None) after the budget halving and the TTFT penalty."""
    if halve:
        score //= 2
    if thr >= 1 and ttft > thr:
        penalty = score * min(ttft - thr, thr) // thr
        return score - penalty, penalty
    return score, None


def smart_score(c: Candidate, w: Weights, thr: int, soft_limit: bool, now: float) -> Score:
    base, ps, ls, lat = base_score(c, w)
    halve = soft_limit and c.zone == OPEN
    final, penalty = adjusted(base, halve, ttft_ms(c, now), thr)
    return Score(final, ps, ls, lat, halve, penalty)
