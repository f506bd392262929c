#!/bin/bash
# dmca_hpc campaign: a small factorial of quickstart-sized runs, ending with
# the causal report of each factor on the campaign's own telemetry.
#
#   bash jobs/campaign.sh [OUTDIR]      workstation (OUTDIR default: runs/campaign)
#   sbatch jobs/campaign.sh [OUTDIR]    SLURM, from the repository root: 1 node,
#                                       2 tasks; requeue-safe like slurm/*.sbatch
#
#SBATCH --job-name=dmca-campaign
#SBATCH --nodes=1
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:15:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=dmca-campaign-%j.out
#
# Steps.  One `dmca-hpc run jobs/quickstart.yaml` per cell of
#   basis {gth-szv, gth-dzv} x bands k mesh {3x3x3, 4x4x4} x ranks {1, 2}
# with stages [materials, dft, bands] (12-37 s per step, 3 min in all, measured
# on 2 cores shared with a production run), each into OUTDIR/<step>/ with
#   --set telemetry.intervention=basis=B,kmesh=K,ranks=N   (the campaign convention
#         of dmca_hpc/monitoring/causal.py: `basis`, `kmesh` become keys)
#   --set telemetry.step=<step>  --set name=campaign-<step>  --set telemetry.job_id=<id>
# Ranks start with the package's mpiexec (or srun, DMCA_LAUNCHER=srun).  Steps
# run in a seeded shuffled order, so a drift of the machine's load over the
# campaign does not line up with one factor.
#
# Job id per step.  Every step gets its own hpc.job_id through the job key
# telemetry.job_id: campaign-<step> on a workstation (what the job name gives),
# <SLURM_JOB_ID>.<step> under SLURM (SLURM's own job.step notation; the ranks
# keep the real SLURM_JOB_ID).  `causal` takes `ranks` from each record's
# hpc.nranks (the communicator size); records of older runs, which lack it,
# fall back to the distinct hpc.rank values of each hpc.job_id, which is why
# the ids stay distinct.  The id is not part of OUTDIR/<step>/campaign_step.txt:
# a step done under one SLURM job is skipped under the next.
#
# Reports (after the steps; OUTDIR/causal_<name>.{md,json,png}):
#   basis      basis -> cost [USD per unit]      adjusted for kmesh, ranks, stage
#   basis_gap  basis -> physics.band_gap_ev [eV] adjusted for kmesh, unit
#   kmesh      kmesh -> cost                     adjusted for basis, ranks, stage
#   ranks      ranks -> cost                     adjusted for basis, kmesh, stage
#   ranks_wall ranks -> hpc.wall_seconds [s]     adjusted for basis, kmesh, stage
# The adjustment sets use the assigned factors (the label parts); the ranks
# reports' treatment is the measured rank count (hpc.nranks: rank 1 records no
# materials or dft unit, so counting the ranks that wrote records would
# undercount).  Every outcome is per unit of work (one telemetry record): a
# denser k mesh adds units rather than making them dearer, and an idle rank
# (rank 1 during the rank-0 SCF) is in no record.  A step's totals are in OUTDIR/campaign.md, the whole campaign's in
# OUTDIR/campaign_summary.{md,json} (`dmca-hpc collect`).
#
# Restart.  A step whose OUTDIR/<step>/campaign_step.txt holds exactly the
# arguments it would run with is skipped without starting anything; any other
# step runs, and the pipeline skips its current stages and resumes its
# checkpointed units.  SIGUSR1/SIGTERM (and Ctrl-C) checkpoint the running
# step and stop (exit 99; under SLURM the job requeues itself and resumes).
#
# Environment:
#   CAMPAIGN_QUICK=1      4 steps (basis x ranks), stages [materials, dft], the basis report only
#   CAMPAIGN_BASES, CAMPAIGN_KMESHES, CAMPAIGN_RANKS   factor levels (space-separated;
#                         k meshes as 4x4x4)
#   CAMPAIGN_STAGES       comma-separated stages (default materials,dft,bands)
#   CAMPAIGN_REPORTS      report names to make (default: all of the table above)
#   CAMPAIGN_JOB          job file (default jobs/quickstart.yaml)
#   CAMPAIGN_SEED         seed of the step order and of the reports (default 20261123)
#   CAMPAIGN_PYTHON       Python with dmca_hpc installed (default: the checkout's .venv,
#                         else dmca-hpc on PATH)
#   DMCA_LAUNCHER         mpiexec (default) | srun | none;  DMCA_MPIEXEC, DMCA_SRUN_MPI as
#                         in the slurm/ templates
# Exit codes: 0 every step finished and every report was made (a report may say
# "not identifiable"); 1 a step failed or a report could not be made (the
# other steps still ran); 2 bad input; 99 checkpointed after a signal.

# ---------------------------------------------------------------- where things are
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# sbatch runs a spool copy of this file: then the checkout is the submit directory
if [ -f "$here/../slurm/common.sh" ]; then
    ROOT=$(cd "$here/.." && pwd)
elif [ -n "${SLURM_SUBMIT_DIR:-}" ] && [ -f "$SLURM_SUBMIT_DIR/slurm/common.sh" ]; then
    ROOT=$SLURM_SUBMIT_DIR
else
    echo "campaign: cannot find the dmca_hpc checkout (slurm/common.sh) beside $here" \
         "or in SLURM_SUBMIT_DIR; run it from the repository root" >&2
    exit 2
fi

OUT=${1:-runs/campaign}
mkdir -p "$OUT" || { echo "campaign: cannot create OUTDIR $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)

if [ -n "${CAMPAIGN_PYTHON:-}" ]; then
    PY=$CAMPAIGN_PYTHON
    DMCA_HPC=("$PY" -m dmca_hpc.cli.main)
elif [ -x "$ROOT/.venv/bin/dmca-hpc" ]; then
    PY=$ROOT/.venv/bin/python
    DMCA_HPC=("$ROOT/.venv/bin/dmca-hpc")
elif command -v dmca-hpc >/dev/null 2>&1; then
    DMCA_HPC=("$(command -v dmca-hpc)")
    PY=$(head -n 1 "${DMCA_HPC[0]}" | sed -n 's/^#! *//p')
    [ -x "$PY" ] || PY=python3
else
    echo "campaign: dmca-hpc not found (no $ROOT/.venv, none on PATH; set CAMPAIGN_PYTHON)" >&2
    exit 2
fi

# settings the common batch body (slurm/common.sh) expects, as dmca-hpc submit renders them
DMCA_OUT_DIR=$OUT
DMCA_LAUNCHER=${DMCA_LAUNCHER:-mpiexec}
DMCA_SRUN_MPI=${DMCA_SRUN_MPI:-pmi2}
if [ -z "${DMCA_MPIEXEC:-}" ]; then
    DMCA_MPIEXEC=$(dirname "$PY")/mpiexec
    [ -x "$DMCA_MPIEXEC" ] || DMCA_MPIEXEC=$(command -v mpiexec || true)
fi
DMCA_REQUEUE=${DMCA_REQUEUE:-1}
DMCA_MAX_REQUEUES=${DMCA_MAX_REQUEUES:-5}
export DMCA_OUT_DIR
# threads, Numba cache, stop file, signal forwarding (dmca_run), requeue (dmca_finish)
# shellcheck source=../slurm/common.sh
source "$ROOT/slurm/common.sh"
# Ctrl-C on a workstation: the ranks run in the background, where SIGINT is ignored,
# so ask them to checkpoint and stop instead of leaving them behind
trap 'dmca_forward TERM' INT

if [ "$DMCA_LAUNCHER" = mpiexec ] && [ ! -x "$DMCA_MPIEXEC" ]; then
    echo "campaign: mpiexec not found (pip install -e '.[mpi]', or set DMCA_MPIEXEC or DMCA_LAUNCHER=srun|none)" >&2
    exit 2
fi

# ---------------------------------------------------------------- the design
JOB=${CAMPAIGN_JOB:-$ROOT/jobs/quickstart.yaml}
SEED=${CAMPAIGN_SEED:-20261123}
if [ "${CAMPAIGN_QUICK:-0}" = 1 ]; then
    # smallest campaign that exercises steps, launcher, labels, restart and a report:
    # 2 x 2 steps of a few seconds each
    BASES=${CAMPAIGN_BASES:-gth-szv gth-dzv}
    KMESHES=${CAMPAIGN_KMESHES:-4x4x4}
    RANKS=${CAMPAIGN_RANKS:-1 2}
    STAGES=${CAMPAIGN_STAGES:-materials,dft}
    # the basis report only: the quick campaign checks the machinery, whose only
    # records are rank 0's materials and dft units
    REPORTS=${CAMPAIGN_REPORTS:-basis}
else
    BASES=${CAMPAIGN_BASES:-gth-szv gth-dzv}
    KMESHES=${CAMPAIGN_KMESHES:-3x3x3 4x4x4}
    RANKS=${CAMPAIGN_RANKS:-1 2}
    STAGES=${CAMPAIGN_STAGES:-materials,dft,bands}
    REPORTS=${CAMPAIGN_REPORTS:-basis basis_gap kmesh ranks ranks_wall}
fi
read -r -a BASES <<<"$BASES"
read -r -a KMESHES <<<"$KMESHES"
read -r -a RANKS <<<"$RANKS"
read -r -a REPORTS <<<"$REPORTS"
for k in "${KMESHES[@]}"; do
    [[ $k =~ ^[1-9][0-9]*x[1-9][0-9]*x[1-9][0-9]*$ ]] || {
        echo "campaign: CAMPAIGN_KMESHES: '$k' is not a k mesh; expected e.g. 4x4x4" >&2; exit 2; }
done
for n in "${RANKS[@]}"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "campaign: CAMPAIGN_RANKS: '$n' is not a rank count" >&2; exit 2; }
    if [ "$DMCA_LAUNCHER" = none ] && [ "$n" != 1 ]; then
        echo "campaign: DMCA_LAUNCHER=none runs one process; CAMPAIGN_RANKS has $n" >&2; exit 2
    fi
done
[ ${#BASES[@]} -ge 1 ] && [ ${#KMESHES[@]} -ge 1 ] && [ ${#RANKS[@]} -ge 1 ] || {
    echo "campaign: every factor needs at least one level (CAMPAIGN_BASES/KMESHES/RANKS)" >&2; exit 2; }

STEPS=()
for b in "${BASES[@]}"; do
    for k in "${KMESHES[@]}"; do
        for n in "${RANKS[@]}"; do
            STEPS+=("$b|$k|$n")
        done
    done
done
# seeded Fisher-Yates shuffle (bash's RANDOM is reproducible for a seed)
RANDOM=$SEED
for ((i = ${#STEPS[@]} - 1; i > 0; i--)); do
    j=$((RANDOM % (i + 1)))
    t=${STEPS[i]}; STEPS[i]=${STEPS[j]}; STEPS[j]=$t
done

mkdir -p "$OUT/logs"
dmca_log "campaign of ${#STEPS[@]} step(s) into $OUT: basis {${BASES[*]}} x kmesh {${KMESHES[*]}} x ranks {${RANKS[*]}}, stages [$STAGES], via $DMCA_LAUNCHER"
case ",$STAGES," in
    *,formfactor,*|*,dielectric,*|*,rates,*) dmca_warmup ;;  # Numba kernels: compile once, before the ranks
esac

# ---------------------------------------------------------------- the steps
n_failed=0
INDEX=()
for cell in "${STEPS[@]}"; do
    IFS='|' read -r b k n <<<"$cell"
    step="${b}_k${k}_r${n}"
    label="basis=$b,kmesh=$k,ranks=$n"
    dir=$OUT/$step
    log=$OUT/logs/$step.log
    INDEX+=("$step|$label")
    args=(run "$JOB" --out "$dir"
          --set "stages=[$STAGES]"
          --set "name=campaign-$step"
          --set "telemetry.step=$step"
          --set "telemetry.intervention=$label"
          --set "dft.basis=$b"
          --set "bands.kmesh=[${k//x/,}]")
    want=$(printf '%s\n' "ranks=$n" "${args[@]}")
    if [ -f "$dir/campaign_step.txt" ] && [ "$(cat "$dir/campaign_step.txt")" = "$want" ]; then
        dmca_log "step $step: done before, skipped"
        continue
    fi
    case "$DMCA_LAUNCHER" in
        srun)    launch=(srun --mpi="$DMCA_SRUN_MPI" --nodes=1 --ntasks="$n") ;;
        mpiexec) launch=("$DMCA_MPIEXEC" -n "$n") ;;
        none)    launch=() ;;
        *) dmca_log "unknown launcher '$DMCA_LAUNCHER' (expected srun, mpiexec or none)"; exit 2 ;;
    esac
    # the step's telemetry job id (header); kept out of $want so a step finished
    # under one SLURM job is not rerun under another
    jobid=${SLURM_JOB_ID:+$SLURM_JOB_ID.$step}
    jobid=${jobid:-campaign-$step}
    dmca_log "step $step ($label) on $n rank(s) ..."
    echo "==== $(date '+%F %T') attempt on $n rank(s) (job ${SLURM_JOB_ID:-local})" >>"$log"
    t0=$SECONDS
    # appended: the log of an interrupted attempt stays beside the one that resumed it
    dmca_run ${launch[@]+"${launch[@]}"} "${DMCA_HPC[@]}" "${args[@]}" \
        --set "telemetry.job_id='$jobid'" >>"$log" 2>&1
    rc=$?
    case $rc in
        0)  printf '%s\n' "$want" >"$dir/campaign_step.txt"
            dmca_log "step $step done in $((SECONDS - t0)) s (log $log)" ;;
        99) dmca_log "step $step checkpointed after a signal; rerun (or the requeued job) resumes it"
            dmca_finish 99 ;;
        2)  dmca_log "step $step: bad input (exit 2), stopping the campaign:"
            tail -n 5 "$log" >&2
            dmca_finish 2 ;;
        *)  n_failed=$((n_failed + 1))
            dmca_log "step $step FAILED (exit $rc) after $((SECONDS - t0)) s (log $log):"
            grep -E '\] (FAILED|REFUSED)' "$log" >&2 || tail -n 5 "$log" >&2 ;;
    esac
done

# ---------------------------------------------------------------- the reports
tel=()
for entry in "${INDEX[@]}"; do
    [ -d "$OUT/${entry%%|*}/telemetry" ] && tel+=("$OUT/${entry%%|*}/telemetry")
done
if [ ${#tel[@]} -eq 0 ]; then
    dmca_log "no step has telemetry: no reports"
    dmca_finish 1
fi

levels() {  # number of levels the campaign gives a factor key
    case $1 in
        basis|intervention.basis) echo ${#BASES[@]} ;;
        kmesh|intervention.kmesh) echo ${#KMESHES[@]} ;;
        ranks|intervention.ranks) echo ${#RANKS[@]} ;;
        *) echo 2 ;;
    esac
}

n_report_failed=0
MADE=()
for name in "${REPORTS[@]}"; do
    case $name in
        # treatment|outcome|adjustment set|reference level (the first level of the factor)
        basis)      spec="basis|cost|kmesh intervention.ranks hpc.stage|${BASES[0]}" ;;
        basis_gap)  spec="basis|physics.band_gap_ev|kmesh hpc.unit|${BASES[0]}" ;;
        kmesh)      spec="kmesh|cost|basis intervention.ranks hpc.stage|${KMESHES[0]}" ;;
        ranks)      spec="ranks|cost|basis kmesh hpc.stage|" ;;
        ranks_wall) spec="ranks|hpc.wall_seconds|basis kmesh hpc.stage|" ;;
        *) dmca_log "unknown report '$name' in CAMPAIGN_REPORTS (basis basis_gap kmesh ranks ranks_wall)"
           n_report_failed=$((n_report_failed + 1)); continue ;;
    esac
    IFS='|' read -r treatment outcome adjust_all reference <<<"$spec"
    if [ "$(levels "$treatment")" -lt 2 ]; then
        dmca_log "report $name skipped: the campaign gives '$treatment' one level"
        continue
    fi
    adjust=()
    for a in $adjust_all; do  # a factor held fixed is no common cause (and a constant column)
        [ "$(levels "$a")" -ge 2 ] && adjust+=("$a")
    done
    "${DMCA_HPC[@]}" causal "${tel[@]}" --treatment "$treatment" --outcome "$outcome" \
        --adjust ${adjust[@]+"${adjust[@]}"} ${reference:+--reference "$reference"} --seed "$SEED" \
        --markdown "$OUT/causal_$name.md" --json "$OUT/causal_$name.json" --plot "$OUT/causal_$name.png" \
        >"$OUT/logs/causal_$name.log" 2>&1
    rc=$?
    case $rc in
        0) MADE+=("$name"); dmca_log "report $name: $treatment -> $outcome: $OUT/causal_$name.md" ;;
        1) MADE+=("$name"); dmca_log "report $name: $treatment -> $outcome NOT IDENTIFIABLE: $(tail -n 1 "$OUT/logs/causal_$name.log")" ;;
        *) n_report_failed=$((n_report_failed + 1))
           dmca_log "report $name FAILED (exit $rc): $(tail -n 1 "$OUT/logs/causal_$name.log")" ;;
    esac
done

"${DMCA_HPC[@]}" collect "${tel[@]}" --markdown -o "$OUT/campaign_summary.md" >"$OUT/logs/collect.log" 2>&1 &&
"${DMCA_HPC[@]}" collect "${tel[@]}" --json -o "$OUT/campaign_summary.json" >>"$OUT/logs/collect.log" 2>&1 ||
    { n_report_failed=$((n_report_failed + 1)); dmca_log "collect FAILED: $(tail -n 1 "$OUT/logs/collect.log")"; }

# one table of the steps (their run.json totals) and the headline of every report
"$PY" - "$OUT" "${INDEX[@]}" -- ${MADE[@]+"${MADE[@]}"} <<'EOF' || dmca_log "campaign.md not written"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
cut = sys.argv.index("--")
steps, made = sys.argv[2:cut], sys.argv[cut + 1:]
L = ["# Campaign " + out.name, "",
     "| step | intervention | status | units | cost USD | wall-clock span s |", "|---|---|---|---:|---:|---:|"]
for entry in steps:
    step, label = entry.split("|", 1)
    try:
        run = json.loads((out / step / "run.json").read_text())
        summ = json.loads((out / step / "telemetry_summary.json").read_text())
        status = "ok" if run.get("failed") == 0 else f"{run.get('failed')} stage(s) failed"
        L.append(f"| {step} | {label} | {status} | {summ['records']} | {summ['cost_usd']:.4g} | "
                 f"{summ['span_seconds']:.1f} |")
    except (OSError, ValueError, KeyError):
        L.append(f"| {step} | {label} | not finished | | | |")
L += ["", "| report | treatment -> outcome | term | estimate | 95 % CI (HC3) | bootstrap 95 % CI | refutations |",
      "|---|---|---|---:|---|---|---|"]
g = lambda v: "-" if v is None else f"{v:.4g}"
for name in made:
    rep = json.loads((out / f"causal_{name}.json").read_text())
    what = f"{rep['treatment']} -> {rep['outcome']}"
    if not rep["identifiable"]:
        L.append(f"| {name} | {what} | not identifiable | | | | |")
        continue
    for e in rep["effects"]:
        refs = [it for items in rep["refutations"].values() for it in items if it["term"] == e["term"]]
        passed = sum(it["passed"] for it in refs)
        b = e["bootstrap_ci95"]
        L.append(f"| {name} | {what} | {e['term']} | {g(e['estimate'])} | [{g(e['ci95'][0])}, {g(e['ci95'][1])}] | "
                 f"{'[' + g(b[0]) + ', ' + g(b[1]) + ']' if b else '-'} | {passed}/{len(refs)} passed |")
L += ["", "Outcomes are per unit of work (one telemetry record): cost in USD, hpc.wall_seconds in s, "
      "physics.band_gap_ev in eV; a numeric treatment (ranks) gives the effect per rank."]
(out / "campaign.md").write_text("\n".join(L) + "\n")
print("\n".join(L))
EOF

rc=0
[ "$n_failed" -gt 0 ] && { dmca_log "$n_failed step(s) failed"; rc=1; }
[ "$n_report_failed" -gt 0 ] && { dmca_log "$n_report_failed report(s) not made"; rc=1; }
dmca_finish $rc
