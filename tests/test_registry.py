"""Plugin manager: discovery through entry points, clashes, broken plugins, lookups."""

from __future__ import annotations

import warnings

import pytest
from plugin_dists import activate, write_distribution

from biovfm_core import hookimpl
from biovfm_core.errors import PluginError, UnknownNameError
from biovfm_core.registry import PluginLoadWarning, Registry, get_registry

GOOD_PLUGIN = """
from biovfm_core import hookimpl

def build(backbone, task, *, temperature: float = 0.1, crops: int = 2):
    return ("built", backbone, temperature, crops)

@hookimpl
def biovfm_register_objectives(register):
    register("{name}", build, description="test objective")
"""


def test_builtins_are_found_through_entry_points():
    registry = Registry()
    registry.load_entry_points()
    builtin = {name for name, info in registry.plugins.items() if info.builtin}
    assert {"timm_backbones", "dinov2", "mae", "supervised", "readers", "augment"} <= builtin
    assert all(
        info.distribution == "biovfm" for n, info in registry.plugins.items() if n in builtin
    )


def test_third_party_distribution_is_discovered(tmp_path, monkeypatch):
    root = write_distribution(
        tmp_path / "site",
        "thirdparty-a",
        "1.2.3",
        {"thirdparty_a": GOOD_PLUGIN.format(name="my_loss")},
        {"third_a": "thirdparty_a"},
    )
    activate(root, monkeypatch)
    registry = get_registry()
    info = registry.plugins["third_a"]
    assert (info.distribution, info.version) == ("thirdparty-a", "1.2.3")
    assert info.registered["objectives"] == ["my_loss"]
    built = registry.build("objectives", "my_loss", "bb", "task", options={"temperature": "0.2"})
    assert built == ("built", "bb", 0.2, 2)


def test_autoload_disabled_loads_only_builtins(tmp_path, monkeypatch):
    root = write_distribution(
        tmp_path / "site",
        "thirdparty-a",
        "1.0",
        {"thirdparty_a": GOOD_PLUGIN.format(name="my_loss")},
        {"third_a": "thirdparty_a"},
    )
    activate(root, monkeypatch)
    monkeypatch.setenv("BIOVFM_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = get_registry()
    assert "third_a" not in registry.plugins
    assert "timm_backbones" in registry.plugins


def test_same_name_twice_is_an_error_naming_both_only_when_used(tmp_path, monkeypatch):
    root = tmp_path / "site"
    write_distribution(
        root,
        "thirdparty-a",
        "1.0",
        {"thirdparty_a": GOOD_PLUGIN.format(name="clash")},
        {"third_a": "thirdparty_a"},
    )
    write_distribution(
        root,
        "thirdparty-b",
        "2.0",
        {"thirdparty_b": GOOD_PLUGIN.format(name="clash")},
        {"third_b": "thirdparty_b"},
    )
    activate(root, monkeypatch)
    with pytest.warns(PluginLoadWarning, match="'clash' is registered twice"):
        registry = get_registry()
    assert "clash" in registry.names("objectives")  # listed, so using it reaches the error
    with pytest.raises(PluginError) as excinfo:
        registry.get("objectives", "clash")
    message = str(excinfo.value)
    assert "'clash'" in message
    assert "third_a" in message and "third_b" in message
    assert "thirdparty-a" in message and "thirdparty-b" in message
    assert registry.get("objectives", "dinov2")[0].plugin == "dinov2"  # the rest works
    clashes = [p for p in registry.problems if p.kind == "clash"]
    assert {(p.plugin, p.distribution, p.name) for p in clashes} == {
        ("third_a", "thirdparty-a", "clash"),
        ("third_b", "thirdparty-b", "clash"),
    }


def test_builtin_name_stays_with_the_builtin_and_the_outsider_is_reported(tmp_path, monkeypatch):
    root = write_distribution(
        tmp_path / "site",
        "thirdparty-a",
        "1.0",
        {"thirdparty_a": GOOD_PLUGIN.format(name="dinov2")},
        {"third_a": "thirdparty_a"},
    )
    activate(root, monkeypatch)
    with pytest.warns(PluginLoadWarning, match="'dinov2' is not used: the name belongs to"):
        registry = get_registry()
    registration, _ = registry.get("objectives", "dinov2")
    assert (registration.plugin, registration.distribution) == ("dinov2", "biovfm")
    (problem,) = [p for p in registry.problems if p.name == "dinov2"]
    assert (problem.kind, problem.plugin, problem.distribution) == (
        "clash",
        "third_a",
        "thirdparty-a",
    )
    assert registry.plugins["third_a"].registered["objectives"] == []


def test_builtin_wins_whatever_the_load_order():
    registry = Registry()

    class Outsider:
        @hookimpl
        def biovfm_register_objectives(self, register):
            register("mae", lambda backbone, task: "outsider")

    from biovfm_core.registry import PluginInfo

    with pytest.warns(PluginLoadWarning):
        registry.add_plugin(Outsider(), name="outsider")
        registry.add_plugin(Outsider(), name="outsider2")  # two outsiders clash first
        registry.add_plugin(Outsider(), name="builtin", info=PluginInfo("builtin", "biovfm", "1"))
    assert registry.get("objectives", "mae")[0].plugin == "builtin"
    assert {p.plugin for p in registry.problems if p.name == "mae"} == {"outsider", "outsider2"}


def test_plugin_that_fails_to_import_warns_and_others_work(tmp_path, monkeypatch):
    root = tmp_path / "site"
    write_distribution(
        root,
        "thirdparty-broken",
        "0.1",
        {"thirdparty_broken": "import a_module_that_does_not_exist\n"},
        {"broken": "thirdparty_broken"},
    )
    write_distribution(
        root,
        "thirdparty-a",
        "1.0",
        {"thirdparty_a": GOOD_PLUGIN.format(name="fine")},
        {"third_a": "thirdparty_a"},
    )
    activate(root, monkeypatch)
    with pytest.warns(PluginLoadWarning) as record:
        registry = get_registry()
    messages = [str(w.message) for w in record if w.category is PluginLoadWarning]
    assert len(messages) == 1
    assert "'broken'" in messages[0] and "a_module_that_does_not_exist" in messages[0]
    assert registry.plugins["broken"].error
    assert "fine" in registry.names("objectives")
    assert "dinov2" in registry.names("objectives")


def test_hook_that_raises_drops_only_that_plugin_and_its_partial_names():
    class HalfBroken:
        @hookimpl
        def biovfm_register_backbones(self, register):
            register("half_a", lambda: None)
            raise RuntimeError("boom")

    registry = Registry()
    with pytest.warns(PluginLoadWarning, match=r"half.*RuntimeError: boom"):
        registry.add_plugin(HalfBroken(), name="half")
    assert "half_a" not in registry.names("backbones")
    assert registry.plugins["half"].registered["backbones"] == []


def test_unknown_name_suggests_the_closest():
    registry = get_registry()
    with pytest.raises(UnknownNameError) as excinfo:
        registry.get("objectives", "dinov3")
    message = str(excinfo.value)
    assert "unknown objective 'dinov3'" in message
    assert "did you mean 'dinov2'?" in message
    assert "mae" in message and "supervised" in message


def test_unknown_name_without_close_match_lists_names():
    with pytest.raises(UnknownNameError) as excinfo:
        get_registry().get("backbones", "zzz")
    assert "did you mean" not in str(excinfo.value)
    assert "vit_small" in str(excinfo.value)


def test_family_names_pass_the_variant():
    calls = []

    class Family:
        @hookimpl
        def biovfm_register_backbones(self, register):
            register("zoo:", lambda *, variant, depth=1: calls.append(variant) or variant)

    registry = Registry()
    registry.add_plugin(Family(), name="family")
    assert registry.build("backbones", "zoo:resnet18") == "resnet18"
    with pytest.raises(UnknownNameError):
        registry.get("backbones", "zoo")


def test_lazy_factory_string_is_imported_only_on_use(tmp_path, monkeypatch):
    root = write_distribution(
        tmp_path / "site",
        "thirdparty-lazy",
        "1.0",
        {
            "thirdparty_lazy.plugin": """
                from biovfm_core import hookimpl

                @hookimpl
                def biovfm_register_datasets(register):
                    register("lazy", "thirdparty_lazy.heavy:Reader")
            """,
            "thirdparty_lazy.__init__": "",
            "thirdparty_lazy.heavy": """
                class Reader:
                    def __init__(self, location, tags, *, stride: int = 1):
                        self.location, self.stride = location, stride
            """,
        },
        {"lazy": "thirdparty_lazy.plugin"},
    )
    activate(root, monkeypatch)
    import sys

    registry = get_registry()
    assert "thirdparty_lazy.heavy" not in sys.modules
    reader = registry.build("datasets", "lazy", "/data", None, options={"stride": 3})
    assert (reader.location, reader.stride) == ("/data", 3)


def test_bad_lazy_target_names_plugin_and_target():
    class Bad:
        @hookimpl
        def biovfm_register_objectives(self, register):
            register("ghost", "no_such_module_xyz:Thing")

    registry = Registry()
    registry.add_plugin(Bad(), name="bad")
    with pytest.raises(
        PluginError, match=r"'ghost' of plugin 'bad'.*no_such_module_xyz:Thing.*ModuleNotFoundError"
    ):
        registry.build("objectives", "ghost")


def test_invalid_registration_name_is_an_error_only_when_used():
    class Shouty:
        @hookimpl
        def biovfm_register_objectives(self, register):
            register("Bad Name!", lambda: None)
            register("fine_name", lambda: "ok")

    registry = Registry()
    with pytest.warns(PluginLoadWarning, match="invalid objective name 'Bad Name!'"):
        registry.add_plugin(Shouty(), name="shouty")
    assert registry.build("objectives", "fine_name") == "ok"
    (problem,) = registry.problems
    assert (problem.kind, problem.plugin, problem.name) == ("invalid-name", "shouty", "Bad Name!")
    with pytest.raises(PluginError, match=r"'Bad Name!' cannot be used: plugin 'shouty'"):
        registry.get("objectives", "Bad Name!")


def test_plugins_load_once():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        assert get_registry() is get_registry()
