"""The README's Python API example runs as written (with the bands file of a
small real run in place of the quickstart's) and gives finite numbers in the
units it states."""
import re

import numpy as np

from conftest import ROOT
from si_cases import cached_si_bands


def _example():
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- api-example:begin -->", 1)[1].split("<!-- api-example:end -->", 1)[0]
    return re.search(r"```python\n(.*?)```", block, flags=re.S).group(1)


def test_readme_api_example_runs(request, tmp_path_factory, capsys):
    bands = cached_si_bands(request, tmp_path_factory.mktemp)
    code = _example().replace('"runs/quickstart/Si/bands/bands.h5"', repr(str(bands)))
    ns = {}
    exec(compile(code, "README.md:api-example", "exec"), ns)
    r, reach, bd = ns["r"], ns["reach"], ns["bd"]
    assert r.total.shape == (2,) and np.all(np.isfinite(r.total)) and np.all(r.total > 0)
    assert r.dr_dq.shape[0] == 2 and np.all(r.dr_dq[0, :5] >= 0)
    s = reach.sigma_cm2[np.isfinite(reach.sigma_cm2)]
    assert s.size and np.all((s > 1e-46) & (s < 1e-30))  # cm^2: the range of such plots
    assert bd.energies.ndim == 2 and bd.nocc == 4


def test_api_names_resolve():
    from dmca_hpc import api
    for name in api.__all__:
        assert getattr(api, name) is not None, name
