from __future__ import annotations

import pytest

from biovfm_core.data.catalog import load_catalog, parse_kind_path, resolve_data
from biovfm_core.errors import ConfigError


def _write(tmp_path, body):
    p = tmp_path / "cat.yaml"
    p.write_text(body)
    return str(p)


def test_catalog_parses_and_resolves_paths(tmp_path):
    (tmp_path / "cxr").mkdir()
    path = _write(
        tmp_path,
        f"""root: {tmp_path}
sources:
  - name: cxr
    reader: folder
    path: cxr
    modality: X-Ray
    anatomy: chest
    expected_count: 10
    options: {{labels_from_subfolders: true}}
  - name: mixed
    reader: dicom
    path: cxr
    modality: [ct, MRI]
""",
    )
    cat = load_catalog(path)
    a, b = cat.sources
    assert a.path == str(tmp_path / "cxr") and a.modality == "xray" and a.expected_count == 10
    assert a.options == {"labels_from_subfolders": True}
    assert b.modality == "ct,mr"
    assert a.build_reader().labels_from_subfolders is True


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("    reader: tiff_magic\n    path: x\n    modality: ct", "unknown reader 'tiff_magic'"),
        ("    reader: folder\n    path: x\n    modality: sonar", "unknown modality 'sonar'"),
        ("    reader: folder\n    path: nowhere\n    modality: ct", "does not exist"),
    ],
)
def test_catalog_errors_name_the_line(tmp_path, entry, message):
    (tmp_path / "x").mkdir()
    path = _write(
        tmp_path,
        f"root: {tmp_path}\nsources:\n  - name: ok\n    reader: folder\n    path: x\n    modality: ct\n  - name: bad\n{entry}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_catalog(path)
    assert f"{path}:7" in str(err.value) and message in str(err.value)


def test_kind_path_specs(tmp_path):
    spec = parse_kind_path(f"folder:{tmp_path}?modality=xray&anatomy=chest&verify=false")
    assert spec.reader == "folder" and spec.modality == "xray" and spec.anatomy == "chest"
    assert spec.options == {"verify": "false"}
    assert spec.build_reader().verify is False  # registry coerces the option to bool
    with pytest.raises(ConfigError, match="unknown reader"):
        parse_kind_path(f"png:{tmp_path}")
    with pytest.raises(ConfigError, match="does not exist"):
        parse_kind_path(f"folder:{tmp_path}/missing")
    sources, _ = resolve_data([])
    assert [s.reader for s in sources] == ["demo"]


def test_shipped_biovfm21m_catalog(tmp_path):
    cat = load_catalog("biovfm21m", root=str(tmp_path))
    assert len(cat.sources) == 61 and cat.missing == "report"
    assert sum(s.expected_count for s in cat.sources) == 21_472_715
    by = {s.name: s for s in cat.sources}
    assert by["ChestXray-14"].modality == "xray" and by["ChestXray-14"].expected_count == 86524
    assert set(by["SAM-Med2D-20M"].modality.split(",")) == {
        "mr",
        "ct",
        "xray",
        "nm",
        "dermoscopy",
        "endoscopy",
        "us",
        "fundus",
    }
    assert all(s.url.startswith("http") for s in cat.sources)
