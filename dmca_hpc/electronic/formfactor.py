"""Crystal form factor |f_crystal(q, E)|^2 from the bands stage (issue 4).

Definition and normalization (shared/design/physics.md, QCDark convention):

    f2[a, b] = (2 pi^2 / (alpha m_e^2 V_cell)) * (q_a / (dq dE))
               * sum_{k, k'} w_k w_k' sum_{i in val, i' in cond}
                 sum_{G: |k'-k+G| in bin a, E_i'k' - E_ik in bin b} |M_i'i(k', k, G)|^2

with ``M = <i'k'| exp(i(k'-k+G).r) |ik>`` (dmca_hpc.electronic.matrix_elements, FFT
route), w = 1/N_k, bin centres ``q_a = (a+1/2) dq`` [alpha m_e] and ``E_b =
(b+1/2) dE`` [eV]; bins hold ``a dq <= |q| < (a+1) dq``; f2 is dimensionless.
Spin is not summed (spatial orbitals, as QCDark and QEdark do).

Scissor: the transition energies are shifted by ``Delta = gap_target -
gap_DFT`` (indirect DFT gap over the mesh).  QCDark ("qcdark") shifts only the
conduction bands and puts the VBM at 0, QEdark ("qedark") moves valence down
and conduction up by Delta/2 each: both give the same transition energies, so
the table is the same; the scheme is recorded in the output.  "none" keeps
the DFT gap.  The default target is the material's scissor gap
(dmca_hpc.materials), or ``formfactor.gap_ev``.

Symmetry (why k may run over the irreducible wedge only): let S be an
operation of the crystal's space group {S|tau} (or time reversal).  The
Bloch states at Sk are, up to a unitary rotation within each degenerate set,
``psi_n,Sk(r) = psi_nk(S^-1 (r - tau))`` with ``E_n,Sk = E_nk``.  Substituting
``r -> S r + tau`` in M shows ``M_i'i(Sk', Sk, SG) = exp(i S(q).tau)
M_i'i(k', k, G)`` with ``q = k'-k+G``: the phase drops out of |M|^2, the
unitary rotations drop out of the sum over the degenerate bands, ``|Sq| =
|q|`` and the energies are unchanged.  Since the full Gamma-centred mesh of
k' and the set of G are closed under S, the inner sum over (k', G, i, i')
binned by (|q|, E) is the same for k and Sk.  (Time reversal maps M to its
complex conjugate at (-k', -k, -G).)  Hence the double sum over the full
mesh equals the sum over the irreducible k with weight ``w_ibz(k)`` (number
of star members / N_k) against all k' with 1/N_k.  This cuts the work by
about the order of the point group (8 -> 3 pairs' rows for 2x2x2 Si, 216 ->
16 for 6x6x6); ``use_symmetry: false`` runs the full double sum, and
tests/test_formfactor.py shows the two agree.

Work units, parallelism, checkpoints: a unit is one irreducible k against a
block of ``kprime_block`` consecutive k' of the full mesh; units are dealt by
dynamic dispatch (dmca_hpc.hpc.parallel.map_units).  Each unit writes its partial
(unnormalized) table to a checkpoint file (``units/unit-NNNNNNN.h5``, gzip);
rank 0 sums the unit tables in unit-index order from the checkpoints, so the
result is bitwise the same for any rank count and after a kill and restart
(finished units are not recomputed).

Memory per rank: at most the valence u of one k, the conduction u of one k',
one batch of products of the FFT grid (see
:meth:`dmca_hpc.electronic.matrix_elements.GridEngine.memory_bytes`), the bands' AO
coefficients and one [nq, nE] float64 table (4 MB at the defaults).
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np

from dmca_hpc import units as U

STAGE = "formfactor"

class FormFactorError(ValueError):
    """Bad input to the form-factor stage (message names the quantity)."""


def settings(section: dict | None) -> dict:
    """The job section with defaults applied and checked."""
    from dmca_hpc import settings as job_settings
    s = job_settings.with_defaults("formfactor", section, error=FormFactorError)
    for k in ("dq", "de", "q_max", "e_max"):
        if not (isinstance(s[k], (int, float)) and s[k] > 0):
            raise FormFactorError(f"formfactor.{k} must be a positive number, got {s[k]!r}")
    if s["route"] not in ("auto", "fft", "analytic"):
        raise FormFactorError(f"formfactor.route must be 'auto', 'fft' or 'analytic', got {s['route']!r}")
    if s["scissor"] not in ("qcdark", "qedark", "none"):
        raise FormFactorError(f"formfactor.scissor must be 'qcdark', 'qedark' or 'none', "
                              f"got {s['scissor']!r}")
    if int(s["kprime_block"]) < 1:
        raise FormFactorError(f"formfactor.kprime_block must be >= 1, got {s['kprime_block']!r}")
    return s


def choose_route(cell, s: dict) -> str:
    """The matrix-element route: ``formfactor.route`` when it is ``fft`` or
    ``analytic``; ``auto``: FFT for GTH bases (every element has a
    pseudopotential: the products are smooth and one FFT per band pair gives
    every G), analytic for all-electron bases, whose core shells would need an
    FFT grid of thousands of points per axis."""
    route = s.get("route", "auto")
    if route in ("fft", "analytic"):
        return route
    from dmca_hpc.electronic.scf import all_pseudo
    return "fft" if all_pseudo(cell) else "analytic"


def table_shape(s: dict) -> tuple[int, int]:
    """(nq, nE): number of bins covering (0, q_max] and (0, e_max]."""
    return int(round(s["q_max"] / s["dq"])), int(round(s["e_max"] / s["de"]))


def prefactor(vcell_bohr3: float, dq: float, de: float, nq: int) -> np.ndarray:
    """[nq] factor ``2 pi^2 / (alpha m_e^2 V_cell) * q_a / (dq dE)`` that turns
    sum w w |M|^2 into f2 (dimensionless).  V_cell [eV^-3] = V [bohr^3] /
    (alpha m_e [eV])^3; ``q_a / dq = a + 1/2``; dE in eV."""
    vcell_ev3 = vcell_bohr3 / U.ALPHA_ME_EV ** 3
    qa_over_dq = np.arange(nq) + 0.5
    return 2 * math.pi ** 2 / (U.ALPHA * U.M_E_EV ** 2 * vcell_ev3) * qa_over_dq / de


def plan_units(bd, use_symmetry: bool, block: int) -> list[tuple[int, int, int, float]]:
    """Work units ``(k index, k' start, k' stop, w_k)``: k over the
    irreducible wedge with its weight (or the full mesh with 1/N_k)."""
    if use_symmetry:
        ks = [(int(i), float(w)) for i, w in zip(bd.ibz_index, bd.ibz_weight)]
    else:
        ks = [(i, 1.0 / bd.nk) for i in range(bd.nk)]
    return [(k, s, min(s + block, bd.nk), w) for k, w in ks for s in range(0, bd.nk, block)]


def check_bands(bd, material=None, job: dict | None = None):
    """Raise FormFactorError if the bands are for another material or mesh
    than the job asks for."""
    if material is not None and bd.material != material.name:
        raise FormFactorError(f"{bd.path}: bands file is for material {bd.material!r}, "
                              f"but the job's material is {material.name!r}")
    want = ((job or {}).get("bands") or {}).get("kmesh")
    if want is not None:
        want = tuple(int(x) for x in (want if isinstance(want, (list, tuple)) else [want] * 3))
        if tuple(bd.kmesh) != want:
            raise FormFactorError(f"{bd.path}: bands file has kmesh {list(bd.kmesh)}, but the "
                                  f"job's bands.kmesh is {list(want)}")


class Engine:
    """The form-factor computation for one bands file and one settings dict.

    Args:
        bd: :class:`dmca_hpc.electronic.bands.BandData`.
        s: settings (:func:`settings`).
        gap_target_ev: scissor target gap [eV] (ignored for scissor "none").
    """

    def __init__(self, bd, s: dict, gap_target_ev: float | None = None):
        from dmca_hpc.electronic.matrix_elements import GridEngine, choose_mesh
        self.bd, self.s = bd, s
        self.nq, self.ne = table_shape(s)
        cell = self.cell = bd.cell()
        self.route = choose_route(cell, s)
        self.mesh, self.grid_info, self.grid, self.analytic = None, {}, None, None
        if self.route == "fft":
            self.mesh, self.grid_info = choose_mesh(cell, s["q_max"], bd.kpts, s["precision"],
                                                    s["mesh"])
            if s["q_max"] > self.grid_info["G_prod"]:
                warnings.warn(f"formfactor.q_max = {s['q_max']} alpha m_e exceeds the Fourier "
                              f"bandwidth of the basis products ({self.grid_info['G_prod']:.2f} "
                              f"alpha m_e at precision {s['precision']:g}): the table is ~0 above it")
            self.grid = GridEngine(cell, self.mesh, self.grid_info["G_wf"])
        else:
            from dmca_hpc.electronic.ae_overlap import AnalyticEngine
            self.analytic = AnalyticEngine(cell, precision=float(s["precision"]))
        #: rotations (reciprocal basis) of the mesh for the analytic route's
        #: little-group reduction of the k set of each q (None: every k)
        self.rotations = None
        self._ksets: dict = {}
        if self.route == "analytic" and s["use_symmetry"]:
            from dmca_hpc.electronic.symmetry import cell_mesh_rotations
            self.rotations = cell_mesh_rotations(cell, bd.kmesh)
        self.nocc = bd.nocc
        nc_all = bd.nbands - bd.nocc
        nc = s["n_conduction"]
        if nc is not None and not 1 <= int(nc) <= nc_all:
            raise FormFactorError(f"formfactor.n_conduction = {nc} but the bands file has "
                                  f"{nc_all} conduction bands")
        self.ncond = nc_all if nc is None else int(nc)
        e_ev = bd.energies * U.HARTREE_EV
        self.vbm_ev = float(e_ev[:, :bd.nocc].max())
        self.cbm_ev = float(e_ev[:, bd.nocc].min())
        self.gap_dft_ev = self.cbm_ev - self.vbm_ev
        if s["scissor"] == "none" or gap_target_ev is None:
            if s["scissor"] != "none":
                raise FormFactorError("formfactor: no scissor target gap: set formfactor.gap_ev "
                                      "or a material with a scissor gap, or scissor: none")
            self.gap_ev = self.gap_dft_ev
        else:
            self.gap_ev = float(gap_target_ev)
        self.shift_ev = self.gap_ev - self.gap_dft_ev
        # highest E for which every valence state has all its final states computed
        top = e_ev[:, bd.nocc + self.ncond - 1].min()
        self.e_complete_ev = float(top - self.vbm_ev + self.shift_ev)
        if s["e_max"] > self.e_complete_ev:
            warnings.warn(
                f"formfactor.e_max = {s['e_max']} eV but the {self.ncond} conduction bands in "
                f"{bd.path} reach only {self.e_complete_ev:.2f} eV above the VBM at every k "
                f"(after scissor): too few conduction bands, the table is incomplete above "
                f"{self.e_complete_ev:.2f} eV (a larger basis reaches further: dft.basis)")
        self.e_ev = e_ev
        #: energies the transitions are binned at [eV]: every near-degenerate set
        #: at its mean (:func:`degenerate_mean`)
        self.e_bin_ev = degenerate_mean(e_ev)
        self.v0 = bd.nocc - valence_window(e_ev, bd.nocc, self.gap_ev, s["e_max"])
        self.nval = bd.nocc - self.v0
        self.batch = 1
        #: most k of one unit (the analytic route's little-group sets)
        self.unit_nk_max = bd.nk
        if self.rotations is not None:
            self.unit_nk_max = max(len(self.unit_kset(int(iq))[0]) for iq in bd.ibz_index)
        if self.route == "analytic":
            nc = self.analytic.nao_cart
            # AO batch of the analytic engine: nk * batch * nao_cart^2 complex, <= ~256 MiB
            self.batch = int(max(1, min(64, (256 * 2 ** 20) // (self.unit_nk_max * nc * nc * 16))))

    @property
    def memory_bound_mb(self) -> float:
        """Stated per-rank bound of the engine's large arrays [MiB]."""
        if self.route == "fft":
            b = self.grid.memory_bytes(self.bd.nao, self.nocc, self.ncond)
        else:
            b = self.analytic.memory_bytes(self.unit_nk_max, batch=self.batch, nbands=self.nval,
                                           nbands_p=self.ncond)
        b += self.bd.coeffs.nbytes + 8 * self.nq * self.ne
        return b / 2 ** 20

    def plan_units(self) -> list[tuple]:
        """Work units of the route: the FFT route's (k, k' start, k' stop, w_k)
        (k over the wedge against blocks of k'); the analytic route's
        (q index, 0, N_k, w_q): one irreducible q = k' - k (a mesh point) against
        every k of the mesh, so that one build of the lattice-summed tables
        serves all k (the binned |f|^2 depends only on |q + G| and E, so q may
        run over the wedge as k does: the same sum regrouped)."""
        if self.route == "fft":
            return plan_units(self.bd, self.s["use_symmetry"], int(self.s["kprime_block"]))
        bd = self.bd
        if self.s["use_symmetry"]:
            qs = [(int(i), float(w)) for i, w in zip(bd.ibz_index, bd.ibz_weight)]
        else:
            qs = [(i, 1.0 / bd.nk) for i in range(bd.nk)]
        return [(iq, 0, bd.nk, w) for iq, w in qs]

    def unit_kset(self, iq: int) -> tuple[np.ndarray, np.ndarray]:
        """(k indices, multiplicities) of the analytic route's unit for the mesh
        point q = ``iq``: with ``use_symmetry`` one k per orbit of the little
        group of q (closed under the engine's partner maps k -> -k-q and, for
        2q = 0, k -> -k; :func:`dmca_hpc.electronic.symmetry.pair_kset`), each
        weighted by its orbit's share; else every k with weight 1.  Exact for
        whole degenerate band sets, i.e. below ``e_complete_ev``."""
        if self.rotations is None:
            return np.arange(self.bd.nk), np.ones(self.bd.nk)
        if iq not in self._ksets:
            from dmca_hpc.electronic.symmetry import pair_kset
            self._ksets[iq] = pair_kset(self.rotations, self.bd.kmesh, iq)
        return self._ksets[iq]

    def unit_order(self, units) -> list[int] | None:
        """Dispatch order of ``units`` (indices): the analytic route's little-group
        units by decreasing k count (their cost: 29 to 132 k of 216 for Ge 6x6x6), so
        the dynamic schedule ends on short units; None (index order) otherwise."""
        if self.route != "analytic" or self.rotations is None:
            return None
        cost = [len(self.unit_kset(int(u[0]))[0]) for u in units]
        return sorted(range(len(units)), key=lambda i: (-cost[i], i))

    def _partner_index(self, iq: int) -> np.ndarray:
        """Mesh index of k + q for every k (q = the mesh point ``iq``)."""
        bd = self.bd
        n = np.asarray(bd.kmesh, int)
        frac = np.rint((bd.kpts_frac + bd.kpts_frac[iq]) * n).astype(int) % n
        return (frac[:, 0] * n[1] + frac[:, 1]) * n[2] + frac[:, 2]

    def transition_energies(self, k: int, kp: int) -> np.ndarray:
        """[nval, ncond] E_i'k' - E_ik + shift [eV]."""
        ev = self.e_bin_ev[k, :self.nocc]
        ec = self.e_bin_ev[kp, self.nocc:self.nocc + self.ncond]
        return ec[None, :] - ev[:, None] + self.shift_ev

    def compute_unit(self, unit) -> tuple[np.ndarray, dict]:
        """Partial table ``sum w_k w_k' |M|^2`` [nq, nE] (not yet multiplied
        by :func:`prefactor`) of one unit, and statistics."""
        if self.route == "analytic":
            return self._compute_unit_analytic(unit)
        from dmca_hpc.electronic.kernels import bin_pair, e_bins, q_bins
        k, kp0, kp1, wk = unit
        bd, s = self.bd, self.s
        table = np.zeros((self.nq, self.ne))
        uv = self.grid.u_on_grid(bd.kpts[k], bd.coeffs[k][:, :self.nocc])
        nsel_total = 0
        for kp in range(kp0, kp1):
            uc = self.grid.u_on_grid(bd.kpts[kp], bd.coeffs[kp][:, self.nocc:self.nocc + self.ncond])
            np.conjugate(uc, out=uc)  # once per k', not once per valence band
            qabs = np.linalg.norm(self.grid.Gv + (bd.kpts[kp] - bd.kpts[k]), axis=1)
            idx, qb = q_bins(qabs, s["dq"], self.nq)
            nsel_total += len(idx)
            eb = e_bins(self.transition_energies(k, kp), s["de"], self.ne)
            w = wk / bd.nk
            for i in range(self.nocc):
                if np.all(eb[i] < 0):
                    continue
                M = self.grid.pair_fft(uv[i], uc, conjugated=True)
                bin_pair(table, M, idx, qb, eb[i], w)
        return table, {"pairs": kp1 - kp0, "q_scan_points": nsel_total}

    def _compute_unit_analytic(self, unit) -> tuple[np.ndarray, dict]:
        """One irreducible q against every k: M(k, Q) for all Q = q + G with
        |Q| < q_max from :class:`dmca_hpc.electronic.ae_overlap.AnalyticEngine`,
        streamed in batches of Q and binned like the FFT route."""
        from dmca_hpc.electronic.ae_overlap import q_plus_g
        from dmca_hpc.electronic.kernels import bin_batch, e_bins, q_bins
        iq, k0, k1, wq = unit
        bd, s = self.bd, self.s
        ks, mult = self.unit_kset(iq)
        sub = (ks >= k0) & (ks < k1)
        ks, mult = ks[sub], mult[sub]
        kps = self._partner_index(iq)[ks]
        q = bd.kpts[iq]
        # every Q = q + G strictly inside the table (|Q| < nq dq)
        Qv, _ = q_plus_g(self.cell, q, self.nq * s["dq"])
        table = np.zeros((self.nq, self.ne))
        v0, v1, c1 = self.v0, self.nocc, self.nocc + self.ncond
        ck = bd.coeffs[ks][:, :, v0:v1]
        ckq = bd.coeffs[kps][:, :, v1:c1]
        # [nk, nv, nc] E bins of every transition
        eb = e_bins(self.e_bin_ev[kps, v1:c1][:, None, :] - self.e_bin_ev[ks, v0:v1][:, :, None]
                    + self.shift_ev, s["de"], self.ne)
        w = wq * mult / bd.nk
        nsel = 0
        for idx, M in self.analytic.iter_matrix_elements(bd.kpts[ks], Qv, ck, ckq,
                                                         batch=self.batch):
            sel, qb = q_bins(np.linalg.norm(Qv[idx], axis=1), s["dq"], self.nq)
            nsel += len(sel) * len(ks)
            bin_batch(table, M, sel, qb, eb, w)
        return table, {"pairs": len(ks), "q_scan_points": nsel}


#: bands closer than this are one (near-)degenerate set for the binning [eV]
DEGENERACY_TOL_EV = 1e-3


def valence_window(e_ev: np.ndarray, nocc: int, gap_ev: float, e_max_ev: float) -> int:
    """How many of the ``nocc`` occupied bands (the top ones) a transition below
    ``e_max_ev`` can start from, for band energies ``e_ev`` [nk, nbands] in eV and
    the (scissored) gap ``gap_ev`` [eV]: E_c - E_v >= gap + (VBM - E_v), so a band
    lying entirely more than e_max - gap below the VBM (a deep core shell) never
    does.  At least 1."""
    e = np.asarray(e_ev, dtype=float).reshape(-1, np.shape(e_ev)[-1])
    top_v = e[:, :nocc].max(axis=0)
    reach = top_v > top_v.max() + gap_ev - e_max_ev
    return int(nocc - np.argmax(reach)) if reach.any() else 1


def degenerate_mean(e_ev: np.ndarray, tol_ev: float = DEGENERACY_TOL_EV) -> np.ndarray:
    """Band energies [nk, nb] (ascending per k) [eV] with every run of bands whose
    neighbours lie within ``tol_ev`` replaced by the run's mean.

    Why: a symmetry-degenerate set that the DFT splits numerically (GDF with Becke
    grids: 1e-4 to 6e-4 eV in Ge and Si) is mixed differently at each k of an orbit
    (its states are rotations of one set); only the set's summed |M|^2 is invariant,
    so binning it at one energy makes the table independent of that mixing and of
    which orbit member represents it (the little-group reduction), where a bin edge
    between the split members would move up to 2% of a bin.  1e-3 eV is 1% of the
    default 0.1 eV bin."""
    e = np.array(e_ev, dtype=float, copy=True)
    for k in range(e.shape[0]):
        row = e[k]
        brk = np.r_[0, np.nonzero(np.diff(row) > tol_ev)[0] + 1, len(row)]
        for a, b in zip(brk[:-1], brk[1:]):
            if b - a > 1:
                row[a:b] = row[a:b].mean()
    return e


def check_memory(eng, comm=None, available_bytes: float | None = None) -> None:
    """Refuse, before any unit runs, a table whose per-rank engine arrays
    (:attr:`Engine.memory_bound_mb`, times the ranks of this node) exceed 80%
    of the machine's available memory; the message gives the numbers and the
    keys that lower them."""
    need = eng.memory_bound_mb * 2 ** 20
    nranks = comm.Get_size() if comm is not None else 1
    if available_bytes is None:
        import psutil
        available_bytes = float(psutil.virtual_memory().available)
    if need * nranks > 0.8 * available_bytes:
        raise FormFactorError(
            f"formfactor: the {eng.route} route needs about {need / 2**30:.3g} GiB per rank "
            f"({nranks} rank(s): {need * nranks / 2**30:.3g} GiB) for bands of "
            f"{eng.bd.nk} k x {eng.bd.nao} AOs and a {eng.nq} x {eng.ne} table, and this "
            f"machine has {available_bytes / 2**30:.3g} GiB available; lower formfactor.q_max "
            "/ e_max, the bands.kmesh, or use fewer ranks per node")


def check_estimate(bd, s: dict, comm=None, available_bytes: float | None = None) -> None:
    """Refuse from sizes alone (:func:`estimate_formfactor`, no grid allocated) a table
    whose engine would not fit, before :class:`Engine` allocates its arrays: for a
    huge ``q_max`` the FFT grid itself is what does not fit, and the constructor would
    die in a bare MemoryError before :func:`check_memory` could speak."""
    est = estimate_formfactor(bd.cell(), s, bd.kmesh, bd.nbands, bd.nocc, len(bd.ibz_index))
    need = est["memory_bytes"]
    nranks = comm.Get_size() if comm is not None else 1
    if available_bytes is None:
        import psutil
        available_bytes = float(psutil.virtual_memory().available)
    if need * nranks > 0.8 * available_bytes:
        grid = f", FFT grid {'x'.join(str(int(m)) for m in est['mesh'])}" if est["mesh"] is not None else ""
        raise FormFactorError(
            f"formfactor: the {est['route']} route would need about {need / 2**30:.3g} GiB per "
            f"rank ({nranks} rank(s): {need * nranks / 2**30:.3g} GiB{grid}) for bands of "
            f"{bd.nk} k x {bd.nao} AOs and a {est['nq']} x {est['ne']} "
            f"table, and this machine has {available_bytes / 2**30:.3g} GiB available; lower "
            "formfactor.q_max / e_max, the bands.kmesh, or use fewer ranks per node")


def _save_unit(store, index: int, table: np.ndarray, stats: dict):
    from dmca_hpc.hpc.checkpoint import atomic_h5, write_dataset
    with atomic_h5(store.path(index), input_hash=store.input_hash, stage=STAGE) as f:
        f.attrs["unit_index"] = index
        for k, v in stats.items():
            f.attrs[k] = v
        write_dataset(f, "partial", table, "1",
                      "sum over the unit's pairs of w_k w_k' |M|^2 binned in (q, E), "
                      "before the prefactor 2 pi^2/(alpha m_e^2 V_cell) q/(dq dE)",
                      compression="gzip", compression_opts=1, shuffle=True)


def compute_table(bd, s: dict, workdir, input_hash: str, comm=None, on_unit=None,
                  material_name: str | None = None, gap_target_ev: float | None = None,
                  progress: bool = True) -> dict | None:
    """Run the engine over all units (MPI-distributed, checkpointed).

    Called on every rank.  ``on_unit(result, unit_label, physics)`` is called
    for every finished unit (:class:`dmca_hpc.hpc.parallel.UnitResult`, a label
    ``k<i>:kp<a>-<b>``, a dict of physics figures: material, kpts,
    q_scan_points, form_factor_q0): the stage records it as telemetry.  Returns on rank 0 a dict with ``f2`` [nq, nE]
    (dimensionless), the :class:`Engine` and run statistics; None elsewhere.
    Raises RuntimeError (on every rank) if a unit failed; the finished units
    stay in the checkpoint and a rerun resumes.
    """
    from dmca_hpc.hpc.checkpoint import UnitStore
    from dmca_hpc.hpc.parallel import Progress, get_comm, map_units
    comm = comm or get_comm()
    rank = comm.Get_rank()
    check_estimate(bd, s, comm)
    with warnings.catch_warnings():
        if rank != 0:  # the same completeness warnings on every rank: say them once
            warnings.simplefilter("ignore")
        eng = Engine(bd, s, gap_target_ev)
    check_memory(eng, comm)
    units = eng.plan_units()
    unit_index = {u: i for i, u in enumerate(units)}
    store = UnitStore(Path(workdir) / "units", input_hash)
    done = store.done(len(units)) if rank == 0 else None
    done = comm.bcast(done, root=0)
    prog = (Progress(f"formfactor {bd.material}", len(units), comm=comm, done=len(done))
            if progress else None)
    t_files = time.time()

    def work(unit):
        i = unit_index[unit]  # units.index() was quadratic in the number of units
        table, stats = eng.compute_unit(unit)
        _save_unit(store, i, table, stats)
        stats["form_factor_q0"] = float(table[0].sum())
        return stats

    def hook(res):
        if on_unit is not None:
            st = res.value or {}
            on_unit(res, f"k{res.unit[0]}:kp{res.unit[1]}-{res.unit[2]}",
                    {"material": material_name or bd.material, "kpts": bd.nk,
                     "q_scan_points": st.get("q_scan_points"),
                     "form_factor_q0": st.get("form_factor_q0")})
        if prog is not None and rank == 0:  # every rank's units of this run (files)
            prog.update(len(done) + store.written_since(t_files, len(units)))

    t0 = time.perf_counter()
    results = map_units(work, units, comm=comm, schedule=s["schedule"], root_only=False,
                        on_result=hook, skip=done, order=eng.unit_order(units))
    wall = time.perf_counter() - t0
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"formfactor: {len(failed)} of {len(units)} units failed; first: "
                           f"unit {failed[0].unit}: {failed[0].error}\n{failed[0].traceback}")
    if rank != 0:
        return None
    acc = np.zeros((eng.nq, eng.ne))
    for i in range(len(units)):  # fixed order: same sum for any rank count
        arrays, _ = store.load(i)
        acc += arrays["partial"]
    f2 = acc * prefactor(float(bd.cell().vol), s["dq"], s["de"], eng.nq)[:, None]
    return {"f2": f2, "engine": eng, "n_units": len(units), "n_reused": len(done),
            "wall_s": wall, "unit_wall_s": [r.wall_s for r in results],
            "peak_mem_mb": max([r.peak_mem_mb for r in results], default=0.0)}


def make_table(bd, eng, f2: np.ndarray, s: dict, material=None, prov: dict | None = None):
    """A :class:`dmca_hpc.tables.FormFactorTable` with our metadata."""
    from dmca_hpc.electronic.scf import ecp_label
    from dmca_hpc.tables import FormFactorTable
    cell = bd.cell()
    if material is not None:
        mass = float(material.cell_mass_ev)
    else:
        mass = float(np.sum(cell.atom_mass_list(isotope_avg=True)) * U.AMU_EV)
    meta = {
        "material": bd.material, "kmesh": list(bd.kmesh), "n_k": bd.nk,
        "n_k_irreducible": int(len(bd.ibz_index)), "use_symmetry": bool(s["use_symmetry"]),
        "basis": bd.basis, "xc": bd.xc, "numval": int(eng.nocc), "numcon": int(eng.ncond),
        "nbands": int(bd.nbands), "scissor_scheme": s["scissor"],
        "gap_dft_ev": eng.gap_dft_ev, "gap_ev": eng.gap_ev, "scissor_shift_ev": eng.shift_ev,
        "vbm_dft_ev": eng.vbm_ev, "e_complete_ev": eng.e_complete_ev,
        "fft_mesh": list(eng.mesh) if eng.mesh is not None else [], "grid": eng.grid_info,
        "q_max_ame": s["q_max"], "route": eng.route, "precision": float(s["precision"]),
        # a def2 small-core ECP (I, Cs) keeps the semicore shells but is not all-electron
        "all_electron": not (getattr(cell, "_pseudo", None) or getattr(cell, "_ecp", None)),
        "ecp": ecp_label(cell),
        "q_complete_ame": float(s["q_max"] if eng.route == "analytic"
                                else min(s["q_max"], eng.grid_info.get("G_prod", s["q_max"]))),
        "valence_bands_used": [int(eng.v0), int(eng.nocc)],
        "e_max_ev": s["e_max"], "bands_file": str(bd.path),
        "a": (np.asarray(cell.lattice_vectors()) * U.BOHR_ANGSTROM).tolist(),
        "kpts": bd.kpts.tolist(), "atom": cell.atom if isinstance(cell.atom, str) else str(cell.atom),
        "units": {"kpts": "bohr^-1", "a": "angstrom", "gap_dft_ev": "eV", "gap_ev": "eV",
                  "scissor_shift_ev": "eV", "vbm_dft_ev": "eV", "e_complete_ev": "eV",
                  "q_max_ame": "alpha*m_e", "e_max_ev": "eV", "grid": "bohr^-1 (G_*, nyquist*)",
                  "q_complete_ame": "alpha*m_e"},
        "method": ("FFT of cell-periodic products (dmca_hpc.electronic.matrix_elements)"
                   if eng.route == "fft" else
                   "analytic Gaussian plane-wave overlaps, lattice sum per axis "
                   "(dmca_hpc.electronic.ae_overlap)"),
    }
    if prov is not None:
        meta["provenance"] = prov
    return FormFactorTable(f2=f2, dq_ame=s["dq"], de_ev=s["de"],
                           vcell_ev3=float(cell.vol) / U.ALPHA_ME_EV ** 3, cell_mass_ev=mass,
                           gap_ev=eng.gap_ev, scissor=(s["scissor"] if s["scissor"] != "none" else False),
                           material=bd.material, metadata=meta)


def bethe_sum_ratio(bd, n_conduction_list, n_shells: int = 3, q_limit: float = 3.0,
                    q_targets=None, route: str = "auto", precision: float = 1e-8) -> dict:
    """Bethe f-sum ratio at q = G (k' = k) for shells of reciprocal lattice vectors:

        R(|G|) = (1/N_k) sum_k sum_{i val} sum_{f cond, f < n_c}
                 (E_fk - E_ik) |<fk| e^{iG.r} |ik>|^2 / (N_val |G|^2 / 2)

    averaged over the shell (+G and -G, so valence-valence terms, which
    cancel in the pair (q, -q), are not needed); hartree atomic units,
    N_val = doubly occupied orbitals per cell that the sum starts from (the
    valence bands of the form factor: for an all-electron basis the core
    bands below the table's reach are left out of both sides).  For a complete
    set (and a local potential) R = 1; with a finite basis R < 1, rising with
    n_c.  Shells: the first ``n_shells`` below ``q_limit`` [alpha m_e], or the
    shell nearest to each of ``q_targets``.  ``route``: ``fft``, ``analytic``
    or ``auto`` (as :func:`choose_route`).  Returns ``{n_c: {|G|: R}}``."""
    cell = bd.cell()
    route = choose_route(cell, {"route": route})
    nmax = max(n_conduction_list)
    b = np.asarray(cell.reciprocal_vectors())
    gmax = max(list(q_targets or []) + [q_limit]) * 1.05 + 1.0
    n = int(np.ceil(gmax / np.linalg.norm(b, axis=1).min())) + 1
    r = np.arange(-n, n + 1)
    G = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3) @ b
    g = np.linalg.norm(G, axis=1)
    uniq = np.unique(np.round(g[g > 1e-9], 6))
    if q_targets:
        picks = sorted({float(uniq[np.argmin(np.abs(uniq - q))]) for q in q_targets})
    else:
        picks = [float(x) for x in uniq[uniq < q_limit][:n_shells]]
    shells = {q: G[np.abs(g - q) < 1e-5] for q in picks}
    e_ev = bd.energies * U.HARTREE_EV
    vbm = e_ev[:, :bd.nocc].max()
    # valence bands: the top ones (a GTH basis: all; all-electron: above the deep core)
    v0 = 0 if route == "fft" else int(np.argmax(e_ev[:, :bd.nocc].max(axis=0) > vbm - 60.0))
    nval = bd.nocc - v0
    acc = {nc: {q: 0.0 for q in shells} for nc in n_conduction_list}
    if route == "fft":
        from dmca_hpc.electronic.matrix_elements import GridEngine, choose_mesh
        mesh, info = choose_mesh(cell, gmax, bd.kpts)
        eng = GridEngine(cell, mesh, info["G_wf"])
        gidx = {q: np.array([int(np.argmin(np.linalg.norm(eng.Gv - v, axis=1))) for v in Gs])
                for q, Gs in shells.items()}
    else:
        from dmca_hpc.electronic.ae_overlap import AnalyticEngine
        ana = AnalyticEngine(cell, precision=precision)
    for k in range(bd.nk):
        e = bd.energies[k]
        de = e[bd.nocc:bd.nocc + nmax][None, :] - e[v0:bd.nocc][:, None]  # [nval, nmax]
        for q, Gs in shells.items():
            if route == "fft":
                u = eng.u_on_grid(bd.kpts[k], bd.coeffs[k][:, v0:bd.nocc + nmax])
                m2 = np.stack([np.abs(eng.pair_fft(u[i], u[nval:nval + nmax])[:, gidx[q]]) ** 2
                               for i in range(nval)])            # [nval, nmax, nG]
            else:
                M = ana.matrix_elements(bd.kpts[k:k + 1], Gs, bd.coeffs[k:k + 1, :, v0:bd.nocc],
                                        bd.coeffs[k:k + 1, :, bd.nocc:bd.nocc + nmax])[0]
                m2 = np.abs(M.transpose(2, 1, 0)) ** 2              # [nval, nmax, nG]
            for nc in n_conduction_list:
                acc[nc][q] += (de[:, :nc, None] * m2[:, :nc]).sum() / len(Gs) / bd.nk
    return {nc: {q: v / (nval * q ** 2 / 2) for q, v in d.items()} for nc, d in acc.items()}


# --------------------------------------------------------------------------- resource estimate
# Used by the run's preflight (dmca_hpc.stages.preflight) before the bands exist: the same
# arithmetic as Engine.memory_bound_mb / check_memory from sizes only, no grid allocated.

#: FFT route wall time per (k, k') pair [s] = FF_S_PER_POINT ngrid log2(ngrid)
#: (nocc ncond + ncond + 2 nocc): fitted to benchmarks/formfactor_results.json (Si
#: gth-dzvp, 40^3 grid, 4 x 22 bands: 0.163 s per pair; at 54^3: 0.50 s, model 0.43 s);
#: the quickstart (gth-szv, 40^3, 4 x 4: 0.037 s per pair measured) gives 0.039 s
FF_S_PER_POINT = 1.35e-9
#: analytic route time per (k, Q) [s, one thread] = FF_ANALYTIC_S_PER_AO W_AO +
#: FF_ANALYTIC_S_PER_MO W_MO: W_AO the AO build's complex multiply-adds per (k, Q)
#: (:func:`analytic_ao_work`: screened Cartesian primitive-pair products, the nao_c^2
#: elements, the unit's 1D tables; half the first two for units with 2q in the reciprocal
#: lattice), W_MO = nao_c^2 nval + nao_c nval ncond (the MO transform's two GEMMs; the
#: binning rides on it).  Least-squares fit (relative residuals) of CPU time by
#: benchmarks/fit_analytic_time.py (benchmarks/analytic_time_fit.json): one thread, 6x6x6
#: mesh, units of 29 to 216 k, ~800 Q of |Q| <= 20 per case plus the whole sphere's tables,
#: C / Si / Ge def2-svp, C cc-pVDZ and def2-TZVP, Si GTH-DZVP, 14 rows: model / measured
#: 0.93 to 1.07.  Production units (6x6x6, 216 k, q <= 20, loaded cores), estimate over
#: CPU (wall) time: C def2-svp 0.92 (0.41), Ge def2-svp 1.37 (1.03; with nocc 32 for the
#: 14 valence bands the 50 eV window reaches: 1.06 with those); the W_MO-only model
#: before (11.8 us per (k, Q) of Si def2-svp): C 0.20 (0.09), Ge 0.94 (0.71)
FF_ANALYTIC_S_PER_AO = 5.39e-9
FF_ANALYTIC_S_PER_MO = 0.218e-9
#: a partial table's checkpoint (gzip level 1, shuffle): 6144 B of file, ~0.09 B per
#: (q, E) bin for the runs of zeros and their chunk index, ~24 B per populated bin (an
#: isolated double costs a literal and a match in each of its 8 shuffled byte planes);
#: each q bin of a unit holds about nocc x ncond populated E bins (one k' reaches it with
#: its nocc ncond transitions).  Measured on the quickstart (500 x 500 bins, 4 x 4 bands):
#: 225 kB per file, model 220 kB; never more than the uncompressed table
FF_ZERO_BIN_BYTES = 0.09
FF_POPULATED_BIN_BYTES = 24.0


def corner_kpts(cell, kmesh) -> np.ndarray:
    """[8, 3] cartesian k [bohr^-1] of the corners of the Gamma-centred mesh's box
    (fractions 0 and (n-1)/n): :func:`dmca_hpc.electronic.matrix_elements.choose_mesh`
    needs only max|k' - k| and max|k| of the mesh, both reached at corners (the norm is
    convex), so it chooses the same grid from these 8 points as from the whole mesh."""
    n = np.asarray([int(x) for x in kmesh], dtype=float)
    top = (n - 1) / n
    frac = np.array([[i * top[0], j * top[1], l * top[2]]
                     for i in (0, 1) for j in (0, 1) for l in (0, 1)])
    return np.asarray(cell.get_abs_kpts(frac), float)


def unit_k_counts(cell, kmesh) -> list[int]:
    """k per unit of the analytic route with ``use_symmetry`` (one unit per
    irreducible q; :func:`dmca_hpc.electronic.symmetry.pair_kset`), from the
    cell and the mesh alone."""
    from dmca_hpc.electronic import symmetry
    rots = symmetry.cell_mesh_rotations(cell, kmesh)
    ir = symmetry.irreducible_mesh(symmetry.atoms_from_cell(cell), kmesh)
    return [len(symmetry.pair_kset(rots, kmesh, int(iq))[0]) for iq in ir.ibz_index]


def n_q_plus_g(cell, q_max: float) -> float:
    """Expected number of Q = q + G with |Q| <= q_max [alpha m_e] for one q: the
    sphere's volume over the Brillouin zone's, (4/3) pi q_max^3 V_cell / (2 pi)^3."""
    return 4.0 / 3.0 * math.pi * q_max ** 3 * float(cell.vol) / (2 * math.pi) ** 3


def analytic_ao_work(ana, q_max: float) -> dict:
    """AO-build work per (k, Q) of ``ana`` (an
    :class:`dmca_hpc.electronic.ae_overlap.AnalyticEngine`) over the Q of a sphere
    ``|Q| < q_max`` [alpha m_e], counted from the engine's pair data without evaluating.

    The counts are complex multiply-adds over the (k, character) columns of the
    factorized kernels, per (k, Q) (dimensionless):

    ``products``: the kernel's inner loop, ``D ncart_a ncart_b`` per primitive pair
    with images beyond its home cell (the home-only pairs are k independent: a share
    1/n_k of this), of shell pairs I <= J (the transpose relation holds for every
    unit's k set), times the share of the sphere's Q at which the pair survives the
    screening; a general contraction adds only real multiply-adds on each product
    (C cc-pVDZ's two-contraction s shell: about one product per pair, measured).  The
    screening keeps a pair while ``c_ab (pi/p)^(3/2) exp(-mu X^2) exp(-|Q|^2/4p)
    poly(|Q|) >= eps`` (X: its nearest grid image per direction, as the tabulated
    maxima see it), i.e. below a |Q|_cut of its own; the share is ``min(1, (|Q|_cut /
    q_max)^3)``.  Against the kernel's own count on the whole sphere at q_max 20: 2-4 %
    low for C, Si, Ge def2-svp, C cc-pVDZ and def2-TZVP, 15 % for Si GTH-DZVP (its
    diffuse pairs' image sums; products are a fifth of its W_AO).
    ``elements``: ``nao_c^2``: every element of S(k, Q) is zeroed, summed over the
    characters and stored once per (k, Q).
    ``tables``: the 1D tables built once per unit, ``D (l_a+1)(l_b+1) sum_d
    n_images,d n_Qd`` per extended pair, over the sphere's ``n_q_plus_g`` Q;
    ``n_Qd = 2 q_max / dG_d + 1`` distinct Q components per direction (dG_d: the
    spacing of the reciprocal lattice's d components).

    The direct lattice sum (non-orthorhombic lattices) counts ``products`` per
    (pair, image), every ordered pair, and no tables: not fitted; on Si def2-svp
    (4x4x4 k, |Q| <= 10) it measured 0.75 of FF_ANALYTIC_S_PER_AO per count, so its
    estimate is ~30 % high.  Returns the three counts, ``ao`` (their sum) and
    ``n_qd``."""
    B = ana.basis
    ncart = (B.l + 1) * (B.l + 2) // 2
    if ana.lattice_sum == "factorized":
        h, N, g = ana.grid
        keep = ana._fkeep
        pa, pb = ana._pa[keep], ana._pb[keep]
        ext = (B.shell[pa] <= B.shell[pb]) & ~ana._local
        # the tabulated maximum of direction d is reached at its nearest grid image
        X0 = B.coord[pa] - B.coord[pb]
        m = np.clip(np.rint(X0 / h), ana._mlo, ana._mhi)
        X2 = ((X0 - m * h) ** 2).sum(axis=1)
        nimg = (ana._mhi - ana._mlo + 1).astype(float)
        D = float(len(g))
        # d components of G = n @ b with b = 2 pi inv(N)^T diag(1/h): multiples of
        # 2 pi gcd_j(D inv(N)[d, j]) / (D h_d)
        Ninv = np.rint(np.linalg.inv(N.astype(float)) * len(g)).astype(np.int64)
        dG = np.array([2 * math.pi * math.gcd(*[abs(int(x)) for x in Ninv[d]]) / (len(g) * h[d])
                       for d in range(3)])
        n_qd = 2 * q_max / dG + 1
        sel = np.nonzero(ext)[0]
    else:
        keep = ana._dkeep
        cnt = ana._img1 - ana._img0
        pair = np.repeat(np.arange(len(keep)), cnt)
        pa, pb = ana._pa[keep][pair], ana._pb[keep][pair]
        T = ana._Ls[ana._img_index]
        X2 = ((B.coord[pa] - B.coord[pb] - T) ** 2).sum(axis=1)
        D = 1.0
        n_qd = np.zeros(3)
        sel = np.arange(len(pa))
    a, b = pa[sel], pb[sel]
    p = B.exp[a] + B.exp[b]
    mu = B.exp[a] * B.exp[b] / p
    csum = np.abs(B.coef).sum(axis=1)
    lnb = np.log(np.maximum(csum[a] * csum[b] * (math.pi / p) ** 1.5, 1e-300) / ana.eps) \
        - mu * X2[sel]
    lsum = B.l[a] + B.l[b]
    q2 = 4 * p * np.maximum(lnb, 0.0)
    for _ in range(4):  # the polynomial factor (|Q|/2p + |X| + width)^(l_a + l_b)
        poly = lsum * np.log(np.maximum(1.0, np.sqrt(q2) / (2 * p) + np.sqrt(X2[sel])
                                        + 1 / np.sqrt(2 * p)))
        q2 = 4 * p * np.maximum(lnb + poly, 0.0)
    share = np.where(lnb + poly > 0, np.minimum(1.0, (np.sqrt(q2) / q_max) ** 3), 0.0)
    products = float(D * (ncart[a] * ncart[b] * share).sum())
    tables = 0.0
    if ana.lattice_sum == "factorized":
        nij = (B.l[a] + 1) * (B.l[b] + 1)
        tables = float(D * (nij * (nimg[sel] * n_qd).sum(axis=1)).sum()
                       / max(n_q_plus_g(ana.cell, q_max), 1.0))
    elements = float(ana.nao_cart) ** 2
    return {"products": products, "elements": elements, "tables": tables,
            "ao": products + elements + tables, "n_qd": [float(x) for x in n_qd]}


def unit_conjugate(cell, kmesh, use_symmetry: bool = True) -> list[bool]:
    """Per unit of the analytic route (the order of :func:`unit_k_counts`, or every
    mesh point without ``use_symmetry``): whether 2q is a reciprocal lattice
    vector, so that the engine builds one Q of each +-Q pair (``S(k, -Q) =
    conj(S(-k, Q))``; the unit's k set is closed under k -> -k then)."""
    n = np.asarray([int(x) for x in kmesh])
    if use_symmetry:
        from dmca_hpc.electronic import symmetry
        iq = symmetry.irreducible_mesh(symmetry.atoms_from_cell(cell), n).ibz_index
    else:
        iq = np.arange(int(np.prod(n)))
    addr = np.indices(n).reshape(3, -1).T[np.asarray(iq, int)]
    return [bool(x) for x in np.all(np.mod(2 * addr, n) == 0, axis=1)]


def unit_checkpoint_bytes(nq: int, ne: int, nocc: int, ncond: int) -> float:
    """Model size [bytes] of one partial-table checkpoint (see FF_POPULATED_BIN_BYTES)."""
    populated = min(nq * ne, nq * nocc * ncond)
    return 6144.0 + min(8.0 * nq * ne,
                        FF_ZERO_BIN_BYTES * nq * ne + FF_POPULATED_BIN_BYTES * populated)


def estimate_formfactor(cell, s: dict, kmesh, nbands: int, nocc: int, n_ibz: int,
                        nval: int | None = None) -> dict:
    """Memory, disk and time of :func:`compute_table` from sizes only.

    Args:
        cell: pyscf Cell of the bands; s: :func:`settings`; kmesh: the bands' mesh;
        nbands, nocc: bands in the bands file and occupied bands (with
        ``n_conduction`` null every conduction band is used, as :class:`Engine` does);
        n_ibz: irreducible k of the mesh; nval: the occupied bands a transition below
        ``e_max`` can start from (:func:`valence_window`; the analytic route skips the
        rest), None = all ``nocc`` (an upper bound, before any eigenvalues exist).

    Memory [bytes per rank]: what :attr:`Engine.memory_bound_mb` counts (the FFT
    route's :meth:`GridEngine.memory_bytes` for all valence and the conduction bands,
    or the analytic engine's bound, the bands' coefficients ``nk nao nbands 16 B`` and
    one [nq, nE] table), plus what it leaves out: the grid's G vectors and one k''s
    |q| and bin indices (``48 B`` per grid point), the units (400 B each) and rank
    0's sum of the tables (2 more).  Disk [bytes]: one checkpoint per unit
    (:func:`unit_checkpoint_bytes`), formfactor.hdf5 (the table, its metadata with the
    k list) and the plot (250 kB measured).  Time [s, one rank]: FF_S_PER_POINT per
    pair (FFT), or per (k, Q) of every unit's k set (:func:`unit_k_counts`) FF_ANALYTIC_S_PER_AO
    per AO-build operation (:func:`analytic_ao_work`) and FF_ANALYTIC_S_PER_MO per MO
    multiply-add (analytic); ``unit_time_s`` is the mean over the units.

    Returns a dict: route, mesh, ngrid, nq, ne, units, unit_time_s, memory_bytes,
    engine_bytes (Engine.memory_bound_mb's figure), disk_bytes, checkpoint_bytes,
    parts (named components [bytes])."""
    from dmca_hpc.electronic.matrix_elements import choose_mesh
    nq, ne = table_shape(s)
    n = [int(x) for x in kmesh]
    nk = int(np.prod(n))
    nao = int(cell.nao_nr())
    ncond_all = nbands - nocc
    ncond = ncond_all if s["n_conduction"] is None else min(int(s["n_conduction"]), ncond_all)
    route = choose_route(cell, s)
    ks = n_ibz if s["use_symmetry"] else nk
    table = 8.0 * nq * ne
    coeffs = 16.0 * nk * nao * nbands
    mesh, ngrid = None, 0
    if route == "fft":
        mesh, _info = choose_mesh(cell, s["q_max"], corner_kpts(cell, n), s["precision"], s["mesh"])
        ngrid = int(np.prod(np.asarray(mesh, dtype=float)))
        # GridEngine.memory_bytes (the bound check_memory uses) for nval = nocc
        engine = 16.0 * ngrid * (nocc + 2 * ncond) + 16.0 * ngrid * nao
        extra = 48.0 * ngrid
        block = int(s["kprime_block"])
        units = ks * -(-nk // block)
        pairs = ks * nk
        lg = math.log2(max(ngrid, 2))
        t = FF_S_PER_POINT * ngrid * lg * (nocc * ncond + ncond + 2 * nocc) * pairs
    else:
        from dmca_hpc.electronic.ae_overlap import AnalyticEngine
        ana = AnalyticEngine(cell, precision=float(s["precision"]))
        nc = ana.nao_cart
        # k per unit after the little-group reduction (Engine.unit_kset)
        counts = unit_k_counts(cell, n) if s["use_symmetry"] else [nk] * nk
        kmax = int(max(counts))
        batch = int(max(1, min(64, (256 * 2 ** 20) // (kmax * nc * nc * 16))))
        nv = nocc if nval is None else max(1, min(int(nval), nocc))
        engine = float(ana.memory_bytes(kmax, batch=batch, nbands=nv, nbands_p=ncond))
        extra = 0.0
        units = ks
        # per (k, Q): the AO build (half the products and elements where the engine builds
        # one Q of each +-Q pair) and the MO transform of the valence bands the e_max
        # window reaches
        w = analytic_ao_work(ana, nq * s["dq"])
        mo = FF_ANALYTIC_S_PER_MO * (nc * nc * nv + nc * nv * ncond)
        per = {c: FF_ANALYTIC_S_PER_AO * ((0.5 if c else 1.0) * (w["products"] + w["elements"])
                                          + w["tables"]) + mo for c in (False, True)}
        conj = unit_conjugate(cell, n, s["use_symmetry"])
        t = n_q_plus_g(cell, nq * s["dq"]) * sum(k * per[c] for k, c in zip(counts, conj))
    parts = {"engine": engine, "bands coefficients": coeffs, "table": table,
             "grid indices": extra, "units": 400.0 * units, "table sum": 2 * table}
    ckpt = units * unit_checkpoint_bytes(nq, ne, nocc, ncond)
    out = 20e3 + table + 60.0 * nk + (250e3 if s["plot"] else 0.0)
    return {"route": route, "mesh": mesh, "ngrid": ngrid, "nq": nq, "ne": ne, "units": units,
            "unit_time_s": t / max(units, 1), "time_s": t,
            "memory_bytes": float(sum(parts.values())),
            "engine_bytes": engine + coeffs + table, "disk_bytes": ckpt + out,
            "checkpoint_bytes": ckpt, "parts": parts}
