"""Analytic plane-wave matrix elements of Gaussian Bloch orbitals (issue 14).

Route for any Gaussian basis (all-electron def2-*, cc-pV*Z or GTH bases) with
no real-space grid: the cost per (k, Q) depends on the number of primitive
pairs, never on a FFT mesh, so the 1s shell of an all-electron atom costs as
much as a valence shell.

Quantities (atomic units: bohr, bohr^-1 == alpha m_e, hartree)
------------------------------------------------------------
With pyscf's Bloch AOs ``phi^k_mu(r) = sum_T exp(i k.T) chi_mu(r - T)`` and a
momentum transfer ``Q = q + G`` (``k' = k + q``), the AO matrix of one cell is

    S_mu,nu(k, Q) = int_cell conj(phi^{k+q}_mu(r)) exp(i Q.r) phi^k_nu(r) d^3r
                  = sum_T exp(i k.T) s_mu,nu(T; Q),
    s_mu,nu(T; Q) = int_all chi_mu(r) exp(i Q.r) chi_nu(r - T) d^3r

(real AOs; the bra's Bloch phase drops out because exp(i G.T) = 1).  This is
exactly :func:`dmca_hpc.electronic.matrix_elements.ft_aopair_bloch` (``Gv =
Q - q``, ``kpt = k``, ``kpt_p = k + q``), i.e. pyscf's ``ft_aopair_kpts``
with the sign conventions worked out there; the tests check it numerically.
The MO matrix elements are ``M_i'i(k, Q) = <i', k+q| exp(iQ.r) |i, k> =
(C_{k+q}^dagger S(k, Q) C_k)_i'i`` (dimensionless; ``M(k, Q=0) = 1`` for
orthonormal Bloch states, one electron per cell).

Method
------
For Cartesian primitives ``x_A^i exp(-a x_A^2)`` and ``x_B^j exp(-b x_B^2)``
(``x_A = x - A``) the plane-wave overlap factorises per Cartesian direction;
each 1D factor is (Obara-Saika recursion for the weight ``exp(-p u^2 +
iQu)``, p = a + b, P = (aA + bB)/p, mu = ab/p)

    I_00 = sqrt(pi/p) exp(-mu (A-B)^2) exp(i Q P - Q^2/(4p)),
    I_i+1,0 = (P - A + iQ/(2p)) I_i0 + i/(2p) I_i-1,0,
    I_i,j+1 = I_i+1,j + (A - B) I_ij            (horizontal transfer),

equivalent to ``sqrt(pi/p) exp(iQP - Q^2/4p) sum_t E_ij^t (iQ)^t`` with the
McMurchie-Davidson coefficients E_ij^t.

Lattice sum (the fast path, ``lattice_sum="factorized"``): when the lattice
is a sublattice of an axis-aligned orthorhombic grid ``T = H m`` (``H =
diag(h_x, h_y, h_z)``, m integer; every cubic cell of the seed targets --
fcc, bcc, sc in the conventional orientation -- and hexagonal cells with a1
along x are), the indicator of the lattice in that grid is a sum of D =
|det(A H^-1)| characters ``(1/D) sum_chi exp(2 pi i g_chi.m)`` (fcc and
hexagonal: D = 2, bcc: 4, sc: 1; :func:`orthorhombic_supergrid`).  The
Bloch phase ``exp(i k.T) = prod_d exp(i k_d h_d m_d)`` and the Gaussian
product factorise per direction too, so

    S_ab(k, Q) = (1/D) sum_chi prod_d F_d[a_d, b_d](theta_d, Q_d),
    F_d(theta, Q_d) = sum_m exp(i theta m) I_{a_d b_d}(Q_d; B_d + h_d m),
    theta_d = k_d h_d + 2 pi g_chi,d:

the lattice sum becomes three 1D sums, tabulated once per primitive pair for
the few distinct Q_d of a Q set (~33 per direction for Si at q <= 10) and the
n_k D columns (k, chi).  Per (k, Q) a Cartesian primitive pair then costs D
products of three table entries, vectorised over the (k, chi) columns;
primitive pairs are grouped by contracted shell pair so each AO block is
written once per Q.  Pairs whose 1D sums hold only the home image (compact x
compact) are k independent and cost one product per Q for all k.  Other
lattices (or ``lattice_sum="direct"``) use an explicit sum over the images T
kept by the screening, with the Bloch phase of every k applied per image
(exact, a few times slower).

Symmetries used (exact; each is switched off when its partners are missing):
``s_nu,mu(T; Q) = exp(iQ.T) s_mu,nu(-T; Q)`` gives ``S(k, Q)^T = S(-k-q, Q)``:
only shell pairs I <= J are built when the k set holds every -k-q
(``use_transpose``); real AOs give ``S(k, -Q) = conj(S(-k, Q))``: only one Q
of each +-Q pair is built when the Q set is closed under negation (q = 0, or
2q in the reciprocal lattice, e.g. every q of a 2x2x2 mesh) and the k set
under k -> -k (``use_conjugate``).  Both hold for a q class with every k of
a Gamma-centred mesh, the natural work unit: one table build serves all k.

Screening (``precision``, default 1e-8, absolute on the AO matrix of
normalized AOs, whose entries are <= ~1): a 1D image m is kept while
``c_ab (pi/p)^{3/2} exp(-mu X_d^2) |X|^l (2 pi R / mu V) > precision/10``; a
primitive pair is skipped at a Q when the product of its three tabulated
maxima (an upper bound of its contribution, which carries exp(-|Q|^2/4p)) is
below ``precision/10``.  Compact primitives thus only see their own atom's
images, and diffuse pairs drop out at large |Q|.  Measured error against
pyscf at precision 1e-12 (Si def2-svp, |Q| <= 20): 1.5e-7 / 1.0e-9 / 3.3e-11
(max |diff| / max |S|) at precision 1e-6 / 1e-8 / 1e-10.

Normalization: libcint's Cartesian functions (``fac_sp(l) *
_libcint_ctr_coeff * x^i y^j z^k exp(-a r^2)``, fac_sp = 1/sqrt(4 pi) for s,
sqrt(3/(4 pi)) for p, 1 otherwise; general contractions allowed) and
``cell.cart2sph_coeff()``; the spherical matrix is ``c2s^T S_cart c2s`` and
the MO transform folds c2s into the coefficients (``C_cart = c2s C``), so the
spherical AO matrices are never formed on the production path.

API
---
:func:`q_plus_g` lists the Q of one q; :class:`AnalyticEngine` gives
:meth:`~AnalyticEngine.ao_matrices` (spherical, [nk, nQ, nao, nao]),
:meth:`~AnalyticEngine.matrix_elements` ([nk, nQ, nb', nb]) and its streaming
form :meth:`~AnalyticEngine.iter_matrix_elements` (batches of Q), and
:meth:`~AnalyticEngine.memory_bytes`.

Cost and memory (per rank; Si def2-svp, 2 atoms, 38 Cartesian AOs, 2x2x2 k,
|Q| <= 10, ~4540 Q per k-pair, one core; benchmarks/bench_ae_overlap.py)
----------------------------------------------------------------------
AO build 5.7 us per (k, Q) (10.5 us with every AO matrix materialized);
pyscf ``ft_aopair_kpts`` at the same precision: 1.0 ms with one k per call,
0.14 ms with all 8 k in one call.  MO matrix elements with every band of the
basis (14 occupied x 22 conduction): 11.8 us per (k, Q), 0.053 core-s per
k-pair, the table build included; the MO transform ``C_{k+q}^dagger (S C_k)``
(two GEMMs, ``nao_c^2 n_occ + nao_c n_occ n_cond`` complex multiply-adds) is
about half of it, so passing only the bands an energy window reaches (4 of
the 14 for a 50 eV table of Si) gives 8.0 us.  A q class with every k of the
mesh is the efficient unit: with one k per call (no partners, no table
sharing) the cost per (k, Q) is ~3x higher.
Memory: the 1D tables ``3 * sum_pairs (l_a+1)(l_b+1) * n_Qd * n_k D``
complex numbers (23 MB here), one batch of AO matrices ``n_k * batch *
nao_c^2 * 16`` bytes (6 MB at batch 32) and one M batch;
:meth:`AnalyticEngine.memory_bytes` gives the bound (61 MB here; measured
peak RSS growth 71 MB on top of the ~240 MB of Python, pyscf and numba).

numba and pyscf are imported lazily (first use); the kernels are cached on
disk (``cache=True``).
"""
from __future__ import annotations

import math

import numpy as np

#: default precision (absolute, on the AO matrix of normalized AOs)
DEFAULT_PRECISION = 1e-8
#: share of ``precision`` allowed per neglected term (pair or image)
_SCREEN_SHARE = 0.1
#: largest number of characters D accepted by the factorized lattice sum
_MAX_CHARACTERS = 16

_KERNELS = None


# --------------------------------------------------------------------------
# Q = q + G lists
# --------------------------------------------------------------------------

def q_plus_g(cell, q, q_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Every ``Q = q + G`` with ``|Q| <= q_max`` for one q.

    Args:
        cell: pyscf Cell (its reciprocal vectors, bohr^-1, include 2 pi).
        q: [3] cartesian q = k' - k [bohr^-1].
        q_max: radius [bohr^-1 == alpha m_e].

    Returns:
        ``(Qv, m)``: Qv [nQ, 3] cartesian Q [bohr^-1], ordered by |Q|; m [nQ, 3]
        integer G coordinates (``G = m @ cell.reciprocal_vectors()``).
    """
    b = np.asarray(cell.reciprocal_vectors(), float)
    q = np.asarray(q, float).reshape(3)
    # |m_j| <= (q_max + |q|) |a_j| / 2 pi bounds every G inside the sphere
    a = np.asarray(cell.lattice_vectors(), float)
    reach = (q_max + np.linalg.norm(q)) * np.linalg.norm(a, axis=1) / (2 * np.pi)
    nmax = np.ceil(reach).astype(int)
    axes = [np.arange(-n, n + 1) for n in nmax]
    m = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    Qv = q + m @ b
    qa = np.linalg.norm(Qv, axis=1)
    sel = np.nonzero(qa <= q_max)[0]
    order = sel[np.argsort(qa[sel], kind="stable")]
    return Qv[order], m[order]


# --------------------------------------------------------------------------
# basis and lattice analysis (pure numpy once pyscf has built the cell)
# --------------------------------------------------------------------------

def _cart_components(lmax: int) -> np.ndarray:
    """[lmax+1, ncart(lmax), 3] exponents (lx, ly, lz) in pyscf's Cartesian order
    (xx, xy, xz, yy, yz, zz for d)."""
    nc = (lmax + 1) * (lmax + 2) // 2
    out = np.zeros((lmax + 1, nc, 3), np.int64)
    for l in range(lmax + 1):
        c = 0
        for lx in range(l, -1, -1):
            for ly in range(l - lx, -1, -1):
                out[l, c] = (lx, ly, l - lx - ly)
                c += 1
    return out


def _fac_sp(l: int) -> float:
    if l == 0:
        return 0.282094791773878143
    if l == 1:
        return 0.488602511902919921
    return 1.0


class _Basis:
    """Primitive shells of a cell with their contraction into Cartesian AOs.

    Attributes (arrays over primitive shells ``np_``):
        coord [np_, 3] bohr; l [np_]; exp [np_] bohr^-2; nctr [np_];
        coef [np_, maxctr] (libcint normalization incl. fac_sp);
        ao0 [np_, maxctr] first Cartesian AO of each contraction;
        shell [np_] pyscf shell index; nao_cart, lmax.
    """

    def __init__(self, cell):
        coord, ls, exps, nctr, coefs, ao0, shell = [], [], [], [], [], [], []
        off = 0
        maxctr = max(int(cell.bas_nctr(i)) for i in range(cell.nbas))
        for ib in range(cell.nbas):
            l = int(cell.bas_angular(ib))
            nc = int(cell.bas_nctr(ib))
            ncart = (l + 1) * (l + 2) // 2
            es = np.asarray(cell.bas_exp(ib), float)
            cs = np.asarray(cell._libcint_ctr_coeff(ib), float).reshape(len(es), nc) * _fac_sp(l)
            for ip, e in enumerate(es):
                if not np.any(cs[ip]):
                    continue
                coord.append(np.asarray(cell.bas_coord(ib), float))
                ls.append(l)
                exps.append(e)
                nctr.append(nc)
                cpad = np.zeros(maxctr)
                cpad[:nc] = cs[ip]
                apad = np.zeros(maxctr, np.int64)
                apad[:nc] = off + ncart * np.arange(nc)
                coefs.append(cpad)
                ao0.append(apad)
                shell.append(ib)
            off += ncart * nc
        self.coord = np.array(coord, float).reshape(-1, 3)
        self.l = np.array(ls, np.int64)
        self.exp = np.array(exps, float)
        self.nctr = np.array(nctr, np.int64)
        self.coef = np.array(coefs, float).reshape(-1, maxctr)
        self.ao0 = np.array(ao0, np.int64).reshape(-1, maxctr)
        self.shell = np.array(shell, np.int64)
        self.nao_cart = off
        self.lmax = int(self.l.max())
        self.nprim = len(self.exp)
        self.cmax = np.abs(self.coef).max(axis=1)


def orthorhombic_supergrid(a: np.ndarray, tol: float = 1e-8, max_div: int = 6):
    """Axis-aligned grid ``T = diag(h) m`` that contains the lattice ``a``.

    Args:
        a: [3, 3] lattice vectors (rows) [bohr].
    Returns:
        ``(h [3], N [3, 3] int, g [D, 3])`` with ``a = N diag(h)`` and the D
        characters g (fractions) whose mean ``(1/D) sum exp(2 pi i g.m)`` is the
        indicator of the lattice within the grid; None if no such grid
        (with D <= 16) exists.
    """
    a = np.asarray(a, float)
    scale = np.abs(a).max()
    h = np.zeros(3)
    for d in range(3):
        v = a[:, d]
        nz = np.abs(v[np.abs(v) > tol * scale])
        if len(nz) == 0:
            return None
        for div in range(1, max_div + 1):
            hh = nz.min() / div
            r = v / hh
            if np.all(np.abs(r - np.round(r)) < 1e-6):
                h[d] = hh
                break
        else:
            return None
    N = np.round(a / h).astype(np.int64)
    if np.abs(N * h - a).max() > 1e-6 * scale:
        return None
    D = int(round(abs(np.linalg.det(N))))
    if D < 1 or D > _MAX_CHARACTERS:
        return None
    Ninv = np.linalg.inv(N.astype(float))
    found = []
    rng = range(D)
    for c0 in rng:
        for c1 in rng:
            for c2 in rng:
                g = Ninv @ np.array([c0, c1, c2], float)
                g = g - np.floor(g + 1e-9)
                g[np.abs(g - 1.0) < 1e-9] = 0.0
                if not any(np.abs(g - f).max() < 1e-7 for f in found):
                    found.append(g)
    if len(found) != D:
        return None
    return h, N, np.array(found)


def _unique_index(x: np.ndarray, decimals: int = 12):
    """(unique values, index of each x) with rounding to ``decimals``."""
    xr = np.round(np.asarray(x, float), decimals)
    u, inv = np.unique(xr, return_inverse=True)
    return np.ascontiguousarray(u), inv.astype(np.int64).reshape(np.shape(x))


# --------------------------------------------------------------------------
# numba kernels (compiled lazily, cached on disk)
# --------------------------------------------------------------------------

def _kernels():
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    import numba

    njit = numba.njit(cache=True, nogil=True, fastmath=False)
    # reassociation only (no NaN/inf in these sums): lets LLVM vectorize
    njit_fast = numba.njit(cache=True, nogil=True,
                           fastmath={"reassoc", "contract", "nsz", "arcp"})

    @njit
    def os1d(la, lb, p, xpa, xab, qd, i00, work, out):
        # out[i, j] (i <= la, j <= lb) of int (x-A)^i (x-B)^j e^{-a x_A^2 - b x_B^2}
        # e^{i qd x} dx given I_00 = i00; xpa = P - A; xab = A - B;
        # work [L+1, lb+1] complex scratch, L = la + lb
        L = la + lb
        c = xpa + 0.5j * qd / p
        h2p = 0.5 / p
        work[0, 0] = i00
        if L > 0:
            work[1, 0] = c * i00
            for i in range(1, L):
                work[i + 1, 0] = c * work[i, 0] + (i * h2p) * work[i - 1, 0]
        for j in range(lb):
            for i in range(L - j):
                work[i, j + 1] = work[i + 1, j] + xab * work[i, j]
        for i in range(la + 1):
            for j in range(lb + 1):
                out[i, j] = work[i, j]

    @njit
    def build_tables(pa, pb, local, coord, lval, expo, h, mlo, mhi, uq, uq_n, theta,
                     toff, tre, tim, fmax):
        # For every pair n and direction d: F[toff[n, d] + ((iq * (la+1) + i) * (lb+1) + j)
        # * nkc_n + c] = sum_m exp(i theta[c, d] m) I_ij(uq[d, iq]; B_d + h_d m) for
        # m in [mlo[n, d], mhi[n, d]], stored as real (tre) and imaginary (tim) parts;
        # nkc_n = 1 for local pairs (m = 0 only), else theta.shape[0].
        # fmax[n, d, iq] = max |F| over i, j, c.
        npair = pa.shape[0]
        nkc_all = theta.shape[0]
        lmax = 0
        for n in range(lval.shape[0]):
            if lval[n] > lmax:
                lmax = lval[n]
        work = np.zeros((2 * lmax + 1, lmax + 1), np.complex128)
        I = np.zeros((lmax + 1, lmax + 1), np.complex128)
        phr = np.zeros(nkc_all)
        phi = np.zeros(nkc_all)
        sq = math.sqrt(math.pi)
        for n in range(npair):
            a = pa[n]
            b = pb[n]
            la = lval[a]
            lb = lval[b]
            ea = expo[a]
            eb = expo[b]
            p = ea + eb
            mu = ea * eb / p
            nkc = 1 if local[n] else nkc_all
            for d in range(3):
                nuq = uq_n[d]
                base = toff[n, d]
                Ad = coord[a, d]
                for m in range(mlo[n, d], mhi[n, d] + 1):
                    Bd = coord[b, d] + h[d] * m
                    X = Ad - Bd
                    P = (ea * Ad + eb * Bd) / p
                    g = sq / math.sqrt(p) * math.exp(-mu * X * X)
                    for c in range(nkc):
                        ang = theta[c, d] * m
                        phr[c] = math.cos(ang)
                        phi[c] = math.sin(ang)
                    for iq in range(nuq):
                        qd = uq[d, iq]
                        ang = qd * P
                        i00 = (g * math.exp(-qd * qd / (4.0 * p))
                               * complex(math.cos(ang), math.sin(ang)))
                        os1d(la, lb, p, P - Ad, X, qd, i00, work, I)
                        for i in range(la + 1):
                            for j in range(lb + 1):
                                o = base + ((iq * (la + 1) + i) * (lb + 1) + j) * nkc
                                vr = I[i, j].real
                                vi = I[i, j].imag
                                for c in range(nkc):
                                    tre[o + c] += phr[c] * vr - phi[c] * vi
                                    tim[o + c] += phr[c] * vi + phi[c] * vr
                w = (la + 1) * (lb + 1) * nkc
                for iq in range(nuq):
                    mx = 0.0
                    o = base + iq * w
                    for r in range(w):
                        v = tre[o + r] * tre[o + r] + tim[o + r] * tim[o + r]
                        if v > mx:
                            mx = v
                    fmax[n, d, iq] = math.sqrt(mx)

    @njit_fast
    def eval_factorized(gstart, gsym, pa, pb, local, pcmax, lval, nctr, coef, ao0, cart,
                        toff, tre, tim, fmax, qidx, nchi, kbar, eps, out):
        # out[k, mu, iQ, nu] += sum over the primitive pairs of every group (one
        # contracted shell pair, pairs gstart[g]:gstart[g+1]); cartesian AOs.
        # Table column c = k * nchi + chi.  gsym[g]: the group is a shell pair
        # I < J whose transposed block (J, I) at k is its block at kbar[k].
        ngroup = gsym.shape[0]
        nk = out.shape[0]
        nQ = out.shape[2]
        nkc = nk * nchi
        ncm = cart.shape[1]
        mctr = coef.shape[1]
        accr = np.zeros((mctr, mctr, ncm, ncm, nkc))
        acci = np.zeros((mctr, mctr, ncm, ncm, nkc))
        accl = np.zeros((mctr, mctr, ncm, ncm), np.complex128)
        vr = np.zeros(nkc)
        vi = np.zeros(nkc)
        ix = np.zeros((3, ncm, ncm), np.int64)
        invD = 1.0 / nchi
        nkept = 0
        maxpg = 1
        for grp in range(ngroup):
            if gstart[grp + 1] - gstart[grp] > maxpg:
                maxpg = gstart[grp + 1] - gstart[grp]
        yzr = np.zeros((maxpg, ncm, ncm, nkc))
        yzi = np.zeros((maxpg, ncm, ncm, nkc))
        ykey = np.full(maxpg, -1, np.int64)
        for grp in range(ngroup):
            g0 = gstart[grp]
            g1 = gstart[grp + 1]
            ykey[:] = -1
            a = pa[g0]
            b = pb[g0]
            sym = gsym[grp]
            la = lval[a]
            lb = lval[b]
            nA = nctr[a]
            nB = nctr[b]
            nca = (la + 1) * (la + 2) // 2
            ncb = (lb + 1) * (lb + 2) // 2
            nij = (la + 1) * (lb + 1)
            l1 = lb + 1
            for ia in range(nca):
                for ib in range(ncb):
                    for d in range(3):
                        ix[d, ia, ib] = cart[la, ia, d] * l1 + cart[lb, ib, d]
            for iQ in range(nQ):
                q0 = qidx[iQ, 0]
                q1 = qidx[iQ, 1]
                q2 = qidx[iQ, 2]
                used_e = False
                used_l = False
                for n in range(g0, g1):
                    if pcmax[n] * fmax[n, 0, q0] * fmax[n, 1, q1] * fmax[n, 2, q2] < eps:
                        continue
                    nkept += 1
                    pa_ = pa[n]
                    pb_ = pb[n]
                    if local[n]:
                        if not used_l:
                            used_l = True
                            for ca in range(nA):
                                for cb in range(nB):
                                    for ia in range(nca):
                                        for ib in range(ncb):
                                            accl[ca, cb, ia, ib] = 0.0
                        b0 = toff[n, 0] + q0 * nij
                        b1 = toff[n, 1] + q1 * nij
                        b2 = toff[n, 2] + q2 * nij
                        for ia in range(nca):
                            for ib in range(ncb):
                                x = complex(tre[b0 + ix[0, ia, ib]], tim[b0 + ix[0, ia, ib]])
                                y = complex(tre[b1 + ix[1, ia, ib]], tim[b1 + ix[1, ia, ib]])
                                z = complex(tre[b2 + ix[2, ia, ib]], tim[b2 + ix[2, ia, ib]])
                                v = x * y * z
                                for ca in range(nA):
                                    for cb in range(nB):
                                        accl[ca, cb, ia, ib] += (coef[pa_, ca] * coef[pb_, cb]) * v
                        continue
                    if not used_e:
                        used_e = True
                        for ca in range(nA):
                            for cb in range(nB):
                                for ia in range(nca):
                                    for ib in range(ncb):
                                        for c in range(nkc):
                                            accr[ca, cb, ia, ib, c] = 0.0
                                            acci[ca, cb, ia, ib, c] = 0.0
                    b0 = toff[n, 0] + q0 * nij * nkc
                    nl = n - g0
                    key = q1 * 1000003 + q2
                    if ykey[nl] != key:
                        # y*z products of this pair, reused while (Q_y, Q_z) stay
                        # (the Q of a batch are sorted by (Q_y, Q_z, Q_x))
                        ykey[nl] = key
                        b1 = toff[n, 1] + q1 * nij * nkc
                        b2 = toff[n, 2] + q2 * nij * nkc
                        for ia in range(nca):
                            for ib in range(ncb):
                                s1 = b1 + ix[1, ia, ib] * nkc
                                s2 = b2 + ix[2, ia, ib] * nkc
                                y_r = tre[s1:s1 + nkc]
                                y_i = tim[s1:s1 + nkc]
                                z_r = tre[s2:s2 + nkc]
                                z_i = tim[s2:s2 + nkc]
                                w_r = yzr[nl, ia, ib]
                                w_i = yzi[nl, ia, ib]
                                for c in range(nkc):
                                    w_r[c] = y_r[c] * z_r[c] - y_i[c] * z_i[c]
                                    w_i[c] = y_r[c] * z_i[c] + y_i[c] * z_r[c]
                    for ia in range(nca):
                        for ib in range(ncb):
                            s0 = b0 + ix[0, ia, ib] * nkc
                            x_r = tre[s0:s0 + nkc]
                            x_i = tim[s0:s0 + nkc]
                            w_r = yzr[nl, ia, ib]
                            w_i = yzi[nl, ia, ib]
                            if nA == 1 and nB == 1:
                                # one contraction each (the common case): accumulate directly
                                cc = coef[pa_, 0] * coef[pb_, 0]
                                ar = accr[0, 0, ia, ib]
                                ai = acci[0, 0, ia, ib]
                                for c in range(nkc):
                                    ar[c] += cc * (x_r[c] * w_r[c] - x_i[c] * w_i[c])
                                    ai[c] += cc * (x_r[c] * w_i[c] + x_i[c] * w_r[c])
                                continue
                            for c in range(nkc):
                                vr[c] = x_r[c] * w_r[c] - x_i[c] * w_i[c]
                                vi[c] = x_r[c] * w_i[c] + x_i[c] * w_r[c]
                            for ca in range(nA):
                                for cb in range(nB):
                                    cc = coef[pa_, ca] * coef[pb_, cb]
                                    for c in range(nkc):
                                        accr[ca, cb, ia, ib, c] += cc * vr[c]
                                        acci[ca, cb, ia, ib, c] += cc * vi[c]
                if not (used_e or used_l):
                    continue
                for ca in range(nA):
                    ra = ao0[a, ca]
                    for cb in range(nB):
                        rb = ao0[b, cb]
                        for ia in range(nca):
                            for ib in range(ncb):
                                vl = accl[ca, cb, ia, ib] if used_l else 0.0j
                                for k in range(nk):
                                    v = vl
                                    if used_e:
                                        sr = 0.0
                                        si = 0.0
                                        for c in range(k * nchi, (k + 1) * nchi):
                                            sr += accr[ca, cb, ia, ib, c]
                                            si += acci[ca, cb, ia, ib, c]
                                        v += complex(sr * invD, si * invD)
                                    out[k, ra + ia, iQ, rb + ib] += v
                                    if sym:
                                        out[kbar[k], rb + ib, iQ, ra + ia] += v
        return nkept

    @njit
    def eval_direct(pa, pb, img0, img1, imgT, lval, nctr, coef, ao0, coord, expo, cart,
                    Qv, phase, eps_img, out):
        # explicit image sum: pair n uses images imgT[img0[n]:img1[n]] (cartesian T);
        # phase [nk, nimg_total] = exp(i k.T) of each stored image; out[k, mu, iQ, nu]
        npair = pa.shape[0]
        nk = out.shape[0]
        nQ = Qv.shape[0]
        lmax = cart.shape[0] - 1
        ncm = cart.shape[1]
        work = np.zeros((2 * lmax + 1, lmax + 1), np.complex128)
        Ix = np.zeros((lmax + 1, lmax + 1), np.complex128)
        Iy = np.zeros((lmax + 1, lmax + 1), np.complex128)
        Iz = np.zeros((lmax + 1, lmax + 1), np.complex128)
        val = np.zeros((ncm, ncm), np.complex128)
        sqp = math.pi ** 1.5
        for n in range(npair):
            a = pa[n]
            b = pb[n]
            la = lval[a]
            lb = lval[b]
            nca = (la + 1) * (la + 2) // 2
            ncb = (lb + 1) * (lb + 2) // 2
            ea = expo[a]
            eb = expo[b]
            p = ea + eb
            mu = ea * eb / p
            for it in range(img0[n], img1[n]):
                X0 = coord[a, 0] - coord[b, 0] - imgT[it, 0]
                X1 = coord[a, 1] - coord[b, 1] - imgT[it, 1]
                X2 = coord[a, 2] - coord[b, 2] - imgT[it, 2]
                P0 = coord[a, 0] - eb * X0 / p
                P1 = coord[a, 1] - eb * X1 / p
                P2 = coord[a, 2] - eb * X2 / p
                XX = X0 * X0 + X1 * X1 + X2 * X2
                g = sqp / p ** 1.5 * math.exp(-mu * XX)
                # |P - A| = b|X|/p, |P - B| = a|X|/p; polynomial bound of the integrand
                rx = math.sqrt(XX)
                wid = math.sqrt(0.5 * (la + lb + 1) / p)
                for iQ in range(nQ):
                    Q0 = Qv[iQ, 0]
                    Q1 = Qv[iQ, 1]
                    Q2 = Qv[iQ, 2]
                    q2 = Q0 * Q0 + Q1 * Q1 + Q2 * Q2
                    gq = g * math.exp(-q2 / (4.0 * p))
                    sh = wid + 0.5 * math.sqrt(q2) / p
                    poly = (eb * rx / p + sh) ** la * (ea * rx / p + sh) ** lb
                    if gq * max(poly, 1.0) < eps_img[n]:
                        continue
                    ang = Q0 * P0 + Q1 * P1 + Q2 * P2
                    i00 = gq * complex(math.cos(ang), math.sin(ang))
                    os1d(la, lb, p, P0 - coord[a, 0], X0, Q0, i00, work, Ix)
                    os1d(la, lb, p, P1 - coord[a, 1], X1, Q1, 1.0 + 0j, work, Iy)
                    os1d(la, lb, p, P2 - coord[a, 2], X2, Q2, 1.0 + 0j, work, Iz)
                    for ia in range(nca):
                        ax = cart[la, ia, 0]
                        ay = cart[la, ia, 1]
                        az = cart[la, ia, 2]
                        for ib in range(ncb):
                            val[ia, ib] = (Ix[ax, cart[lb, ib, 0]] * Iy[ay, cart[lb, ib, 1]]
                                           * Iz[az, cart[lb, ib, 2]])
                    for k in range(nk):
                        ph = phase[k, it]
                        for ca in range(nctr[a]):
                            ra = ao0[a, ca]
                            for cb in range(nctr[b]):
                                rb = ao0[b, cb]
                                cc = coef[a, ca] * coef[b, cb] * ph
                                for ia in range(nca):
                                    for ib in range(ncb):
                                        out[k, ra + ia, iQ, rb + ib] += cc * val[ia, ib]

    _KERNELS = {"os1d": os1d, "build_tables": build_tables,
                "eval_factorized": eval_factorized, "eval_direct": eval_direct}
    return _KERNELS


# --------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------

class AnalyticEngine:
    """Analytic AO and MO plane-wave matrix elements (see module docstring).

    Args:
        cell: pyscf Cell (any Gaussian basis; all-electron or GTH).
        precision: absolute precision of the AO matrices of normalized AOs
            (entries are <= ~1), default 1e-8; sets the image and pair screening.
        lattice_sum: ``"auto"`` (factorized when the lattice allows it, else
            direct), ``"factorized"`` or ``"direct"``.
        use_transpose: halve the factorized work with ``S(k, Q)^T = S(-k-q, Q)``
            when the k set holds every partner -k-q (a full Gamma-centred mesh does).
        use_conjugate: build only one Q of each +-Q pair, ``S(k, -Q) =
            conj(S(-k, Q))``, when the Q set and the k set are closed under
            negation (every q with 2q in the reciprocal lattice, e.g. all q of
            a 2x2x2 mesh, and q = 0 for any mesh).
    """

    def __init__(self, cell, precision: float = DEFAULT_PRECISION, lattice_sum: str = "auto",
                 use_transpose: bool = True, use_conjugate: bool = True):
        if lattice_sum not in ("auto", "factorized", "direct"):
            raise ValueError("lattice_sum must be 'auto', 'factorized' or 'direct', "
                             f"got {lattice_sum!r}")
        if not precision > 0:
            raise ValueError(f"precision must be > 0, got {precision!r}")
        self.cell = cell
        self.precision = float(precision)
        self.eps = _SCREEN_SHARE * self.precision
        self.basis = _Basis(cell)
        self.a = np.asarray(cell.lattice_vectors(), float)
        self.cart = _cart_components(self.basis.lmax)
        grid = orthorhombic_supergrid(self.a)
        if lattice_sum == "factorized" and grid is None:
            raise ValueError("lattice_sum='factorized' needs a lattice inside an axis-aligned "
                             "orthorhombic grid; use 'direct' or 'auto'")
        self.lattice_sum = ("direct" if lattice_sum == "direct" or grid is None else "factorized")
        #: evaluate pairs a <= b only and fill (b, a) from S(k, Q)^T = S(-k-q, Q)
        self.use_transpose = bool(use_transpose)
        #: build one Q of each +-Q pair and fill the other from S(k,-Q) = conj(S(-k,Q))
        self.use_conjugate = bool(use_conjugate)
        self.last_plan_bytes = 0
        self.grid = grid
        if getattr(cell, "cart", False):
            self.c2s = np.eye(self.basis.nao_cart)
        else:
            self.c2s = np.asarray(cell.cart2sph_coeff(normalized="sp"), float)
        self.nao = self.c2s.shape[1]
        self.nao_cart = self.basis.nao_cart
        if self.c2s.shape[0] != self.nao_cart:
            raise RuntimeError("cartesian AO count mismatch with pyscf's cart2sph_coeff")
        self._pairs()

    # ---------------------------------------------------------------- setup
    def _pairs(self):
        """All primitive pairs (a, b) with their screening data."""
        B = self.basis
        n = B.nprim
        pa, pb = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        pa, pb = pa.ravel(), pb.ravel()
        ea, eb = B.exp[pa], B.exp[pb]
        p = ea + eb
        mu = ea * eb / p
        la, lb = B.l[pa], B.l[pb]
        # sum over the contractions a primitive enters of |c| (libcint normalization)
        csum = np.abs(B.coef).sum(axis=1)
        cm = csum[pa] * csum[pb]
        # magnitude scale of the pair (pi/p)^{3/2} c_a c_b (all contractions)
        scale = cm * (np.pi / p) ** 1.5
        eps = self.eps
        # radius where exp(-mu R^2) * scale * poly falls below eps (poly ~ R^l)
        cut = np.log(np.maximum(scale, eps) / eps)
        r = np.sqrt(cut / mu)
        vol = abs(np.linalg.det(self.a))
        for _ in range(4):
            poly = (la + lb) * np.log(np.maximum(1.0, r + 1.0 / np.sqrt(p)))
            # images beyond R add up to ~ 2 pi R / (mu V) times the last one
            mult = np.maximum(1.0, 2 * np.pi * r / (mu * vol))
            r = np.sqrt(np.maximum(cut + poly + np.log(mult), 0.0) / mu)
        self._mult = mult
        self._pa, self._pb, self._p, self._mu, self._rcut = pa, pb, p, mu, r
        self._scale = scale
        self._pcmax = cm
        if self.lattice_sum == "factorized":
            h, N, g = self.grid
            X0 = B.coord[pa] - B.coord[pb]  # [npair, 3]
            mlo = np.ceil((X0 - r[:, None]) / h).astype(np.int64)
            mhi = np.floor((X0 + r[:, None]) / h).astype(np.int64)
            keep = np.all(mhi >= mlo, axis=1)
            # a pair whose only image in every direction is m = 0 has T = 0 only
            local = np.all((mlo == 0) & (mhi == 0), axis=1)
            # a pair whose images in the grid contain no lattice point is zero
            self._fkeep = np.nonzero(keep)[0]
            self._mlo, self._mhi = mlo[keep], mhi[keep]
            self._local = local[keep]
        else:
            Ls = self._lattice_images(r.max())
            X0 = B.coord[pa] - B.coord[pb]
            imgs, i0, i1 = [], [], []
            cnt = 0
            keep = []
            for n in range(len(pa)):
                d = np.linalg.norm(X0[n][None, :] - Ls, axis=1)
                sel = np.nonzero(d <= r[n])[0]
                if len(sel) == 0:
                    continue
                keep.append(n)
                imgs.append(sel)
                i0.append(cnt)
                cnt += len(sel)
                i1.append(cnt)
            self._dkeep = np.array(keep, np.int64)
            self._img_index = np.concatenate(imgs) if imgs else np.zeros(0, np.int64)
            self._img0 = np.array(i0, np.int64)
            self._img1 = np.array(i1, np.int64)
            self._Ls = Ls

    def _lattice_images(self, rmax: float) -> np.ndarray:
        """Lattice vectors T [nT, 3] with |T| <= rmax + 2 * max atom distance."""
        B = self.basis
        span = np.linalg.norm(B.coord[:, None, :] - B.coord[None, :, :], axis=-1).max()
        R = rmax + span + 1e-9
        # |n_j| <= R |b_j| / 2 pi
        bnorm = np.linalg.norm(np.asarray(self.cell.reciprocal_vectors()), axis=1)
        nmax = np.ceil(R * bnorm / (2 * np.pi)).astype(int)
        axes = [np.arange(-n, n + 1) for n in nmax]
        m = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        T = m @ self.a
        return T[np.linalg.norm(T, axis=1) <= R]

    # ---------------------------------------------------------------- plans
    def _plan_factorized(self, kpts: np.ndarray, Qv: np.ndarray) -> dict:
        """1D tables of every kept pair for the distinct Q_d of ``Qv`` and the
        columns c = k * D + chi (theta_d = k_d h_d + 2 pi g_chi,d)."""
        K = _kernels()
        B = self.basis
        h, N, g = self.grid
        nchi = len(g)
        uq, qidx = [], np.zeros((len(Qv), 3), np.int64)
        for d in range(3):
            u, inv = _unique_index(Qv[:, d])
            uq.append(u)
            qidx[:, d] = inv
        uq_n = np.array([len(u) for u in uq], np.int64)
        uq_a = np.zeros((3, uq_n.max()))
        for d in range(3):
            uq_a[d, :uq_n[d]] = uq[d]
        theta = (kpts[:, None, :] * h[None, None, :] + 2 * np.pi * g[None, :, :]).reshape(-1, 3)
        theta = np.ascontiguousarray(np.mod(theta, 2 * np.pi))
        kbar = self.partner_kpoints(kpts, Qv) if self.use_transpose else None
        sha = B.shell[self._pa[self._fkeep]]
        shb = B.shell[self._pb[self._fkeep]]
        if kbar is None:
            kbar = np.full(len(kpts), -1, np.int64)
            sel = np.arange(len(self._fkeep))
        else:
            # (J, I) blocks follow from (I, J) at kbar: keep shell pairs I <= J only
            sel = np.nonzero(sha <= shb)[0]
        # group the primitive pairs by contracted shell pair
        sel = sel[np.lexsort((shb[sel], sha[sel]))]
        gid = sha[sel] * (B.shell.max() + 1) + shb[sel]
        gstart = np.r_[0, np.nonzero(np.diff(gid))[0] + 1, len(sel)].astype(np.int64)
        gsym = (sha[sel][gstart[:-1]] != shb[sel][gstart[:-1]]) & (kbar[0] >= 0)
        keep = self._fkeep[sel]
        pa, pb = self._pa[keep], self._pb[keep]
        local = self._local[sel]
        la, lb = B.l[pa], B.l[pb]
        nij = (la + 1) * (lb + 1)
        nkc = np.where(local, 1, len(theta))
        sizes = uq_n[None, :] * (nij * nkc)[:, None]  # [npair, 3]
        toff = np.zeros((len(pa), 3), np.int64)
        flat = sizes.ravel()
        toff.ravel()[1:] = np.cumsum(flat)[:-1]
        tre = np.zeros(int(flat.sum()))
        tim = np.zeros(int(flat.sum()))
        fmax = np.zeros((len(pa), 3, uq_n.max()))
        K["build_tables"](pa, pb, local, B.coord, B.l, B.exp, np.asarray(h, float),
                          self._mlo[sel], self._mhi[sel], uq_a, uq_n, theta, toff, tre, tim, fmax)
        #: bytes of the last factorized plan's tables (for the memory report)
        self.last_plan_bytes = int(tre.nbytes + tim.nbytes + fmax.nbytes)
        return {"gstart": gstart, "gsym": gsym, "pa": pa, "pb": pb, "local": local,
                "pcmax": self._pcmax[keep],
                "toff": toff, "tre": tre, "tim": tim, "fmax": fmax, "qidx": qidx,
                "nchi": nchi, "kbar": kbar, "nk": len(kpts)}

    def partner_kpoints(self, kpts, Qv):
        """Index map ``kbar[k]`` of the k point ``-k - q`` (mod G) in ``kpts``
        when every Q in ``Qv`` is ``q + G`` for one q, else None.

        ``s_nu,mu(T; Q) = exp(iQ.T) s_mu,nu(-T; Q)`` gives ``S(k, Q)^T =
        S(-k - q, Q)``: with the partner of every k in the set, only the
        pairs a <= b are evaluated."""
        kpts = np.asarray(kpts, float).reshape(-1, 3)
        Qv = np.asarray(Qv, float).reshape(-1, 3)
        if len(Qv) == 0:
            return None
        q = Qv[0]
        f = (Qv - q) @ self.a.T / (2 * np.pi)
        if np.abs(f - np.round(f)).max() > 1e-6:
            return None
        kb = np.full(len(kpts), -1, np.int64)
        for i, k in enumerate(kpts):
            f = (kpts - (-k - q)) @ self.a.T / (2 * np.pi)
            hit = np.nonzero(np.abs(f - np.round(f)).max(axis=1) < 1e-6)[0]
            if len(hit) == 0:
                return None
            kb[i] = hit[0]
        if np.any(kb[kb] != np.arange(len(kpts))):  # duplicate k: no bijection
            return None
        return kb

    # ---------------------------------------------------------------- public
    def memory_bytes(self, nk: int, batch: int = 32, nQ_total: int | None = None,
                     nbands: int | None = None, nbands_p: int | None = None) -> int:
        """Bound of the large arrays of one :meth:`iter_matrix_elements` pass [bytes].

        Args:
            nk: k points per call; batch: Q built per batch; nQ_total: Q of the
            call (sets the 1D table size; default ``batch``); nbands, nbands_p:
            ket and bra bands (default nao_cart).

        Counts the 1D tables (factorized route; local pairs counted as
        extended, so an over-estimate), the AO batch ``[nk, nao_c, batch,
        nao_c]``, the half-transformed GEMM result ``[nao_c batch, 2 nb]`` and
        one M batch ``[nk, 2 batch, nb', nb]``.  :meth:`matrix_elements`
        holds in addition its whole output ``[nk, nQ, nb', nb]``."""
        nQ_total = batch if nQ_total is None else nQ_total
        nc = self.nao_cart
        nb = nc if nbands is None else nbands
        nbp = nc if nbands_p is None else nbands_p
        b = 16 * nk * batch * nc * nc
        b += 16 * 2 * batch * nc * 2 * nb
        b += 16 * nk * 2 * batch * nbp * nb
        if self.lattice_sum == "factorized":
            B = self.basis
            keep = self._fkeep
            nij = (B.l[self._pa[keep]] + 1) * (B.l[self._pb[keep]] + 1)
            # distinct Q_d per direction: at most nQ_total; a sphere of N points
            # spans about 2 (3N / 4 pi)^(1/3) layers per direction
            nqd = min(nQ_total, int(2 * (3 * nQ_total / (4 * np.pi)) ** (1 / 3)) + 8)
            ncol = nk * len(self.grid[2])
            b += 16 * 3 * int(nij.sum()) * ncol * nqd
        else:
            b += 16 * nk * len(self._img_index)
        return int(b)

    def conjugate_partners(self, kpts, Qv):
        """``(rep, partner, kneg)`` for the relation ``S(k, -Q) = conj(S(-k, Q))``
        (real AOs), or None when the Q set is not closed under Q -> -Q or the
        k set under k -> -k (mod G).

        rep: indices of the Q evaluated (one of each +-Q pair); partner[i]:
        index of -Qv[rep[i]] (== rep[i] for Q = 0); kneg[k]: index of -k."""
        kpts = np.asarray(kpts, float).reshape(-1, 3)
        Qv = np.asarray(Qv, float).reshape(-1, 3)
        if not self.use_conjugate or len(Qv) == 0:
            return None
        # match Q and -Q by their rounded fractional coordinates
        f = np.round(Qv @ self.a.T * (1e6 / (2 * np.pi))).astype(np.int64).tolist()
        key = {tuple(x): i for i, x in enumerate(f)}
        neg = np.array([key.get((-x[0], -x[1], -x[2]), -1) for x in f], np.int64)
        if np.any(neg < 0):
            return None
        kneg = np.full(len(kpts), -1, np.int64)
        for i, k in enumerate(kpts):
            f = (kpts + k) @ self.a.T / (2 * np.pi)
            hit = np.nonzero(np.abs(f - np.round(f)).max(axis=1) < 1e-6)[0]
            if len(hit) == 0:
                return None
            kneg[i] = hit[0]
        # both maps must be involutions (no duplicate Q or k)
        if np.any(neg[neg] != np.arange(len(Qv))) or np.any(kneg[kneg] != np.arange(len(kpts))):
            return None
        rep = np.nonzero(np.arange(len(Qv)) <= neg)[0]
        return rep, neg[rep], kneg

    def _rep_batches(self, kpts, Qv, batch: int):
        """Yield ``(rep, S, partner, sel, kneg)`` per batch: ``S[k, mu, j, nu]``
        (Cartesian AOs) for ``Qv[rep[j]]``; with the +-Q relation, the Q
        ``Qv[partner[j]]`` for ``j in sel`` follow as ``conj(S[kneg[k], :, j])``
        (partner, sel, kneg are None without it)."""
        kpts = np.asarray(kpts, float).reshape(-1, 3)
        Qv = np.asarray(Qv, float).reshape(-1, 3)
        nk, nc = len(kpts), self.nao_cart
        pm = self.conjugate_partners(kpts, Qv)
        if pm is None:
            rep, partner, kneg = np.arange(len(Qv)), None, None
        else:
            rep, partner, kneg = pm
        Qrep = Qv[rep]
        plan = None
        if self.lattice_sum == "factorized":
            plan = self._plan_factorized(kpts, Qrep)
            # order by (Q_y, Q_z, Q_x): the kernel reuses the y*z products
            qi = plan["qidx"]
            order = np.lexsort((qi[:, 0], qi[:, 2], qi[:, 1]))
            plan["qidx"] = np.ascontiguousarray(qi[order])
            rep, Qrep = rep[order], Qrep[order]
            if partner is not None:
                partner = partner[order]
        buf = None
        for s0 in range(0, len(rep), batch):
            s1 = min(s0 + batch, len(rep))
            # one buffer for all full batches (no page faults per batch); the
            # consumer uses S before asking for the next batch
            if buf is None or buf.shape[2] != s1 - s0:
                buf = np.zeros((nk, nc, s1 - s0, nc), np.complex128)
            else:
                buf[...] = 0.0
            S = buf
            if plan is not None:
                self._eval_plan(plan, slice(s0, s1), S)
            else:
                self._eval_direct(kpts, Qrep[s0:s1], S)
            if partner is None:
                yield rep[s0:s1], S, None, None, None
            else:
                p = partner[s0:s1]
                yield rep[s0:s1], S, p, np.nonzero(p != rep[s0:s1])[0], kneg

    def ao_cart_batches(self, kpts, Qv, batch: int = 32):
        """Yield ``(idx, S_cart)``: Cartesian AO matrices ``S_cart[k, j, mu, nu]``
        for the Q vectors ``Qv[idx[j]]``, batch by batch, covering every Q once
        (with the +-Q relation a batch holds up to 2 * batch Q)."""
        for rep, S, partner, sel, kneg in self._rep_batches(kpts, Qv, batch):
            St = S.transpose(0, 2, 1, 3)
            if partner is None:
                yield rep, np.ascontiguousarray(St)
            else:
                yield (np.concatenate([rep, partner[sel]]),
                       np.concatenate([St, np.conj(St[kneg][:, sel])], axis=1))

    def ao_matrices_cart(self, kpts, Qv) -> np.ndarray:
        """Cartesian AO matrices S_cart[k, iQ, mu, nu] (complex, dimensionless).

        Args:
            kpts: [nk, 3] ket k points [bohr^-1].
            Qv: [nQ, 3] momentum transfers Q [bohr^-1] (bra at k + Q mod G).
        """
        kpts = np.asarray(kpts, float).reshape(-1, 3)
        Qv = np.asarray(Qv, float).reshape(-1, 3)
        out = np.zeros((len(kpts), len(Qv), self.nao_cart, self.nao_cart), np.complex128)
        for idx, S in self.ao_cart_batches(kpts, Qv, batch=max(len(Qv), 1)):
            out[:, idx] = S
        return out

    def _eval_plan(self, plan, sl: slice, out: np.ndarray) -> int:
        """Add the Q slice ``sl`` of a factorized plan into ``out`` [nk, nc, nQs, nc]."""
        K = _kernels()
        B = self.basis
        return int(K["eval_factorized"](plan["gstart"], plan["gsym"], plan["pa"], plan["pb"],
                                        plan["local"], plan["pcmax"], B.l, B.nctr, B.coef, B.ao0,
                                        self.cart, plan["toff"], plan["tre"], plan["tim"],
                                        plan["fmax"], plan["qidx"][sl], plan["nchi"],
                                        plan["kbar"], self.eps, out))

    def _eval_direct(self, kpts, Qv, out):
        K = _kernels()
        B = self.basis
        keep = self._dkeep
        T = self._Ls[self._img_index]
        phase = np.exp(1j * (kpts @ T.T))
        eps_img = self.eps / (self._pcmax[keep] * self._mult[keep])
        K["eval_direct"](self._pa[keep], self._pb[keep], self._img0, self._img1,
                         np.ascontiguousarray(T), B.l, B.nctr, B.coef, B.ao0, B.coord, B.exp,
                         self.cart, Qv, phase, eps_img, out)

    def ao_matrices(self, kpts, Qv) -> np.ndarray:
        """AO matrices ``S[k, iQ, mu, nu] = <phi^{k+Q}_mu| exp(iQ.r) |phi^k_nu>_cell``
        in the cell's AO basis (spherical unless ``cell.cart``), complex
        [nk, nQ, nao, nao], dimensionless.  Equal to
        ``ft_aopair_bloch(cell, Qv - q, k, k + q)`` for ``Q = q + G``.

        Args:
            kpts: [nk, 3] ket k points [bohr^-1].
            Qv: [nQ, 3] Q vectors [bohr^-1].
        """
        Sc = self.ao_matrices_cart(kpts, Qv)
        c = self.c2s
        return np.einsum("mi,kqmn,nj->kqij", c, Sc, c, optimize=True)

    def iter_matrix_elements(self, kpts, Qv, coeffs_k, coeffs_kq, batch: int = 32):
        """Yield ``(idx, M)`` batch by batch: ``M[k, j, i', i] = <i', k+q|
        exp(iQ.r) |i, k>`` for ``Q = Qv[idx[j]]`` (complex [nk, len(idx), nb', nb],
        a fresh array per batch); every Q once.  Arguments as :meth:`matrix_elements`.

        Memory: the batch of AO matrices (``nk * batch * nao_cart^2 * 16`` bytes),
        the 1D tables and one M batch (``nk * 2 batch * nb' * nb * 16``)."""
        kpts = np.asarray(kpts, float).reshape(-1, 3)
        Qv = np.asarray(Qv, float).reshape(-1, 3)
        nk = len(kpts)
        Ck = np.asarray(coeffs_k, complex).reshape(nk, self.nao, -1)
        Ckq = np.asarray(coeffs_kq, complex).reshape(nk, self.nao, -1)
        # fold cart -> sph into the coefficients: C_cart = c2s C
        Ckc = np.einsum("mi,kin->kmn", self.c2s, Ck)
        Ckqh = np.einsum("mi,kin->knm", self.c2s, Ckq).conj()  # [nk, nb', nao_cart]
        nb, nbp = Ck.shape[2], Ckq.shape[2]
        nc = self.nao_cart
        for rep, S, partner, sel, kneg in self._rep_batches(kpts, Qv, batch):
            nq = len(rep)
            npart = 0 if partner is None else len(sel)
            M = np.empty((nk, nq + npart, nbp, nb), np.complex128)
            for j in range(nk):
                # S[j] is [nc, nq, nc]: one GEMM [nc nq, nc] @ [nc, nb] (plus the
                # columns conj(C) of the -Q partner k = kneg[j]), then [nb', nc] @ [nc, nq nb]
                # (one batched matmul over k measured no faster: the cost is the GEMMs' arithmetic)
                A = S[j].reshape(nc * nq, nc)
                if partner is None:
                    R = A @ Ckc[j]
                else:
                    R = A @ np.concatenate([Ckc[j], Ckc[kneg[j]].conj()], axis=1)
                X = np.ascontiguousarray(R[:, :nb]).reshape(nc, nq * nb)
                M[j, :nq] = (Ckqh[j] @ X).reshape(nbp, nq, nb).transpose(1, 0, 2)
                if npart:
                    # M(k', -Q) = Ckqh[k'] conj(S(j, Q)) Ckc[k'] with k' = kneg[j]
                    kp = kneg[j]
                    X = np.conj(R[:, nb:].reshape(nc, nq, nb)[:, sel]).reshape(nc, npart * nb)
                    M[kp, nq:] = (Ckqh[kp] @ X).reshape(nbp, npart, nb).transpose(1, 0, 2)
            yield (rep if partner is None else np.concatenate([rep, partner[sel]])), M

    def matrix_elements(self, kpts, Qv, coeffs_k, coeffs_kq, batch: int = 32,
                        out: np.ndarray | None = None) -> np.ndarray:
        """MO matrix elements ``M[k, iQ, i', i] = <i', k+q| exp(iQ.r) |i, k>``.

        Args:
            kpts: [nk, 3] ket k points [bohr^-1].
            Qv: [nQ, 3] Q = q + G [bohr^-1], one q for all (bra at k + q).
            coeffs_k: [nk, nao, nb] ket MO coefficients at kpts.
            coeffs_kq: [nk, nao, nb'] bra MO coefficients at kpts + q.
            batch: Q built per evaluation batch (up to 2 * batch Q per batch
                with the +-Q relation; memory: :meth:`memory_bytes`).
            out: optional complex [nk, nQ, nb', nb] output.

        Returns:
            complex [nk, nQ, nb', nb] (``M[k].transpose(1, 2, 0)`` is the
            [nb', nb, nQ] layout of ``matrix_elements.aopair_matrix_elements``).
            :meth:`iter_matrix_elements` streams the same by batches.
        """
        kpts = np.asarray(kpts, float).reshape(-1, 3)
        Qv = np.asarray(Qv, float).reshape(-1, 3)
        nb = np.shape(coeffs_k)[-1]
        nbp = np.shape(coeffs_kq)[-1]
        if out is None:
            out = np.empty((len(kpts), len(Qv), nbp, nb), np.complex128)
        for idx, M in self.iter_matrix_elements(kpts, Qv, coeffs_k, coeffs_kq, batch):
            out[:, idx] = M
        return out
