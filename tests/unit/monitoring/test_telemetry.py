"""Telemetry contract: schema, cost model, encryption, whole lines under concurrency.

The schema verdicts are checked with jsonschema (the reference implementation
of JSON Schema), never with our own fast path, so the tests do not grade
the code with itself.
"""
from __future__ import annotations

import base64
import copy
import json
import multiprocessing as mp
import os
import random
from pathlib import Path

import jsonschema
import pytest

from dmca_hpc.monitoring import telemetry as T
from dmca_hpc.hpc.parallel import run_unit
from dmca_hpc.stages.registry import STAGE_DMCA

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "config" / "telemetry.schema.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)

PHYSICS_FULL = {"material": "GaAs", "e_tot_hartree": -15.8, "band_gap_ev": 1.42, "kpts": [8, 8, 8],
                "q_scan_points": 200, "wimp_sigma_cm2": 1e-45, "axion_coupling": 1e-12,
                "darkphoton_epsilon": 1e-10, "form_factor_q0": 0.31, "computation_time_sec": 12.5}


def _key() -> bytes:
    return bytes(range(32))


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _lines(path) -> list[bytes]:
    return Path(path).read_bytes().splitlines()


# ------------------------------------------------------------------ schema

def test_every_stage_record_validates(tmp_path):
    """Records as the stages emit them (every stage of the registry's STAGE_DMCA,
    ok/failed/skipped, full physics block, a real UnitResult) validate against the schema."""
    tel = T.Telemetry(tmp_path, rank=3, job_id="123_4", validate="raise", cores=2, stage_dmca=STAGE_DMCA)
    recs = []
    for stage in STAGE_DMCA:
        recs.append(tel.record(stage, f"{stage}-0", "ok", 1.5, 2.5, 321.0, physics=PHYSICS_FULL))
        recs.append(tel.record(stage, f"{stage}-1", "skipped", 0.0, 0.0, 0.0))
    good = run_unit(lambda u: u * 2, 0, 21, rank=3)
    bad = run_unit(lambda u: 1 / 0, 1, 0, rank=3)
    recs.append(tel.record_result("formfactor", good, physics={"material": "Si", "kpts": 64}))
    recs.append(tel.record_result("formfactor", bad))
    # numpy scalars / arrays and NaN in physics are made JSON-safe (NaN dropped)
    np = pytest.importorskip("numpy")
    recs.append(tel.record("bands", "np", "ok", 0.1, 0.1, 1.0,
                           physics={"band_gap_ev": np.float32(0.61), "kpts": np.array([4, 4, 4]),
                                    "form_factor_q0": float("nan"), "e_tot_hartree": np.float64(-7.9)}))
    written = [json.loads(line) for line in _lines(tel.path)]
    assert written == recs
    for r in written:
        errors = list(VALIDATOR.iter_errors(r))
        assert not errors, errors
    assert recs[-2]["hpc"]["status"] == "failed" and recs[-2]["hpc"]["error"].startswith("ZeroDivisionError")
    assert "form_factor_q0" not in recs[-1]["physics"] and recs[-1]["physics"]["kpts"] == [4, 4, 4]
    # the (domain, hypothesis) come from the caller's table; an unnamed stage gets the default
    assert (recs[0]["domain"], recs[0]["hypothesis"]) == STAGE_DMCA["materials"]
    nuc = next(r for r in recs if r["hpc"]["stage"] == "nuclear")
    assert (nuc["domain"], nuc["hypothesis"]) == ("dm-nucleus", "WIMP")
    plain = T.Telemetry(tmp_path, filename="plain.jsonl", validate="raise").record("nuclear", "u", "ok", 1, 1, 1)
    assert (plain["domain"], plain["hypothesis"]) == T.DEFAULT_DMCA


#: DMCA-format lines, old and new: the DMCA README / sample_ops_telemetry.jsonl lines
#: (integer step, core fields only), the same with the DMCA PySCF guide's physics block,
#: our own v1 (string step, core only) and v2 (hpc block) records
DMCA_FILE = Path(__file__).with_name("dmca_format.jsonl")


def test_dmca_format_file_validates_old_and_new():
    lines = DMCA_FILE.read_bytes().splitlines()
    assert len(lines) >= 6
    dec = T.LineDecoder()
    for i, line in enumerate(lines, 1):
        rec = json.loads(line)
        assert VALIDATOR.is_valid(rec), (i, list(VALIDATOR.iter_errors(rec)))
        assert T.record_error(rec) is None, i
        got, _ = dec.decode(line)
        assert got == rec
    recs = [json.loads(x) for x in lines]
    assert {type(r["step"]) for r in recs} == {int, str}
    assert any("physics" in r and "computation_time_sec" in r["physics"] for r in recs)
    # the fast path vouches for the DMCA README line itself (no jsonschema call needed)
    assert T.quick_valid(recs[0])
    # what stays invalid: a negative / boolean / empty step
    for bad in (-1, True, "", 1.5):
        assert not VALIDATOR.is_valid({**recs[0], "step": bad}), bad
        assert T.record_error({**recs[0], "step": bad}) is not None, bad


def test_old_style_records_validate():
    old = {"domain": "dm-electron", "hypothesis": "DarkPhoton", "step": "scan", "intervention": "baseline",
           "infra_cost_usd": 0.0012, "qps": 3.2, "latency_p95_ms": 310.0}
    assert VALIDATOR.is_valid(old)
    assert T.record_error(old) is None
    assert VALIDATOR.is_valid({**old, "x_site": {"anything": 1}})  # extension fields


BASE = {"schema_version": 2, "timestamp": 1.7e9, "domain": "dm-electron", "hypothesis": "none", "step": "run",
        "intervention": "baseline", "infra_cost_usd": 1e-5, "qps": 2.0, "latency_p95_ms": 500.0,
        "hpc": {"job_id": "7", "rank": 0, "stage": "bands", "unit": "k1", "wall_seconds": 0.5,
                "cpu_seconds": 0.4, "core_seconds": 0.5, "cores": 1, "nranks": 2, "peak_memory_mb": 100.0,
                "status": "ok", "error": None, "host": "n1", "run_id": "00ff00ff00ff00ff", "seq": 3},
        "physics": dict(PHYSICS_FULL)}


def _mut(path, value=None, delete=False):
    rec = copy.deepcopy(BASE)
    obj = rec
    for p in path[:-1]:
        obj = obj[p]
    if delete:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value
    return rec


@pytest.mark.parametrize("path,value,delete,field", [
    (("domain",), None, True, "domain"),
    (("hypothesis",), None, True, "hypothesis"),
    (("infra_cost_usd",), -1.0, False, "infra_cost_usd"),
    (("latency_p95_ms",), "fast", False, "latency_p95_ms"),
    (("qps",), True, False, "qps"),
    (("hpc", "rank"), -1, False, "hpc.rank"),
    (("hpc", "status"), "crashed", False, "hpc.status"),
    (("hpc", "wall_seconds"), None, True, "wall_seconds"),
    (("hpc", "peak_memory_gb"), 1.0, False, "peak_memory_gb"),
    (("hpc", "seq"), -1, False, "hpc.seq"),
    (("hpc", "seq"), None, True, "'seq' is a dependency of 'run_id'"),
    (("hpc", "run_id"), "a:b", False, "hpc.run_id"),
    (("hpc", "nranks"), 0, False, "hpc.nranks"),
    (("hpc", "nranks"), "2", False, "hpc.nranks"),
    (("physics", "band_gap_ev"), -0.2, False, "physics.band_gap_ev"),
    (("physics", "kpts"), [4, 4], False, "physics.kpts"),
    (("physics", "material"), 14, False, "physics.material"),
    (("surprise",), 1, False, "surprise"),
])
def test_broken_records_rejected_with_field_named(path, value, delete, field):
    rec = _mut(path, value, delete)
    assert not VALIDATOR.is_valid(rec)
    with pytest.raises(T.TelemetryRecordError) as exc:
        T.validate_record(rec)
    assert field in str(exc.value), str(exc.value)


def test_fast_path_never_accepts_what_jsonschema_rejects():
    """Differential test of the collector's hand-written quick check and the
    LineDecoder verdict against jsonschema on 3000 seeded random mutations."""
    rng = random.Random(2024)
    values = [None, True, False, 0, 1, -1, 2.5, -2.5, "", "x", [], [1, 2, 3], [1, "a", 3], [0, 1, 1],
              {}, {"a": 1}, 1e300, 3.0]
    paths = [(k,) for k in BASE] + [("hpc", k) for k in BASE["hpc"]] + \
            [("physics", k) for k in BASE["physics"]] + [("new",), ("x_new",), ("hpc", "new"), ("physics", "new_ev")]
    dec = T.LineDecoder()
    n_valid = 0
    for _ in range(3000):
        rec = copy.deepcopy(BASE)
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(paths)
            obj = rec
            for p in path[:-1]:
                obj = obj.get(p) if isinstance(obj, dict) else None
            if not isinstance(obj, dict):
                continue
            if rng.random() < 0.25:
                obj.pop(path[-1], None)
            else:
                obj[path[-1]] = copy.deepcopy(rng.choice(values))
        ref = VALIDATOR.is_valid(rec)
        n_valid += ref
        if T.quick_valid(rec):
            assert ref, rec
        line = json.dumps(rec).encode()
        try:
            dec.decode(line)
            got = True
        except T.LineError as exc:
            assert exc.code == "schema", exc
            got = False
        assert got == ref, rec
    assert 100 < n_valid < 2900  # the mutations exercise both verdicts


# ------------------------------------------------------------------ cost model, validation modes

def test_cost_is_core_seconds_times_price(tmp_path):
    tel = T.Telemetry(tmp_path, cores=4, price_per_core_hour_usd=0.36, validate="raise")
    r = tel.record("dft", "scf", "ok", wall_s=2.0, cpu_s=3.0, peak_mem_mb=10)
    assert r["hpc"]["core_seconds"] == 8.0                       # 4 cores held for 2 s
    assert r["infra_cost_usd"] == pytest.approx(8.0 / 3600 * 0.36, rel=1e-15)
    r = tel.record("dft", "scf", "ok", wall_s=1.0, cpu_s=6.0, peak_mem_mb=10)
    assert r["hpc"]["core_seconds"] == 6.0                       # oversubscribed threads: CPU time billed
    assert r["qps"] == 1.0 and r["latency_p95_ms"] == 1000.0


def test_validation_modes(tmp_path):
    strict = T.Telemetry(tmp_path, validate="raise", filename="a.jsonl")
    with pytest.raises(T.TelemetryRecordError, match="physics.band_gap_ev"):
        strict.record("bands", "k", "ok", 1, 1, 1, physics={"band_gap_ev": -1.0})
    assert not strict.path.exists()
    lax = T.Telemetry(tmp_path, validate="warn", filename="b.jsonl")
    with pytest.warns(RuntimeWarning, match="physics.band_gap_ev"):
        lax.record("bands", "k", "ok", 1, 1, 1, physics={"band_gap_ev": -1.0})
    assert len(_lines(lax.path)) == 1
    with pytest.raises(ValueError, match="validate"):
        T.Telemetry(tmp_path, validate="maybe")
    with pytest.raises(ValueError, match="price_per_core_hour_usd"):
        T.Telemetry(tmp_path, price_per_core_hour_usd=-1)


def test_long_error_is_cut(tmp_path):
    tel = T.Telemetry(tmp_path, validate="raise")
    r = tel.record("oracle", "c1", "failed", 1, 1, 1, error="E: " + "x" * 100000)
    assert len(r["hpc"]["error"]) == T.MAX_ERROR_CHARS and r["hpc"]["error"].endswith("[truncated]")


def test_from_job_uses_section_and_schema_defaults(tmp_path, monkeypatch):
    job_schema = json.loads((ROOT / "config" / "schema" / "telemetry_job.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(job_schema)
    assert job_schema["additionalProperties"] is False
    defaults = {}
    for name, prop in job_schema["properties"].items():
        assert {"type", "default", "description"} <= set(prop), name
        defaults[name] = prop["default"]
    jsonschema.validate(defaults, job_schema)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    tel = T.Telemetry.from_job(defaults, tmp_path, rank=1, job_id="j")
    assert (tel.price, tel.step, tel.intervention, tel.cores, tel.key) == (0.05, "run", "baseline", 1, None)
    assert tel.path.name == "rank-00001.jsonl"
    monkeypatch.setenv(T.KEY_ENV, _b64(_key()))
    tel = T.Telemetry.from_job({**defaults, "encrypt": True, "cores_per_rank": 8, "shared_file": "all.jsonl",
                                "price_per_core_hour_usd": 0.1}, tmp_path, rank=1)
    assert (tel.price, tel.cores, tel.key, tel.path.name) == (0.1, 8, _key(), "all.jsonl")


def test_job_id_from_the_job_key_wins_over_the_callers_default(tmp_path):
    """telemetry.job_id (the job key) is the records' hpc.job_id when set; null
    (its default) leaves the caller's job id (the pipeline's SLURM_JOB_ID or job
    name), and without either the writer's own default."""
    assert T.Telemetry.from_job({"job_id": "camp.7"}, tmp_path, job_id="fallback").job_id == "camp.7"
    assert T.Telemetry.from_job({"job_id": None}, tmp_path, job_id="fallback").job_id == "fallback"
    assert T.Telemetry.from_job({}, tmp_path, job_id="fallback").job_id == "fallback"
    rec = T.Telemetry.from_job({"job_id": "camp.7"}, tmp_path / "j").record("dft", "Si", "ok", 1.0, 1.0, 10.0)
    assert rec["hpc"]["job_id"] == "camp.7" and T.record_error(rec) is None


# ------------------------------------------------------------------ hpc.nranks

def test_nranks_written_into_every_record_and_validated(tmp_path):
    """``nranks=`` (the communicator size) is written as hpc.nranks into every record,
    also of a rank that is not 0, valid under the schema and the fast path; without
    it the record carries none (as older writers' records)."""
    tel = T.Telemetry(tmp_path, rank=1, job_id="j", nranks=4, validate="raise", stage_dmca=STAGE_DMCA)
    recs = [tel.record("bands", f"Si:mesh:{i}", "ok", 0.5, 0.5, 100.0) for i in range(3)]
    recs.append(tel.record_result("formfactor", run_unit(lambda u: u, 0, 1, rank=1)))
    written = [json.loads(line) for line in _lines(tel.path)]
    assert written == recs and [r["hpc"]["nranks"] for r in written] == [4] * 4
    for r in written:
        assert VALIDATOR.is_valid(r), list(VALIDATOR.iter_errors(r))
        assert T.quick_valid(r)
    old = T.Telemetry(tmp_path, filename="old.jsonl", validate="raise").record("dft", "Si", "ok", 1, 1, 1)
    assert "nranks" not in old["hpc"] and VALIDATOR.is_valid(old)
    mf = T.Telemetry.from_job({}, tmp_path / "mf", nranks=2).record("dft", "Si", "ok", 1, 1, 1)
    assert mf["hpc"]["nranks"] == 2
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="nranks must be an integer >= 1"):
            T.Telemetry(tmp_path, nranks=bad)
    # the schema and the fast path refuse what the writer refuses
    for bad in (0, -1, 1.5, "2", True, None):
        rec = copy.deepcopy(BASE)
        rec["hpc"]["nranks"] = bad
        assert not VALIDATOR.is_valid(rec) and not T.quick_valid(rec), bad
        assert "hpc.nranks" in T.record_error(rec), bad


# ------------------------------------------------------------------ encryption

def test_encryption_round_trip_and_fresh_nonces(tmp_path, monkeypatch):
    monkeypatch.setenv(T.KEY_ENV, _b64(_key()))
    tel = T.Telemetry(tmp_path, encrypt=True, validate="raise")
    recs = [tel.record("rates", f"u{i}", "ok", 0.01 * (i + 1), 0.01, 5, physics={"material": "Ge"})
            for i in range(300)]
    lines = _lines(tel.path)
    envs = [json.loads(line) for line in lines]
    assert all(set(e) == {"enc", "kid", "run", "rank", "seq", "nonce", "ct"} and e["enc"] == "aesgcm"
               for e in envs)
    # the clear identity of every envelope is its record's (one stream, seq 0, 1, 2, ...)
    assert [(e["run"], e["rank"], e["seq"]) for e in envs] == [(tel.run_id, 0, i) for i in range(300)]
    assert b"material" not in tel.path.read_bytes() and b"rates" not in tel.path.read_bytes()  # nothing in clear
    nonces = {e["nonce"] for e in envs}
    assert len(nonces) == len(envs) and all(len(base64.b64decode(n)) == 12 for n in nonces)
    dec = T.LineDecoder(key=T.load_key())
    for line, rec in zip(lines, recs):
        got, enc = dec.decode(line)
        assert enc and got == rec


def test_envelopes_match_the_schema_definition(tmp_path):
    """Both envelope versions validate against definitions/encrypted_line of the schema
    (jsonschema), and a v2 envelope without its identity or with an extra key does not."""
    env_schema = {**SCHEMA["definitions"]["encrypted_line"], "definitions": SCHEMA["definitions"]}
    v = jsonschema.Draft7Validator(env_schema)
    tel = T.Telemetry(tmp_path, key=_key(), validate="raise")
    v2 = json.loads(tel.encode(tel.record("bands", "k", "ok", 1, 1, 1)))
    v1 = json.loads(T.encrypt_line(b"{}", _key()))
    assert v.is_valid(v2) and v.is_valid(v1)
    assert not v.is_valid({k: x for k, x in v2.items() if k != "seq"})
    assert not v.is_valid({**v2, "extra": 1}) and not v.is_valid({**v2, "seq": -1})


def _tamper(line: bytes, field: str) -> bytes:
    env = json.loads(line)
    raw = bytearray(base64.b64decode(env[field]))
    raw[len(raw) // 2] ^= 0x01  # one bit flipped
    env[field] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(env).encode()


def test_tampered_line_and_wrong_key_detected(tmp_path):
    tel = T.Telemetry(tmp_path, key=_key(), validate="raise")
    tel.record("nuclear", "Xe", "ok", 1.0, 1.0, 1.0, physics={"wimp_sigma_cm2": 1e-46})
    line = _lines(tel.path)[0]
    good = T.LineDecoder(key=_key())
    assert good.decode(line)[0]["physics"]["wimp_sigma_cm2"] == 1e-46
    for field in ("ct", "nonce"):
        with pytest.raises(T.LineError) as exc:
            good.decode(_tamper(line, field))
        assert exc.value.code == "tampered" and "altered" in str(exc.value)
    # a valid envelope moved under another key id also fails authentication (kid is in the AAD)
    env = json.loads(line)
    env["kid"] = T.key_id(bytes(32))
    with pytest.raises(T.LineError) as exc:
        T.LineDecoder(key=bytes(32)).decode(json.dumps(env).encode())
    assert exc.value.code == "tampered"
    with pytest.raises(T.LineError) as exc:
        T.LineDecoder(key=bytes(reversed(range(32)))).decode(line)
    assert exc.value.code == "wrong_key" and "wrong key" in str(exc.value)
    with pytest.raises(T.LineError) as exc:
        T.LineDecoder(key=None).decode(line)
    assert exc.value.code == "no_key" and T.KEY_ENV in str(exc.value)
    with pytest.raises(T.LineError) as exc:
        good.decode(b'{"enc":"aesgcm","nonce":"AAAA"}')
    assert exc.value.code == "envelope"


def test_mixed_plaintext_and_encrypted_lines(tmp_path):
    # the decoder reads both; whether a plaintext line beside encrypted ones counts is the
    # collector's policy (it does not: test_collector, test_telemetry_integrity)
    enc = T.Telemetry(tmp_path, key=_key(), filename="mixed.jsonl", validate="raise")
    plain = T.Telemetry(tmp_path, filename="mixed.jsonl", validate="raise")
    want = []
    for i in range(20):
        w = enc if i % 3 else plain
        want.append(w.record("bands", f"k{i}", "ok", 0.1, 0.1, 1.0))
    dec = T.LineDecoder(key=_key())
    got = [dec.decode(line) for line in _lines(tmp_path / "mixed.jsonl")]
    assert [g[0] for g in got] == want
    assert [g[1] for g in got] == [bool(i % 3) for i in range(20)]


@pytest.mark.parametrize("value,match", [("", "not set"), ("not base64!", "not valid base64"),
                                         (base64.b64encode(b"short").decode(), "decodes to 5 bytes")])
def test_bad_key_environment_is_a_clear_error(tmp_path, monkeypatch, value, match):
    monkeypatch.setenv(T.KEY_ENV, value)
    with pytest.raises(T.KeyError_, match=match) as exc:
        T.Telemetry(tmp_path, encrypt=True)
    assert T.KEY_ENV in str(exc.value)


# ------------------------------------------------------------------ whole lines

def _writer(path: str, who: int, n: int, pad: int):
    tel = T.Telemetry(Path(path).parent, rank=who, filename=Path(path).name, validate="off")
    for i in range(n):
        # a failed unit with a long traceback-like error: lines of ~pad bytes, larger than
        # PIPE_BUF (4096) and than a page, where non-atomic appends would show up
        tel.record("oracle", f"{who}:{i}", "failed", 0.001, 0.001, 1.0, error="E" * pad)


def test_concurrent_appenders_to_one_file_write_whole_lines(tmp_path):
    """4 processes append 400 records of ~8 KiB each to ONE file at once (what
    SLURM array tasks sharing a telemetry file do): every line is whole."""
    path = tmp_path / "shared.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 400, 8000)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = _lines(path)
    assert len(lines) == 1600
    seen = set()
    for line in lines:
        rec = json.loads(line)  # raises on any interleaved / partial line
        assert VALIDATOR.is_valid(rec)
        seen.add(rec["hpc"]["unit"])
    assert seen == {f"{w}:{i}" for w in range(4) for i in range(400)}


def test_merge_rank_files_drops_partial_line_of_killed_rank(tmp_path):
    for r in (1, 0):
        tel = T.Telemetry(tmp_path, rank=r, validate="raise")
        for i in range(3):
            tel.record("bands", f"{r}-{i}", "ok", 0.1, 0.1, 1)
    with open(tmp_path / "rank-00001.jsonl", "ab") as fh:
        fh.write(b'{"domain":"dm-elec')  # rank 1 killed mid-write
    out = T.merge_rank_files(tmp_path)
    units = [json.loads(line)["hpc"]["unit"] for line in _lines(out)]
    assert units == ["0-0", "0-1", "0-2", "1-0", "1-1", "1-2"]
    assert not list(tmp_path.glob(".*tmp*"))
