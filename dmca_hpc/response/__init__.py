"""Response of the crystal: eps(q, w) from the form-factor table, its
optical limit, Kramers-Kronig, the q-sampling correction and screening.

:class:`DielectricError` is defined here, the one place every module of the
package can import it from without importing each other.
"""


class DielectricError(ValueError):
    """Bad input to the dielectric code (message names the file/key and the
    expected value)."""
