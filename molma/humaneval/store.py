"""The study database (SQLite): prompts, responses, objectives, accounts and rankings.

Durability and concurrency: WAL journal, ``synchronous=FULL``, one connection per call, every write in
a ``BEGIN IMMEDIATE`` transaction (so concurrent writers queue on the busy timeout instead of failing on
a lock upgrade). A committed save survives the server being killed. Rankings are keyed
``UNIQUE(evaluator_id, response_id, objective_id)`` and written with an upsert, so resubmitting a
prompt updates the rows in place and never duplicates them.

Access: evaluators and admins hold a secret token (``secrets.token_urlsafe(32)``); only its SHA-256 is
stored. Tokens carry 256 bits of randomness, so a fast hash is enough (nothing to brute-force).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import secrets
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from molma.humaneval.objectives import DEFAULT_OBJECTIVES, Objective, check_objectives
from molma.humaneval.records import ResponseRecord

SCHEMA_VERSION = 1
TOKEN_BYTES = 32
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,100}$")
_RANK_RE = re.compile(r"[ \t]*[0-9]{1,4}[ \t]*")  # ASCII digits only (int() takes "３", "٣")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE objectives (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, label TEXT NOT NULL, definition TEXT NOT NULL,
    position INTEGER NOT NULL);
CREATE TABLE models (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, position INTEGER NOT NULL);
CREATE TABLE prompts (
    id INTEGER PRIMARY KEY, prompt_key TEXT NOT NULL UNIQUE, text TEXT NOT NULL, tag TEXT,
    position INTEGER NOT NULL);
CREATE TABLE responses (
    id INTEGER PRIMARY KEY, public_id TEXT NOT NULL UNIQUE,
    prompt_id INTEGER NOT NULL REFERENCES prompts(id), model_id INTEGER NOT NULL REFERENCES models(id),
    text TEXT NOT NULL, scores TEXT NOT NULL, source_line INTEGER NOT NULL,
    UNIQUE (prompt_id, model_id));
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('evaluator', 'admin')),
    token_hash TEXT NOT NULL UNIQUE, seed INTEGER NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE submissions (
    id INTEGER PRIMARY KEY, evaluator_id INTEGER NOT NULL REFERENCES accounts(id),
    prompt_id INTEGER NOT NULL REFERENCES prompts(id), display_order TEXT NOT NULL,
    first_saved_at TEXT NOT NULL, saved_at TEXT NOT NULL, revisions INTEGER NOT NULL DEFAULT 1,
    UNIQUE (evaluator_id, prompt_id));
CREATE TABLE rankings (
    id INTEGER PRIMARY KEY, evaluator_id INTEGER NOT NULL REFERENCES accounts(id),
    response_id INTEGER NOT NULL REFERENCES responses(id),
    objective_id INTEGER NOT NULL REFERENCES objectives(id),
    rank INTEGER NOT NULL CHECK (rank >= 1), display_position INTEGER NOT NULL, saved_at TEXT NOT NULL,
    UNIQUE (evaluator_id, response_id, objective_id));
CREATE INDEX rankings_by_response ON rankings (response_id);
"""


class StudyError(ValueError):
    """A study that cannot be created or opened (existing file, wrong schema, bad label...)."""


class SubmissionError(ValueError):
    """A ranking submission that is refused; the message is shown to the evaluator as is."""


def now_utc() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def hash_token(token: str) -> str:
    """SHA-256 hex digest of an access token (what the database stores)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def response_letter(index: int) -> str:
    """Blinded display name of the ``index``-th shown response: A, B, ..., Z, AA, AB, ..."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


@dataclass(frozen=True)
class Account:
    """An evaluator or admin, as authenticated by their token."""

    id: int
    label: str
    role: str
    seed: int


@dataclass(frozen=True)
class Invite:
    """A freshly created account and its secret token (shown once, never stored in clear)."""

    label: str
    role: str
    token: str


@dataclass(frozen=True)
class ShownResponse:
    """One response as an evaluator sees it: blinded letter, opaque id, text."""

    public_id: str
    letter: str
    position: int
    text: str


@dataclass(frozen=True)
class Item:
    """The ``index``-th (1-based) prompt of an evaluator's queue, with their saved ranks if any."""

    index: int
    total: int
    prompt_text: str
    responses: tuple[ShownResponse, ...]
    saved: dict[str, dict[str, int]]
    saved_at: str | None
    revisions: int

    def letter_of(self, public_id: str) -> str | None:
        """The display letter of a response id, or None if it is not part of this item."""
        for resp in self.responses:
            if resp.public_id == public_id:
                return resp.letter
        return None


@dataclass(frozen=True)
class Progress:
    """How far one account got."""

    label: str
    role: str
    saved: int
    total: int
    revisions: int
    last_saved_at: str | None
    revoked: bool


@dataclass(frozen=True)
class StudyData:
    """Everything the analysis needs, read in two transactions: prompts, models, scores and rankings in
    one, the per-account progress in a second (it may count a save made in between)."""

    title: str
    objectives: tuple[Objective, ...]
    models: tuple[str, ...]
    prompts: tuple[str, ...]
    available: dict[str, tuple[str, ...]]  # prompt_key -> models with a response
    scores: dict[tuple[str, str], dict[str, float]]  # (prompt_key, model) -> scores
    ratings: tuple[tuple[str, str, str, str, int], ...]  # (evaluator, prompt, model, objective, rank)
    progress: tuple[Progress, ...]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


@contextmanager
def _transaction(conn: sqlite3.Connection, *, write: bool) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Study:
    """A human-evaluation study stored in one SQLite file. Thread-safe: each call opens its own
    connection, so a web server may share one instance between request threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"study database not found: {self.path} (create it with `init`)")
        try:
            self._load()
        except sqlite3.DatabaseError as err:
            raise StudyError(f"{self.path}: not a molma human-eval study ({err})") from err

    def _load(self) -> None:
        with self._conn() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("schema_version") != str(SCHEMA_VERSION):
                raise StudyError(
                    f"{self.path}: schema version {meta.get('schema_version')!r}, expected {SCHEMA_VERSION}"
                )
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            self.objectives = tuple(
                Objective(r["key"], r["label"], r["definition"])
                for r in conn.execute("SELECT key, label, definition FROM objectives ORDER BY position")
            )
        self.title = meta["title"]
        self.source_sha256 = meta["source_sha256"]
        self._secret = bytes.fromhex(meta["secret_key"])

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = _connect(self.path)
        try:
            yield conn
        finally:
            conn.close()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: str | Path,
        records: Sequence[ResponseRecord],
        *,
        objectives: Sequence[Objective] = DEFAULT_OBJECTIVES,
        title: str = "Human evaluation",
        sample: int | None = None,
        seed: int = 0,
        source: str = "",
        source_sha256: str = "",
    ) -> Study:
        """Create a new study file from checked records (see :func:`~molma.humaneval.load_responses`).

        ``sample`` keeps a seeded random subset of that many prompts (the paper samples 100 prompts
        from its test set); the prompt order follows the file. Refuses to overwrite an existing file.
        """
        path = Path(path)
        objectives = check_objectives(list(objectives))
        if path.exists():
            raise StudyError(f"{path} already exists; use a new --db path (a study is created once)")
        prompt_keys: list[str] = []
        for rec in records:
            if rec.prompt_id not in prompt_keys:
                prompt_keys.append(rec.prompt_id)
        if sample is not None:
            if sample < 1:
                raise StudyError(f"sample must be >= 1, got {sample}")
            if sample < len(prompt_keys):
                chosen = set(random.Random(seed).sample(prompt_keys, sample))
                prompt_keys = [k for k in prompt_keys if k in chosen]
        kept = set(prompt_keys)
        records = [r for r in records if r.prompt_id in kept]
        models: list[str] = []
        for rec in records:
            if rec.model not in models:
                models.append(rec.model)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".creating")
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
        conn = _connect(tmp)
        try:
            conn.executescript(SCHEMA)
            with _transaction(conn, write=True):
                meta = {
                    "schema_version": str(SCHEMA_VERSION),
                    "title": title,
                    "created_at": now_utc(),
                    "source": source,
                    "source_sha256": source_sha256,
                    "secret_key": secrets.token_hex(32),
                    "sample": "" if sample is None else str(sample),
                    "sample_seed": str(seed),
                }
                conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
                conn.executemany(
                    "INSERT INTO objectives (key, label, definition, position) VALUES (?, ?, ?, ?)",
                    [(o.key, o.label, o.definition, i) for i, o in enumerate(objectives)],
                )
                conn.executemany(
                    "INSERT INTO models (name, position) VALUES (?, ?)",
                    [(m, i) for i, m in enumerate(models)],
                )
                model_ids = {r["name"]: r["id"] for r in conn.execute("SELECT id, name FROM models")}
                texts = {r.prompt_id: r for r in records}
                for i, key in enumerate(prompt_keys):
                    conn.execute(
                        "INSERT INTO prompts (prompt_key, text, tag, position) VALUES (?, ?, ?, ?)",
                        (key, texts[key].prompt, texts[key].tag or None, i),
                    )
                prompt_ids = {
                    r["prompt_key"]: r["id"] for r in conn.execute("SELECT id, prompt_key FROM prompts")
                }
                used: set[str] = set()
                for rec in records:
                    public_id = secrets.token_hex(8)
                    while public_id in used:  # pragma: no cover - 64-bit collision
                        public_id = secrets.token_hex(8)
                    used.add(public_id)
                    conn.execute(
                        "INSERT INTO responses (public_id, prompt_id, model_id, text, scores, source_line)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            public_id,
                            prompt_ids[rec.prompt_id],
                            model_ids[rec.model],
                            rec.response,
                            json.dumps(rec.scores),
                            rec.line,
                        ),
                    )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        tmp.chmod(0o600)  # rankings are personal data; SQLite gives -wal/-shm the same mode
        tmp.replace(path)
        return cls(path)

    # ------------------------------------------------------------------ accounts
    def invite(
        self, n: int = 0, *, labels: Sequence[str] = (), prefix: str = "evaluator", role: str = "evaluator"
    ) -> list[Invite]:
        """Create accounts: the given ``labels``, else ``n`` numbered ``prefix-01``, ``prefix-02``...

        Returns each new token once; only its hash is stored.
        """
        if role not in ("evaluator", "admin"):
            raise StudyError(f"role must be 'evaluator' or 'admin', got {role!r}")
        labels = list(labels)
        for label in labels:
            if not _LABEL_RE.match(label):
                raise StudyError(f"label {label!r}: use letters, digits and _.@+- (at most 64 characters)")
        if len(set(labels)) != len(labels):
            raise StudyError("labels must be unique")
        if not labels and n < 1:
            raise StudyError(f"number of accounts must be >= 1, got {n}")
        if not _LABEL_RE.match(f"{prefix}-01"):
            raise StudyError(f"prefix {prefix!r}: use letters, digits and _.@+-")
        invites = []
        with self._conn() as conn, _transaction(conn, write=True):
            existing = {r[0] for r in conn.execute("SELECT label FROM accounts")}
            clash = sorted(set(labels) & existing)
            if clash:
                raise StudyError(f"label(s) already used: {', '.join(clash)}")
            if not labels:
                number = 0
                while len(labels) < n:
                    number += 1
                    label = f"{prefix}-{number:02d}"
                    if label not in existing:
                        labels.append(label)
            for label in labels:
                token = secrets.token_urlsafe(TOKEN_BYTES)
                conn.execute(
                    "INSERT INTO accounts (label, role, token_hash, seed, created_at) VALUES (?, ?, ?, ?, ?)",
                    (label, role, hash_token(token), secrets.randbits(62), now_utc()),
                )
                invites.append(Invite(label=label, role=role, token=token))
        return invites

    def revoke(self, labels: Sequence[str]) -> int:
        """Revoke the accounts with these labels (their tokens stop working; rankings are kept)."""
        with self._conn() as conn, _transaction(conn, write=True):
            missing = [
                lab
                for lab in labels
                if conn.execute("SELECT 1 FROM accounts WHERE label = ?", (lab,)).fetchone() is None
            ]
            if missing:
                raise StudyError(f"no account labelled {', '.join(missing)}")
            cur = conn.executemany(
                "UPDATE accounts SET revoked_at = ? WHERE label = ? AND revoked_at IS NULL",
                [(now_utc(), lab) for lab in labels],
            )
            return cur.rowcount

    def authenticate(self, token: str | None) -> Account | None:
        """The active account holding ``token``, or None (unknown, revoked or malformed token)."""
        if not token or not _TOKEN_RE.match(token):
            return None
        with self._conn() as conn:
            row = conn.execute(
                "SELECT id, label, role, seed FROM accounts WHERE token_hash = ? AND revoked_at IS NULL",
                (hash_token(token),),
            ).fetchone()
        return Account(row["id"], row["label"], row["role"], row["seed"]) if row else None

    def csrf_token(self, token: str) -> str:
        """The anti-forgery token bound to one access token: HMAC-SHA256(study secret, token hash)."""
        return hmac.new(self._secret, b"csrf:" + hash_token(token).encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, token: str, candidate: str | None) -> bool:
        """Constant-time check of a submitted anti-forgery token."""
        return bool(candidate) and hmac.compare_digest(self.csrf_token(token), str(candidate))

    # ------------------------------------------------------------------ evaluator views
    def _queue(self, conn: sqlite3.Connection, account: Account) -> list[int]:
        """The account's prompt order: a shuffle seeded by its own seed (stable across reloads)."""
        ids = [r[0] for r in conn.execute("SELECT id FROM prompts ORDER BY position")]
        random.Random(f"{account.seed}:prompts").shuffle(ids)
        return ids

    @staticmethod
    def _shown(conn: sqlite3.Connection, account: Account, prompt_id: int) -> list[sqlite3.Row]:
        rows = conn.execute(
            "SELECT id, public_id, text FROM responses WHERE prompt_id = ? ORDER BY id", (prompt_id,)
        ).fetchall()
        random.Random(f"{account.seed}:{prompt_id}").shuffle(rows)
        return rows

    def n_prompts(self) -> int:
        """How many prompts each evaluator ranks."""
        with self._conn() as conn:
            return conn.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]

    def overview(self, account: Account) -> list[tuple[int, str, str | None]]:
        """The evaluator's queue: (1-based index, prompt preview, saved_at or None) per prompt."""
        with self._conn() as conn, _transaction(conn, write=False):
            queue = self._queue(conn, account)
            texts = dict(conn.execute("SELECT id, text FROM prompts").fetchall())
            saved = dict(
                conn.execute(
                    "SELECT prompt_id, saved_at FROM submissions WHERE evaluator_id = ?", (account.id,)
                ).fetchall()
            )
        out = []
        for i, pid in enumerate(queue, start=1):
            preview = " ".join(texts[pid].split())
            out.append((i, preview[:117] + "..." if len(preview) > 120 else preview, saved.get(pid)))
        return out

    def item(self, account: Account, index: int) -> Item:
        """The ``index``-th (1-based) prompt of the account's queue, responses in its blinded order."""
        with self._conn() as conn, _transaction(conn, write=False):
            queue = self._queue(conn, account)
            if not 1 <= index <= len(queue):
                raise IndexError(f"item {index} is outside 1..{len(queue)}")
            prompt_id = queue[index - 1]
            prompt_text = conn.execute("SELECT text FROM prompts WHERE id = ?", (prompt_id,)).fetchone()[0]
            rows = self._shown(conn, account, prompt_id)
            shown = tuple(
                ShownResponse(r["public_id"], response_letter(i), i, r["text"]) for i, r in enumerate(rows)
            )
            saved: dict[str, dict[str, int]] = {}
            for r in conn.execute(
                "SELECT o.key, s.public_id, k.rank FROM rankings k JOIN objectives o ON o.id = k.objective_id"
                " JOIN responses s ON s.id = k.response_id WHERE k.evaluator_id = ? AND s.prompt_id = ?",
                (account.id, prompt_id),
            ):
                saved.setdefault(r[0], {})[r[1]] = r[2]
            sub = conn.execute(
                "SELECT saved_at, revisions FROM submissions WHERE evaluator_id = ? AND prompt_id = ?",
                (account.id, prompt_id),
            ).fetchone()
        return Item(
            index=index,
            total=len(queue),
            prompt_text=prompt_text,
            responses=shown,
            saved=saved,
            saved_at=sub["saved_at"] if sub else None,
            revisions=sub["revisions"] if sub else 0,
        )

    def save(self, account: Account, index: int, ranks: Mapping[str, Mapping[str, object]]) -> str:
        """Validate and store one evaluator's ranks for their ``index``-th prompt; returns the save time.

        ``ranks`` maps objective key -> response public id -> rank (int, or a string of digits). Every
        objective must rank every shown response with a whole number in 1..N (ties allowed). Anything
        else raises :class:`SubmissionError` and writes nothing. A resubmission updates in place.
        """
        if account.role != "evaluator":
            raise SubmissionError("only evaluator accounts can submit rankings")
        with self._conn() as conn, _transaction(conn, write=True):
            queue = self._queue(conn, account)
            if not 1 <= index <= len(queue):
                raise SubmissionError(f"item {index} does not exist (there are {len(queue)})")
            prompt_id = queue[index - 1]
            rows = self._shown(conn, account, prompt_id)
            clean = self._validate(rows, ranks)
            objective_ids = dict(conn.execute("SELECT key, id FROM objectives").fetchall())
            stamp = now_utc()
            order = json.dumps([r["public_id"] for r in rows])
            conn.execute(
                "INSERT INTO submissions (evaluator_id, prompt_id, display_order, first_saved_at, saved_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (evaluator_id, prompt_id) DO UPDATE SET"
                " display_order = excluded.display_order, saved_at = excluded.saved_at,"
                " revisions = submissions.revisions + 1",
                (account.id, prompt_id, order, stamp, stamp),
            )
            conn.executemany(
                "INSERT INTO rankings"
                " (evaluator_id, response_id, objective_id, rank, display_position, saved_at)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (evaluator_id, response_id, objective_id) DO UPDATE SET"
                " rank = excluded.rank, display_position = excluded.display_position,"
                " saved_at = excluded.saved_at",
                [
                    (account.id, row["id"], objective_ids[key], clean[key][row["public_id"]], pos, stamp)
                    for key in clean
                    for pos, row in enumerate(rows)
                ],
            )
        return stamp

    def _validate(self, rows: Sequence[sqlite3.Row], ranks: Mapping[str, Mapping[str, object]]) -> dict:
        letters = {r["public_id"]: response_letter(i) for i, r in enumerate(rows)}
        n = len(rows)
        labels = {o.key: o.label for o in self.objectives}
        if not isinstance(ranks, Mapping):
            raise SubmissionError("ranks must map objectives to responses")
        unknown = [k for k in ranks if k not in labels]
        if unknown:
            raise SubmissionError(
                f"unknown objective {unknown[0]!r}; this study ranks {', '.join(map(repr, labels))}"
            )
        clean: dict[str, dict[str, int]] = {}
        for key, label in labels.items():
            given = ranks.get(key)
            if not given:
                raise SubmissionError(f"missing ranks for objective '{label}': rank every response")
            if not isinstance(given, Mapping):
                raise SubmissionError(f"ranks for objective '{label}' must map response ids to ranks")
            stray = [pid for pid in given if pid not in letters]
            if stray:
                raise SubmissionError(
                    f"unknown response id {str(stray[0])[:40]!r}: not shown with this prompt"
                )
            clean[key] = {}
            for pid, letter in letters.items():
                value = given.get(pid)
                if value is None or (isinstance(value, str) and not value.strip()):
                    raise SubmissionError(f"missing rank for response {letter} under '{label}'")
                if isinstance(value, bool):
                    raise SubmissionError(
                        f"rank for response {letter} under '{label}' must be a whole number"
                    )
                if isinstance(value, str):
                    if not _RANK_RE.fullmatch(value):
                        raise SubmissionError(
                            f"rank {value[:20]!r} for response {letter} under '{label}' is not a whole number"
                        )
                    value = int(value)
                if not isinstance(value, int):
                    raise SubmissionError(
                        f"rank for response {letter} under '{label}' must be a whole number"
                    )
                if not 1 <= value <= n:
                    raise SubmissionError(
                        f"rank {value} for response {letter} under '{label}' is out of range:"
                        f" use 1 (best) to {n}"
                    )
                clean[key][pid] = value
        return clean

    # ------------------------------------------------------------------ admin views
    def progress(self) -> list[Progress]:
        """Per account: prompts saved, total, resubmissions, last save, revoked."""
        with self._conn() as conn, _transaction(conn, write=False):
            total = conn.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]
            rows = conn.execute(
                "SELECT a.label, a.role, a.revoked_at, COUNT(s.id) AS saved,"
                " COALESCE(SUM(s.revisions - 1), 0) AS resubmissions, MAX(s.saved_at) AS last"
                " FROM accounts a LEFT JOIN submissions s ON s.evaluator_id = a.id"
                " GROUP BY a.id ORDER BY a.role DESC, a.label"
            ).fetchall()
        return [
            Progress(
                r["label"],
                r["role"],
                r["saved"],
                total,
                r["resubmissions"],
                r["last"],
                r["revoked_at"] is not None,
            )
            for r in rows
        ]

    def data(self) -> StudyData:
        """A consistent snapshot of prompts, models, scores and all rankings for the analysis (one
        transaction), with the per-account progress read right after it."""
        with self._conn() as conn, _transaction(conn, write=False):
            models = tuple(r[0] for r in conn.execute("SELECT name FROM models ORDER BY position"))
            prompts = tuple(r[0] for r in conn.execute("SELECT prompt_key FROM prompts ORDER BY position"))
            available: dict[str, list[str]] = {p: [] for p in prompts}
            scores: dict[tuple[str, str], dict[str, float]] = {}
            for r in conn.execute(
                "SELECT p.prompt_key, m.name, s.scores FROM responses s JOIN prompts p ON p.id = s.prompt_id"
                " JOIN models m ON m.id = s.model_id ORDER BY m.position"
            ):
                available[r[0]].append(r[1])
                scores[(r[0], r[1])] = json.loads(r[2])
            ratings = tuple(
                (r[0], r[1], r[2], r[3], r[4])
                for r in conn.execute(
                    "SELECT a.label, p.prompt_key, m.name, o.key, k.rank FROM rankings k"
                    " JOIN accounts a ON a.id = k.evaluator_id JOIN responses s ON s.id = k.response_id"
                    " JOIN prompts p ON p.id = s.prompt_id JOIN models m ON m.id = s.model_id"
                    " JOIN objectives o ON o.id = k.objective_id"
                    " ORDER BY a.label, p.position, o.position, m.position"
                )
            )
        return StudyData(
            title=self.title,
            objectives=self.objectives,
            models=models,
            prompts=prompts,
            available={p: tuple(ms) for p, ms in available.items()},
            scores=scores,
            ratings=ratings,
            progress=tuple(self.progress()),
        )

    def export_rankings(self) -> list[dict[str, object]]:
        """Every stored ranking with evaluator, prompt, model, display letter/position and time."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT a.label AS evaluator, p.prompt_key AS prompt_id, m.name AS model, o.key AS objective,"
                " k.rank, k.display_position, k.saved_at, sub.first_saved_at, sub.revisions"
                " FROM rankings k JOIN accounts a ON a.id = k.evaluator_id"
                " JOIN responses s ON s.id = k.response_id JOIN prompts p ON p.id = s.prompt_id"
                " JOIN models m ON m.id = s.model_id JOIN objectives o ON o.id = k.objective_id"
                " JOIN submissions sub ON sub.evaluator_id = k.evaluator_id AND sub.prompt_id = s.prompt_id"
                " ORDER BY a.label, p.position, o.position, k.display_position"
            ).fetchall()
        out = []
        for r in rows:
            row = dict(r)
            row["display_letter"] = response_letter(row["display_position"])
            out.append(row)
        return out
