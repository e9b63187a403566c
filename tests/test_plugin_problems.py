"""A broken, clashing or mis-named third-party plugin disables only its own names.

Real distributions (dist-info + entry points) on sys.path, loaded in-process.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from plugin_dists import activate, write_distribution

from biovfm_core import hookimpl
from biovfm_core import registry as registry_module
from biovfm_core.cli.main import cli
from biovfm_core.errors import ConfigError, PluginError, UnknownNameError
from biovfm_core.registry import PluginLoadWarning, Registry, get_registry

OBJECTIVE = """
from biovfm_core import hookimpl

def build(backbone, task, *, temperature: float = 0.1, crops: int = 2):
    '''A test objective whose summary runs over
    two lines and must be shown whole.

    Args:
        temperature: softmax temperature of
            the student.
        crops (int): local crops per image.
    '''
    return ("built", temperature, crops)

@hookimpl
def biovfm_register_objectives(register):
    register({name!r}, build, presets={presets!r})
"""


def _install(tmp_path, monkeypatch, dists: dict[str, tuple[str, str]]) -> None:
    """dists: distribution name -> (module source, entry-point name)."""
    root = tmp_path / "site"
    for dist, (source, ep) in dists.items():
        module = "thirdparty_" + dist.split("-", 1)[1].replace("-", "_")
        write_distribution(root, dist, "1.0", {module: source}, {ep: module})
    activate(root, monkeypatch)


def _objective(name: str, presets: dict | None = None) -> str:
    return OBJECTIVE.format(name=name, presets=presets or {})


def _invoke(*args: str, **kwargs):
    if registry_module._REGISTRY is None:
        with pytest.warns(PluginLoadWarning):  # loading reports each problem once
            get_registry()
    return CliRunner().invoke(cli, list(args), **kwargs)


def _rows(output: str) -> dict:
    return {row["plugin"]: row for row in json.loads(output)}


def test_an_outsider_registering_a_builtin_name_is_the_one_disabled(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch, {"thirdparty-a": (_objective("dinov2"), "third_a")})
    result = _invoke("plugins")
    assert result.exit_code == 0, result.output
    assert "PROBLEMS" in result.output
    assert "[clash] plugin 'third_a' (distribution 'thirdparty-a')" in result.output
    assert "[clash] plugin 'dinov2' (distribution 'biovfm')" not in result.output
    assert "BIOVFM_ALLOW_OVERRIDE=dinov2" in result.output

    result = _invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    (problem,) = rows["third_a"]["problems"]
    assert (problem["kind"], problem["distribution"], problem["name"]) == (
        "clash",
        "thirdparty-a",
        "dinov2",
    )
    assert rows["third_a"]["registered"]["objectives"] == []
    assert rows["dinov2"]["problems"] == [] and rows["dinov2"]["registered"]["objectives"] == [
        "dinov2"
    ]

    # The name stays with the built-in: a plain `biovfm train` (default dinov2) works.
    assert get_registry().get("objectives", "dinov2")[0].distribution == "biovfm"
    result = CliRunner().invoke(cli, ["train", "--device", "cpu", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "# objective: dinov2 (plugin dinov2)" in result.output


def test_a_builtin_is_replaced_only_with_both_opt_ins(tmp_path, monkeypatch):
    source = _objective("dinov2").replace("presets={}", "presets={}, override=True")
    _install(tmp_path, monkeypatch, {"thirdparty-a": (source, "third_a")})
    # The plugin asks (override=True) but the user did not: the built-in keeps the name.
    result = _invoke("plugins")
    assert "asks to replace the built-in (override=True): set BIOVFM_ALLOW_OVERRIDE=dinov2" in (
        result.output
    )
    assert get_registry().get("objectives", "dinov2")[0].plugin == "dinov2"

    registry_module.reset_registry()
    monkeypatch.setenv("BIOVFM_ALLOW_OVERRIDE", "objective:dinov2")
    registry = get_registry()
    assert registry.get("objectives", "dinov2")[0].plugin == "third_a"
    assert [p for p in registry.problems if p.name == "dinov2"] == []
    result = CliRunner().invoke(cli, ["plugins"])
    assert "OVERRIDES" in result.output
    assert "dinov2: plugin 'third_a' (distribution 'thirdparty-a') instead of plugin 'dinov2'" in (
        result.output
    )


def test_invalid_name_is_listed_with_its_distribution(tmp_path, monkeypatch):
    source = _objective("Bad Name!").replace(
        "presets={}", "presets={}); register('good_one', build"
    )
    _install(tmp_path, monkeypatch, {"thirdparty-shout": (source, "shout")})
    result = _invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    row = _rows(result.stdout)["shout"]
    assert row["registered"]["objectives"] == ["good_one"]
    (problem,) = row["problems"]
    assert problem["kind"] == "invalid-name" and problem["distribution"] == "thirdparty-shout"
    assert "'Bad Name!'" in problem["message"]


def test_import_and_hook_failures_are_listed_and_named_on_unknown_names(tmp_path, monkeypatch):
    hook_raises = """
from biovfm_core import hookimpl

@hookimpl
def biovfm_register_objectives(register):
    raise RuntimeError("no licence file")
"""
    _install(
        tmp_path,
        monkeypatch,
        {
            "thirdparty-byol": ("import a_module_that_does_not_exist\n", "byol"),
            "thirdparty-hooky": (hook_raises, "hooky"),
        },
    )
    result = _invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert [p["kind"] for p in rows["byol"]["problems"]] == ["import"]
    assert rows["byol"]["problems"][0]["distribution"] == "thirdparty-byol"
    assert [p["kind"] for p in rows["hooky"]["problems"]] == ["hook"]
    assert "no licence file" in rows["hooky"]["problems"][0]["message"]

    registry = get_registry()
    with pytest.raises(UnknownNameError) as excinfo:
        registry.get("objectives", "byol")
    message = str(excinfo.value)
    assert message.startswith("unknown objective 'byol'")
    assert "plugin 'byol' (distribution 'thirdparty-byol')" in message
    assert "a_module_that_does_not_exist" in message
    assert "plugin 'hooky' (distribution 'thirdparty-hooky')" in message


def test_two_plugins_with_one_entry_point_name_are_both_listed(tmp_path, monkeypatch):
    _install(
        tmp_path,
        monkeypatch,
        {
            "thirdparty-one": (_objective("loss_one"), "same"),
            "thirdparty-two": (_objective("loss_two"), "same"),
        },
    )
    with pytest.warns(PluginLoadWarning, match="plugin name 'same' is also used"):
        registry = get_registry()
    dists = sorted(info.distribution for info in registry.plugins.values() if info.name == "same")
    assert dists == ["thirdparty-one", "thirdparty-two"]
    assert [p.kind for p in registry.problems] == ["clash"]
    assert len([n for n in registry.names("objectives") if n.startswith("loss_")]) == 1


def test_plugin_preset_typo_is_the_plugins_problem(tmp_path, monkeypatch):
    _install(
        tmp_path,
        monkeypatch,
        {"thirdparty-typo": (_objective("typo_loss", {"cpu": {"temprature": 0.2}}), "typo")},
    )
    registry = get_registry()
    with pytest.raises(PluginError) as excinfo:
        registry.preset("objectives", "typo_loss", "cpu")
    message = str(excinfo.value)
    assert "plugin 'typo' (distribution 'thirdparty-typo')" in message
    assert "temprature" in message and "did you mean temperature" in message
    assert "not in your settings" in message
    assert [p.kind for p in registry.problems_of("typo")] == ["invalid-preset"]

    result = CliRunner().invoke(cli, ["plugins", "--options", "typo_loss"])
    assert result.exit_code == 0, result.output
    assert "problem: plugin 'typo' (distribution 'thirdparty-typo')" in result.output


def test_malformed_presets_are_a_load_problem():
    class Odd:
        @hookimpl
        def biovfm_register_backbones(self, register):
            register("odd_net", lambda *, depth=1: depth, presets={"cpu": 3})

    registry = Registry()
    with pytest.warns(PluginLoadWarning, match="presets of backbone 'odd_net' are ignored"):
        registry.add_plugin(Odd(), name="odd")
    assert registry.build("backbones", "odd_net") == 1
    assert [p.kind for p in registry.problems] == ["invalid-preset"]


def test_options_show_whole_summary_option_descriptions_and_cpu_preset(tmp_path, monkeypatch):
    _install(
        tmp_path,
        monkeypatch,
        {"thirdparty-doc": (_objective("doc_loss", {"cpu": {"crops": 1}}), "doc")},
    )
    result = CliRunner().invoke(cli, ["plugins", "--options", "doc_loss"])
    assert result.exit_code == 0, result.output
    assert "A test objective whose summary runs over\n  two lines and must be shown whole." in (
        result.output
    )
    assert "--opt objective.crops=<int>  (default 2; cpu preset 1)" in result.output
    assert "softmax temperature of the student." in result.output
    (entry,) = json.loads(
        CliRunner().invoke(cli, ["plugins", "--options", "doc_loss", "--json"]).stdout
    )
    assert entry["options"]["crops"] == {
        "type": "int",
        "default": 2,
        "required": False,
        "cpu_preset": 1,
        "description": "local crops per image.",
    }
    assert entry["distribution"] == "thirdparty-doc"


def test_builtin_reader_options_are_described():
    result = CliRunner().invoke(cli, ["plugins", "--options", "folder", "--json"])
    (entry,) = json.loads(result.stdout)
    assert entry["options"]["verify"]["description"].startswith("open every file's header")


READER = """
from biovfm_core import hookimpl

class Reader:
    def __init__(self, location, tags, *, stride: int = 1):
        1 / 0

@hookimpl
def biovfm_register_datasets(register):
    register("crashy", Reader)
    register("ghosty", "thirdparty_ghost_mod:Reader")
    register("raisy", "thirdparty_raisy_mod:Reader")
"""


def test_factory_errors_are_one_line_naming_plugin_distribution_and_factory(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch, {"thirdparty-crash": (READER, "crash")})
    (tmp_path / "site" / "thirdparty_raisy_mod.py").write_text("raise RuntimeError('bad init')\n")
    registry = get_registry()
    with pytest.raises(PluginError) as excinfo:
        registry.build("datasets", "crashy", str(tmp_path), None)
    message = str(excinfo.value)
    assert "dataset 'crashy' of plugin 'crash' (distribution 'thirdparty-crash')" in message
    assert "thirdparty_crash:Reader" in message and "ZeroDivisionError" in message
    assert isinstance(excinfo.value.__cause__, ZeroDivisionError)
    with pytest.raises(PluginError, match=r"'ghosty'.*'thirdparty-crash'.*ModuleNotFoundError"):
        registry.options("datasets", "ghosty")
    with pytest.raises(PluginError, match=r"'raisy'.*'thirdparty-crash'.*RuntimeError: bad init"):
        registry.options("datasets", "raisy")

    # The CLI shows one line; BIOVFM_DEBUG=1 adds the original traceback.
    result = CliRunner().invoke(cli, ["data", "scan", "--data", f"crashy:{tmp_path}"])
    assert result.exit_code == 2
    assert "ZeroDivisionError" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(
        cli, ["data", "scan", "--data", f"crashy:{tmp_path}"], env={"BIOVFM_DEBUG": "1"}
    )
    assert result.exit_code == 2
    assert "Traceback" in result.output and "1 / 0" in result.output


# ------------------------------------------------------------- dataset options, dry run


def test_dataset_options_reach_every_source_and_the_source_wins(tmp_path):
    from biovfm_core.data.catalog import resolve_data

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sources, _ = resolve_data(
        [f"folder:{tmp_path / 'a'}", f"folder:{tmp_path / 'b'}?verify=true"],
        options={"verify": "false", "max_pixels": 100},
    )
    a, b = (spec.build_reader() for spec in sources)
    assert (a.verify, a.max_pixels) == (False, 100)
    assert (b.verify, b.max_pixels) == (True, 100)


def test_dataset_option_a_reader_lacks_is_rejected_and_no_index_written(tmp_path):
    (tmp_path / "imgs").mkdir()
    index = tmp_path / "index.npz"
    result = CliRunner().invoke(
        cli,
        [
            "data",
            "scan",
            "--data",
            f"folder:{tmp_path / 'imgs'}",
            "--opt",
            "dataset.verfy=0",
            "-o",
            str(index),
        ],
    )
    assert result.exit_code == 2
    assert "unknown option dataset.verfy" in result.output
    assert "did you mean dataset.verify?" in result.output
    assert not index.exists()
    result = CliRunner().invoke(cli, ["data", "scan", "--opt", "objective.x=1"])
    assert result.exit_code == 2 and "only dataset.KEY=VALUE" in result.output


def _dry_run(*args: str):
    return CliRunner().invoke(
        cli, ["train", "--device", "cpu", "--objective", "mae", *args, "--dry-run"]
    )


def test_dry_run_checks_reader_kind_source_options_and_dataset_opts(tmp_path):
    result = _dry_run("--data", f"npz:{tmp_path}")
    assert result.exit_code == 2 and "unknown reader 'npz'" in result.output
    result = _dry_run("--data", f"folder:{tmp_path}?verfy=false")
    assert result.exit_code == 2 and "did you mean dataset.verify?" in result.output
    result = _dry_run("--data", f"folder:{tmp_path}", "--opt", "dataset.stride=2")
    assert result.exit_code == 2 and "unknown option dataset.stride" in result.output
    result = _dry_run(
        "--data",
        f"folder:{tmp_path}",
        "--data",
        "folder:/no/such/dir",
        "--opt",
        "dataset.verify=false",
    )
    assert result.exit_code == 0, result.output
    assert f"= folder:{tmp_path} (plugin readers) verify=False" in result.output
    assert "[path does not exist]" in result.output


def test_dry_run_imports_the_reader_factory(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch, {"thirdparty-crash": (READER, "crash")})
    result = _dry_run("--data", f"ghosty:{tmp_path}")
    assert result.exit_code == 2
    assert "'ghosty' of plugin 'crash' (distribution 'thirdparty-crash')" in result.output
    assert "cannot be imported" in result.output


def test_config_error_from_factory_passes_through_unwrapped():
    class Strict:
        @hookimpl
        def biovfm_register_backbones(self, register):
            def build(*, depth: int = 1):
                raise ConfigError(f"depth {depth} too small")

            register("strict", build)

    registry = Registry()
    registry.add_plugin(Strict(), name="strict")
    with pytest.raises(ConfigError, match=r"^depth 1 too small$"):
        registry.build("backbones", "strict")


def test_training_data_gets_dataset_options_from_the_run_config(tmp_path):
    from biovfm_core.config import RunConfig
    from biovfm_core.train.data import open_index

    config = RunConfig()
    config.data.sources = [f"folder:{tmp_path}"]
    config.apply_opts(["dataset.verfy=false"])
    with pytest.raises(ConfigError, match=r"unknown option dataset\.verfy"):
        open_index(config)


def test_check_finds_factories_that_do_not_import_and_bad_presets(tmp_path, monkeypatch):
    source = READER + (
        "\n@hookimpl\ndef biovfm_register_backbones(register):\n"
        "    register('tiny_typo', Reader, presets={'cpu': {'strid': 2}})\n"
    )
    _install(tmp_path, monkeypatch, {"thirdparty-crash": (source, "crash")})
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0 and "PROBLEMS" not in result.output  # nothing imported yet
    result = CliRunner().invoke(cli, ["plugins", "--check", "--json"])
    assert result.exit_code == 1
    found = {(p["kind"], p["name"]) for p in _rows(result.stdout)["crash"]["problems"]}
    assert found == {("factory", "ghosty"), ("factory", "raisy"), ("invalid-preset", "tiny_typo")}


def test_check_runs_the_kits_option_rules(tmp_path, monkeypatch):
    """An untyped option and one without a default: `plugins --check` says what the kit
    would (testing.check_options), without running anything."""
    source = """
from biovfm_core import hookimpl

def build(backbone, task, *, scale=2.0, size: int):
    return None

@hookimpl
def biovfm_register_objectives(register):
    register('loose', build)
"""
    _install(tmp_path, monkeypatch, {"thirdparty-loose": (source, "loose")})
    result = CliRunner().invoke(cli, ["plugins", "--check", "--json"])
    assert result.exit_code == 1
    problems = _rows(result.stdout)["loose"]["problems"]
    assert [(p["kind"], p["name"]) for p in problems] == [("option", "loose")] * 2
    messages = sorted(p["message"] for p in problems)
    assert messages[0].startswith("objective 'loose', option 'scale' has no type hint")
    assert "Fix: annotate `scale`" in messages[0]
    assert messages[1].startswith("objective 'loose', option 'size' has no default")
