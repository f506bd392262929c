# ---- dmca_hpc common batch-script body (inlined by dmca_hpc.slurm.render) ----
# Contract with `dmca-hpc run` (and every dmca-hpc command we launch):
#   SIGUSR1 or SIGTERM, or the file $DMCA_STOP_FILE appearing  ->  finish the
#   current unit, write its checkpoint, exit with code 99 ("checkpointed,
#   resubmit me").  Any other exit code is final.
set -uo pipefail

# -- threads: one MPI rank per core by default; each rank may use
#    cpus-per-task threads, and no library may oversubscribe on its own.
export DMCA_THREADS_PER_RANK=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=$DMCA_THREADS_PER_RANK
export NUMBA_NUM_THREADS=$DMCA_THREADS_PER_RANK
export OPENBLAS_NUM_THREADS=$DMCA_THREADS_PER_RANK
export MKL_NUM_THREADS=$DMCA_THREADS_PER_RANK
# Since SLURM 22.05 srun no longer inherits --cpus-per-task from sbatch:
# without this, every rank of an srun step is bound to one CPU.
export SRUN_CPUS_PER_TASK=$DMCA_THREADS_PER_RANK
# matplotlib on compute nodes: never try a display
export MPLBACKEND=Agg
# Numba cache must be writable (a container image is not) and shared by the ranks
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-${HOME:-/tmp}/.cache/dmca_hpc/numba}
mkdir -p "$NUMBA_CACHE_DIR" "$DMCA_OUT_DIR"

# A stop file left by the previous run of a requeued job must not stop this one.
export DMCA_STOP_FILE="$DMCA_OUT_DIR/.dmca-stop-${SLURM_JOB_ID:-local}${SLURM_ARRAY_TASK_ID:+-$SLURM_ARRAY_TASK_ID}"
rm -f "$DMCA_STOP_FILE"

dmca_log() { echo "[dmca $(date +%H:%M:%S) job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}] $*"; }

# Compile the Numba kernels once, here on the batch host, before the ranks start:
# several ranks compiling into one empty cache at once can crash (cache races).
dmca_warmup() {
    if "${DMCA_HPC[@]}" warmup >"$DMCA_OUT_DIR/.warmup.log" 2>&1; then
        dmca_log "numba warmup done (cache $NUMBA_CACHE_DIR)"
    else
        dmca_log "numba warmup unavailable or failed (see $DMCA_OUT_DIR/.warmup.log); ranks compile lazily"
    fi
}

# The launcher: the MPI installed with the package (mpiexec, hydra) or SLURM's own
# srun with PMI-2; both forward SIGUSR1/SIGTERM to every rank (tested on SLURM 22.05
# with the mpich PyPI wheel).
dmca_launch() {
    case "$DMCA_LAUNCHER" in
        srun)    DMCA_LAUNCH=(srun --mpi="$DMCA_SRUN_MPI" --ntasks="${SLURM_NTASKS:-1}") ;;
        mpiexec) DMCA_LAUNCH=("$DMCA_MPIEXEC" -n "${SLURM_NTASKS:-1}") ;;
        none)    DMCA_LAUNCH=() ;;
        *) dmca_log "unknown launcher '$DMCA_LAUNCHER' (expected srun, mpiexec or none)"; return 2 ;;
    esac
    dmca_run "${DMCA_LAUNCH[@]}" "$@"
}

# Run a command in the background so this shell can take signals while it runs
# (bash defers traps until a foreground child exits), forward USR1/TERM to it,
# and return its real exit code.  The command must be a program, not a shell
# function: a function would run in a subshell that dies of the forwarded signal.
DMCA_CHILD=""
DMCA_SIGNALLED=0
dmca_forward() {
    DMCA_SIGNALLED=1
    dmca_log "received SIG$1: asking the ranks to checkpoint and stop"
    : > "$DMCA_STOP_FILE"
    [ -n "$DMCA_CHILD" ] && kill -s "$1" "$DMCA_CHILD" 2>/dev/null
}
trap 'dmca_forward USR1' USR1
trap 'dmca_forward TERM' TERM

dmca_run() {
    "$@" &
    DMCA_CHILD=$!
    local rc
    while :; do
        wait "$DMCA_CHILD"; rc=$?
        # wait returns >128 when a trap interrupted it: the child still runs, wait again
        if [ "$rc" -gt 128 ] && [ "$DMCA_SIGNALLED" = 1 ] && kill -0 "$DMCA_CHILD" 2>/dev/null; then
            DMCA_SIGNALLED=0
            continue
        fi
        break
    done
    DMCA_CHILD=""
    return "$rc"
}

# Exit code 99 = checkpointed: requeue (same job id, SLURM_RESTART_COUNT+1) while
# the budget of requeues lasts; the next run resumes from the checkpoints.
dmca_finish() {
    local rc=$1
    rm -f "$DMCA_STOP_FILE"
    if [ "$rc" -eq 99 ]; then
        if [ "$DMCA_REQUEUE" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ] \
           && [ "${SLURM_RESTART_COUNT:-0}" -lt "$DMCA_MAX_REQUEUES" ]; then
            dmca_log "checkpointed; requeueing job ${SLURM_JOB_ID}"
            # the array task's own id (SLURM_JOB_ID) requeues only this task
            scontrol requeue "$SLURM_JOB_ID" && exit 0
            dmca_log "scontrol requeue failed: resubmit by hand (the run resumes from its checkpoints)"
        else
            dmca_log "checkpointed; not requeueing (requeue=$DMCA_REQUEUE, restarts ${SLURM_RESTART_COUNT:-0}/$DMCA_MAX_REQUEUES): resubmit to resume"
        fi
    fi
    dmca_log "exit code $rc"
    exit "$rc"
}
# ---- end of common body ----
