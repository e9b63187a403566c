"""The plugin conformance kit (`biovfm_core.testing`): the built-in plugins pass it,
and plugins that break the protocol fail it with a message saying what to change."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from biovfm_core.errors import BadImageError
from biovfm_core.protocols import ObjectiveBase, SampleRecord, ViewSpec
from biovfm_core.testing import (
    ConformanceError,
    check_augmentation,
    check_backbone,
    check_objective,
    check_reader,
)

# The CPU presets, made smaller still so each check takes about a second.
TINY = {
    "dinov2": {
        "global_size": 48, "local_size": 16, "local_crops": 2, "prototypes": 64,
        "head_hidden_dim": 64, "ibot_head_n_prototypes": 64, "ibot_head_hidden_dim": 64,
    },
    "mae": {"image_size": 32},
    "supervised": {"image_size": 32},
}  # fmt: skip


@pytest.mark.parametrize("name", ["dinov2", "mae", "supervised"])
def test_builtin_objectives_pass_the_kit(name):
    check_objective(name, options=TINY[name])


def test_builtin_backbone_passes_the_kit():
    check_backbone("vit_tiny")


def test_a_cnn_is_checked_at_the_smallest_size_it_runs_at():
    # convnext_atto downsamples 32x: at 32 px its half-size check (16 px) cannot run.
    check_backbone("timm:convnext_atto")


def _needs_huge(*, image_size: int = 224):
    """A backbone refusing every input under 512 px, as a deep CNN would."""
    from torch import nn

    from biovfm_core.protocols import BackboneOutput

    class Net(nn.Module):
        embed_dim, patch_size, in_chans = 8, 1, 3

        def __init__(self):
            super().__init__()
            self.image_size = image_size
            self.proj = nn.Linear(3, 8)

        def forward_tokens(self, images, *, mask=None, keep=None):
            if images.shape[-1] < 512:
                raise RuntimeError("Kernel size can't be greater than actual input size")
            x = self.proj(images.mean((2, 3)))
            return BackboneOutput(cls=x, patches=x[:, None])

    return Net()


def test_a_backbone_running_at_no_kit_size_says_so():
    with pytest.raises(
        ConformanceError,
        match=r"runs at none of 32, 64, 128, 256 px .*32 px: Kernel size.*"
        r"Fix: .*options=\{'image_size': N\}",
    ):
        check_backbone(_needs_huge)


@pytest.mark.parametrize(
    "name", ["default", "ct", "mr", "xray", "microscopy", "us", "fundus", "dermoscopy"]
)
def test_builtin_recipes_pass_the_kit(name):
    check_augmentation(name)


def _png_folder(root: Path) -> Path:
    from PIL import Image
    from skimage import data

    root.mkdir()
    Image.fromarray(data.camera()[::8, ::8]).save(root / "camera.png")
    Image.fromarray(data.retina()[::16, ::16]).save(root / "retina.png")
    return root


def _dicom_file(root: Path) -> Path:
    from biovfm_readers.demo import pydicom_test_dir

    root.mkdir()
    shutil.copyfile(os.path.join(pydicom_test_dir(), "CT_small.dcm"), root / "ct.dcm")
    return root


def _nifti_file(root: Path) -> Path:
    import nibabel as nib

    root.mkdir()
    volume = np.random.default_rng(0).integers(0, 1000, size=(16, 16, 3)).astype(np.int16)
    path = root / "brain.nii"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    return path


def _medmnist_file(root: Path) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 255, size=(4, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(4) % 2).reshape(-1, 1)
    path = root / "breastmnist.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("folder", _png_folder),
        ("dicom", _dicom_file),
        ("nifti", _nifti_file),
        ("medmnist", _medmnist_file),
    ],
)
def test_builtin_readers_pass_the_kit(tmp_path, name, make):
    # The kit truncates a copy of the first file and expects BadImageError from load().
    check_reader(name, make(tmp_path / "data"))


# ----------------------------------------------------- plugins that break the rules


def _objective_class(**overrides):
    import torch
    from torch import nn

    class Tiny(ObjectiveBase, nn.Module):
        def __init__(self, backbone, task, *, scale: float = 1.0):
            super().__init__()
            self.backbone = backbone
            self.head = nn.Linear(backbone.embed_dim, 4)
            self.views = ViewSpec(global_crops=2, global_size=32, local_crops=0)
            self.calls = 0
            self.scale = scale

        def training_step(self, batch, info):
            z = self.head(self.backbone.forward_tokens(batch.global_views[0]).cls)
            return {"loss": (z.pow(2).mean() + 1.0) * self.scale * torch.ones(())}

        def eval_backbone(self):
            return self.backbone

    for key, value in overrides.items():
        setattr(Tiny, key, value)
    # Importable by name, as a plugin's class is, so the kit's pickle check can find it.
    Tiny.__qualname__ = Tiny.__name__ = f"Tiny{len(_CLASSES)}"
    _CLASSES.append(Tiny)
    globals()[Tiny.__name__] = Tiny
    return Tiny


_CLASSES: list[type] = []


def test_a_conforming_minimal_objective_passes():
    check_objective(_objective_class())


def test_a_detached_loss_is_named():
    def training_step(self, batch, info):
        z = self.head(self.backbone.forward_tokens(batch.global_views[0]).cls.detach())
        return {"loss": z.pow(2).mean()}

    with pytest.raises(ConformanceError, match=r"no gradient on the backbone.*without detaching"):
        check_objective(_objective_class(training_step=training_step))


def test_state_outside_the_state_dict_breaks_resumption():
    def training_step(self, batch, info):
        self.calls += 1  # a Python counter: not in state_dict, lost on resume
        z = self.head(self.backbone.forward_tokens(batch.global_views[0]).cls)
        return {"loss": z.pow(2).mean() * self.calls}

    with pytest.raises(ConformanceError, match=r"state_dict round trip.*parameters or buffers"):
        check_objective(_objective_class(training_step=training_step))


def test_a_non_scalar_loss_is_named():
    def training_step(self, batch, info):
        return {"loss": self.head(self.backbone.forward_tokens(batch.global_views[0]).cls)}

    with pytest.raises(ConformanceError, match=r"0-dim tensor \(reduce with .mean\(\)"):
        check_objective(_objective_class(training_step=training_step))


def test_an_eval_backbone_of_the_wrong_kind_is_named():
    def eval_backbone(self):
        return self.head

    with pytest.raises(ConformanceError, match=r"eval_backbone.*attribute embed_dim"):
        check_objective(_objective_class(eval_backbone=eval_backbone))


def test_options_without_type_hint_or_preset_typos_are_the_plugins_fault():
    def no_hint(backbone, task, *, scale=1.0):
        raise AssertionError("not built")

    with pytest.raises(ConformanceError, match=r"option 'scale'.*no type hint.*annotate"):
        check_objective(no_hint)
    with pytest.raises(ConformanceError, match=r"'cpu' preset.*unknown option objective.scael"):
        check_objective(_objective_class(), preset={"scael": 2.0})


def test_a_default_that_does_not_survive_opt_is_named():
    def bad_default(backbone, task, *, sizes: tuple[int, int] = (1, 2, 3)):
        raise AssertionError("not built")

    with pytest.raises(
        ConformanceError, match=r"--opt objective.sizes=\[1, 2, 3\], is rejected.*must have 2 items"
    ):
        check_objective(bad_default)


class GlobalRandomRecipe:
    """Crops from numpy's global generator: not reproducible from the seed."""

    def __init__(self, views):
        self.views = views

    def sample_views(self, image, record, rng):
        def view(size):
            value = np.float32(np.random.random())
            return np.full((3, size, size), value, np.float32)

        v = self.views
        return {
            "global": [view(v.global_size) for _ in range(v.global_crops)],
            "local": [view(v.local_size) for _ in range(v.local_crops)],
        }

    def batch_transform(self, batch):
        return batch


def test_a_recipe_using_global_randomness_is_named():
    with pytest.raises(ConformanceError, match=r"draw every random choice from the `rng`"):
        check_augmentation(GlobalRandomRecipe)


class NpyReader:
    """A `.npy` folder reader in the manner of issue 16's author."""

    def __init__(self, location, tags, *, strict_errors: bool = True):
        self.location, self.tags, self.strict_errors = str(location), tags, strict_errors

    def scan(self):
        for name in sorted(os.listdir(self.location)):
            yield SampleRecord(
                os.path.join(self.location, name), self.tags.source, self.tags.modality
            )

    def load(self, record):
        try:
            return np.load(record.uri)
        except ValueError as exc:
            if self.strict_errors:
                raise BadImageError(record.uri, str(exc)) from None
            raise


def _npy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "npy"
    folder.mkdir(parents=True)
    np.save(folder / "a.npy", np.arange(64, dtype=np.float32).reshape(8, 8))
    return folder


def test_a_reader_passing_the_modality_placeholder_on_is_named(tmp_path):
    with pytest.raises(ConformanceError, match=r"modality 'auto'.*exactly one id"):
        check_reader(NpyReader, _npy_folder(tmp_path))
    check_reader(NpyReader, _npy_folder(tmp_path / "x"), modality="ct")


def test_a_reader_raising_other_errors_on_a_broken_file_is_named(tmp_path):
    folder = _npy_folder(tmp_path)
    with pytest.raises(ConformanceError, match=r"raised ValueError.*raise biovfm_core.errors"):
        check_reader(NpyReader, folder, modality="ct", options={"strict_errors": False})


class OnlyKnowsBadNpy(NpyReader):
    """Refuses a broken file by its name only: a truncated copy of a good file (the
    kit's default broken file) passes as an image. Records what it loaded."""

    loaded: ClassVar[list[str]] = []

    def load(self, record):
        OnlyKnowsBadNpy.loaded.append(record.uri)
        if Path(record.uri).name == "bad.npy":
            raise BadImageError(record.uri, "the given broken file")
        return np.zeros((8, 8), np.float32)


def test_a_broken_file_can_be_given(tmp_path):
    folder = _npy_folder(tmp_path)
    written = []
    loaded = OnlyKnowsBadNpy.loaded
    loaded.clear()

    def write_broken(where: Path) -> Path:
        (where / "bad.npy").write_bytes(b"\x93NUMPY garbage")
        written.append(where / "bad.npy")
        return where / "bad.npy"

    check_reader(OnlyKnowsBadNpy, folder, modality="ct", broken=write_broken)
    assert len(written) == 1 and loaded[-1] == str(written[0])
    # A file path works as well as a function writing one.
    given = tmp_path / "elsewhere" / "bad.npy"
    given.parent.mkdir()
    given.write_bytes(b"\x93NUMPY garbage")
    check_reader(OnlyKnowsBadNpy, folder, modality="ct", broken=given)
    assert loaded[-1] == str(given)
    # Without it the kit truncates a copy of a.npy, which this reader takes: it fails.
    with pytest.raises(ConformanceError, match=r"load\(\) of a broken file \(a\.npy\) returned"):
        check_reader(OnlyKnowsBadNpy, folder, modality="ct")


def test_an_unregistered_name_says_how_to_register_it():
    with pytest.raises(ConformanceError, match=r"did you mean 'mae'\?.*pip install -e \."):
        check_objective("mea")


# ------------------------------------------ the seven breakages a third party's kit missed


def test_a_loss_that_ignores_the_batch_is_named():
    import torch

    def __init__(self, backbone, task, *, scale: float = 1.0):
        type(self).__mro__[1].__init__(self, backbone, task, scale=scale)
        self.register_buffer(
            "fixed", torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        )

    def training_step(self, batch, info):
        z = self.head(self.backbone.forward_tokens(self.fixed).cls)
        return {"loss": z.pow(2).mean() * self.scale}

    base = _objective_class()
    bad = type("FixedBuffer", (base,), {"__init__": __init__, "training_step": training_step})
    globals()["FixedBuffer"] = bad
    with pytest.raises(
        ConformanceError,
        match=r"two different batches give the same loss.*"
        r"ignores its batch\. Fix: compute the loss from batch.global_views",
    ):
        check_objective(bad)


def test_an_objective_that_cannot_be_copied_is_named():
    import threading

    def __init__(self, backbone, task, *, scale: float = 1.0):
        type(self).__mro__[1].__init__(self, backbone, task, scale=scale)
        self.lock = threading.Lock()

    bad = type("Locked", (_objective_class(),), {"__init__": __init__})
    globals()["Locked"] = bad
    with pytest.raises(
        ConformanceError,
        match=r"copy.deepcopy of the objective fails .*the culprit is lock \(lock\).*"
        r"DDP/FSDP.*Fix: keep locks",
    ):
        check_objective(bad)


def _with_teacher(copy_teacher: bool, update: bool):
    import copy

    from lightly.models.utils import update_momentum

    def __init__(self, backbone, task, *, scale: float = 1.0):
        type(self).__mro__[1].__init__(self, backbone, task, scale=scale)
        self.teacher = copy.deepcopy(backbone) if copy_teacher else backbone
        if copy_teacher:
            self.teacher.requires_grad_(False)

    def after_optimizer_step(self, info):
        if update:
            update_momentum(self.backbone, self.teacher, 0.9)
        return {"teacher_momentum": 0.9}

    def eval_backbone(self):
        return self.teacher

    name = f"Teacher{copy_teacher}{update}"
    cls = type(
        name,
        (_objective_class(),),
        {"__init__": __init__, "after_optimizer_step": after_optimizer_step,
         "eval_backbone": eval_backbone},
    )  # fmt: skip
    globals()[name] = cls
    return cls


def test_an_ema_teacher_is_checked_to_be_a_copy_and_updated():
    check_objective(_with_teacher(copy_teacher=True, update=True))
    with pytest.raises(
        ConformanceError, match=r"teacher shares \d+ parameter\(s\) with the student.*copy.deepcopy"
    ):
        check_objective(_with_teacher(copy_teacher=False, update=True))
    with pytest.raises(
        ConformanceError, match=r"teacher's weights are unchanged.*never updated.*update_momentum"
    ):
        check_objective(_with_teacher(copy_teacher=True, update=False))


def test_an_option_declared_but_ignored_is_named_unless_exempt():
    def training_step(self, batch, info):
        z = self.head(self.backbone.forward_tokens(batch.global_views[0]).cls)
        return {"loss": z.pow(2).mean()}  # `scale` is never used

    bad = _objective_class(training_step=training_step)
    with pytest.raises(
        ConformanceError,
        match=r"option 'scale': changing it from 1.0 to 0.5 changes nothing.*declared but "
        r"ignored.*kit_exempt_options",
    ):
        check_objective(bad)
    bad.kit_exempt_options = {"scale": "reserved for the next release"}
    check_objective(bad)
    bad.kit_exempt_options = {"sclae": "typo"}
    with pytest.raises(ConformanceError, match=r"kit_exempt_options names sclae"):
        check_objective(bad)


class ObjectDtypeReader(NpyReader):
    def load(self, record):
        return np.asarray(super().load(record), dtype=object)


class ChannelFirstReader(NpyReader):
    def load(self, record):
        return super().load(record)[None]


class TwoChannelReader(NpyReader):
    def load(self, record):
        image = super().load(record)
        return np.stack([image, image], axis=-1)


@pytest.mark.parametrize(
    ("reader", "shown"),
    [
        (ObjectDtypeReader, r"dtype object"),
        (ChannelFirstReader, r"shape \(1, 8, 8\)"),
        (TwoChannelReader, r"shape \(8, 8, 2\)"),
    ],
)
def test_a_reader_returning_other_than_the_contract_is_named(tmp_path, reader, shown):
    with pytest.raises(
        ConformanceError, match=shown + r".*Fix: return .*\(H, W\), \(H, W, 1\) or \(H, W, 3\)"
    ):
        check_reader(reader, _npy_folder(tmp_path), modality="ct")
