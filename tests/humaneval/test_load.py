"""Load: 20 evaluators submit 50 rankings each, concurrently, to a real waitress server on loopback.

Every ranking must be stored exactly once, and resubmissions must update rows in place.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable

from molma.humaneval import BackgroundServer, Study

from .helpers import Client, form_fields

N_EVALUATORS = 20
N_PROMPTS = 50
N_RESUBMIT = 10
MODELS = ("a", "b", "c")


def _rank(evaluator: int, index: int, position: int, round_: int) -> int:
    """A deterministic rank in 1..3 per evaluator, item, field position and round."""
    return 1 + (evaluator * 7 + index * 3 + position + round_) % len(MODELS)


def test_concurrent_evaluators_store_every_ranking_once(make_study: Callable[..., Study]) -> None:
    study = make_study(n_prompts=N_PROMPTS, models=MODELS)
    tokens = [inv.token for inv in study.invite(N_EVALUATORS)]
    expected: dict[tuple[str, str, str], int] = {}  # (evaluator label, objective, public id) -> last rank
    lock = threading.Lock()
    errors: list[str] = []
    statuses: list[int] = []
    start = threading.Barrier(N_EVALUATORS)

    with BackgroundServer(study, threads=8) as server:

        def evaluator(i: int) -> None:
            client = Client(server.url)
            try:
                assert client.login(tokens[i]) == 303
                start.wait(timeout=60)
                plan = [(k, 0) for k in range(1, N_PROMPTS + 1)] + [(k, 1) for k in range(1, N_RESUBMIT + 1)]
                for k, round_ in plan:
                    status, _, html = client.request("GET", f"/evaluate/{k}")
                    csrf, fields = form_fields(html)
                    form = {"csrf": csrf, "action": "next"}
                    for pos, (obj, pid) in enumerate(fields):
                        form[f"rank.{obj}.{pid}"] = str(_rank(i, k, pos, round_))
                    status, headers, _ = client.request("POST", f"/evaluate/{k}", form)
                    with lock:
                        statuses.append(status)
                        for pos, (obj, pid) in enumerate(fields):
                            expected[(f"evaluator-{i + 1:02d}", obj, pid)] = _rank(i, k, pos, round_)
            except Exception as err:  # collected and reported by the main thread
                errors.append(f"evaluator {i}: {err!r}")
            finally:
                client.close()

        began = time.monotonic()
        threads = [threading.Thread(target=evaluator, args=(i,)) for i in range(N_EVALUATORS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        elapsed = time.monotonic() - began
        assert not any(t.is_alive() for t in threads), "evaluators did not finish in time"
        assert server.running
    assert not server.running  # stopped by the with block

    assert errors == []
    n_posts = N_EVALUATORS * (N_PROMPTS + N_RESUBMIT)
    assert statuses == [303] * n_posts
    with sqlite3.connect(study.path) as conn:
        rows = conn.execute(
            "SELECT a.label, o.key, s.public_id, k.rank FROM rankings k"
            " JOIN accounts a ON a.id = k.evaluator_id JOIN objectives o ON o.id = k.objective_id"
            " JOIN responses s ON s.id = k.response_id"
        ).fetchall()
        subs = conn.execute("SELECT COUNT(*), SUM(revisions), MAX(revisions) FROM submissions").fetchone()
        dupes = conn.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM rankings GROUP BY evaluator_id, response_id, objective_id"
            " HAVING COUNT(*) > 1)"
        ).fetchone()[0]
    assert len(rows) == N_EVALUATORS * N_PROMPTS * len(MODELS) * 2 == len(expected)
    assert dupes == 0
    assert {(label, obj, pid): rank for label, obj, pid, rank in rows} == expected
    assert subs == (N_EVALUATORS * N_PROMPTS, n_posts, 2)
    assert all(p.saved == N_PROMPTS for p in study.progress() if p.role == "evaluator")
    print(
        f"load: {n_posts} submissions + {n_posts} page loads by {N_EVALUATORS} evaluators in {elapsed:.1f}s"
    )
