"""Crystal matrix elements <i'k'| exp(i (k'-k+G).r) |ik> for all G at once.

Two routes, which must agree (tests/test_formfactor.py checks it):

* **FFT route** (production, :class:`GridEngine`): the cell-periodic part
  of a Bloch state, ``u_nk(r) = exp(-i k.r) psi_nk(r) = sum_G c_nk(G)
  exp(iG.r)``, is built on a real-space grid of the unit cell from its exact
  plane-wave coefficients ``c_nk(G) = V^-1 sum_mu C_mu,n chi~_mu(k+G)`` (the
  analytic Fourier transform of the Gaussian AOs, ``pyscf.pbc.df.ft_ao.ft_ao``,
  on the sphere ``|k+G| <= G_wf``) and one inverse FFT per band; this is ~40x
  cheaper than evaluating the AOs with their lattice sums on the grid.  Then,
  for a valence band i at k and every conduction band i' at k', the product
  ``conj(u_i'k'(r)) u_ik(r)`` is Fourier transformed once: since
  ``psi*_i'k' exp(i(k'-k+G).r) psi_ik = conj(u_i'k') u_ik exp(iG.r)``,

      M_i'i(k', k, G) = int_cell conj(u_i'k'(r)) u_ik(r) exp(i G.r) d^3r
                      = V_cell * ifftn(conj(u_i'k') u_ik)[G]

  (numpy's ``ifftn`` carries the ``+i`` sign and the ``1/N_grid`` of the
  quadrature ``V_cell / N_grid * sum_r``, exact for band-limited functions).
  One FFT gives every G.
* **AO-pair route** (baseline and cross-check, :func:`aopair_matrix_elements`):
  the analytic Fourier transform of Gaussian AO pairs,
  ``pyscf.pbc.df.ft_ao.ft_aopair_kpts``, followed by the MO transform
  ``C_k'^dagger F C_k``; exact for any G but O(nao^2 nG) per k-pair.

Conventions: atomic units (bohr, hartree, bohr^-1 == alpha m_e); Bloch states
normalized to one electron per unit cell (``C^dagger S(k) C = 1`` with
pyscf's Bloch AOs ``phi^k_mu(r) = sum_T exp(i k.T) chi_mu(r - T)``), so
``M(k, k, G=0)`` is the unit overlap matrix.

Grid choice (:func:`choose_mesh`): the binned table needs the Fourier
components of ``conj(u_i'k') u_ik`` for every ``|k'-k+G| <= q_max``, i.e. for
``|G| <= G_keep = q_max + max|k'-k|``.  The basis' own resolution: the
transform of a Gaussian primitive of exponent a falls to the relative
precision ``eps`` at ``|k+G| = sqrt(4 a ln(1/eps))``; with the largest
exponent of the basis this is the wavefunction bandwidth ``G_wf``, and the
coefficients c_nk(G) are kept on ``|k+G| <= G_wf`` (so ``|G| <= G_wf +
k_max``).  The product of two such functions is band limited to twice that,
``G_prod = 2 (G_wf + k_max)``.  A grid of N points along b_j maps a component
at G onto G - N b_j, so the kept G are free of aliasing when ``N |b_j| >=
G_keep + G_prod``, and they exist on the grid when its Nyquist radius is at
least G_keep.  Hence the Nyquist radius must be ``>= max(G_keep, (G_keep +
G_prod) / 2)``; pyscf's ``cutoff_to_mesh`` turns that radius into a mesh for
any cell shape, rounded up to FFT-friendly lengths.  Above ``q ~ G_prod`` the basis itself has no Fourier weight
left (a warning says so when q_max exceeds it).

Memory per rank (the bound the stage reports, :meth:`GridEngine.memory_bytes`):
the plane-wave coefficients of one k (at most ``N_grid * nao * 16`` bytes,
transient), the valence u of one k (``N_grid * n_val * 16``), the conduction
u of one k' (``N_grid * n_cond * 16``) and one batch of products and their
FFT (``N_grid * n_cond * 16``); never all k on the grid at once.  Si
gth-dzvp: 75 MiB at q <= 10 (40^3 grid), 182 MiB at q <= 20 (54^3 grid).

pyscf and numpy.fft imports are local so that importing this module is cheap.
"""
from __future__ import annotations

import math

import numpy as np

def max_kdiff(kpts: np.ndarray) -> float:
    """max |k' - k| over all pairs of the mesh [bohr^-1]."""
    k = np.asarray(kpts, float)
    d = k[:, None, :] - k[None, :, :]
    return float(np.sqrt((d ** 2).sum(-1)).max())


def basis_bandwidth(cell, precision: float = 1e-8) -> dict:
    """Fourier bandwidth of the basis [bohr^-1]: ``G_wf = sqrt(4 a_max
    ln(1/eps))`` with ``a_max`` the largest primitive exponent [bohr^-2]."""
    a_max = max(float(np.max(cell.bas_exp(i))) for i in range(cell.nbas))
    g_wf = math.sqrt(4.0 * a_max * math.log(1.0 / precision))
    return {"a_max_bohr2": a_max, "G_wf": g_wf, "precision": precision}


def nyquist_radius(cell, mesh) -> float:
    """Radius [bohr^-1] of the largest G sphere inside the FFT grid ``mesh``:
    the grid holds |m_j| <= (N_j-1)//2 along b_j, which reaches the distance
    2 pi ((N_j-1)//2) / |a_j| along the face normal a_j / |a_j|."""
    a = np.asarray(cell.lattice_vectors(), float)
    half = (np.asarray(mesh) - 1) // 2
    return float(np.min(2 * np.pi * half / np.linalg.norm(a, axis=1)))


def choose_mesh(cell, q_max: float, kpts: np.ndarray, precision: float = 1e-8,
                mesh=None) -> tuple[list[int], dict]:
    """Real-space FFT mesh for the matrix elements up to ``q_max`` [bohr^-1 ==
    alpha m_e] for the k points ``kpts`` [bohr^-1] (rule: module docstring).

    Returns ``(mesh, info)``; ``info`` holds G_keep, G_wf, G_prod, the
    required and the achieved Nyquist radius [bohr^-1].  With an explicit
    ``mesh`` the grid is checked instead: a mesh that cannot hold every G with
    ``|k'-k+G| <= q_max`` raises ValueError naming q_max and the mesh (a mesh
    that holds them but aliases is accepted with ``alias_free = False``)."""
    from pyscf.pbc.tools import cutoff_to_mesh
    kpts = np.asarray(kpts, float)
    dk = max_kdiff(kpts)
    k_max = float(np.linalg.norm(kpts, axis=1).max())
    bw = basis_bandwidth(cell, precision)
    g_keep = q_max + dk
    g_prod = 2.0 * (bw["G_wf"] + k_max)
    need = max(g_keep, 0.5 * (g_keep + g_prod))
    a = np.asarray(cell.lattice_vectors(), float)
    if mesh is None:
        import scipy.fft
        mesh = [int(x) for x in cutoff_to_mesh(a, 0.5 * need ** 2)]
        while nyquist_radius(cell, mesh) < need:
            mesh = [m + 1 for m in mesh]
        # round up to FFT-friendly (5-smooth) lengths: a 39^3 FFT (39 = 3 x 13)
        # costs ~3x a 40^3 one; the Nyquist radius counts only |m| <= (N-1)//2,
        # so an even N never loses a needed +G / -G pair
        mesh = [int(scipy.fft.next_fast_len(m, real=False)) for m in mesh]
        while nyquist_radius(cell, mesh) < need:
            mesh = [int(scipy.fft.next_fast_len(m + 1, real=False)) for m in mesh]
    else:
        mesh = [int(x) for x in mesh]
        rad = nyquist_radius(cell, mesh)
        if rad < g_keep:
            raise ValueError(
                f"formfactor.mesh {mesh} resolves |G| only up to {rad:.3f} alpha m_e, but "
                f"q_max = {q_max:.3f} alpha m_e with max|k'-k| = {dk:.3f} needs |G| up to "
                f"{g_keep:.3f}; raise the mesh or lower formfactor.q_max (or set mesh: null)")
    rad = nyquist_radius(cell, mesh)
    info = {"G_keep": g_keep, "G_prod": g_prod, "G_wf": bw["G_wf"],
            "a_max_bohr2": bw["a_max_bohr2"], "max_kdiff": dk, "k_max": k_max,
            "nyquist_required": need, "nyquist": rad, "precision": precision,
            "alias_free": bool(rad >= need - 1e-9)}
    return mesh, info


class GridEngine:
    """FFT-route matrix elements on one real-space grid of the unit cell.

    Args:
        cell: pyscf Cell.
        mesh: FFT mesh (n1, n2, n3), e.g. from :func:`choose_mesh`.
        g_wf: wavefunction cutoff [bohr^-1]: plane-wave coefficients of the
            Bloch states are kept for ``|k+G| <= g_wf``.
    """

    def __init__(self, cell, mesh, g_wf: float):
        self.cell = cell
        self.mesh = tuple(int(m) for m in mesh)
        self.ngrid = int(np.prod(self.mesh))
        self.volume = float(cell.vol)  # bohr^3
        self.g_wf = float(g_wf)
        b = cell.reciprocal_vectors()  # rows b_j, include 2 pi
        ints = [np.fft.fftfreq(n, 1.0 / n).round().astype(int) for n in self.mesh]
        m = np.stack(np.meshgrid(*ints, indexing="ij"), -1).reshape(-1, 3)
        #: G vector [bohr^-1] of each element of the (i)fftn grid, C order
        self.Gv = m @ b

    def memory_bytes(self, nao: int, nval: int, ncond: int) -> int:
        """Array memory of one k-pair evaluation [bytes] (the stated bound):
        valence u of one k, conduction u of one k', one batch of products
        (its FFT is in place), plus the AO transforms on the G sphere."""
        return 16 * self.ngrid * (nval + 2 * ncond) + 16 * self.ngrid * nao

    def u_on_grid(self, kpt, coeffs) -> np.ndarray:
        """Cell-periodic parts u_n(r) = exp(-i k.r) psi_nk(r) [bohr^-3/2] of the
        bands with AO coefficients ``coeffs`` [nao, nb] -> [nb, N] (C order)."""
        import scipy.fft
        from pyscf.pbc.df import ft_ao
        kpt = np.asarray(kpt, float)
        coeffs = np.asarray(coeffs, complex)
        sel = np.nonzero(np.linalg.norm(self.Gv + kpt, axis=1) <= self.g_wf)[0]
        # ft_ao(..., kpt=k) = int_all chi_mu(r) exp(-i(k+G).r) d^3r = int_cell
        # exp(-i(k+G).r) phi^k_mu(r) d^3r for pyscf's Bloch AOs
        F = ft_ao.ft_ao(self.cell, self.Gv[sel], kpt=kpt)
        c = np.zeros((coeffs.shape[1], self.ngrid), complex)
        c[:, sel] = (F @ coeffs).T * (1.0 / self.volume)
        u = scipy.fft.ifftn(c.reshape((-1,) + self.mesh), axes=(1, 2, 3),
                            overwrite_x=True, workers=1)
        u *= self.ngrid
        return u.reshape(len(c), -1)

    def pair_fft(self, u_val_i: np.ndarray, u_cond: np.ndarray,
                 conjugated: bool = False) -> np.ndarray:
        """M[i', G] = int conj(u_i'k') u_ik exp(iG.r) for one valence band
        (``u_val_i`` [N]) and all conduction bands (``u_cond`` [nc, N], or
        already complex-conjugated with ``conjugated=True``) -> complex
        [nc, N] in the order of :attr:`Gv` (dimensionless)."""
        import scipy.fft
        uc = u_cond if conjugated else u_cond.conj()
        prod = (uc * u_val_i[None, :]).reshape((-1,) + self.mesh)
        out = scipy.fft.ifftn(prod, axes=(1, 2, 3), overwrite_x=True, workers=1)
        out *= self.volume
        return out.reshape(len(u_cond), -1)

    def matrix_elements(self, kpt, coeffs_k, kpt_p, coeffs_kp) -> np.ndarray:
        """All M[i', i, G] = <i'k'| exp(i(k'-k+G).r) |ik> for the bands in
        ``coeffs_k`` (ket, at ``kpt``) and ``coeffs_kp`` (bra, at ``kpt_p``)
        -> [nb', nb, N] complex.  Convenience for tests (holds all pairs)."""
        uv = self.u_on_grid(kpt, coeffs_k)
        uc = self.u_on_grid(kpt_p, coeffs_kp)
        return np.stack([self.pair_fft(uv[i], uc) for i in range(len(uv))], axis=1)


def ft_aopair_bloch(cell, Gv, kpt, kpt_p) -> np.ndarray:
    """[nG, nao, nao]: ``int_cell conj(phi^{k'}_a(r)) phi^{k}_b(r)
    exp(i(k'-k+G).r) d^3r`` for pyscf's Bloch AOs.

    pyscf's ``ft_aopair_kpts(cell, Gv', q=p, kptjs=[kj])`` returns ``sum_T
    exp(-i kj.T) int exp(-i(Gv'+p).r) chi_a(r) chi_b(r-T) dr``; with ``Gv' =
    -G``, ``p = k - k'`` and ``kj = k`` this is exactly the cell integral
    above (the plane wave becomes ``exp(i(k'-k+G).r)``; the bra's Bloch
    phase follows from periodicity).  Checked numerically against the FFT
    route at general (non time-reversal-invariant) k, k' and the overlap
    matrix at G = 0 (tests/test_formfactor.py)."""
    from pyscf.pbc.df import ft_ao
    kpt = np.asarray(kpt, float)
    q = kpt - np.asarray(kpt_p, float)
    out = ft_ao.ft_aopair_kpts(cell, -np.asarray(Gv, float), q=q, kptjs=kpt.reshape(1, 3))
    return np.asarray(out[0])


def aopair_matrix_elements(cell, kpt, coeffs_k, kpt_p, coeffs_kp, Gv) -> np.ndarray:
    """AO-pair route: M[i', i, G] = <i'k'| exp(i(k'-k+G).r) |ik> for the G
    vectors ``Gv`` [nG, 3] (bohr^-1), by the analytic Fourier transform of AO
    pairs (:func:`ft_aopair_bloch`) and the MO transform ``C_k'^dagger F C_k``
    -> [nb', nb, nG] complex (dimensionless)."""
    F = ft_aopair_bloch(cell, Gv, kpt, kpt_p)
    Ck = np.asarray(coeffs_k, complex)
    Ckp = np.asarray(coeffs_kp, complex)
    tmp = np.einsum("gab,bi->gai", F, Ck, optimize=True)
    return np.einsum("ap,gai->pig", Ckp.conj(), tmp, optimize=True)
