"""Causal analysis of telemetry: planted effects recovered within their intervals,
a confounded case where only the adjusted estimate is right, a collinear case
reported as not identifiable, refutations, determinism, and the CLI's bad-input
lines.  The telemetry is generated here (valid records, checked against the
schema) with numpy's seeded generator, so every number is reproducible."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest

from dmca_hpc.monitoring import causal as K
from dmca_hpc.monitoring import telemetry as T
from monitoring_cli import run_command


def _rec(job, rank, unit, wall, cost, intervention, kpts, ts, stage="bands", material="Si", step="campaign"):
    rec = {"schema_version": 2, "timestamp": ts, "domain": "dm-electron", "hypothesis": "none", "step": step,
           "intervention": intervention, "infra_cost_usd": cost, "qps": 1.0 / wall, "latency_p95_ms": wall * 1e3,
           "hpc": {"job_id": job, "rank": rank, "stage": stage, "unit": unit, "wall_seconds": wall,
                   "cpu_seconds": wall, "peak_memory_mb": 100.0, "status": "ok"},
           "physics": {"material": material, "kpts": kpts}}
    T.validate_record(rec)
    return rec


def _write(path: Path, recs) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


#: planted cost effects [USD per unit] of the basis against gth-szv
EFFECT = {"dzvp": 0.004, "tzvp": 0.010}
SLOPE_K = 0.001  # cost per k point [USD]


def _basis_campaign(path, n=300, seed=1, confounded=False):
    """Units of a basis campaign: cost = 0.002 + SLOPE_K nk + EFFECT[basis] + noise
    (heteroskedastic: the noise grows with nk).  Confounded: big meshes choose the
    bigger bases more often, so the naive comparison mixes mesh and basis."""
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        m = int(rng.integers(2, 5))  # mesh m x m x m
        nk = m ** 3
        if confounded:
            p_big = {2: 0.1, 3: 0.5, 4: 0.9}[m]
            basis = ("dzvp" if rng.random() < 0.7 else "tzvp") if rng.random() < p_big else "szv"
        else:
            basis = ("szv", "dzvp", "tzvp")[int(rng.integers(0, 3))]
        cost = 0.002 + SLOPE_K * nk + EFFECT.get(basis, 0.0) + rng.normal(0, 0.0005 * m)
        cost = max(cost, 1e-6)
        recs.append(_rec(f"job-{basis}", i % 2, f"u{i}", 1.0 + 0.1 * m, cost, f"basis={basis},kmesh={m}x{m}x{m}",
                         [m, m, m], 1.7e9 + i))
    return _write(path, recs)


def test_planted_effects_recovered_within_their_intervals(tmp_path):
    rows, info = K.read_records([_basis_campaign(tmp_path / "t.jsonl")])
    assert info["invalid"] == 0 and len(rows) == 300
    rep = K.estimate(rows, "basis", "cost", ["nkpts"], seed=3, reference="szv")
    assert rep["identifiable"] and rep["treatment"] == "intervention.basis" and rep["outcome"] == "infra_cost_usd"
    got = {e["level"]: e for e in rep["effects"]}
    assert set(got) == {"dzvp", "tzvp"} and all(e["vs"] == "szv" for e in got.values())
    for lv, true in EFFECT.items():
        e = got[lv]
        assert e["ci95"][0] <= true <= e["ci95"][1], e
        assert e["bootstrap_ci95"][0] <= true <= e["bootstrap_ci95"][1], e
        assert abs(e["estimate"] - true) < 3 * e["se_hc3"]
        assert e["p_value"] < 1e-6
    # refutations: a permuted treatment shows no effect, an extra random cause and
    # subsets leave the estimate where it was
    ref = rep["refutations"]
    for name in ("placebo_treatment", "random_common_cause", "data_subset"):
        assert len(ref[name]) == 2 and all(r["passed"] for r in ref[name]), (name, ref[name])
    for r in ref["placebo_treatment"]:
        assert abs(r["mean_effect"]) < 0.2 * EFFECT[r["term"].split("=")[1]]
    # deterministic for a seed
    assert K.estimate(rows, "basis", "cost", ["nkpts"], seed=3, reference="szv") == rep
    assert K.estimate(rows, "basis", "cost", ["nkpts"], seed=4, reference="szv") != rep


def test_confounded_naive_difference_is_wrong_adjusted_is_right(tmp_path):
    rows, _ = K.read_records([_basis_campaign(tmp_path / "t.jsonl", n=600, seed=5, confounded=True)])
    rep = K.estimate(rows, "basis", "cost", ["nkpts"], seed=0, reference="szv")
    for e in rep["effects"]:
        true = EFFECT[e["level"]]
        assert e["ci95"][0] <= true <= e["ci95"][1], e
        # the naive difference of means also carries the mesh: far outside the adjusted interval
        assert e["naive_estimate"] > e["ci95"][1] + 2 * e["se_hc3"], e
        assert e["naive_estimate"] > 2 * true
    # without the adjustment the estimate is the naive one (and its interval misses the truth)
    bad = K.estimate(rows, "basis", "cost", [], seed=0, reference="szv")
    for e in bad["effects"]:
        assert not (e["ci95"][0] <= EFFECT[e["level"]] <= e["ci95"][1])


def test_numeric_treatment_rank_count_from_the_records(tmp_path):
    """``ranks`` is the number of distinct ranks of each job: the planted slope of the
    unit wall time per rank is recovered."""
    rng = np.random.default_rng(11)
    recs = []
    for nr in (1, 2, 4):
        for i in range(60):
            wall = 2.0 - 0.25 * nr + rng.normal(0, 0.05)
            recs.append(_rec(f"ranks{nr}", i % nr, f"u{i}", wall, wall * 1e-5, f"ranks={nr}", [4, 4, 4],
                             1.7e9 + nr * 1000 + i))
    rows, _ = K.read_records([_write(tmp_path / "t.jsonl", recs)])
    rep = K.estimate(rows, "ranks", "hpc.wall_seconds", seed=1)
    (e,) = rep["effects"]
    assert rep["treatment"] == "ranks" and rep["treatment_kind"] == "numeric"
    assert e["ci95"][0] <= -0.25 <= e["ci95"][1] and e["per"] == "1 unit of ranks"
    # the same from the intervention label, as levels
    rep = K.estimate(rows, "intervention.ranks", "latency", categorical=True, reference="1", seed=1)
    got = {x["level"]: x["estimate"] for x in rep["effects"]}
    assert got["2"] == pytest.approx(-250.0, abs=30) and got["4"] == pytest.approx(-750.0, abs=30)


def test_ranks_from_hpc_nranks_when_only_rank_0_records(tmp_path):
    """Records that carry hpc.nranks (the communicator size the pipeline writes)
    give ``ranks`` from it, also for a run where only rank 0 recorded units (stages
    [materials, dft]); records without it (older writers) keep the derivation from
    the distinct hpc.rank values of the job, which sees 1 rank there."""
    rng = np.random.default_rng(12)
    new, old = [], []
    for nr in (1, 2, 4):
        for i in range(40):
            wall = 2.0 - 0.25 * nr + rng.normal(0, 0.05)
            rec = _rec(f"step-r{nr}", 0, f"u{i}", wall, wall * 1e-5, f"ranks={nr}", [4, 4, 4],
                       1.7e9 + nr * 1000 + i, stage="dft")
            old.append(rec)
            rec = json.loads(json.dumps(rec))
            rec["hpc"]["nranks"] = nr
            T.validate_record(rec)
            new.append(rec)
    rows, info = K.read_records([_write(tmp_path / "new.jsonl", new)])
    assert info["invalid"] == 0 and len(rows) == 120
    assert [r["ranks"] for r in rows] == [float(r["hpc"]["nranks"]) for r in new]
    e, = K.estimate(rows, "ranks", "hpc.wall_seconds", seed=1)["effects"]
    assert e["ci95"][0] <= -0.25 <= e["ci95"][1]
    # without hpc.nranks the same records say 1 rank everywhere: ranks is one level
    rows_old, _ = K.read_records([_write(tmp_path / "old.jsonl", old)])
    assert {r["ranks"] for r in rows_old} == {1.0}
    with pytest.raises(K.CausalInputError, match="takes a single value"):
        K.estimate(rows_old, "ranks", "hpc.wall_seconds", seed=1)
    # an old job whose two ranks both recorded: derived 2, beside a new job's recorded 4
    two = [_rec("old2", i % 2, f"o{i}", 1.0, 1e-5, "ranks=2", [4, 4, 4], 1.8e9 + i) for i in range(4)]
    rows_mix, _ = K.read_records([_write(tmp_path / "mix.jsonl", two + new[-4:])])
    assert [r["ranks"] for r in rows_mix] == [2.0] * 4 + [4.0] * 4


def _collinear(path):
    rng = np.random.default_rng(2)
    recs = []
    for i in range(40):
        big = i % 2 == 0  # every basis change came with a k-mesh change
        m = 8 if big else 4
        recs.append(_rec("c", 0, f"u{i}", 1.0, 0.01 + 0.005 * big + rng.normal(0, 1e-4),
                         f"basis={'dzvp' if big else 'szv'}", [m, m, m], 1.7e9 + i))
    return _write(path, recs)


def test_collinear_treatment_is_not_identifiable(tmp_path):
    rows, _ = K.read_records([_collinear(tmp_path / "t.jsonl")])
    rep = K.estimate(rows, "basis", "cost", ["physics.kpts"])
    assert rep["identifiable"] is False and rep["effects"] == []
    assert "not identifiable" in rep["reason"] and "physics.kpts" in rep["reason"]
    assert rep["separability"]["collinear_with"] == ["physics.kpts"]
    assert "Not identifiable" in K.render_markdown(rep)


# ------------------------------------------------------------------ CLI

def _cli(*args, env=None):
    return run_command("causal", *args, env=env)


def test_cli_report_json_markdown_and_plot(tmp_path):
    tel = _basis_campaign(tmp_path / "t.jsonl", n=120)
    r = _cli(tel, "--treatment", "basis", "--outcome", "cost", "--adjust", "nkpts", "--reference", "szv",
             "--json", tmp_path / "r.json", "--markdown", tmp_path / "r.md", "--plot", tmp_path / "r.png",
             "--bootstrap", "200", "--refutations", "20", "--seed", "7")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["identifiable"] and len(rep["effects"]) == 2 and rep["seed"] == 7
    md = (tmp_path / "r.md").read_text()
    assert "| basis" in md or "intervention.basis=dzvp" in md
    assert "## Refutations" in md and "placebo_treatment" in md
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same seed gives the same report
    r2 = _cli(tel, "--treatment", "basis", "--outcome", "cost", "--adjust", "nkpts", "--reference", "szv",
              "--json", "-", "--bootstrap", "200", "--refutations", "20", "--seed", "7")
    assert json.loads(r2.stdout) == rep


def test_cli_collinear_exit_1_and_bad_input_exit_2(tmp_path):
    col = _collinear(tmp_path / "c.jsonl")
    r = _cli(col, "--treatment", "basis", "--outcome", "cost", "--adjust", "physics.kpts", "--plot", tmp_path / "c.png")
    assert r.returncode == 1 and "not identifiable" in r.stderr and "physics.kpts" in r.stderr
    assert (tmp_path / "c.png").exists()
    dmca = tmp_path / "ops.jsonl"
    dmca.write_bytes(Path(__file__).with_name("dmca_format.jsonl").read_bytes().splitlines(keepends=True)[0] * 2)
    single = _basis_campaign(tmp_path / "s.jsonl", n=30)
    single.write_text(single.read_text().replace("basis=dzvp", "basis=szv").replace("basis=tzvp", "basis=szv"))
    cases = [
        ((col, "--treatment", "nonsense", "--outcome", "cost"), "unknown treatment key 'nonsense'"),
        ((col, "--treatment", "basis", "--outcome", "nope"), "unknown outcome key 'nope'"),
        ((col, "--treatment", "basis", "--outcome", "hpc.stage"), "not numeric"),
        ((single, "--treatment", "basis", "--outcome", "cost"), "single value"),
        ((dmca, "--treatment", "domain", "--outcome", "cost"), "single value"),
        ((tmp_path / "two.jsonl", "--treatment", "domain", "--outcome", "cost"), "cannot read"),
    ]
    few = tmp_path / "few.jsonl"
    few.write_bytes(Path(__file__).with_name("dmca_format.jsonl").read_bytes())  # 7 records, 4 domains
    cases.append(((few, "--treatment", "domain", "--outcome", "cost"), "too few records"))
    for args, what in cases:
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and what in lines[0] and lines[0].startswith("dmca-hpc causal: "), (what, r.stderr)


def test_discovery_is_an_optional_extra(tmp_path):
    rows, _ = K.read_records([_basis_campaign(tmp_path / "t.jsonl", n=200)])
    try:
        import causallearn  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'dmca_hpc\[causal\]'"):
            K.discover(rows, ["nkpts", "cost"])
        r = _cli(tmp_path / "t.jsonl", "--treatment", "basis", "--outcome", "cost", "--discover", "nkpts", "cost")
        assert r.returncode == 2 and "dmca_hpc[causal]" in r.stderr
        return
    # chain nk -> cost with basis noise: PC finds the edge between them
    d = K.discover(rows, ["nkpts", "cost", "hpc.wall_seconds"])
    pairs = {frozenset((a, b)) for a, _, b in d["edges"]}
    assert frozenset(("nkpts", "infra_cost_usd")) in pairs


# ------------------------------------------------------------------ reading through the collector

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()


def _sequenced(path: Path, run: str = "campaign0") -> Path:
    """Give every record of ``path`` the stream identity a Telemetry writer gives it
    (``hpc.run_id``, and ``hpc.seq`` 0, 1, ... per rank), as the campaign's records carry."""
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    nxt: dict[int, int] = {}
    for r in recs:
        rank = r["hpc"]["rank"]
        r["hpc"]["run_id"], r["hpc"]["seq"] = run, nxt.get(rank, 0)
        nxt[rank] = r["hpc"]["seq"] + 1
        T.validate_record(r)
    return _write(path, recs)


def _encrypted(path: Path) -> Path:
    """``path`` with every line AES-GCM encrypted (a v2 envelope bound to its identity)."""
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    path.write_bytes(b"".join(T.encrypt_line(json.dumps(r).encode(), KEY, identity=T.record_identity(r)) + b"\n"
                              for r in recs))
    return path


FAST = dict(seed=3, reference="szv", n_boot=40, n_refute=4)


def test_replayed_line_does_not_change_the_estimate(tmp_path):
    path = _sequenced(_basis_campaign(tmp_path / "t.jsonl", n=120))
    rows, info = K.read_records([path])
    assert len(rows) == 120 and info["invalid"] == 0 and info["refused"] is None
    want = K.estimate(rows, "basis", "cost", ["nkpts"], **FAST)
    lines = path.read_bytes().splitlines(keepends=True)
    i = next(j for j, x in enumerate(lines) if b"basis=tzvp" in x)
    # the unit replayed 5 times, once in the middle and 4 times at the end
    path.write_bytes(b"".join(lines[:60] + [lines[i]] + lines[60:] + [lines[i]] * 4))
    got_rows, info = K.read_records([path])
    assert len(got_rows) == 120 and info["invalid"] == 5
    assert info["input"]["invalid_by_reason"] == {"duplicate": 5} and info["input"]["stream_issues"]["duplicate"] == 5
    assert info["refused"].startswith("refused 5 of 125 telemetry lines (5 duplicate); first ")
    assert K.estimate(got_rows, "basis", "cost", ["nkpts"], **FAST) == want
    # counted 5 more times the unit would move the estimate: the check above can fail
    assert K.estimate(rows + [rows[i]] * 5, "basis", "cost", ["nkpts"], **FAST)["effects"] != want["effects"]


def test_plaintext_line_in_an_encrypted_file_is_not_used(tmp_path):
    path = _encrypted(_sequenced(_basis_campaign(tmp_path / "t.jsonl", n=120)))
    rows, info = K.read_records([path], key=KEY)
    assert len(rows) == 120 and info["invalid"] == 0
    want = K.estimate(rows, "basis", "cost", ["nkpts"], **FAST)
    # 20 forged plaintext units: tzvp at 10x the cost, with an identity of their own
    forged = [_rec("job-tzvp", 0, f"f{i}", 1.3, 0.2, "basis=tzvp,kmesh=3x3x3", [3, 3, 3], 1.8e9 + i)
              for i in range(20)]
    for i, r in enumerate(forged):
        r["hpc"]["run_id"], r["hpc"]["seq"] = "forged", i
    with open(path, "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in forged))
    for policy in (None, False, True):  # plaintext in an encrypted file is refused under every policy
        got_rows, info = K.read_records([path], key=KEY, require_encrypted=policy)
        assert len(got_rows) == 120 and info["input"]["invalid_by_reason"] == {"plaintext": 20}, policy
        assert K.estimate(got_rows, "basis", "cost", ["nkpts"], **FAST) == want
    assert "refused 20 of 140 telemetry lines (20 plaintext)" in info["refused"]
    assert f"first {path}:121: plaintext line in an encrypted file" in info["refused"]
    # counted, the forged units would move the tzvp effect far away
    flat = [K.flatten(r) for r in forged]
    for r in flat:
        r["ranks"] = 2.0
    bad = K.estimate(rows + flat, "basis", "cost", ["nkpts"], **FAST)
    assert {e["level"]: e["estimate"] for e in bad["effects"]}["tzvp"] > 2 * EFFECT["tzvp"]


def test_cli_says_what_was_refused_in_one_line(tmp_path):
    env = {**os.environ, T.KEY_ENV: KEY_B64}
    clean = _encrypted(_sequenced(_basis_campaign(tmp_path / "clean.jsonl", n=120)))
    path = tmp_path / "t.jsonl"
    lines = clean.read_bytes().splitlines(keepends=True)
    plain = json.dumps(_rec("job-szv", 0, "p0", 1.2, 5.0, "basis=szv,kmesh=2x2x2", [2, 2, 2], 1.8e9)) + "\n"
    path.write_bytes(b"".join(lines[:50] + [plain.encode()] + lines[50:] + [lines[3]]))  # + a replay
    args = ("--treatment", "basis", "--outcome", "cost", "--adjust", "nkpts", "--reference", "szv",
            "--bootstrap", "40", "--refutations", "4", "--seed", "3", "--json", "-")
    r = _cli(path, *args, env=env)
    assert r.returncode == 0, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("dmca-hpc causal: refused 2 of 122 telemetry lines (1 duplicate, 1 plaintext); "
                           f"first {path}:51: plaintext line in an encrypted file"), line
    rep = json.loads(r.stdout)
    assert rep["n"] == 120 and rep["invalid_lines"] == 2
    assert rep["telemetry_input"]["invalid_by_reason"] == {"duplicate": 1, "plaintext": 1}
    ref = _cli(clean, *args, env=env)
    assert ref.returncode == 0 and ref.stderr == ""  # nothing refused: nothing said
    assert rep["effects"] == json.loads(ref.stdout)["effects"]
    # a plaintext file beside a key: refused unless --allow-plaintext
    pf = _sequenced(_basis_campaign(tmp_path / "plain.jsonl", n=120))
    r = _cli(pf, *args, env=env)
    (line,) = r.stderr.strip().splitlines()
    assert r.returncode == 2 and line.startswith("dmca-hpc causal: unknown treatment key 'basis'") \
        and "; refused 120 of 120 telemetry lines (120 plaintext); first" in line, r.stderr
    r = _cli(pf, *args, "--allow-plaintext", env=env)
    assert r.returncode == 0 and r.stderr == "" and json.loads(r.stdout)["effects"] == rep["effects"], r.stderr
    r = _cli(pf, *args, "--require-encrypted")  # no key needed to refuse plaintext
    assert r.returncode == 2 and "120 plaintext" in r.stderr


def test_cli_not_identifiable_reason_stays_the_last_line(tmp_path):
    """jobs/campaign.sh logs the last line of the command's output for exit 1 and 2."""
    col = _sequenced(_collinear(tmp_path / "c.jsonl"))
    lines = col.read_bytes().splitlines(keepends=True)
    col.write_bytes(b"".join(lines + [lines[0]]))
    r = _cli(col, "--treatment", "basis", "--outcome", "cost", "--adjust", "physics.kpts")
    assert r.returncode == 1
    first, last = r.stderr.strip().splitlines()
    assert first.startswith("dmca-hpc causal: refused 1 of 41 telemetry lines (1 duplicate); first ")
    assert last.startswith("dmca-hpc causal: not identifiable") and "physics.kpts" in last
