"""Run config: YAML round trip, precedence, overrides, plugin option checks."""

from __future__ import annotations

from typing import Literal

import pytest

from biovfm_core import hookimpl
from biovfm_core.config import RunConfig
from biovfm_core.errors import ConfigError
from biovfm_core.options import coerce, factory_options, validate_options
from biovfm_core.registry import Registry


def test_yaml_round_trip_gives_an_equal_config(tmp_path):
    config = RunConfig(objective="mae", backbone="vit_base")
    config.apply_sets(
        [
            "train.batch_size=256",
            "optim.lr=1.5e-4",
            "optim.betas=[0.9, 0.95]",
            "data.sources=[folder:/data/a, dicom:/data/b]",
            "data.modalities=[ct, mr]",
            "train.precision=bf16",
        ]
    )
    config.apply_opts(["objective.mask_ratio=0.6"])
    path = config.save(tmp_path / "run" / "config.yaml")
    again = RunConfig.from_yaml(path)
    assert again == config
    assert again.optim.betas == (0.9, 0.95)
    assert again.optim.lr == pytest.approx(1.5e-4)
    assert again.data.sources == ["folder:/data/a", "dicom:/data/b"]
    assert not list(path.parent.glob("*.tmp"))


def test_values_are_typed_from_strings_and_yaml():
    config = RunConfig.from_dict(
        {"train": {"max_steps": "100", "compile": "true"}, "optim": {"weight_decay": "1e-2"}}
    )
    assert config.train.max_steps == 100
    assert config.train.compile is True
    assert config.optim.weight_decay == pytest.approx(0.01)  # YAML 1.1 keeps "1e-2" a string


def test_single_source_string_becomes_a_list():
    config = RunConfig()
    config.set("data.sources", "folder:/x")
    assert config.data.sources == ["folder:/x"]


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        (
            "train.batchsize=3",
            "unknown config key 'train.batchsize'; did you mean 'train.batch_size'",
        ),
        ("trian.epochs=3", "did you mean 'train'"),
        ("train.batch_size=lots", "train.batch_size: 'lots' is not an integer"),
        ("train.precision=fp8", "'fp8' is not one of"),
        ("optim.betas=[0.9]", "must have 2 items"),
        ("train=3", "must be a mapping"),
        ("objective.x=1", "no sub-keys"),
        ("options.loss.x=1", "options must be grouped by kind"),
        ("no_equals_sign", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key_and_reason(assignment, message):
    with pytest.raises(ConfigError) as excinfo:
        RunConfig().apply_sets([assignment])
    assert message in str(excinfo.value)


def test_unknown_top_level_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("objective: dinov2\nbackbon: vit_small\n")
    with pytest.raises(
        ConfigError, match=r"run\.yaml: unknown config key 'backbon'.*did you mean 'backbone'"
    ):
        RunConfig.from_yaml(path)


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        RunConfig.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_yaml(bad)


class _Objective:
    """A stand-in factory with typed keyword-only options."""

    def __init__(
        self,
        backbone,
        task,
        *,
        teacher_temp: float = 0.04,
        prototypes: int = 65536,
        koleo: bool = True,
        centering: Literal["sinkhorn_knopp", "centering"] = "sinkhorn_knopp",
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        head: str | None = None,
    ) -> None:
        pass


class _Plugin:
    @hookimpl
    def biovfm_register_objectives(self, register):
        register("toy", _Objective)

    @hookimpl
    def biovfm_register_backbones(self, register):
        register("tiny", lambda *, depth=2: None)


def _registry() -> Registry:
    registry = Registry()
    registry.add_plugin(_Plugin(), name="toy_plugin")
    return registry


def test_plugin_options_from_cli_strings_are_coerced():
    config = RunConfig(objective="toy", backbone="tiny")
    config.apply_opts(
        [
            "objective.teacher_temp=0.07",
            "objective.prototypes=1024",
            "objective.koleo=false",
            "objective.centering=centering",
            "objective.mask_ratio=[0.2,0.4]",
            "objective.head=none",
        ]
    )
    config.validate(_registry())
    assert config.options["objective"] == {
        "teacher_temp": 0.07,
        "prototypes": 1024,
        "koleo": False,
        "centering": "centering",
        "mask_ratio": (0.2, 0.4),
        "head": None,
    }


def test_unknown_plugin_option_lists_the_valid_ones():
    config = RunConfig(objective="toy", backbone="tiny")
    config.apply_opts(["objective.teacher_tmp=0.07"])
    with pytest.raises(ConfigError) as excinfo:
        config.validate(_registry())
    message = str(excinfo.value)
    assert "unknown option objective.teacher_tmp for objective 'toy'" in message
    assert "did you mean objective.teacher_temp?" in message
    for valid in ("objective.prototypes (int)", "objective.koleo (bool)", "objective.centering"):
        assert valid in message


def test_ill_typed_plugin_option_is_rejected():
    config = RunConfig(objective="toy", backbone="tiny")
    config.apply_opts(["objective.prototypes=many"])
    with pytest.raises(ConfigError, match=r"objective.prototypes.*'many' is not an integer"):
        config.validate(_registry())


def test_yaml_section_options_equal_cli_options(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "objective: toy\nbackbone: tiny\noptions:\n  objective:\n    teacher_temp: 0.07\n"
        "  backbone:\n    depth: 4\n"
    )
    from_yaml = RunConfig.from_yaml(path)
    from_cli = RunConfig(objective="toy", backbone="tiny")
    from_cli.apply_opts(["objective.teacher_temp=0.07", "backbone.depth=4"])
    registry = _registry()
    from_yaml.validate(registry)
    from_cli.validate(registry)
    assert from_yaml.options == from_cli.options


def test_factory_options_are_keyword_only_parameters():
    specs = factory_options(_Objective)
    assert list(specs) == ["teacher_temp", "prototypes", "koleo", "centering", "mask_ratio", "head"]
    assert specs["prototypes"].default == 65536


def test_required_option_must_be_given():
    def factory(*, root: str):
        return root

    with pytest.raises(ConfigError, match="needs option"):
        validate_options(factory_options(factory), {}, where="dataset 'x'")


@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        ("3", int, 3),
        (3.0, int, 3),
        ("3", float, 3.0),
        ("yes", bool, True),
        ("off", bool, False),
        ("0.5", float | None, 0.5),
        ("null", int | None, None),
        ("abc", str | None, "abc"),
        ("12", str, "12"),
        ([1, 2], tuple[float, float], (1.0, 2.0)),
        ("[1, 2, 3]", list[int], [1, 2, 3]),
    ],
)
def test_coerce(value, annotation, expected):
    result = coerce(value, annotation)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "annotation"),
    [(True, int), ("x", float), (1, str), ("maybe", bool), ([1, 2, 3], tuple[int, int])],
)
def test_coerce_rejects(value, annotation):
    with pytest.raises(ValueError):
        coerce(value, annotation)


def test_options_follow_kwargs_into_the_base_class():
    from biovfm_core.options import factory_options

    class Base:
        def __init__(self, views, *, flip: bool = True, size: int = 3) -> None:
            self.flip, self.size = flip, size

    class Child(Base):
        def __init__(self, views, *, gamma: float = 1.0, size: int = 5, **rest) -> None:
            super().__init__(views, size=size, **rest)

    class Closed(Base):
        def __init__(self, views, *, gamma: float = 1.0) -> None:
            super().__init__(views)

    specs = factory_options(Child)
    assert list(specs) == ["gamma", "size", "flip"]
    assert specs["size"].default == 5  # the subclass's default wins
    assert list(factory_options(Closed)) == ["gamma"]  # no **kwargs: nothing passes on


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.log_every", 0, "train.log_every must be at least 1, got 0"),
        ("train.checkpoint_every", 0, "train.checkpoint_every must be at least 1"),
        ("train.max_steps", 0, "train.max_steps must be at least 1"),
        ("train.profile_steps", -1, "train.profile_steps must be at least 0"),
        ("data.num_workers", -2, "data.num_workers must be at least 0"),
        ("optim.accumulate", 0, "optim.accumulate must be at least 1"),
        ("data.fraction", 0.0, "data.fraction must be in (0, 1], got 0.0"),
        ("data.fraction", 1.5, "data.fraction must be in (0, 1], got 1.5"),
        ("optim.lr", -0.1, "optim.lr must be positive"),
    ],
)
def test_numbers_a_run_cannot_use_fail_before_it_starts(key, value, message):
    config = RunConfig()
    config.check_ranges()  # the defaults are fine
    config.set(key, value)
    with pytest.raises(ConfigError) as excinfo:
        config.check_ranges()
    assert message in str(excinfo.value)


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path):
    # mkstemp's 0600 would make a shared run's config, results and exports unreadable
    # to the rest of a team.
    import os

    from biovfm_core.files import write_atomic

    old = os.umask(0o022)
    try:
        written = write_atomic(tmp_path / "results.md", b"x")
        plain = tmp_path / "plain.md"
        plain.write_bytes(b"x")
    finally:
        os.umask(old)
    assert written.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
