"""The settings model (dmca_hpc.settings) against the JSON schema fragments:
the same keys, defaults and types, section by section, so that validation
(the schema) and defaults (the model) cannot drift apart."""
import json

import jsonschema
import pytest
import yaml

from conftest import ROOT
from dmca_hpc import settings
from dmca_hpc.stages.registry import STAGE_ORDER

FRAGMENT = {"telemetry": "telemetry_job"}


def _fragment(section):
    return json.loads((ROOT / "config" / "schema" / f"{FRAGMENT.get(section, section)}.schema.json").read_text())


@pytest.mark.parametrize("section", list(settings.SECTIONS))
def test_fragment_matches_model(section):
    frag = _fragment(section)
    jsonschema.Draft202012Validator.check_schema(frag)
    assert frag["additionalProperties"] is False, "a section must reject unknown keys"
    props = frag["properties"]
    model = settings.SECTIONS[section]
    assert list(props) == model.keys(), "same keys in the same order"
    for f in model.fields:
        p = props[f.name]
        assert p.get("default") == f.default, f"{section}.{f.name}: default"
        assert p.get("type", "string" if "enum" in p else None) == f.type, f"{section}.{f.name}: type"
        assert p.get("description") == f.doc, f"{section}.{f.name}: doc"
        assert f.unit and f"[{f.unit}]" in f.doc, f"{section}.{f.name}: unit in brackets in the doc"
    # the defaults themselves are a valid section
    jsonschema.validate(settings.defaults(section), frag)


def test_every_section_of_the_job_schema_is_modelled():
    top = json.loads((ROOT / "config" / "job.schema.json").read_text())
    refs = {k for k, v in top["properties"].items() if isinstance(v, dict) and "$ref" in v}
    assert refs == set(settings.SECTIONS)
    assert top["properties"]["stages"]["items"]["enum"] == list(STAGE_ORDER)
    for f in settings.TOP_LEVEL:
        assert top["properties"][f.name].get("default") == f.default


def test_experiment_yaml_pyscf_block_agrees_with_the_model():
    # config/experiment.yaml keeps the DMCA structure; its pyscf block documents
    # the same defaults (it is not a second source of them)
    exp = yaml.safe_load((ROOT / "config" / "experiment.yaml").read_text())["pyscf"]
    d, ff = settings.defaults("dft"), settings.defaults("formfactor")
    assert (exp["basis"], exp["pseudo"], exp["xc"], exp["kpts"]) == (d["basis"], d["pseudo"], d["xc"], d["kmesh"])
    assert exp["q_max_ame"] == ff["q_max"] and exp["q_max_ame"] / exp["q_points"] == pytest.approx(ff["dq"])


def test_with_defaults_names_unknown_keys():
    with pytest.raises(settings.SettingsError, match=r"bands: unknown key\(s\) \['kmesh_dense'\]"):
        settings.with_defaults("bands", {"kmesh_dense": [4, 4, 4]})
    out = settings.with_defaults("bands", {"kmesh": [6, 6, 6]})
    assert out["kmesh"] == [6, 6, 6] and out["chunk_size"] == settings.defaults("bands")["chunk_size"]


def test_field_lookup_and_reference():
    assert settings.field("dft.basis").default == "gth-dzvp"
    assert settings.field("seed").default == 20261123
    with pytest.raises(KeyError):
        settings.field("dft.nonsense")
    ref = settings.reference_markdown()
    for name, sec in settings.SECTIONS.items():
        assert f"### `{name}:`" in ref
        for f in sec.fields:
            assert f"| `{f.name}` |" in ref


def test_readme_job_key_reference_is_the_model():
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- job-keys:begin -->\n", 1)[1].split("\n<!-- job-keys:end -->", 1)[0]
    assert block.strip() == settings.reference_markdown().strip(), \
        "README's job-key reference is stale: regenerate it from dmca_hpc.settings.reference_markdown()"
