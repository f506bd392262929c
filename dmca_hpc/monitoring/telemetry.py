"""Telemetry: one JSON object per line, one line per unit of work.

Contract
    ``config/telemetry.schema.json`` (JSON Schema draft-07): the DMCA core
    fields (domain, hypothesis, step, intervention, infra_cost_usd, qps,
    latency_p95_ms) are required, ``step`` as a label (our jobs) or a
    non-negative integer (the original DMCA records: ``"step": 1``); the
    ``hpc`` block (job id, rank, communicator size ``nranks``, stage, unit,
    wall/cpu/core seconds, peak memory [MiB], status, error) and the
    ``physics`` block of the DMCA PySCF guide (material, e_tot_hartree,
    band_gap_ev, kpts, q_scan_points, wimp_sigma_cm2, axion_coupling,
    darkphoton_epsilon, form_factor_q0, computation_time_sec) are optional,
    so records with only the core fields (the DMCA README's own sample
    lines) stay valid.  The contract only ever
    grows by optional fields: a record valid once stays valid.  Every number
    is finite and fits a double (:data:`MAX_NUMBER`): a line with NaN,
    Infinity or an overflowing literal such as ``1e400`` is invalid (code
    ``nonfinite``), in :func:`quick_valid`, in the schema's bounds and in
    :func:`diagnose` alike.

Cost model
    ``infra_cost_usd = core_seconds / 3600 * price_per_core_hour_usd`` with
    ``core_seconds = max(wall_seconds * cores, cpu_seconds)``: a cluster bills
    the cores it allocated for the wall time they were held (``cores`` =
    ``SLURM_CPUS_PER_TASK`` or 1 per rank); the ``max`` charges extra when a
    unit used more CPU than allocated (threads oversubscribing).

No interleaved lines
    Every record is written with a single ``os.write`` of one whole line to a
    file opened with ``O_APPEND``.  A writer killed mid-line leaves a partial
    last line; before its first write to a file, a :class:`Telemetry`
    writer (a resumed run) that finds the file not ending in a newline
    appends one first (:func:`terminate_partial_line`), so the partial line
    stays one invalid line and the new record is whole (the partial line
    must stay unchanged for :data:`PARTIAL_LINE_SETTLE_S`, so another
    process's line caught while the kernel copies it in is not taken for
    one; two writers resuming on one shared file at the same instant may
    both terminate it: one blank line, which readers skip).  By default each rank has its own file
    ``rank-NNNNN.jsonl`` and rank 0 concatenates whole lines into
    ``telemetry.jsonl`` at the end (:func:`merge_rank_files`).  Processes that
    share one file (``filename=``, e.g. SLURM array tasks) still produce whole
    lines on a local POSIX file system: Linux serialises O_APPEND writes to a
    regular file under the inode lock, so the seek-to-end and the write of
    one ``write(2)`` call are not split by another writer.  (NFS does not
    give that guarantee: keep per-rank files there.)  Both are proven by
    ``tests/mpi/test_telemetry_mpi.py`` (mpiexec -n 2) and
    ``tests/unit/monitoring/test_telemetry.py`` (4 processes, one file).

Stream identity (run_id, seq)
    Every record a :class:`Telemetry` writer writes carries ``hpc.run_id``
    (16 hex digits from ``os.urandom``, drawn when the writer is created and
    again in a forked child, so a resumed run or a second writer in one
    process is a new stream) and ``hpc.seq`` (0, 1, 2, ... per writer,
    consumed only by a line actually written).  A stream is
    ``(run_id, rank)``; its lines are appended in seq order to one file (and
    copied in that order into the merged ``telemetry.jsonl``), so a reader
    (:mod:`dmca_hpc.monitoring.collector`) reports a missing seq (a deleted
    line: *gap*), a seq below one already read (*reorder*), a seq read again
    (*duplicate*: a replayed or copied line, counted once) and a stream's
    record in a second file (*foreign*), each by file and line.  Both fields
    are optional in the schema: records without them (old HPC records, the
    DMCA format) stay valid and are counted as unsequenced.

    Limits (what the lines alone cannot show): a deleted LAST line of a
    stream (or several trailing lines, or every line of a stream, or a whole
    file) leaves no gap behind it; telling that apart from a writer that
    simply stopped needs a count kept elsewhere (e.g. each rank's final seq
    in the run's manifest).  Plaintext lines are not authenticated: anyone
    who can write the file can forge a plaintext record with any identity,
    so only encrypted mode makes the identity trustworthy.  Whoever holds
    the key can forge any encrypted line (AES-GCM is a shared-key scheme).

Encryption (optional)
    Per line AES-256-GCM (``cryptography``'s ``AESGCM``) with a fresh random
    96-bit nonce per line and the key from the environment variable
    ``DMCA_TELEMETRY_KEY`` (base64 of 32 bytes; never from a file in the
    repository).  An encrypted line (envelope version 2) is the JSON object
    ``{"enc":"aesgcm","kid":KID,"run":RUN,"rank":R,"seq":S,"nonce":B64,"ct":B64}``
    where ``ct`` is the ciphertext and 16-byte tag of the plaintext record
    line, ``RUN, R, S`` the record's ``hpc.run_id, hpc.rank, hpc.seq`` in
    clear (so the stream checks need no key), and
    ``KID = sha256(b"dmca-telemetry-kid" + key)[:16 hex]`` identifies the key
    (64 bits of a hash of a 256-bit key reveal nothing usable).  The
    associated data ``b"dmca-telemetry/2:KID:RUN:R:S"`` (:func:`aad_v2`; the
    colons keep the concatenation unambiguous, a run id holds none) binds key
    id and identity to the ciphertext: an edited clear identity fails
    authentication (code ``tampered``), and a decrypted record whose own
    identity differs from its envelope's is ``tampered`` too.  A reader tells
    "wrong key" (key id differs) from "line altered" (key id matches but
    authentication fails).  Version-1 envelopes of older writers,
    ``{"enc","kid","nonce","ct"}`` with associated data
    ``b"dmca-telemetry/1:" + KID``, are still read: authenticated but
    unsequenced (the collector counts them as such); :meth:`Telemetry.encode`
    writes one only for a record without a stream identity.  Which lines a
    reader accepts in clear is the collector's policy: none in a file that
    holds an encrypted line, none at all when a key is given.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import numbers
import os
import platform
import re
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

#: default price of one core-hour [USD], overridable per job (telemetry.price_per_core_hour_usd)
DEFAULT_PRICE_PER_CORE_HOUR_USD = 0.05

#: version of the record layout written by :class:`Telemetry` (old-style records have none = 1)
RECORD_SCHEMA_VERSION = 2

#: environment variable holding the AES-256 key as base64 of 32 bytes
KEY_ENV = "DMCA_TELEMETRY_KEY"

#: an error message longer than this [characters] is cut (tracebacks can be huge; one
#: line must stay a small single write)
MAX_ERROR_CHARS = 8192

#: a line longer than this [bytes] is rejected by readers (protects memory on garbage input)
MAX_LINE_BYTES = 1 << 20

_AAD_V1 = b"dmca-telemetry/1:"
_AAD_V2 = b"dmca-telemetry/2:"

#: a run id as the schema allows it (hpc.run_id): no ':' so the v2 associated data is
#: unambiguous; :class:`Telemetry` writes 16 hex digits
RUN_ID_RE = re.compile(r"[0-9A-Za-z_.-]{1,64}")

#: envelope keys of the two versions (module docstring)
_ENV_V1 = frozenset(("enc", "kid", "nonce", "ct"))
_ENV_V2 = frozenset(("enc", "kid", "run", "rank", "seq", "nonce", "ct"))

#: (domain, hypothesis) of a record whose stage the caller's mapping does not name (the
#: stage table itself is dmca_hpc.stages.registry.STAGE_DMCA, passed in as ``stage_dmca=``)
DEFAULT_DMCA = ("dm-electron", "none")


# --------------------------------------------------------------------------- schema

def schema_path() -> Path:
    """Path of the telemetry JSON Schema, ``config/telemetry.schema.json``
    (found by :mod:`dmca_hpc.resources`, also in a wheel install)."""
    from dmca_hpc import resources
    return resources.config_file("telemetry.schema.json")


_SCHEMA: dict | None = None
_FAST = None


def load_schema() -> dict:
    """The telemetry record schema (parsed once)."""
    global _SCHEMA
    if _SCHEMA is None:
        with open(schema_path(), encoding="utf-8") as fh:
            _SCHEMA = json.load(fh)
    return _SCHEMA


#: largest finite double: every number of a record lies within +-MAX_NUMBER (the
#: schema's bounds), so a literal like 1e400 (parsed as infinity) or a 400-digit
#: integer (no float holds it) is an invalid line, not a crash of a sum or a sketch
MAX_NUMBER = sys.float_info.max


def nonfinite_field(rec: Any, path: str = "") -> tuple[str, float] | None:
    """(key path, value) of the first NaN / infinite float in ``rec``, or
    None.  JSON text cannot carry NaN (the readers refuse the literal), but a
    record built in memory can, and every bound of the schema lets NaN
    through (all comparisons with it are false)."""
    if type(rec) is float:
        return None if -MAX_NUMBER <= rec <= MAX_NUMBER else (path or "(record)", rec)
    if type(rec) is dict:
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in rec.items())
    elif type(rec) is list:
        items = ((f"{path}[{i}]", v) for i, v in enumerate(rec))
    else:
        return None
    for where, v in items:
        found = nonfinite_field(v, where) if type(v) in (float, dict, list) else None
        if found:
            return found
    return None


def _fast_validator():
    """Schema check for records :func:`quick_valid` could not vouch for:
    jsonschema's compiled Draft-7 validator (~170 us per record; only
    unusual or invalid records take this path), plus :func:`nonfinite_field`
    for the NaN the schema's bounds cannot see."""
    global _FAST
    if _FAST is None:
        import jsonschema
        is_valid = jsonschema.Draft7Validator(load_schema()).is_valid
        _FAST = lambda rec: is_valid(rec) and nonfinite_field(rec) is None  # noqa: E731
    return _FAST


def diagnose(rec: Any) -> tuple[str, str] | None:
    """None if ``rec`` is a valid record, else ``(code, message)``: code
    ``nonfinite`` when its only faults are NaN / infinite numbers, else
    ``schema``; the message names the field."""
    if quick_valid(rec) or _fast_validator()(rec):
        return None
    # slow path only for bad records: jsonschema gives the best, field-named message
    import jsonschema
    errors = list(jsonschema.Draft7Validator(load_schema()).iter_errors(rec))
    found = nonfinite_field(rec)
    if found and all(type(e.instance) is float and not math.isfinite(e.instance) for e in errors):
        return "nonfinite", (f"{found[0]}: {found[1]!r} is not a finite number (expected a number "
                             f"within +-{MAX_NUMBER:.17g}; JSON has no NaN/Infinity, and a literal "
                             "like 1e400 overflows to infinity)")
    err = jsonschema.exceptions.best_match(errors)
    if err is None:  # pragma: no cover - is_valid and iter_errors of one validator agree
        return "schema", "record rejected by the schema"
    where = ".".join(str(p) for p in err.absolute_path) or "(record)"
    return "schema", f"{where}: {err.message}"


def record_error(rec: Any) -> str | None:
    """None if ``rec`` is a valid record, else a message naming the field,
    e.g. ``"hpc.rank: -1 is less than the minimum of 0"``."""
    found = diagnose(rec)
    return found[1] if found else None


class TelemetryRecordError(ValueError):
    """A record that violates config/telemetry.schema.json."""


def validate_record(rec: Any) -> None:
    """Raise :class:`TelemetryRecordError` (naming the field) if ``rec`` is invalid."""
    msg = record_error(rec)
    if msg is not None:
        raise TelemetryRecordError(f"telemetry record violates {schema_path().name}: {msg}")


# --------------------------------------------------------------------------- encryption

class KeyError_(ValueError):
    """Bad or missing encryption key."""


def load_key(env: str = KEY_ENV, value: str | None = None) -> bytes:
    """AES-256 key from the environment variable ``env`` (base64 of 32 bytes)."""
    raw = value if value is not None else os.environ.get(env)
    if not raw:
        raise KeyError_(f"telemetry encryption requested but environment variable {env} is not set "
                        f"(expected base64 of 32 random bytes, e.g. from "
                        f"`python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'`)")
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyError_(f"{env} is not valid base64: {exc}") from None
    if len(key) != 32:
        raise KeyError_(f"{env} decodes to {len(key)} bytes; expected 32 (AES-256)")
    return key


def key_id(key: bytes) -> str:
    """Public identifier of a key: 16 hex digits of SHA-256('dmca-telemetry-kid' || key)."""
    return hashlib.sha256(b"dmca-telemetry-kid" + key).hexdigest()[:16]


def aad_v2(kid: str, run: str, rank: int, seq: int) -> bytes:
    """Associated data of a version-2 envelope: ``b"dmca-telemetry/2:KID:RUN:RANK:SEQ"``."""
    return _AAD_V2 + f"{kid}:{run}:{rank}:{seq}".encode()


def new_run_id() -> str:
    """A fresh stream id: 16 hex digits from ``os.urandom`` (64 bits: two writers
    colliding is a 1-in-2^32 event only after ~4e9 streams)."""
    return os.urandom(8).hex()


def record_identity(rec: Any) -> tuple[str, int, int] | None:
    """``(run_id, rank, seq)`` of a record that carries a stream identity, else None."""
    h = rec.get("hpc") if type(rec) is dict else None
    if type(h) is not dict:
        return None
    run, rank, seq = h.get("run_id"), h.get("rank"), h.get("seq")
    if type(run) is str and type(rank) is int and type(seq) is int:
        return run, rank, seq
    return None


def encrypt_line(plain: bytes, key: bytes, _aead=None,
                 identity: tuple[str, int, int] | None = None) -> bytes:
    """Encrypt one record line (without newline); returns the envelope line
    (without newline).  A fresh random 12-byte nonce is drawn per call.
    ``identity`` = ``(run_id, rank, seq)`` of the record gives a version-2
    envelope bound to it; None gives a version-1 envelope (authenticated,
    unsequenced: only for records without an identity)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    kid = key_id(key)
    nonce = os.urandom(12)
    if identity is None:
        ct = (_aead or AESGCM(key)).encrypt(nonce, plain, _AAD_V1 + kid.encode())
        env = {"enc": "aesgcm", "kid": kid}
    else:
        run, rank, seq = identity
        if type(run) is not str or not RUN_ID_RE.fullmatch(run) or type(rank) is not int or rank < 0 \
                or type(seq) is not int or seq < 0:
            raise ValueError(f"stream identity {identity!r}: expected (run id matching "
                             f"{RUN_ID_RE.pattern}, rank >= 0, seq >= 0)")
        ct = (_aead or AESGCM(key)).encrypt(nonce, plain, aad_v2(kid, run, rank, seq))
        env = {"enc": "aesgcm", "kid": kid, "run": run, "rank": rank, "seq": seq}
    env["nonce"] = base64.b64encode(nonce).decode()
    env["ct"] = base64.b64encode(ct).decode()
    return json.dumps(env, separators=(",", ":")).encode()


class LineError(ValueError):
    """A telemetry line that cannot be turned into a valid record.

    ``code`` is one of: ``binary`` (not UTF-8), ``json`` (not JSON),
    ``truncated`` (last line cut, no newline), ``too_long``, ``not_object``,
    ``nonfinite`` (NaN/Infinity), ``schema``, ``no_key`` (encrypted, no key
    given), ``wrong_key``, ``tampered`` (authentication failed, or the
    record's identity differs from its envelope's), ``envelope`` (malformed
    encrypted envelope).  The collector adds ``plaintext`` (a plaintext line
    where only encrypted ones are accepted) and ``duplicate`` (a stream's
    seq read again).
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _reject_constant(name):
    raise ValueError(f"non-finite number {name}")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)

# ---- quick structural check: a hand-written mirror of config/telemetry.schema.json for
# the common case.  It returns True only when the record is certainly valid; on any doubt
# it returns False and the compiled schema decides (so it can never reject a valid
# record; that it never accepts an invalid one is checked against jsonschema on
# thousands of mutated records in tests/test_telemetry.py).  It exists because the
# collector must read 1e6 lines in seconds: jsonschema takes ~170 us per record, this ~3 us.
_TOP = frozenset(("schema_version", "timestamp", "domain", "hypothesis", "step", "intervention",
                  "infra_cost_usd", "qps", "latency_p95_ms", "hpc", "physics"))
_CORE_STR = ("domain", "hypothesis", "intervention")
_CORE_NUM = ("infra_cost_usd", "qps", "latency_p95_ms")
_HPC = frozenset(("job_id", "rank", "stage", "unit", "wall_seconds", "cpu_seconds", "core_seconds",
                  "cores", "peak_memory_mb", "status", "error", "host", "run_id", "seq", "nranks"))
_HPC_REQ = ("job_id", "rank", "stage", "unit", "wall_seconds", "cpu_seconds", "peak_memory_mb", "status")
_HPC_NUM = ("wall_seconds", "cpu_seconds", "peak_memory_mb")
_STATUS = frozenset(("ok", "failed", "skipped"))
_PHYS_NONNEG = frozenset(("band_gap_ev", "wimp_sigma_cm2", "axion_coupling", "darkphoton_epsilon",
                          "computation_time_sec"))
_PHYS_NUM = frozenset(("e_tot_hartree", "form_factor_q0"))


_MAX = MAX_NUMBER  # bounds of every number field (NaN fails every comparison)


def quick_valid(rec: Any) -> bool:
    """True only if ``rec`` is certainly a valid record (see comment above)."""
    if type(rec) is not dict:
        return False
    for k in rec:
        if k not in _TOP and not k.startswith("x_"):
            return False
    for k in _CORE_STR:
        v = rec.get(k)
        if type(v) is not str or not v:
            return False
    v = rec.get("step")  # DMCA writes an integer step (1, 2, ...), our jobs a label
    if type(v) is str:
        if not v:
            return False
    elif type(v) is not int or v < 0:
        return False
    for k in _CORE_NUM:
        v = rec.get(k)
        if (type(v) is not float and type(v) is not int) or not 0 <= v <= _MAX:
            return False
    if "timestamp" in rec:
        v = rec["timestamp"]
        if (type(v) is not float and type(v) is not int) or not 0 <= v <= _MAX:
            return False
    if "schema_version" in rec:
        v = rec["schema_version"]
        if type(v) is not int or v < 1:
            return False
    h = rec.get("hpc")
    if h is not None or "hpc" in rec:
        if type(h) is not dict:
            return False
        for k in h:
            if k not in _HPC:
                return False
        for k in _HPC_REQ:
            if k not in h:
                return False
        for k in ("job_id", "stage"):
            v = h[k]
            if type(v) is not str or not v:
                return False
        if type(h["unit"]) is not str or type(h["status"]) is not str or h["status"] not in _STATUS:
            return False
        v = h["rank"]
        if type(v) is not int or v < 0:
            return False
        for k in _HPC_NUM:
            v = h[k]
            if (type(v) is not float and type(v) is not int) or not 0 <= v <= _MAX:
                return False
        if "core_seconds" in h:
            v = h["core_seconds"]
            if (type(v) is not float and type(v) is not int) or not 0 <= v <= _MAX:
                return False
        for k in ("cores", "nranks"):
            if k in h:
                v = h[k]
                if type(v) is not int or v < 1:
                    return False
        if "error" in h and h["error"] is not None and type(h["error"]) is not str:
            return False
        if "host" in h and type(h["host"]) is not str:
            return False
        if "run_id" in h or "seq" in h:  # both or neither (the schema's dependencies)
            v = h.get("run_id")
            if type(v) is not str or not RUN_ID_RE.fullmatch(v):
                return False
            v = h.get("seq")
            if type(v) is not int or v < 0:
                return False
    p = rec.get("physics")
    if p is not None or "physics" in rec:
        if type(p) is not dict:
            return False
        for k, v in p.items():
            t = type(v)
            if k == "material":
                if t is not str or not v:
                    return False
            elif k in _PHYS_NONNEG:
                if (t is not float and t is not int) or not 0 <= v <= _MAX:
                    return False
            elif k in _PHYS_NUM:
                if (t is not float and t is not int) or not -_MAX <= v <= _MAX:
                    return False
            elif k == "kpts":
                if t is int:
                    if v < 1:
                        return False
                elif t is list:
                    if len(v) != 3:
                        return False
                    for x in v:
                        if type(x) is not int or x < 1:
                            return False
                else:
                    return False
            elif k == "q_scan_points":
                if t is not int or v < 0:
                    return False
            elif t is list:
                for x in v:
                    if (type(x) is not float and type(x) is not int) or not -_MAX <= x <= _MAX:
                        return False
            elif t is float or t is int:
                if not -_MAX <= v <= _MAX:
                    return False
            elif not (t is str or t is bool or v is None):
                return False
    return True


class LineDecoder:
    """Turns raw line bytes into validated records (decrypting when needed).

    Args:
        key: AES-256 key for encrypted lines (None: encrypted lines are
            reported with code ``no_key``).
        validate: check records against the schema.
    """

    def __init__(self, key: bytes | None = None, validate: bool = True):
        self.key = key
        self.kid = key_id(key) if key is not None else None
        self._aead = None
        self.validate = validate
        self._ok = _fast_validator() if validate else None

    def _decrypt(self, env: dict) -> tuple[bytes, tuple[str, int, int] | None]:
        """(plaintext, identity of a v2 envelope or None for v1)."""
        keys = set(env)
        if keys == _ENV_V2:
            run, rank, seq = env["run"], env["rank"], env["seq"]
            if type(run) is not str or not RUN_ID_RE.fullmatch(run) or type(rank) is not int \
                    or rank < 0 or type(seq) is not int or seq < 0:
                raise LineError("envelope", "malformed encrypted envelope: run must match "
                                            f"{RUN_ID_RE.pattern}, rank and seq be integers >= 0")
            identity = (run, rank, seq)
        elif keys == _ENV_V1:
            identity = None
        else:
            raise LineError("envelope", "malformed encrypted envelope (expected keys enc='aesgcm', kid, "
                                        "run, rank, seq, nonce, ct; or, version 1, enc, kid, nonce, ct)")
        if env.get("enc") != "aesgcm" or not all(isinstance(env[k], str) for k in ("kid", "nonce", "ct")):
            raise LineError("envelope", "malformed encrypted envelope (expected enc='aesgcm' and string "
                                        "kid, nonce, ct)")
        if self.key is None:
            raise LineError("no_key", f"encrypted line (key id {env['kid']}) but no key: set {KEY_ENV}")
        if env["kid"] != self.kid:
            raise LineError("wrong_key", f"wrong key: line encrypted with key id {env['kid']}, "
                                         f"{KEY_ENV} has key id {self.kid}")
        try:
            nonce = base64.b64decode(env["nonce"], validate=True)
            ct = base64.b64decode(env["ct"], validate=True)
        except (binascii.Error, ValueError):
            raise LineError("tampered", "authentication failed: nonce/ciphertext is not valid base64 "
                                        "(line altered)") from None
        if len(nonce) != 12 or len(ct) < 16:
            raise LineError("tampered", f"authentication failed: nonce of {len(nonce)} bytes / "
                                        f"ciphertext of {len(ct)} bytes (line altered)")
        if self._aead is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            self._aead = AESGCM(self.key)
        from cryptography.exceptions import InvalidTag
        aad = _AAD_V1 + env["kid"].encode() if identity is None else aad_v2(env["kid"], *identity)
        try:
            return self._aead.decrypt(nonce, ct, aad), identity
        except InvalidTag:
            raise LineError("tampered", "authentication failed: line altered (key id matches, AES-GCM tag "
                                        "does not" + ("" if identity is None else
                                                      "; the tag covers run, rank and seq") + ")") from None

    def decode_line(self, raw: bytes, complete: bool = True) -> tuple[dict, int]:
        """Return ``(record, envelope_version)`` (0 for a plaintext line, 1 or
        2 for an encrypted one) or raise :class:`LineError`.

        ``raw`` excludes the newline; ``complete`` is False for a last line
        without a newline (reported as truncated unless it parses anyway)."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LineError("truncated" if not complete else "binary",
                            f"not UTF-8 text (byte {exc.start}: binary data)"
                            + ("" if complete else "; last line without newline")) from None
        try:
            obj = _JSON.decode(text)
        except ValueError as exc:
            if not complete:
                raise LineError("truncated", f"truncated last line (no newline, not valid JSON: {exc})") from None
            if "non-finite" in str(exc):
                raise LineError("nonfinite", f"{exc} (JSON has no NaN/Infinity)") from None
            raise LineError("json", f"not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise LineError("not_object", f"a JSON {type(obj).__name__}, not an object")
        version = 0
        if "enc" in obj:
            plain, identity = self._decrypt(obj)
            version = 1 if identity is None else 2
            try:
                obj = _JSON.decode(plain.decode("utf-8"))
            except ValueError as exc:  # authenticated but not a record: writer bug, report it
                raise LineError("json", f"decrypted payload is not valid JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise LineError("not_object", "decrypted payload is not a JSON object")
            if identity is not None and record_identity(obj) != identity:
                # only a key holder can make this: a record sealed under another identity
                raise LineError("tampered", f"record identity {record_identity(obj)} differs from its "
                                            f"envelope's (run, rank, seq) {identity}")
        if self.validate and not quick_valid(obj) and not self._ok(obj):
            code, msg = diagnose(obj) or ("schema", "invalid")
            # 1e400 parses to inf: reported as a non-finite number, like a NaN literal
            raise LineError(code, msg if code == "nonfinite" else "schema: " + msg)
        return obj, version

    def decode(self, raw: bytes, complete: bool = True) -> tuple[dict, bool]:
        """Return ``(record, was_encrypted)`` or raise :class:`LineError`
        (:meth:`decode_line` without the envelope version)."""
        rec, version = self.decode_line(raw, complete)
        return rec, version > 0


def is_envelope_line(raw: bytes) -> bool:
    """True if ``raw`` is a JSON object with a top-level ``enc`` key (what
    :class:`LineDecoder` treats as an encrypted line, well-formed or not)."""
    # cheap filter: an envelope spells the key in quotes, or hides a letter behind a \u escape
    if b'"enc"' not in raw and b"\\u" not in raw:
        return False
    try:
        obj = json.loads(raw)
    except ValueError:
        return False
    return isinstance(obj, dict) and "enc" in obj


def iter_raw_lines(fh, start_line: int = 0, tail: bool = False):
    """Yield ``(line_number, raw_bytes_without_newline, complete, end_offset)``
    from a binary file object, reading at most :data:`MAX_LINE_BYTES` per
    line (memory stays bounded on garbage without newlines).  A line longer
    than that is yielded as ``None`` bytes (reported as too long).  With
    ``tail`` a last line without newline is not yielded (a live writer may
    still be finishing it)."""
    n = start_line
    try:
        pos = fh.tell()
    except OSError:  # a pipe / FIFO: offsets count from where reading started
        pos = 0
    readline = fh.readline
    limit = MAX_LINE_BYTES + 1
    while True:
        chunk = readline(limit)
        if not chunk:
            return
        n += 1
        if chunk[-1:] == b"\n":
            pos += len(chunk)
            yield n, chunk[:-1], True, pos
        elif len(chunk) > MAX_LINE_BYTES:
            # skip the rest of the oversized line
            pos += len(chunk)
            while chunk and not chunk.endswith(b"\n"):
                chunk = readline(MAX_LINE_BYTES)
                pos += len(chunk)
            yield n, None, True, pos
        else:
            if tail:
                return
            pos += len(chunk)
            yield n, chunk, False, pos


# --------------------------------------------------------------------------- writing

def _clean(v: Any) -> Any:
    """JSON-safe copy of a physics value: numpy scalars/arrays to Python,
    non-finite floats to None (JSON has no NaN; a NaN figure means 'not computed')."""
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        v = v.tolist()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def append_line(path: str | os.PathLike, line: bytes) -> None:
    """Append one whole line with one ``write(2)`` on an ``O_APPEND`` descriptor
    (see the module docstring for why this never interleaves on local file systems)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        n = os.write(fd, line)
        # a short write only happens on a full disk or a signal; finishing it keeps
        # the line whole for this writer (interleaving is then possible, but rare)
        while n < len(line):
            n += os.write(fd, line[n:])
    finally:
        os.close(fd)


#: a partial last line must stay unchanged this long [s] before it is taken for a killed
#: writer's: a reader can catch another process's O_APPEND write half-copied (the file
#: size grows page by page under the writer's inode lock, which readers do not take), and
#: on a loaded node that writer can be preempted inside the copy for tens of ms
PARTIAL_LINE_SETTLE_S = 0.25


def terminate_partial_line(path: str | os.PathLike, settle_s: float = PARTIAL_LINE_SETTLE_S) -> bool:
    """If ``path`` ends in a partial line left by a killed writer, append
    ``b"\n"`` with :func:`append_line` so that line stays one (invalid) line
    of its own instead of being glued to the next record; True if it did.

    The last byte is not a newline both after a kill and while another
    process's write is being copied in, so the partial line must stay
    unchanged (same size) for ``settle_s`` [s], looked at every 50 ms; a
    file whose end becomes a newline, or that keeps growing for 4 ``settle_s``
    (live writers, whose lines end in newlines), is left alone, as is a
    missing, empty or non-regular file.  Costs nothing when the file ends in a
    newline (every file but a killed writer's)."""
    try:
        fh = open(path, "rb")
    except OSError:  # not there yet (the common case) or unreadable: the append will say
        return False
    with fh:
        size, since = None, 0.0
        give_up = time.monotonic() + 4 * settle_s
        while True:
            try:
                st = os.fstat(fh.fileno())
                if not (stat.S_ISREG(st.st_mode) and st.st_size):
                    return False
                fh.seek(st.st_size - 1)
                if fh.read(1) == b"\n":
                    return False
            except OSError:
                return False
            now = time.monotonic()
            if st.st_size != size:
                size, since = st.st_size, now
            elif now - since >= settle_s:
                break  # the same partial line all along: a killed writer's
            if now > give_up:
                return False
            time.sleep(min(0.05, settle_s))
    append_line(path, b"\n")
    return True


def _finite(name: str, value: Any, unit: str) -> float:
    """``value`` as a float >= 0 (negative clamped to 0); ValueError naming
    ``name`` for NaN, infinity or a non-number (max(nan, 0) would be nan and
    max(-inf, 0) a silent 0)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Telemetry.record: {name} = {value!r} is not a number "
                         f"(expected a finite number of {unit})") from None
    if not math.isfinite(v):
        raise ValueError(f"Telemetry.record: {name} = {value!r} is not finite "
                         f"(expected a finite number of {unit})")
    return max(v, 0.0)


def _default_job_id() -> str:
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return job or "local"


class Telemetry:
    """Writer of telemetry records for one rank.

    Args:
        directory: the run's telemetry directory (created).
        rank: MPI rank of this process.
        job_id: job identifier (default: SLURM_JOB_ID, with _ARRAY_TASK_ID for
            array tasks, else ``"local"``).
        nranks: size of the run's communicator [ranks], written as
            ``hpc.nranks`` into every record (None: not written, as in
            records of older writers); lets a reader know the rank count of
            a run even when some ranks record no unit.
        price_per_core_hour_usd: price of one core-hour [USD]; cost of a unit =
            core-seconds / 3600 * price (module docstring).
        step, intervention: DMCA core fields copied into every record.
        stage_dmca: stage -> (DMCA domain, hypothesis) of its records, normally
            :data:`dmca_hpc.stages.registry.STAGE_DMCA` passed in by the pipeline
            (monitoring sits below the stages and does not import them); a
            stage it does not name gets :data:`DEFAULT_DMCA`.
        encrypt: AES-GCM-encrypt every line (key: ``key`` or ``$DMCA_TELEMETRY_KEY``).
        key: 32-byte AES key (overrides the environment).
        cores: cores allocated to this rank (default SLURM_CPUS_PER_TASK or 1).
        filename: file name inside ``directory`` (default ``rank-NNNNN.jsonl``);
            several processes may share one name (whole lines guaranteed on
            local file systems).
        validate: check each record against the schema before writing
            (~10 us per record): ``"raise"`` raises :class:`TelemetryRecordError`
            (nothing written); ``"warn"`` writes it anyway with a
            RuntimeWarning (the collector lists it as a schema violation), so
            a contract slip in a physics figure never kills a long production
            run; ``"off"`` skips the check.  Default: ``"raise"`` when the
            environment variable ``DMCA_TELEMETRY_STRICT=1`` (set it in test
            suites), else ``"warn"``.

    Every record gets this writer's stream identity ``hpc.run_id`` (new per
    writer, and again after a fork) and ``hpc.seq`` (module docstring);
    :meth:`record` is thread-safe (seq order = line order).
    """

    def __init__(self, directory: str | os.PathLike, rank: int = 0, job_id: str | None = None,
                 price_per_core_hour_usd: float = DEFAULT_PRICE_PER_CORE_HOUR_USD,
                 step: str = "run", intervention: str = "baseline", encrypt: bool = False,
                 key: bytes | None = None, cores: int | None = None, filename: str | None = None,
                 validate: str | None = None,
                 stage_dmca: Mapping[str, tuple[str, str]] | None = None,
                 nranks: int | None = None):
        self.dir = Path(directory)
        self.stage_dmca = dict(stage_dmca or {})
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank = int(rank)
        self.job_id = str(job_id or _default_job_id())
        self.nranks = None
        if nranks is not None:
            if not isinstance(nranks, numbers.Integral) or isinstance(nranks, bool) or nranks < 1:
                raise ValueError(f"Telemetry nranks must be an integer >= 1 (the communicator size), "
                                 f"got {nranks!r}")
            self.nranks = int(nranks)
        self.price = float(price_per_core_hour_usd)
        if not (self.price >= 0 and math.isfinite(self.price)):
            raise ValueError(f"telemetry.price_per_core_hour_usd must be a finite number >= 0, got {price_per_core_hour_usd!r}")
        self.step, self.intervention = str(step), str(intervention)
        self.cores = int(cores if cores is not None else os.environ.get("SLURM_CPUS_PER_TASK") or 1)
        if self.cores < 1:
            raise ValueError(f"telemetry cores must be >= 1, got {self.cores}")
        self.host = platform.node()
        self.path = self.dir / (filename or f"rank-{self.rank:05d}.jsonl")
        if validate is None:
            validate = "raise" if os.environ.get("DMCA_TELEMETRY_STRICT") == "1" else "warn"
        if validate not in ("raise", "warn", "off"):
            raise ValueError(f"Telemetry validate must be 'raise', 'warn' or 'off', got {validate!r}")
        self.validate = validate
        self.key = None
        self._aead = None
        self._lock = threading.Lock()
        self._new_stream()
        if encrypt or key is not None:
            self.key = key if key is not None else load_key()
            if len(self.key) != 32:
                raise KeyError_(f"telemetry key must be 32 bytes (AES-256), got {len(self.key)}")
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            self._aead = AESGCM(self.key)

    def _new_stream(self) -> None:
        self.run_id = new_run_id()
        self.seq = 0  # seq of the next record written
        self._pid = os.getpid()
        self._tail_checked = False  # the file's last line not yet checked for a killed writer's stub

    def __getstate__(self) -> dict:  # the lock and the AES context do not pickle
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_aead")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._aead = None
        if self.key is not None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            self._aead = AESGCM(self.key)
        self._new_stream()  # a copy is another writer: its own stream, never a second seq 0 of this one

    @classmethod
    def from_job(cls, section: Mapping[str, Any] | None, directory: str | os.PathLike, rank: int = 0,
                 job_id: str | None = None,
                 stage_dmca: Mapping[str, tuple[str, str]] | None = None,
                 nranks: int | None = None) -> "Telemetry":
        """Build from the job file's ``telemetry:`` section
        (config/schema/telemetry_job.schema.json; missing keys take defaults).
        The section's ``job_id``, when set (not null/empty), wins over the
        ``job_id`` argument (the caller's default, e.g. the pipeline's
        SLURM_JOB_ID or job name); ``stage_dmca``, ``nranks`` as in
        :class:`Telemetry`."""
        s = dict(section or {})
        return cls(directory, rank=rank, job_id=(s.get("job_id") or job_id), nranks=nranks,
                   price_per_core_hour_usd=s.get("price_per_core_hour_usd", DEFAULT_PRICE_PER_CORE_HOUR_USD),
                   step=s.get("step", "run"), intervention=s.get("intervention", "baseline"),
                   encrypt=bool(s.get("encrypt", False)), cores=(s.get("cores_per_rank") or None),
                   filename=(s.get("shared_file") or None), stage_dmca=stage_dmca)

    def record(self, stage: str, unit: str, status: str, wall_s: float, cpu_s: float,
               peak_mem_mb: float, error: str | None = None,
               physics: Mapping[str, Any] | None = None,
               domain: str | None = None, hypothesis: str | None = None) -> dict:
        """Build, write (one atomic line) and return one record.

        Args:
            stage: pipeline stage name.
            unit: unit identifier (stringified).
            status: ``"ok"``, ``"failed"`` or ``"skipped"``.
            wall_s, cpu_s: wall-clock and CPU time of the unit [s] (finite;
                a negative value, clock skew, is recorded as 0).
            peak_mem_mb: peak RSS of the rank [MiB] (finite).
            error: ``"ExcType: message"`` for a failed unit (cut to MAX_ERROR_CHARS).
            physics: optional physics block (keys of the schema; None/NaN values dropped).
            domain, hypothesis: DMCA fields (default: the ``stage_dmca`` mapping
                given at construction, else :data:`DEFAULT_DMCA`).
        """
        d, h = self.stage_dmca.get(stage, DEFAULT_DMCA)
        wall_s, cpu_s = _finite("wall_s", wall_s, "s"), _finite("cpu_s", cpu_s, "s")
        peak_mem_mb = _finite("peak_mem_mb", peak_mem_mb, "MiB")
        core_s = max(wall_s * self.cores, cpu_s)
        if error is not None:
            error = str(error)
            if len(error) > MAX_ERROR_CHARS:
                error = error[:MAX_ERROR_CHARS - len("...[truncated]")] + "...[truncated]"
        rec = {
            "schema_version": RECORD_SCHEMA_VERSION,
            "timestamp": time.time(),
            "domain": domain or d,
            "hypothesis": hypothesis or h,
            "step": self.step,
            "intervention": self.intervention,
            "infra_cost_usd": core_s / 3600.0 * self.price,
            "qps": (1.0 / wall_s) if wall_s > 0 else 0.0,
            "latency_p95_ms": wall_s * 1e3,
            "hpc": {
                "job_id": self.job_id,
                "rank": self.rank,
                "stage": str(stage),
                "unit": str(unit),
                "wall_seconds": wall_s,
                "cpu_seconds": cpu_s,
                "core_seconds": core_s,
                "cores": self.cores,
                **({"nranks": self.nranks} if self.nranks is not None else {}),
                "peak_memory_mb": peak_mem_mb,
                "status": status,
                "error": error,
                "host": self.host,
            },
        }
        if physics:
            phys = {str(k): _clean(v) for k, v in physics.items()}
            phys = {k: v for k, v in phys.items() if v is not None}
            if phys:
                rec["physics"] = phys
        if self.validate == "raise":
            validate_record(rec)
        elif self.validate == "warn":
            msg = record_error(rec)
            if msg is not None:
                import warnings
                warnings.warn(f"telemetry record of stage {stage!r} unit {unit!r} violates the "
                              f"schema ({msg}); written anyway", RuntimeWarning, stacklevel=2)
        with self._lock:  # seq order = line order, also for threads sharing this writer
            if os.getpid() != self._pid:  # a forked child is another writer: its own stream
                self._new_stream()
            rec["hpc"]["run_id"], rec["hpc"]["seq"] = self.run_id, self.seq
            self._write(rec)
            self.seq += 1  # only a line actually written consumes a seq (no false gap)
        return rec

    def record_result(self, stage: str, result, physics: Mapping[str, Any] | None = None,
                      unit: str | None = None) -> dict:
        """Record a :class:`dmca_hpc.hpc.parallel.UnitResult` (status ok/failed from ``result.ok``)."""
        return self.record(stage, unit if unit is not None else str(result.unit),
                           "ok" if result.ok else "failed", result.wall_s, result.cpu_s,
                           result.peak_mem_mb, error=result.error, physics=physics)

    def encode(self, rec: Mapping[str, Any]) -> bytes:
        """The line (with newline) that :meth:`record` writes for ``rec``.
        Encrypted: a version-2 envelope bound to the record's ``(hpc.run_id,
        hpc.rank, hpc.seq)``, or a version-1 envelope for a record without
        them (authenticated, unsequenced)."""
        plain = json.dumps(rec, separators=(",", ":"), allow_nan=False, default=str).encode()
        if self._aead is not None:
            plain = encrypt_line(plain, self.key, self._aead, identity=record_identity(rec))
        return plain + b"\n"

    def _write(self, rec: dict):
        line = self.encode(rec)
        if not self._tail_checked:
            # a killed writer's partial last line would swallow this record's first bytes
            terminate_partial_line(self.path)
            self._tail_checked = True
        append_line(self.path, line)


def merge_rank_files(directory: str | os.PathLike, out_name: str = "telemetry.jsonl") -> Path:
    """Concatenate the per-rank files of ``directory`` (rank order, whole
    lines only; a partial last line of a killed rank is dropped) into
    ``out_name``, atomically; returns its path.  Encrypted lines are copied
    as they are; each stream's lines keep their order, so the collector's
    stream checks hold on the merged file as on the rank files."""
    from dmca_hpc.hpc.checkpoint import atomic_path
    d = Path(directory)
    out = d / out_name
    with atomic_path(out) as tmp, open(tmp, "wb") as dst:
        for p in sorted(d.glob("rank-*.jsonl")):
            with open(p, "rb") as src:
                for line in src:
                    if line.endswith(b"\n"):
                        dst.write(line)
    return out
