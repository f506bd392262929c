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
fcc, bcc, sc -- and hexagonal cells with a1 along x are), the indicator of
the lattice in that grid is a sum of D = |det(A H^-1)| characters
``(1/D) sum_chi exp(2 pi i g_chi.m)`` (fcc, bcc: D = 2).  The Bloch phase
``exp(i k.T) = prod_d exp(i k_d h_d m_d)`` and the Gaussian product factorise
per direction too, so

    S_ab(k, Q) = (1/D) sum_chi prod_d F_d[a_d, b_d](theta_d, Q_d),
    F_d(theta, Q_d) = sum_m exp(i theta m) I_{a_d b_d}(Q_d; B_d + h_d m),
    theta_d = k_d h_d + 2 pi g_chi,d:

the lattice sum becomes three 1D sums tabulated once per primitive pair for
the few distinct Q_d and theta_d of a Q set.  Per (k, Q) a Cartesian primitive
pair then costs D products of three table entries; pairs whose 1D sums hold
only the home image (compact x compact) are k independent and are evaluated
once per Q for all k.  Other lattices use ``lattice_sum="direct"``: an
explicit sum over the images T kept by the screening, with the Bloch phase of
every k applied per image (exact, slower).

Screening (``precision``, default 1e-8, absolute on the AO matrix of
normalized AOs, whose entries are <= ~1): a 1D image m is kept while
``c_ab (pi/p)^{3/2} exp(-mu X_d^2) |X|^l > precision/10``; a primitive pair is
skipped at a Q when the product of its three tabulated maxima (an upper
bound of its contribution, which carries exp(-|Q|^2/4p)) is below
``precision/10``.  Compact primitives thus only see their own atom's
images, and diffuse pairs drop out at large |Q|.

Normalization: libcint's Cartesian functions (``fac_sp(l) *
_libcint_ctr_coeff * x^i y^j z^k exp(-a r^2)``, fac_sp = 1/sqrt(4 pi) for s,
sqrt(3/(4 pi)) for p, 1 otherwise) and ``cell.cart2sph_coeff()``; the
spherical matrix is ``c2s^T S_cart c2s`` and the MO transform folds c2s into
the coefficients (``C_cart = c2s C``).

Cost and memory (per rank)
--------------------------
Tables: ``3 * n_pairs * n_theta * n_Qd * (l_a+1)(l_b+1)`` complex numbers per
(k set, Q set) (Si def2-svp, 2x2x2 k, q <= 10: ~20 MB).  Output batch:
``n_k * n_Qbatch * nao_cart^2 * 16`` bytes.  Work per (k, Q): ~D * n_cart_pairs
complex products for the extended pairs + the MO transform
``n_k (nao^2 n_val + nao n_val n_cond)`` (a batched matmul).
:meth:`AnalyticEngine.memory_bytes` gives the bound.

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
    nmax = np.ceil((q_max + np.linalg.norm(q)) * np.linalg.norm(a, axis=1) / (2 * np.pi)).astype(int)
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
        nao_cart, lmax.
    """

    def __init__(self, cell):
        coord, ls, exps, nctr, coefs, ao0 = [], [], [], [], [], []
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
            off += ncart * nc
        self.coord = np.array(coord, float).reshape(-1, 3)
        self.l = np.array(ls, np.int64)
        self.exp = np.array(exps, float)
        self.nctr = np.array(nctr, np.int64)
        self.coef = np.array(coefs, float).reshape(-1, maxctr)
        self.ao0 = np.array(ao0, np.int64).reshape(-1, maxctr)
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
    def build_tables(pa, pb, coord, lval, expo, h, mlo, mhi, uq, uq_n, uth, uth_n,
                     toff, table, fmax):
        # For every pair n and direction d: table[toff[n, d] + ((t * nuq_d + iq)
        # * (la+1) + i) * (lb+1) + j] = sum_m exp(i uth[d, t] m) I_ij(uq[d, iq];
        # B_d + h_d m), m in [mlo[n, d], mhi[n, d]]; fmax[n, d, iq] = max |.| over t, i, j.
        npair = pa.shape[0]
        lmax = 0
        for n in range(lval.shape[0]):
            if lval[n] > lmax:
                lmax = lval[n]
        work = np.zeros((2 * lmax + 1, lmax + 1), np.complex128)
        I = np.zeros((lmax + 1, lmax + 1), np.complex128)
        nthmax = uth.shape[1]
        ph = np.zeros(nthmax, np.complex128)
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
            nij = (la + 1) * (lb + 1)
            for d in range(3):
                nuq = uq_n[d]
                nth = uth_n[d]
                base = toff[n, d]
                Ad = coord[a, d]
                for m in range(mlo[n, d], mhi[n, d] + 1):
                    Bd = coord[b, d] + h[d] * m
                    X = Ad - Bd
                    P = (ea * Ad + eb * Bd) / p
                    g = sq / math.sqrt(p) * math.exp(-mu * X * X)
                    for t in range(nth):
                        ang = uth[d, t] * m
                        ph[t] = complex(math.cos(ang), math.sin(ang))
                    for iq in range(nuq):
                        qd = uq[d, iq]
                        ang = qd * P
                        i00 = g * math.exp(-qd * qd / (4.0 * p)) * complex(math.cos(ang), math.sin(ang))
                        os1d(la, lb, p, P - Ad, X, qd, i00, work, I)
                        for t in range(nth):
                            o = base + (t * nuq + iq) * nij
                            pt = ph[t]
                            for i in range(la + 1):
                                for j in range(lb + 1):
                                    table[o + i * (lb + 1) + j] += pt * I[i, j]
                for iq in range(nuq):
                    mx = 0.0
                    for t in range(nth):
                        o = base + (t * nuq + iq) * nij
                        for r in range(nij):
                            v = abs(table[o + r])
                            if v > mx:
                                mx = v
                    fmax[n, d, iq] = mx

    @njit_fast
    def eval_factorized(pa, pb, local, pcmax, lval, nctr, coef, ao0, cart, uq_n, uth_n,
                        toff, table, fmax, qidx, thidx, kbar, invD, eps, out):
        # out[k, iQ, mu, nu] += contributions of every pair (cartesian AOs).
        # kbar[k] >= 0: the pair list holds a <= b only and the transposed
        # block (b, a) at k is the (a, b) block at kbar[k] (= -k - q mod G).
        npair = pa.shape[0]
        nk = out.shape[0]
        nQ = out.shape[1]
        nchi = thidx.shape[1]
        ncm = cart.shape[1]
        val = np.zeros((ncm, ncm), np.complex128)
        ix = np.zeros((3, ncm, ncm), np.int64)
        nkept = 0
        n0 = uq_n[0]
        n1 = uq_n[1]
        n2 = uq_n[2]
        for n in range(npair):
            a = pa[n]
            b = pb[n]
            sym = a != b and kbar[0] >= 0
            la = lval[a]
            lb = lval[b]
            nca = (la + 1) * (la + 2) // 2
            ncb = (lb + 1) * (lb + 2) // 2
            nij = (la + 1) * (lb + 1)
            l1 = lb + 1
            for ia in range(nca):
                for ib in range(ncb):
                    for d in range(3):
                        ix[d, ia, ib] = cart[la, ia, d] * l1 + cart[lb, ib, d]
            o0 = toff[n, 0]
            o1 = toff[n, 1]
            o2 = toff[n, 2]
            for iQ in range(nQ):
                q0 = qidx[iQ, 0]
                q1 = qidx[iQ, 1]
                q2 = qidx[iQ, 2]
                bound = pcmax[n] * fmax[n, 0, q0] * fmax[n, 1, q1] * fmax[n, 2, q2]
                if bound < eps:
                    continue
                nkept += 1
                if local[n]:
                    # home image only: k independent, table index t = 0
                    b0 = o0 + q0 * nij
                    b1 = o1 + q1 * nij
                    b2 = o2 + q2 * nij
                    for ia in range(nca):
                        for ib in range(ncb):
                            val[ia, ib] = (table[b0 + ix[0, ia, ib]] * table[b1 + ix[1, ia, ib]]
                                           * table[b2 + ix[2, ia, ib]])
                    for ca in range(nctr[a]):
                        ra = ao0[a, ca]
                        for cb in range(nctr[b]):
                            rb = ao0[b, cb]
                            cc = coef[a, ca] * coef[b, cb]
                            for ia in range(nca):
                                for ib in range(ncb):
                                    v = cc * val[ia, ib]
                                    for k in range(nk):
                                        out[k, iQ, ra + ia, rb + ib] += v
                                        if sym:
                                            out[k, iQ, rb + ib, ra + ia] += v
                    continue
                for k in range(nk):
                    for ia in range(nca):
                        for ib in range(ncb):
                            val[ia, ib] = 0.0
                    for c in range(nchi):
                        b0 = o0 + (thidx[k, c, 0] * n0 + q0) * nij
                        b1 = o1 + (thidx[k, c, 1] * n1 + q1) * nij
                        b2 = o2 + (thidx[k, c, 2] * n2 + q2) * nij
                        for ia in range(nca):
                            for ib in range(ncb):
                                val[ia, ib] += (table[b0 + ix[0, ia, ib]] * table[b1 + ix[1, ia, ib]]
                                                * table[b2 + ix[2, ia, ib]])
                    kb = kbar[k]
                    for ca in range(nctr[a]):
                        ra = ao0[a, ca]
                        for cb in range(nctr[b]):
                            rb = ao0[b, cb]
                            cc = coef[a, ca] * coef[b, cb] * invD
                            for ia in range(nca):
                                for ib in range(ncb):
                                    v = cc * val[ia, ib]
                                    out[k, iQ, ra + ia, rb + ib] += v
                                    if sym:
                                        out[kb, iQ, rb + ib, ra + ia] += v
        return nkept

    @njit
    def eval_direct(pa, pb, img0, img1, imgT, lval, nctr, coef, ao0, coord, expo, cart,
                    Qv, phase, eps_img, out):
        # explicit image sum: pair n uses images imgT[img0[n]:img1[n]] (cartesian T);
        # phase [nk, nimg_total] = exp(i k.T) of each stored image
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
                                        out[k, iQ, ra + ia, rb + ib] += cc * val[ia, ib]

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
    """

    def __init__(self, cell, precision: float = DEFAULT_PRECISION, lattice_sum: str = "auto",
                 use_transpose: bool = True):
        if lattice_sum not in ("auto", "factorized", "direct"):
            raise ValueError(f"lattice_sum must be 'auto', 'factorized' or 'direct', got {lattice_sum!r}")
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
        K = _kernels()
        B = self.basis
        h, N, g = self.grid
        nchi = len(g)
        # distinct Q_d and theta_d = k_d h_d + 2 pi g_chi,d (mod 2 pi)
        uq, qidx = [], np.zeros((len(Qv), 3), np.int64)
        uth, thidx = [], np.zeros((len(kpts), nchi, 3), np.int64)
        for d in range(3):
            u, inv = _unique_index(Qv[:, d])
            uq.append(u)
            qidx[:, d] = inv
            th = kpts[:, d][:, None] * h[d] + 2 * np.pi * g[None, :, d]
            th = np.mod(th, 2 * np.pi)
            th[np.abs(th - 2 * np.pi) < 1e-10] = 0.0
            u, inv = _unique_index(th, 10)
            uth.append(u)
            thidx[:, :, d] = inv
        uq_n = np.array([len(u) for u in uq], np.int64)
        uth_n = np.array([len(u) for u in uth], np.int64)
        uq_a = np.zeros((3, uq_n.max()))
        uth_a = np.zeros((3, uth_n.max()))
        for d in range(3):
            uq_a[d, :uq_n[d]] = uq[d]
            uth_a[d, :uth_n[d]] = uth[d]
        kbar = self.partner_kpoints(kpts, Qv) if self.use_transpose else None
        if kbar is None:
            kbar = np.full(len(kpts), -1, np.int64)
            sel = np.arange(len(self._fkeep))
        else:
            # (b, a) blocks follow from (a, b) at kbar: keep a <= b only
            sel = np.nonzero(self._pa[self._fkeep] <= self._pb[self._fkeep])[0]
        keep = self._fkeep[sel]
        pa, pb = self._pa[keep], self._pb[keep]
        la, lb = B.l[pa], B.l[pb]
        nij = (la + 1) * (lb + 1)
        sizes = (uth_n[None, :] * uq_n[None, :]) * nij[:, None]  # [npair, 3]
        toff = np.zeros((len(pa), 3), np.int64)
        flat = sizes.ravel()
        toff.ravel()[1:] = np.cumsum(flat)[:-1]
        table = np.zeros(int(flat.sum()), np.complex128)
        fmax = np.zeros((len(pa), 3, uq_n.max()))
        K["build_tables"](pa, pb, B.coord, B.l, B.exp, np.asarray(h, float), self._mlo[sel],
                          self._mhi[sel], uq_a, uq_n, uth_a, uth_n, toff, table, fmax)
        return {"pa": pa, "pb": pb, "local": self._local[sel], "pcmax": self._pcmax[keep],
                "uq_n": uq_n, "uth_n": uth_n, "toff": toff, "table": table, "fmax": fmax,
                "qidx": qidx, "thidx": thidx, "kbar": kbar, "invD": 1.0 / nchi}

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
        return kb

    # ---------------------------------------------------------------- public
    def memory_bytes(self, nk: int, nQ_batch: int, nQ_total: int | None = None,
                     nbands: int | None = None, nbands_p: int | None = None) -> int:
        """Bound of the large arrays of one :meth:`matrix_elements` call [bytes]:
        the 1D tables for ``nQ_total`` Q (factorized route), one batch of
        Cartesian AO matrices ``[nk, nQ_batch, nao_cart, nao_cart]``, its
        half-transformed copy and the MO output ``[nk, nQ_batch, nb', nb]``."""
        nQ_total = nQ_batch if nQ_total is None else nQ_total
        nc = self.nao_cart
        b = 16 * nk * nQ_batch * nc * nc
        nb = nc if nbands is None else nbands
        nbp = nc if nbands_p is None else nbands_p
        b += 16 * nk * nQ_batch * (nc * nb + nbp * nb)
        if self.lattice_sum == "factorized":
            B = self.basis
            keep = self._fkeep
            nij = (B.l[self._pa[keep]] + 1) * (B.l[self._pb[keep]] + 1)
            # distinct components per direction: at most nQ_total, typically ~ 2 q_max / |b|
            nqd = min(nQ_total, int(round(nQ_total ** (1.0 / 3.0) * 2)) + 8)
            nth = nk * len(self.grid[2])
            b += 16 * 3 * int(nij.sum()) * nth * nqd
        return int(b)

    def ao_matrices_cart(self, kpts, Qv) -> np.ndarray:
        """Cartesian AO matrices S_cart[k, iQ, mu, nu] (complex, dimensionless).

        Args:
            kpts: [nk, 3] ket k points [bohr^-1].
            Qv: [nQ, 3] momentum transfers Q [bohr^-1] (bra at k + Q mod G).
        """
        kpts = np.asarray(kpts, float).reshape(-1, 3)
        Qv = np.asarray(Qv, float).reshape(-1, 3)
        out = np.zeros((len(kpts), len(Qv), self.nao_cart, self.nao_cart), np.complex128)
        if len(Qv) == 0:
            return out
        if self.lattice_sum == "factorized":
            plan = self._plan_factorized(kpts, Qv)
            self._eval_plan(plan, slice(0, len(Qv)), out)
        else:
            self._eval_direct(kpts, Qv, out)
        return out

    def _eval_plan(self, plan, sl: slice, out) -> int:
        K = _kernels()
        B = self.basis
        return int(K["eval_factorized"](plan["pa"], plan["pb"], plan["local"], plan["pcmax"],
                                        B.l, B.nctr, B.coef, B.ao0, self.cart, plan["uq_n"],
                                        plan["uth_n"], plan["toff"], plan["table"],
                                        plan["fmax"], plan["qidx"][sl], plan["thidx"],
                                        plan["kbar"], plan["invD"], self.eps, out))

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

    def matrix_elements(self, kpts, Qv, coeffs_k, coeffs_kq, batch: int = 256,
                        out: np.ndarray | None = None) -> np.ndarray:
        """MO matrix elements ``M[k, iQ, i', i] = <i', k+q| exp(iQ.r) |i, k>``.

        Args:
            kpts: [nk, 3] ket k points [bohr^-1].
            Qv: [nQ, 3] Q = q + G [bohr^-1], one q for all (bra at k + q).
            coeffs_k: [nk, nao, nb] ket MO coefficients at kpts.
            coeffs_kq: [nk, nao, nb'] bra MO coefficients at kpts + q.
            batch: Q per evaluation batch (memory: :meth:`memory_bytes`).
            out: optional complex [nk, nQ, nb', nb] output.

        Returns:
            complex [nk, nQ, nb', nb] (``M[k].transpose(1, 2, 0)`` is the
            [nb', nb, nQ] layout of ``matrix_elements.aopair_matrix_elements``).
        """
        kpts = np.asarray(kpts, float).reshape(-1, 3)
        Qv = np.asarray(Qv, float).reshape(-1, 3)
        nk = len(kpts)
        Ck = np.asarray(coeffs_k, complex).reshape(nk, self.nao, -1)
        Ckq = np.asarray(coeffs_kq, complex).reshape(nk, self.nao, -1)
        # fold cart -> sph into the coefficients: C_cart = c2s C
        Ckc = np.einsum("mi,kin->kmn", self.c2s, Ck)
        Ckqh = np.einsum("mi,kin->knm", self.c2s, Ckq).conj()  # [nk, nb', nao_cart]
        nb, nbp = Ck.shape[2], Ckq.shape[2]
        if out is None:
            out = np.empty((nk, len(Qv), nbp, nb), np.complex128)
        plan = self._plan_factorized(kpts, Qv) if self.lattice_sum == "factorized" else None
        buf = np.empty((nk, min(batch, max(len(Qv), 1)), self.nao_cart, self.nao_cart), np.complex128)
        for s0 in range(0, len(Qv), batch):
            s1 = min(s0 + batch, len(Qv))
            S = buf[:, :s1 - s0]
            S[...] = 0.0
            if plan is not None:
                self._eval_plan(plan, slice(s0, s1), S)
            else:
                self._eval_direct(kpts, Qv[s0:s1], S)
            nq, nc = s1 - s0, self.nao_cart
            for k in range(nk):
                # one GEMM [nQb nc, nc] @ [nc, nb], then [nb', nc] @ [nc, nQb nb]
                tmp = (S[k].reshape(nq * nc, nc) @ Ckc[k]).reshape(nq, nc, nb)
                tmp = np.ascontiguousarray(tmp.transpose(1, 0, 2)).reshape(nc, nq * nb)
                out[k, s0:s1] = (Ckqh[k] @ tmp).reshape(nbp, nq, nb).transpose(1, 0, 2)
        return out
