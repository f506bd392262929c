"""One model of every job section: each field's default, unit and one-line doc.

This is the single source of a job's defaults.  The JSON schema fragments in
``config/schema/<section>.schema.json`` validate a job file (types, ranges,
enums); ``tests/unit/test_settings.py`` checks that they list the same keys,
defaults and types as this model.  ``dmca-hpc run --set``, ``validate`` and
the README's job-key reference (:func:`reference_markdown`) read it.

Units are given in brackets in each doc line and in :attr:`Field.unit`
(``name``, ``choice``, ``flag``, ``count`` for dimensionless fields).
Only the standard library is imported.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Field:
    """One job key: ``default`` (JSON value), ``unit``, JSON ``type`` and ``doc``."""

    name: str
    default: Any
    unit: str
    type: Any
    doc: str


@dataclass(frozen=True)
class Section:
    """A job section (``dft:``, ``bands:`` ...) and its fields, in schema order."""

    title: str
    fields: tuple

    def keys(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


F = Field


def _section(title: str, fields: list) -> Section:
    return Section(title, tuple(fields))


#: top-level job keys that carry a default
TOP_LEVEL = (
    F("materials", [], "", "array", "targets: names from the built-in library, or {name, structure_file, "
      "gap_ev, pair_energy_ev, scissor_gap_ev}"),
    F("seed", 20261123, "", "integer", "master random seed (oracle rattles, Monte Carlo bands)"),
)

SECTIONS: dict[str, Section] = {
    'dft': _section('dft: periodic Kohn-Sham ground state with PySCF (KRKS)', [
        F('basis', 'gth-dzvp', 'name', 'string',
          'Gaussian basis-set name known to PySCF [name]: gth-szv, gth-dzvp, gth-tzv2p ... with a GTH pseudopotential, or an all-electron basis (def2-tzvp, cc-pvtz) with pseudo null.'),
        F('pseudo', 'gth-pbe', 'name', ['string', 'null'],
          'pseudopotential name [name] (gth-pbe, gth-lda...); null = all-electron (needs a non-GTH basis).'),
        F('xc', 'PBE', 'name', 'string',
          "exchange-correlation functional [name]; hybrids (PBE0, HSE06) are much slower. Semilocal gaps are too small: the bands stage's scissor gives the physical gap."),
        F('kmesh', [2, 2, 2], 'k-points per reciprocal axis', 'array',
          'Gamma-centred coarse SCF k-mesh [k-points per reciprocal axis].'),
        F('ke_cutoff_hartree', None, 'hartree', ['number', 'null'],
          "kinetic-energy cutoff of the FFT mesh [hartree]; null = PySCF's default from cell.precision (about 35^3 points for Si gth-dzvp)."),
        F('conv_tol_hartree', 1e-10, 'hartree', 'number',
          'SCF convergence threshold on the total-energy change [hartree]; 1e-10 so that an SCF resumed after a kill lands within 3e-10 hartree of the uninterrupted band energies (1e-8 left 3e-7).'),
        F('max_cycles', 50, 'count', 'integer',
          'maximum SCF iterations [count]; reaching it is a recorded failure (the last orbitals are kept and a rerun continues from them).'),
        F('density_fit', 'auto', 'choice', 'string',
          'Coulomb integral scheme [choice]: auto (FFTDF with GTH pseudopotentials, GDF for all-electron bases, whose core shells would need an FFT mesh of thousands of points per axis), FFTDF (plane-wave FFT: about 2x faster than GDF for Si gth-dzvp 2x2x2 on 2 cores, and the bands on new k need no rebuild) or GDF (Gaussian density fitting; the dense-mesh bands then use GDF too).'),
        F('smearing_hartree', None, 'hartree', ['number', 'null'],
          'occupation smearing width [hartree]; null = integer occupations (insulators).'),
        F('smearing_method', 'fermi', 'choice', 'string',
          'smearing function when smearing_hartree is set [choice].'),
        F('min_distance_angstrom', 0.5, 'angstrom', 'number',
          'two atoms (periodic images included) closer than this are an input error, checked before PySCF [angstrom].'),
        F('exxdiv', 'ewald', 'choice', ['string', 'null'],
          'treatment of the G=0 divergence of exact exchange for hybrids [choice].'),
        F('restart_from_chkfile', True, 'flag', 'boolean',
          'start the SCF from the orbitals of an interrupted run of the same physics inputs [flag].'),
        F('pyscf_verbose', 4, 'level', 'integer',
          'PySCF log level of <stage>/pyscf_scf.log [level].'),
    ]),
    'bands': _section('bands: Kohn-Sham bands on a dense Gamma-centred mesh, k-chunks spread over MPI ranks', [
        F('kmesh', [4, 4, 4], 'k-points per reciprocal axis', 'array',
          'Gamma-centred dense k-mesh [k-points per reciprocal axis]; a multiple of dft.kmesh puts the SCF k-points on it.'),
        F('n_conduction', None, 'count', ['integer', 'null'],
          'number of conduction bands kept [count]; null = enough to reach energy_above_gap_ev above the CBM.'),
        F('energy_above_gap_ev', 50.0, 'eV', 'number',
          'keep every conduction band with states below CBM + this [eV]; a warning says when the basis cannot reach it.'),
        F('chunk_size', 4, 'count', 'integer',
          'k-points per unit of work (one checkpoint file each) [count].'),
        F('schedule', 'dynamic', 'choice', 'string',
          'how k-chunks are spread over ranks [choice]: dynamic fetch-next or static blocks.'),
        F('scissor_convention', 'qcdark', 'choice', 'string',
          'scissor to the experimental gap [choice]: qcdark = conduction up by the difference, VBM at 0; qedark = valence down and conduction up by half each; none.'),
        F('scissor_gap_ev', None, 'eV', ['number', 'null'],
          "gap the scissor shifts to [eV]; null = the material's scissor_gap_ev (Si 1.11, Ge 0.67 ...)."),
        F('dos_sigma_ev', 0.1, 'eV', 'number',
          'Gaussian broadening of the density of states [eV].'),
        F('dos_step_ev', 0.02, 'eV', 'number',
          'energy step of the DOS grid [eV].'),
        F('band_path', None, 'path', ['string', 'null'],
          "band-structure path in ASE special-point letters (e.g. 'GXWKGLUWLK,UX') [path]; null = ASE's standard path for the lattice."),
        F('band_path_npoints', 60, 'count', 'integer',
          'k-points along the band path [count]; 0 = no band path (and no band-structure plot lines).'),
        F('plots', True, 'flag', 'boolean',
          'write band_structure.png and dos.png (matplotlib Agg) [flag].'),
        F('symprec_angstrom', 1e-05, 'angstrom', 'number',
          'spglib symmetry tolerance for the irreducible wedge [angstrom].'),
        F('irreducible_only', 'auto', 'choice', ['string', 'boolean'],
          "diagonalize only at the irreducible k of the mesh and rotate the states to the full mesh with PySCF's space-group operations [choice]: auto = when the Hamiltonian is expensive to build per k (all-electron / GDF, hybrids), true, false (every mesh k diagonalized: the FFTDF fast path)."),
    ]),
    'formfactor': _section('formfactor stage (crystal form factor |f_crystal(q, E)|^2)', [
        F('dq', 0.02, 'alpha m_e', 'number',
          'q bin width [alpha m_e]; bin centres (a + 1/2) dq'),
        F('de', 0.1, 'eV', 'number',
          'energy bin width [eV]; bin centres (b + 1/2) dE'),
        F('q_max', 20.0, 'alpha m_e', 'number',
          'upper edge of the q range [alpha m_e] (nq = q_max / dq bins); sets the FFT grid'),
        F('e_max', 50.0, 'eV', 'number',
          'upper edge of the energy range [eV] (nE = e_max / dE bins)'),
        F('scissor', 'qcdark', 'eV', 'string',
          'scissor scheme (dimensionless label): qcdark shifts conduction bands and puts the VBM at 0, qedark shifts both by half; none keeps the DFT gap [eV]'),
        F('gap_ev', None, 'eV', ['number', 'null'],
          "scissor target gap [eV]; null: the material's scissor gap (Si 1.11, Ge 0.67 eV)"),
        F('use_symmetry', True, 'flag', 'boolean',
          'k over the irreducible wedge with its weight (true) or the full mesh (false) [flag]'),
        F('kprime_block', 8, 'count', 'integer',
          "number of k' (full mesh) per work unit [count]; changes the checkpoint layout"),
        F('n_conduction', None, 'count', ['integer', 'null'],
          'conduction bands used [count]; null: all bands in the bands file'),
        F('mesh', None, 'points per lattice vector', ['array', 'null'],
          'real-space FFT mesh [points per lattice vector]; null: chosen from q_max and the basis bandwidth'),
        F('route', 'auto', 'choice', 'string',
          'matrix-element route [choice]: fft (one FFT per band pair of the cell-periodic products on a grid fine enough for the hardest primitive: GTH bases), analytic (Gaussian plane-wave overlaps summed over the lattice per axis, no grid: any basis, all-electron included), auto (fft when every element has a GTH pseudopotential, else analytic); the table records the route and precision used'),
        F('precision', 1e-08, '1', 'number',
          'relative precision [1] at which the plane-wave expansion of the Gaussian basis is cut'),
        F('schedule', 'dynamic', 'choice', 'string',
          'MPI distribution of the work units [choice]'),
        F('plot', True, 'flag', 'boolean',
          'write formfactor.png [flag]: the heat map of log10|f|^2 over q (alpha m_e) and E (eV) and the q-integrated spectrum'),
    ]),
    'dielectric': _section('dielectric stage', [
        F('kmesh', None, '3 integers, dimensionless', ['array', 'null'],
          "k mesh of the form-factor table [3 integers, dimensionless] for the q-sampling correction; null = from the table's metadata / k points, else inferred from its populated q bins"),
        F('q_optical_max_ame', 0.0, 'alpha m_e', 'number',
          'upper end of the q window of the optical-limit fit [alpha m_e]; 0 = use the lowest optical_bins populated bins'),
        F('optical_bins', 3, 'count', 'integer',
          'number of lowest populated q bins in the optical-limit fit Im eps = a + b q^2 [count]'),
        F('static_bins', 6, 'count', 'integer',
          'number of lowest populated q bins in the static fit 1/(eps(q,0)-1) = A + B q^2 [count]'),
        F('optical_method', 'quadratic', 'dimensionless choice', 'string',
          'q -> 0 extrapolation of Im eps: weighted fit a + b q^2 or weighted mean [dimensionless choice]'),
        F('broadening_ev', 0.0, 'eV', 'number',
          'Gaussian sigma applied to Im eps along w before Kramers-Kronig [eV]; 0 = none'),
        F('kk_tail', 'power', 'dimensionless choice', 'string',
          "continuation of Im eps above the table's last energy bin for Kramers-Kronig: power law w^-p or zero [dimensionless choice]"),
        F('kk_tail_exponent', 3.0, 'dimensionless', 'number',
          'exponent p of the power-law tail Im eps ~ w^-p [dimensionless]'),
        F('absorption', True, 'flag', 'boolean',
          'compute dark-photon and ALP absorption rates and reach [flag]'),
        F('mass_min_ev', 1.0, 'eV', 'number',
          'lowest dark-photon / ALP mass [eV]'),
        F('mass_max_ev', 50.0, 'eV', 'number',
          "highest dark-photon / ALP mass [eV] (clipped to the table's energy range)"),
        F('n_masses', 200, 'count', 'integer',
          'number of log-spaced masses [count]'),
        F('exposure_kg_year', 1.0, 'kg year', 'number',
          'exposure for the reach [kg year]'),
        F('n_events', 3.0, 'events', 'number',
          'signal events defining the reach [events] (3 = background-free 95% CL)'),
        F('rho_chi_gev_cm3', 0.3, 'GeV/cm^3', 'number',
          'local dark-matter density [GeV/cm^3]'),
        F('reference_mass_ev', 10.0, 'eV', 'number',
          'mass at which the kappa and g_ae reach go into the telemetry physics block [eV]'),
        F('optical_route', 'auto', 'dimensionless choice', 'string',
          'optical limit eps(q -> 0, w): from the DFT states (density matrix elements at small q on optical_kmesh, dmca_hpc.response.optical), or the q -> 0 extrapolation of the table; auto = states when the job ran the dft stage [dimensionless choice]'),
        F('optical_kmesh', [12, 12, 12], '3 integers, dimensionless', 'array',
          'Gamma-centred k mesh of the optical limit from the states [3 integers, dimensionless]; only k and k + q are needed, so it can be much denser than the form-factor mesh'),
        F('optical_dq_bohr', 0.0001, 'bohr^-1', 'number',
          'small q of the density matrix elements <c,k+q|e^{iq.r}|v,k> [bohr^-1]'),
        F('optical_sigma_ev', 0.15, 'eV', 'number',
          'Gaussian width of each transition in Im eps(q -> 0, w) [eV]'),
        F('optical_min_gap_ev', 0.1, 'eV', 'number',
          'smallest direct DFT gap on the optical mesh for which the states route is trusted [eV]; below it (a functional that closes the gap) auto falls back to the table route and states warns'),
        F('optical_chunk', 4, 'count', 'integer',
          'irreducible k points per work unit of the optical limit [count]'),
    ]),
    'rates': _section('rates', [
        F('table', None, 'path', ['string', 'null'],
          "form-factor table file (dmca_hpc HDF5, QCDark HDF5 or QEdark text) [path]; null: the formfactor stage's output, else the shipped table of 'material' / the job's material"),
        F('material', None, 'name', ['string', 'null'],
          'use the shipped table dmca_hpc/data/tables/<material>.hdf5 [name]'),
        F('masses_mev', [10.0, 100.0, 1000.0], 'MeV', 'array',
          'DM masses of the spectra [MeV]'),
        F('fdm', ['heavy', 'light'], 'names', 'array',
          'DM form factors: heavy (F_DM = 1) and/or light ((alpha m_e/q)^2) mediator [names]'),
        F('halo', 'shm-2021', 'name', 'string',
          'halo model preset (velocities km/s, rho GeV/cm^3 in physics.md) [name]'),
        F('sigma_e_cm2', 1e-39, 'cm^2', 'number',
          'reference DM-electron cross section of the spectra [cm^2]'),
        F('gap_ev', None, 'eV', ['number', 'null'],
          "band gap of the ionization model [eV]; null: the table's gap"),
        F('pair_energy_ev', None, 'eV', ['number', 'null'],
          'energy per electron-hole pair [eV]; null: material default (Si 3.6, Ge 2.9, GaAs 4.7)'),
        F('screening', 'none', 'name', 'string',
          "divide the integrand by |eps(q, E)|^2: rpa = the dielectric stage's RPA epsilon (or one built from the table), tf = Thomas-Fermi-like model of Si/Ge (Cappellini et al. 1993) [name]; screening_file overrides"),
        F('screening_file', None, 'path', ['string', 'null'],
          "HDF5 file with |epsilon(q, E)|^2 on the table's grid to screen the rate [path]; null: unscreened"),
        F('screening_dataset', 'eps2', 'nq, nE', 'string',
          'dataset name of |epsilon|^2 [nq, nE] in screening_file [name, dimensionless data]'),
        F('exposure_kg_year', 0.0, 'kg year', 'number',
          'exposure of the reach curve [kg year]; 0: no reach computed'),
        F('q_threshold', 1, 'electrons', 'integer',
          'lowest charge bin counted in the reach [electrons]'),
        F('q_max', None, 'electrons', ['integer', 'null'],
          'highest charge bin counted [electrons]; null: all'),
        F('n_events', None, 'events', ['number', 'null'],
          'background-free events defining the reach [events]; null: 3'),
        F('observed_counts', None, 'events', ['array', 'null'],
          'observed events in Q = 1, 2, ...: a Poisson upper limit instead of the reach [events]'),
        F('cl', 0.95, 'fraction', 'number',
          'confidence level of the Poisson limit [fraction]'),
        F('limit_mode', 'combined', 'name', 'string',
          'Poisson limit from the summed counts, or the most constraining single Q bin [name]'),
        F('reach_mass_min_mev', 0.5, 'MeV', 'number',
          'lowest mass of the reach curve [MeV]'),
        F('reach_mass_max_mev', 1000.0, 'MeV', 'number',
          'highest mass of the reach curve [MeV]'),
        F('reach_n_masses', 50, 'count', 'integer',
          'log-spaced masses of the reach curve [count]'),
        F('uncertainty_samples', 0, 'count', 'integer',
          "Monte Carlo samples over halo parameters (v0 +-10, v_esc +-30, v_E +-10 km/s, rho +-0.1 GeV/cm^3, Gaussian) for 68%/95% bands; seed = the job's seed; 0: none [count]"),
        F('systematic_tables', [], 'paths', 'array',
          'further tables of the same material (other basis/functional/mesh) sampled in the Monte Carlo for the DFT systematic [paths]'),
    ]),
    'nuclear': _section('nuclear', [
        F('targets', ['Xe', 'Ar', 'Ge'], 'names', 'array',
          'target elements or compounds (compounds by mass fraction, natural isotopic masses) [names]'),
        F('masses_gev', [10.0, 50.0, 100.0], 'GeV', 'array',
          'DM masses [GeV]'),
        F('model', 'wimp', 'name', 'string',
          'interaction: WIMP SI (sigma_n) or sterile-neutrino coherent scattering (weak charge) [name]'),
        F('sigma_n_cm2', 1e-45, 'cm^2', 'number',
          'WIMP-nucleon SI cross section [cm^2]'),
        F('coupling', 1.0, 'dimensionless', 'number',
          "sterile-neutrino coupling factor relative to an active Dirac neutrino's Z coupling squared (e.g. |U|^4) [dimensionless]"),
        F('halo', 'shm-2021', 'name', 'string',
          'halo model preset [name]'),
        F('e_min_kev', 0.5, 'keV', 'number',
          'lowest recoil energy of the spectrum [keV]'),
        F('e_max_kev', 100.0, 'keV', 'number',
          'highest recoil energy of the spectrum [keV]'),
        F('n_energies', 200, 'count', 'integer',
          'linearly spaced recoil energies [count]'),
    ]),
    'oracle': _section('oracle', [
        F('structures', '', 'path', 'string',
          'extxyz file of candidate structures [path] (relative to the job file); empty: generate candidates from each material (see generate)'),
        F('pw', '/usr/bin/pw.x', 'path', 'string',
          'absolute path of the pw.x executable (checked: exists, regular file, executable) [path]'),
        F('pw_search_path', False, '0', 'boolean',
          'allow a bare program name in pw / mpi_prefix[0] to be looked up on PATH [flag]'),
        F('mpi_prefix', [], '"/usr/bin/mpirun", "-n", "2"', 'array',
          'command prefix for pw.x itself, e.g. ["/usr/bin/mpirun", "-n", "2"] (first element must be an absolute path); leave empty when the batch runs under mpiexec [argv list]'),
        F('pseudo_dir', '/usr/share/espresso/pseudo', 'path', 'string',
          'directory of UPF pseudopotential files [path]'),
        F('pseudopotentials', {}, 'file names', 'object',
          'UPF file name per element, e.g. {Si: Si.pbe-rrkj.UPF}; an element not listed takes the first <El>.<functional_tag>*.UPF in pseudo_dir, norm-conserving preferred [file names]'),
        F('functional_tag', 'pbe', 'text', 'string',
          'functional tag used to pick UPF files for elements not in pseudopotentials [text]'),
        F('ecutwfc', 30.0, 'Ry', 'number',
          'plane-wave cutoff of the wavefunctions [Ry]'),
        F('ecutrho', 0.0, 'Ry', 'number',
          'cutoff of the charge density [Ry]; 0 means 4 * ecutwfc (norm-conserving pseudopotentials)'),
        F('kspacing', 0.3, '1/angstrom, 2*pi included', 'number',
          'k-point spacing [1/angstrom, 2*pi included]: n_i = ceil(2 pi |b_i| / kspacing)'),
        F('conv_thr_per_atom', 1e-09, 'Ry/atom', 'number',
          'SCF convergence threshold per atom [Ry/atom]; conv_thr = value * natoms'),
        F('mixing_beta', 0.7, 'dimensionless', 'number',
          'initial charge-density mixing factor [dimensionless]; the correction ladder lowers it 0.7 -> 0.3 -> 0.1'),
        F('mixing_mode', 'plain', 'pw.x keyword', 'string',
          'initial charge-density mixing mode [pw.x keyword]'),
        F('diagonalization', 'david', 'pw.x keyword', 'string',
          'initial diagonalization algorithm; the ladder goes david -> ppcg -> cg [pw.x keyword]'),
        F('electron_maxstep', 100, 'count', 'integer',
          'maximum SCF iterations per attempt [count]; the ladder doubles it up to 800'),
        F('occupations', 'fixed', 'pw.x keyword', 'string',
          'initial occupations [pw.x keyword]'),
        F('smearing', 'marzari-vanderbilt', 'pw.x keyword', 'string',
          'smearing kind when occupations = smearing [pw.x keyword]'),
        F('degauss', 0.01, 'Ry', 'number',
          'smearing width when occupations = smearing [Ry]'),
        F('allow_smearing_correction', True, 'flag', 'boolean',
          'let the ladder switch smearing on / raise degauss (changes the energy functional slightly; recorded in the attempt log) [flag]'),
        F('extra_parameters', {}, 'pw.x units: Ry, bohr', 'object',
          'further pw.x namelist values by section, e.g. {system: {nspin: 1}} [pw.x units: Ry, bohr]; calculation, tprnfor, tstress, outdir and prefix cannot be overridden'),
        F('timeout_s', 3600.0, 's', 'number',
          "wall-clock limit of one pw.x attempt [s]; pw.x's max_seconds is set to 90 % of it; 0 disables"),
        F('max_attempts', 6, 'count', 'integer',
          'pw.x launches per candidate, corrections included [count]'),
        F('min_distance_angstrom', 0.5, 'angstrom', 'number',
          'candidates with two atoms (periodic images included) closer than this fail at once as impossible_structure [angstrom]'),
        F('omp_num_threads', 1, 'threads', 'integer',
          'OMP_NUM_THREADS given to pw.x [threads]'),
        F('keep_scratch', False, 'flag', 'boolean',
          "keep pw.x's outdir (wavefunctions, charge density) of every attempt; pw.in/pw.out/pw.err/CRASH are always kept [flag]"),
        F('retry_failed', False, 'flag', 'boolean',
          'on restart, run again the candidates whose checkpoint says failed [flag]'),
        F('generate', {}, 'object', 'object',
          "candidates generated from each material's primitive cell [object] when structures is empty (deterministic for the job seed)"),
    ]),
    'telemetry': _section('job file: telemetry section', [
        F('price_per_core_hour_usd', 0.05, 'USD', 'number',
          'price of one core-hour [USD]; cost of a unit = max(wall_seconds * cores, cpu_seconds) / 3600 * price'),
        F('cores_per_rank', 0, 'cores', 'integer',
          'cores allocated to each rank, used in the cost [cores]; 0 = SLURM_CPUS_PER_TASK or 1'),
        F('encrypt', False, 'flag', 'boolean',
          'AES-256-GCM-encrypt every telemetry line (random 96-bit nonce per line) with the key in $DMCA_TELEMETRY_KEY [flag]'),
        F('step', 'run', 'label', 'string',
          "DMCA 'step' field copied into every record [label]"),
        F('intervention', 'baseline', 'label', 'string',
          "DMCA 'intervention' field copied into every record [label]"),
        F('job_id', None, 'label', ['string', 'null'],
          "hpc.job_id written into every telemetry record [label]; null = SLURM_JOB_ID, else the job name (an id YAML reads as a number needs quotes: '12345')"),
        F('shared_file', '', 'file name', 'string',
          'file name shared by all writers of the telemetry directory (e.g. SLURM array tasks) [file name]; empty = one rank-NNNNN.jsonl per rank, merged into telemetry.jsonl at the end'),
        F('fti_max', 1.05, 'dimensionless', 'number',
          'largest acceptable stage FTI for the collector gate [dimensionless]; 1.05 is the WARN/FAIL boundary'),
        F('fti_baseline', {}, 'USD per successful unit', 'object',
          'per-stage FTI baseline {stage: {cost_per_ok_unit_usd [USD per successful unit], latency_p50_ms [ms]}}; stages not listed use the run itself as baseline'),
        F('lambda_effective', {'lambda_current': 0.85, 'sibg_beta': 0.33, 'fti_ref': 1.0, 'sibg_min': 0.7, 'sibg_max': 0.98, 'asdpi_lambda0': 0.1, 'asdpi_alpha': 0.5, 'deploy_rate': 6.0, 'deploy_rate_ref': 12.0, 'asdpi_min': 0.03, 'asdpi_max': 0.25, 'days_since_change': None}, 'dimensionless', 'object',
          "parameters of the DMCA evolution rate lambda_effective = lambda_SIBG * exp(-lambda_ASDPI * days_since_change) in the collector report [dimensionless]; lambda_SIBG = clamp(lambda_current + sibg_beta * (fti_avg / fti_ref - 1), sibg_min, sibg_max) is the learning pressure from the FTI, lambda_ASDPI = clamp(asdpi_lambda0 + asdpi_alpha * (deploy_rate_ref / deploy_rate - 1), asdpi_min, asdpi_max) [1/day] the deployment damping; days_since_change null = measured from the telemetry (7 without timestamps); defaults are the original DMCA collector's"),
    ]),
    'slurm': _section('slurm: how `dmca-hpc submit` asks SLURM for resources', [
        F('job_name', 'dmca-hpc', 'name', 'string',
          'SLURM job name (--job-name) [name]; letters, digits, . _ - only.'),
        F('partition', '', 'name', 'string',
          "SLURM partition (--partition) [name]; empty string = the cluster's default partition."),
        F('account', '', 'name', 'string',
          "account charged for the core-hours (--account) [name]; empty = the user's default account."),
        F('qos', '', 'name', 'string',
          'quality of service (--qos) [name]; empty = the default QOS.'),
        F('nodes', 1, 'count', 'integer',
          'number of nodes (--nodes) [count].'),
        F('ntasks', 1, 'count', 'integer',
          'MPI ranks in total (--ntasks) [count]; one rank per core is the usual choice.'),
        F('cpus_per_task', 1, 'count', 'integer',
          'cores per MPI rank (--cpus-per-task) [count]; also sets OMP/NUMBA/OPENBLAS threads per rank.'),
        F('mem_per_cpu_mb', 0, 'MiB', 'integer',
          "memory per core (--mem-per-cpu) [MiB]; 0 = the partition's default."),
        F('time', '01:00:00', 'D-', 'string',
          'wall-time limit (--time) as [D-]HH:MM:SS [time].'),
        F('signal_before_s', 300, 's', 'integer',
          'seconds before the wall-time limit at which the batch shell receives SIGUSR1 (--signal=B:USR1@N) [s]: the run checkpoints and the job requeues itself. Must exceed the longest unit of work.'),
        F('requeue', True, 'flag', 'boolean',
          'requeue the job (scontrol requeue) when the run exits with code 99 (checkpointed) [flag].'),
        F('max_requeues', 5, 'count', 'integer',
          'stop requeueing after this many restarts (SLURM_RESTART_COUNT) [count], so a run that never progresses cannot loop forever.'),
        F('launcher', 'mpiexec', 'choice', 'string',
          "how ranks start: 'mpiexec' = the MPI installed with the package (or the host MPI for containers), 'srun' = srun --mpi=<srun_mpi>, 'none' = one process [choice]."),
        F('srun_mpi', 'pmi2', 'name', 'string',
          "srun --mpi plugin when launcher is 'srun' [name]; pmi2 works with the MPICH wheel."),
        F('mpiexec', '', 'path', 'string',
          "path of mpiexec when launcher is 'mpiexec' [path]; empty = the one next to the submitting Python, else mpiexec on PATH."),
        F('container', '', 'path', 'string',
          'Apptainer image (.sif) to run dmca-hpc in (hybrid MPI: host launcher, container ranks) [path]; empty = run the installed package.'),
        F('container_bind', [], ':dst', 'array',
          "extra Apptainer --bind specs (src[:dst]) [paths]; the output directory and the job file's directory are always bound."),
        F('array', '', 'indices', 'string',
          "job-array index spec (--array, e.g. '0-2%2') for the array template [indices]; empty = one task per item."),
        F('array_items', [], 'labels', 'array',
          "items of the array template, one per task (e.g. DM masses as strings, in MeV) [labels]; empty = the job file's materials."),
        F('array_option', '--material', 'option name', 'string',
          "option of `dmca-hpc run` that receives each array task's item [option name], e.g. --material or --mass-mev."),
        F('setup', [], 'shell', 'array',
          "shell lines run before the job (e.g. 'module load mpich') [shell]."),
        F('extra_sbatch', [], 'options', 'array',
          "extra sbatch options passed verbatim (e.g. '--constraint=avx2') [options]."),
    ]),
}


class SettingsError(ValueError):
    """A job section with a key the model does not know (message names it)."""


def defaults(section: str) -> dict:
    """A fresh dict of every field of ``section`` at its default."""
    return {f.name: copy.deepcopy(f.default) for f in SECTIONS[section].fields}


def with_defaults(section: str, values: dict | None, error: type = SettingsError) -> dict:
    """``values`` over the defaults of ``section``; an unknown key raises
    ``error`` naming the section, the key and the allowed keys."""
    values = dict(values or {})
    known = SECTIONS[section].keys()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise error(f"{section}: unknown key(s) {unknown}; expected a subset of {sorted(known)}")
    out = defaults(section)
    out.update(values)
    return out


def field(dotted: str) -> Field:
    """The field of a dotted job key (``"dft.basis"``); KeyError if unknown."""
    sec, _, key = dotted.partition(".")
    if not key:
        for f in TOP_LEVEL:
            if f.name == sec:
                return f
        raise KeyError(dotted)
    return SECTIONS[sec].field(key)


def reference_markdown(sections=None) -> str:
    """The job-key reference (a Markdown table per section) of the README;
    ``sections``: names to include (default all)."""
    out = []
    for name, sec in SECTIONS.items():
        if sections is not None and name not in sections:
            continue
        out.append(f"### `{name}:` {sec.title.split(':', 1)[-1].strip()}\n")
        out.append("| key | default | unit | meaning |")
        out.append("|---|---|---|---|")
        for f in sec.fields:
            doc = f.doc.replace("|", "\\|").replace(f" [{f.unit}]", "").replace("  ", " ").strip()
            default = "null" if f.default is None else repr(f.default).replace("'", "")
            out.append(f"| `{f.name}` | `{default}` | {f.unit} | {doc} |")
        out.append("")
    return "\n".join(out)
