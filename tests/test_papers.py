"""The paper specs (config/papers/*.yaml) and their expander, anodiff.papers: fast, no Snakemake."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anodiff.config import ConfigError
from anodiff.papers import expand_paper_spec, load_paper_specs

REPO = Path(__file__).resolve().parents[1]
SPEC_DIR = REPO / "config" / "papers"
PAPERS = ["diad", "inversion", "d3ad", "dpdiff"]
# What the generated config/paper.yaml scheduled before the specs replaced it: the contract.
SNAPSHOT = REPO / "tests" / "data" / "paper_plan_snapshot.json"
# Intentional differences from the snapshot, "section/id": one-line reason.
_DIAD_PROTOCOL = "issue 17: the protocol text every DiAD table inherits names the official settings now reproduced"
_D3AD_PROTOCOL = "issue 17 row 12: the protocol text every D3AD table inherits says eta/gamma are not chosen per category"
_DPDIFF_PROTOCOL = ("issue 18 rows 7, 8, 10: the protocol text every DPDiff-AD table inherits names the DiT size, "
                    "the token standardisation and the t sweep as ours")
_INVERSION_PROTOCOL = ("issue 18 row 2: the protocol text every InversionAD table inherits says we score the EMA and "
                       "select no checkpoint on test")
_PAPER_COLUMN = "; issue 16: the main rows' paper-protocol runs (column 'ours (paper protocol)')"
_GAP_FIGURE = "issue 16: reported vs paper protocol vs honest per main-table dataset (ours, not a paper figure)"
INTENTIONAL_DIFFERENCES: dict[str, str] = {
    "methods/diad": "issue 17 rows 7-8: a second SD run (sd, Table 5) beside the class-conditioned ldm; VGG maps at strides 4/8/16; issue 16: paper-protocol (AUROC flip)",
    "methods/d3ad": "issue 17 row 10: Fig. 14's omega grid is the paper's 0.1, ..., 0.9 (was 0.25, 0.5, 0.75); issue 16: paper-protocol eta x gamma grid (test-set normalisation) chosen per category",
    "figures/d3ad/fig14": "issue 17 row 10: Fig. 14 plots the paper's 11 omega points",
    "tables/diad/table1": _DIAD_PROTOCOL + _PAPER_COLUMN,
    "tables/diad/table2": _DIAD_PROTOCOL + _PAPER_COLUMN,
    "tables/diad/table3": _DIAD_PROTOCOL + _PAPER_COLUMN,
    "tables/diad/table4": _DIAD_PROTOCOL + _PAPER_COLUMN,
    "figures/diad/gap": _GAP_FIGURE,
    "figures/inversion/gap": _GAP_FIGURE,
    "figures/d3ad/gap": _GAP_FIGURE,
    "tables/diad/table5": "issue 17 row 8: the SD row maps to the sd run (not ldm), with a protocol note saying so",
    "tables/diad/table6": "issue 17 row 7: a protocol note on the layers compared at strides 4/8/16",
    "tables/d3ad/table1": _D3AD_PROTOCOL + _PAPER_COLUMN,
    "tables/d3ad/table2": _D3AD_PROTOCOL,
    "tables/d3ad/table3": _D3AD_PROTOCOL,
    "tables/d3ad/table4": "issue 17 row 9: a protocol note saying the rows share domain adaptation",
    "tables/d3ad/table5": _D3AD_PROTOCOL,
    "tables/d3ad/table6": _D3AD_PROTOCOL,
    "tables/d3ad/table7": _D3AD_PROTOCOL,
    "tables/d3ad/table8": _D3AD_PROTOCOL,
    "methods/inversion": "issue 18 row 5: the official class-conditional unified model as variant unified-cond (appended); issue 16: paper-protocol runs (test-set normalisation, S = 2-5) and best-s",
    "figures/inversion/ablation_unified": "issue 18 row 5: its ablation (not a printed table row): per-category vs unified",
    "tables/inversion/table1": _INVERSION_PROTOCOL,
    "tables/inversion/table2": _INVERSION_PROTOCOL + _PAPER_COLUMN + " and the row Ours* (S chosen per category on test)",
    "tables/inversion/table3": _INVERSION_PROTOCOL + _PAPER_COLUMN + " and the row Ours* (S chosen per category on test)",
    "tables/inversion/table4": _INVERSION_PROTOCOL + "; row 1: a note that Recon. scores the features' MSE",
    "methods/dpdiff": "issue 18 row 10: Fig. 6's t sweep spans 50-900 around the guessed t = 300 (4 variants added)",
    "figures/dpdiff/fig6_timestep": "issue 18 row 10: the t sweep's new points and a caption naming the guess",
    "tables/dpdiff/table1": _DPDIFF_PROTOCOL,
    "tables/dpdiff/table2": _DPDIFF_PROTOCOL,
    "tables/dpdiff/table3": _DPDIFF_PROTOCOL,
    "tables/dpdiff/table4": _DPDIFF_PROTOCOL,
    "tables/dpdiff/table5": _DPDIFF_PROTOCOL,
    "tables/dpdiff/table6": _DPDIFF_PROTOCOL,
    "tables/dpdiff/table7": _DPDIFF_PROTOCOL,
    "tables/dpdiff/table8": _DPDIFF_PROTOCOL,
    "tables/dpdiff/table9": _DPDIFF_PROTOCOL,
    "tables/dpdiff/tableB1": _DPDIFF_PROTOCOL,
    "tables/dpdiff/tableB2": _DPDIFF_PROTOCOL,
    "tables/dpdiff/tableB3": _DPDIFF_PROTOCOL,
    "tables/dpdiff/tableB4": _DPDIFF_PROTOCOL,
    "tables/dpdiff/tableB5": _DPDIFF_PROTOCOL,
    "tables/dpdiff/tableB6": _DPDIFF_PROTOCOL,
    "tables/dpdiff/tableB7": _DPDIFF_PROTOCOL,
    "tables/dpdiff/tableB8": _DPDIFF_PROTOCOL,
    "tables/dpdiff/tableB9": _DPDIFF_PROTOCOL,
}


def _sorted_keys(value):
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def normalise(plan: dict) -> dict:
    """As the snapshot was written: defaults filled in, datasets sorted, row keys sorted."""
    methods = {method: {variant: {"datasets": sorted(settings["datasets"]),
                                  "setting": settings.get("setting", "per_class"),
                                  "overrides": settings.get("overrides", {})}
                        for variant, settings in variants.items()}
               for method, variants in plan["methods"].items()}
    tables = {table_id: {"caption": table["caption"], "protocol": table["protocol"],
                         "reference_device": table.get("reference_device", ""),
                         "rows": [_sorted_keys(row) for row in table["rows"]]}
              for table_id, table in plan["tables"].items()}
    return {"methods": methods, "tables": tables, "figures": plan["figures"]}


def test_the_specs_schedule_what_the_old_paper_config_did():
    ours = normalise(load_paper_specs(PAPERS, SPEC_DIR))
    snapshot = json.loads(SNAPSHOT.read_text())
    differences = []
    for section in ("methods", "tables", "figures"):
        for key in sorted(set(ours[section]) | set(snapshot[section])):
            # json text: types count (1 is not 1.0), list order counts (figure runs, table rows)
            mine = json.dumps(ours[section].get(key), sort_keys=True)
            if mine != json.dumps(snapshot[section].get(key), sort_keys=True):
                differences.append(f"{section}/{key}")
    assert sorted(differences) == sorted(INTENTIONAL_DIFFERENCES)
    # the order of a method's variants counts too: the first matching one owns a reused model
    # (an intentionally changed method keeps the order of the variants it shares with the snapshot)
    for method, variants in snapshot["methods"].items():
        mine = list(ours["methods"][method])
        if f"methods/{method}" in INTENTIONAL_DIFFERENCES:
            mine, variants = [v for v in mine if v in variants], [v for v in variants if v in mine]
        assert mine == list(variants), method


def test_every_transcribed_table_has_a_spec_table():
    transcribed = {f"{p.parent.name}/{p.stem}" for p in (REPO / "resources" / "reported").glob("*/table*.csv")}
    assert transcribed <= set(load_paper_specs(PAPERS, SPEC_DIR)["tables"])


def test_paper_config_lists_the_specs_and_nothing_they_define():
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    assert paper["papers"] == PAPERS
    assert not {"methods", "tables", "figures"} & set(paper)
    assert sorted(PAPERS) == sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def test_the_expander_imports_neither_torch_nor_pandas():
    code = ("import sys, anodiff.papers; heavy = {'torch', 'pandas', 'numpy', 'anodiff.methods'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --------------------------------------------------------------------------- the format


SPEC = {
    "protocol": "Paper protocol.",
    "reference_device": "GPU X",
    "printed": {"Ours": "toy/paper"},
    "runs": {"toy": {
        "setting": "unified",
        "datasets": ["a"],
        "variants": {
            "paper": {"datasets": ["a", "b"]},
            "s{steps}-{kind}": {
                "overrides": {"inference": {"mode": "fast"}},
                "grid": {"steps": {"key": "inference.steps", "values": [1, 10]},
                         "kind": {"key": ["model.kind", "model.width"], "values": {"small": ["s", 8], "big": ["b", 64]}}},
                "exclude": [{"steps": 10, "kind": "big"}],
            },
            "last": {"setting": "per_class", "overrides": {"x": 1}},
        },
    }},
    "tables": {"toy/table1": {
        "caption": "Table 1",
        "protocol_note": "Plus a note.",
        "reported": "Ours",
        "datasets": ["a"],
        "rows": [
            {"variant": "s{steps}-{kind}", "setting": "steps={steps},kind={kind.value}",
             "grid": {"steps": [10, 1], "kind": {"values": {"small": "S", "big": "B"}}},
             "exclude": [{"steps": 10, "kind": "big"}]},
            {"setting": "default"},
            {"reported": "Peer", "method": "toy", "variant": "last", "datasets": {"printed_a": "a"}},
        ],
    }},
    "figures": {"toy/fig1": {
        "kind": "sweep", "caption": "c", "x_label": "steps", "dataset": "a", "method": "toy",
        "runs": [{"variant": "s1-small", "x": 1}, {"variant": "paper", "x": 5, "label": "ours"}],
    }},
}


def test_a_grid_expands_in_place_to_one_variant_per_cell():
    methods = expand_paper_spec(SPEC, "toy.yaml")["methods"]
    assert list(methods["toy"]) == ["paper", "s1-small", "s1-big", "s10-small", "last"]  # first axis outermost
    assert methods["toy"]["paper"] == {"datasets": ["a", "b"], "setting": "unified"}
    assert methods["toy"]["s1-big"] == {"datasets": ["a"], "setting": "unified", "overrides": {
        "inference": {"mode": "fast", "steps": 1}, "model": {"kind": "b", "width": 64}}}
    assert methods["toy"]["last"] == {"datasets": ["a"], "setting": "per_class", "overrides": {"x": 1}}


def test_table_rows_take_table_and_printed_defaults_and_row_grids():
    table = expand_paper_spec(SPEC, "toy.yaml")["tables"]["toy/table1"]
    assert table["protocol"] == "Paper protocol. Plus a note."
    assert table["reference_device"] == "GPU X"
    assert table["rows"] == [  # ordered by (reported, setting)
        {"reported": "Ours", "method": "toy", "variant": "paper", "datasets": {"a": "a"}, "setting": "default"},
        {"reported": "Ours", "method": "toy", "variant": "s1-big", "datasets": {"a": "a"}, "setting": "steps=1,kind=B"},
        {"reported": "Ours", "method": "toy", "variant": "s1-small", "datasets": {"a": "a"}, "setting": "steps=1,kind=S"},
        {"reported": "Ours", "method": "toy", "variant": "s10-small", "datasets": {"a": "a"}, "setting": "steps=10,kind=S"},
        {"reported": "Peer", "method": "toy", "variant": "last", "datasets": {"printed_a": "a"}},
    ]


def test_figure_runs_take_figure_defaults():
    figure = expand_paper_spec(SPEC, "toy.yaml")["figures"]["toy/fig1"]
    assert figure == {"kind": "sweep", "caption": "c", "x_label": "steps", "runs": [
        {"dataset": "a", "method": "toy", "variant": "s1-small", "x": 1},
        {"dataset": "a", "method": "toy", "variant": "paper", "x": 5, "label": "ours"}]}


def _write(directory: Path, name: str, spec: dict) -> None:
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def test_a_variant_two_specs_define_differently_is_an_error_naming_both(tmp_path):
    first = {"runs": {"toy": {"variants": {"paper": {"datasets": ["a"]}}}}}
    second = {"runs": {"toy": {"variants": {"paper": {"datasets": ["a", "b"]}}}}}
    _write(tmp_path, "one", first)
    _write(tmp_path, "same", first)
    _write(tmp_path, "two", second)
    assert load_paper_specs(["one", "same"], tmp_path)["methods"] == {
        "toy": {"paper": {"datasets": ["a"], "setting": "per_class"}}}
    with pytest.raises(ConfigError, match=r"two\.yaml.*toy.*'paper'.*one\.yaml"):
        load_paper_specs(["one", "two"], tmp_path)


def test_a_table_id_two_specs_define_is_an_error_naming_both(tmp_path):
    spec = {"protocol": "p", "runs": {"toy": {"variants": {"paper": {"datasets": ["a"]}}}},
            "tables": {"toy/table1": {"caption": "c", "rows": [{"reported": "T", "method": "toy",
                                                                 "variant": "paper", "datasets": ["a"]}]}}}
    _write(tmp_path, "one", spec)
    _write(tmp_path, "two", spec)
    with pytest.raises(ConfigError, match=r"two\.yaml: tables\.toy/table1 is also defined in .*one\.yaml"):
        load_paper_specs(["one", "two"], tmp_path)


@pytest.mark.parametrize("path, bad, good", [
    ((), "tabels", "tables"),
    (("runs", "toy", "variants", "last"), "overides", "overrides"),
    (("runs", "toy", "variants", "s{steps}-{kind}", "grid", "steps"), "kye", "key"),
    (("tables", "toy/table1"), "protocol_notes", "protocol_note"),
    (("figures", "toy/fig1", "runs", 0), "varaint", "variant"),
])
def test_an_unknown_key_names_the_file_the_key_path_and_the_closest_key(path, bad, good):
    spec = json.loads(json.dumps(SPEC))
    node = spec
    for part in path:
        node = node[part]
    node[bad] = node.pop(good) if good in node else 1
    with pytest.raises(ConfigError) as error:
        expand_paper_spec(spec, "config/papers/toy.yaml")
    message = str(error.value)
    assert message.startswith("config/papers/toy.yaml: ")
    assert f"unknown key '{bad}' (did you mean {good}" in message
    assert ".".join(str(p) for p in path[1:3]) in message


def test_a_row_naming_no_configured_variant_is_an_error_with_a_suggestion(tmp_path):
    spec = json.loads(json.dumps(SPEC))
    spec["tables"]["toy/table1"]["rows"][2]["variant"] = "lats"
    _write(tmp_path, "toy", spec)
    with pytest.raises(ConfigError, match=r"toy\.yaml: tables\.toy/table1\.rows\[\d\].*toy/lats.*did you mean last"):
        load_paper_specs(["toy"], tmp_path)


def test_a_grid_template_naming_no_axis_and_an_exclude_matching_no_cell_are_errors():
    spec = json.loads(json.dumps(SPEC))
    variants = spec["runs"]["toy"]["variants"]
    variants["s{step}-{kind}"] = variants.pop("s{steps}-{kind}")
    with pytest.raises(ConfigError, match=r"'step', which is not an axis.*did you mean steps"):
        expand_paper_spec(spec, "toy.yaml")
    spec = json.loads(json.dumps(SPEC))
    spec["runs"]["toy"]["variants"]["s{steps}-{kind}"]["exclude"] = [{"steps": 100, "kind": "big"}]
    with pytest.raises(ConfigError, match=r"exclude\[0\].*matches no cell"):
        expand_paper_spec(spec, "toy.yaml")


def test_a_key_given_twice_in_a_spec_file_is_an_error(tmp_path):
    (tmp_path / "toy.yaml").write_text("runs:\n  toy:\n    variants:\n      a: {datasets: [x]}\n      a: {datasets: [y]}\n")
    with pytest.raises(ConfigError, match=r"toy\.yaml: invalid YAML.*duplicate key 'a'"):
        load_paper_specs(["toy"], tmp_path)


def test_a_missing_spec_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"paper spec 'dpdif' not found.*did you mean dpdiff"):
        load_paper_specs(["dpdif"], SPEC_DIR)
