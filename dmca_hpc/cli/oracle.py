"""``dmca-hpc oracle``: label structures with self-correcting pw.x runs.

Reads candidates from an extxyz (or any ASE-readable) file, runs
:func:`dmca_hpc.oracle.batch.run_batch` over the ranks of the launch
(``mpiexec -n N dmca-hpc oracle ...``) and prints a JSON summary on rank 0.
Telemetry goes to ``OUT/telemetry`` (one record of stage ``oracle`` per
candidate) unless ``--telemetry`` says otherwise."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from dmca_hpc import settings as job_settings

STAGE = "oracle"


def add_arguments(parser) -> None:
    """Arguments of ``dmca-hpc oracle``."""
    d = job_settings.defaults(STAGE)
    parser.add_argument("--structures", required=True, metavar="FILE.extxyz",
                        help="candidate structures (any ASE-readable multi-frame file)")
    parser.add_argument("--pseudo-dir", required=True, metavar="DIR", help="directory of UPF files")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--pw", default=None, metavar="PATH",
                        help=f"absolute path of pw.x (default {d['pw']})")
    parser.add_argument("--ecutwfc", type=float, default=None, metavar="RY",
                        help=f"wavefunction cutoff [Ry] (default {d['ecutwfc']})")
    parser.add_argument("--kspacing", type=float, default=None, metavar="INV_ANGSTROM",
                        help="k-point spacing [1/angstrom, 2*pi included] "
                             f"(default {d['kspacing']})")
    parser.add_argument("--pseudo", action="append", default=[], metavar="EL=FILE",
                        help="UPF file for an element (repeatable), e.g. Si=Si.pbe-rrkj.UPF")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help=f"per-attempt timeout [s] (default {d['timeout_s']})")
    parser.add_argument("--max-attempts", type=int, default=None,
                        help=f"pw.x launches per candidate (default {d['max_attempts']})")
    parser.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="YAML/JSON file with further oracle settings (job-file section keys)")
    parser.add_argument("--telemetry", default=None, metavar="DIR",
                        help="telemetry directory (default OUT/telemetry)")


def _settings(args) -> dict:
    """The oracle settings of the command line: ``--config``'s section
    (its ``oracle:`` key, or the whole file), ``--pseudo`` entries and the
    flags; raises OracleSetupError / OSError naming the bad value."""
    from dmca_hpc.oracle.pwx import OracleSetupError, settings_from
    section = {}
    if args.config:
        import yaml
        with open(args.config) as fh:
            try:
                section = yaml.safe_load(fh) or {}
            except yaml.YAMLError as exc:
                raise OracleSetupError(f"--config {args.config}: not valid YAML/JSON: "
                                       f"{exc}") from None
        if not isinstance(section, dict):
            raise OracleSetupError(f"--config {args.config}: expected a mapping of oracle settings")
        section = section.get(STAGE, section)
    pseudos = dict(section.get("pseudopotentials", {}))
    for item in args.pseudo:
        el, sep, f = item.partition("=")
        if not sep or not el or not f:
            raise OracleSetupError(f"--pseudo {item!r}: expected EL=FILE")
        pseudos[el] = f
    section["pseudopotentials"] = pseudos
    return settings_from(section, pw=args.pw, pseudo_dir=args.pseudo_dir,
                         ecutwfc=args.ecutwfc, kspacing=args.kspacing,
                         timeout_s=args.timeout, max_attempts=args.max_attempts,
                         structures=args.structures)


def run_cli(args) -> int:
    """``dmca-hpc oracle``: exit 0 when every candidate was labelled, 1 when
    the batch finished with failed candidates (listed in ``failures.json``;
    the labelled ones are kept), 2 on a setup error (message names the bad
    value)."""
    from dmca_hpc.hpc.checkpoint import config_hash, file_sha256, provenance
    from dmca_hpc.hpc.parallel import get_comm
    from dmca_hpc.monitoring.telemetry import Telemetry, merge_rank_files
    from dmca_hpc.oracle.batch import run_batch
    from dmca_hpc.oracle.candidates import read_candidates
    from dmca_hpc.oracle.pwx import OracleSetupError, physics_settings, pw_command
    from dmca_hpc.stages.registry import STAGE_DMCA
    comm = get_comm()
    rank = comm.Get_rank()
    try:
        settings = _settings(args)
        if not Path(settings["pseudo_dir"]).is_dir():
            raise OracleSetupError(f"--pseudo-dir {settings['pseudo_dir']}: not a directory")
        pw_command(settings)
        candidates = read_candidates(args.structures)
    except (OracleSetupError, OSError) as exc:
        if rank == 0:
            print(f"dmca-hpc oracle: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    ih = config_hash({"settings": physics_settings(settings),
                      "structures": file_sha256(args.structures)})
    prov = provenance(input_hash=ih, nranks=comm.Get_size())
    tdir = Path(args.telemetry) if args.telemetry else out / "telemetry"
    tel = Telemetry(tdir, rank=rank, stage_dmca=STAGE_DMCA,  # domain dft-oracle
                    nranks=comm.Get_size())
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if rank == 0 else None
    paths = run_batch(candidates, settings, out, comm=comm,
                      record=functools.partial(tel.record, STAGE), prov=prov, input_hash=ih, log=log)
    comm.barrier()
    nfail = None
    if rank == 0:
        merge_rank_files(tdir)
        nfail = len(json.loads(Path(paths["failures"]).read_text()))
        print(json.dumps({"candidates": len(candidates), "failed": nfail, **paths}, indent=1))
    # every rank exits with the same code (the package's: 1 = a unit failed, work kept)
    return 1 if comm.bcast(nfail, root=0) else 0
