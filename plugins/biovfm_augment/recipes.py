"""Multi-crop augmentation recipes, one per modality.

A recipe turns a decoded image with its dynamic range intact (uint8, uint16, float32
HU) into the views an objective declared in its ``ViewSpec``. Order, per view:

1. random-resized crop + horizontal flip on the raw values (albumentations, float32)
   — cropping first means the modality step below runs on small arrays;
2. the modality's intensity mapping to [0, 1] (CT windowing, MR bias field, X-ray
   CLAHE, HED stain jitter, speckle, colour constancy), drawn anew per view;
3. gray → 3 channels (repeat), normalise with mean/std, ``(C, H, W)`` float32.

Whole-image statistics the mapping needs (percentiles for 16-bit and MR data) are
computed once per image before cropping, so a dark crop is not stretched to full
contrast. ``batch_transform`` adds DINO-style colour jitter, grayscale, blur and
solarize on the training device with kornia when ``views.color_augment`` is set.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from biovfm_core.protocols import Batch, SampleRecord, ViewSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _stats(image: np.ndarray) -> tuple[float, float]:
    """Robust low/high (0.5th / 99.5th percentile) on a subsample; fast on big images."""
    flat = image.reshape(-1)
    if flat.size > 65536:
        flat = flat[:: flat.size // 65536]
    lo, hi = np.percentile(flat.astype(np.float32), (0.5, 99.5))
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def to_unit_range(crop: np.ndarray, stats: tuple[float, float], dtype: np.dtype) -> np.ndarray:
    """uint8 → /255; anything else → robust percentile range of the whole image."""
    if dtype == np.uint8:
        return crop / np.float32(255.0)
    lo, hi = stats
    return np.clip((crop - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


class MultiCropRecipe:
    """``views.global_crops`` views of ``global_size`` px and ``local_crops`` of
    ``local_size`` px, random-resized crops with the view spec's area scales.

    Options
    -------
    flip: random horizontal flip per view.
    mean, std: per-channel normalisation after mapping to [0, 1].
    jitter_p: probability of colour jitter per view (on device, with colour_augment).
    blur_global: blur probabilities of the first and other global views (DINO: 1.0, 0.1).
    solarize_p: solarize probability of the second global view (DINO: 0.2).
    """

    def __init__(
        self,
        views: ViewSpec,
        *,
        flip: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        jitter_p: float = 0.8,
        blur_global: tuple[float, float] = (1.0, 0.1),
        solarize_p: float = 0.2,
    ) -> None:
        self.views = views
        self.flip = flip
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.jitter_p = jitter_p
        self.blur_global = blur_global
        self.solarize_p = solarize_p
        self._build_crops()
        self._device_ops: Any = None

    # Albumentations pipelines and kornia modules are rebuilt after unpickling in a
    # worker instead of being pickled with the recipe.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_global_crop"] = state["_local_crop"] = state["_device_ops"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build_crops()

    def _build_crops(self) -> None:
        import albumentations as A

        v = self.views
        flip = [A.HorizontalFlip(p=0.5)] if self.flip else []
        self._global_crop = A.Compose(
            [
                A.RandomResizedCrop(
                    size=(v.global_size, v.global_size), scale=v.global_scale, p=1.0
                ),
                *flip,
            ]
        )
        self._local_crop = A.Compose(
            [
                A.RandomResizedCrop(size=(v.local_size, v.local_size), scale=v.local_scale, p=1.0),
                *flip,
            ]
        )

    # ------------------------------------------------------------- per sample
    def prepare(self, image: np.ndarray, record: SampleRecord) -> Any:
        """Whole-image statistics the intensity mapping needs (before cropping)."""
        return None if image.dtype == np.uint8 else _stats(image)

    def intensity(
        self, crop: np.ndarray, state: Any, dtype: np.dtype, rng: np.random.Generator
    ) -> np.ndarray:
        """Map one crop (float32, raw values) to [0, 1]; modality recipes override this."""
        return to_unit_range(crop, state, dtype)

    # The loader may ask for light views (biovfm_core/data/light_views.py).
    supports_light_views = True

    def sample_views(
        self,
        image: np.ndarray,
        record: SampleRecord,
        rng: np.random.Generator,
        *,
        light: bool = False,
    ) -> dict[str, Any]:
        """Views of one image; every random choice is drawn from ``rng``, so the same
        generator state gives bitwise the same views (resumable, reproducible runs).
        ``light``: leave clip, normalisation and the 3-channel repeat to the device
        (``Batch.finish``), one channel where the image has one."""
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        dtype = image.dtype
        state = self.prepare(image, record)
        raw = image.astype(np.float32, copy=False)
        # Albumentations draws from its own generators. Handing it ``rng`` plus one
        # Python Random seeded from it, once per sample, costs ~6 us; reseeding each
        # view's Compose (``set_random_seed``) builds 3 generator pairs per view,
        # ~40 us a view, twice the crops' own cost. The composes are then bound to
        # this call's generators: a recipe must not serve two threads at once
        # (loader workers are processes, each with its own copy).
        py_random = random.Random(int(rng.integers(2**63)))
        self._global_crop.set_random_state(rng, py_random)
        self._local_crop.set_random_state(rng, py_random)
        out: dict[str, list[Any]] = {"global": [], "local": []}
        for key, crop, n in (
            ("global", self._global_crop, self.views.global_crops),
            ("local", self._local_crop, self.views.local_crops),
        ):
            for _ in range(n):
                view = crop(image=raw)["image"]
                view = self.intensity(view, state, dtype, rng)
                out[key].append(self._light(view) if light else self._finish(view))
        if light:
            out["norm"] = (tuple(self.mean.tolist()), tuple(self.std.tolist()))
        return out

    def _light(self, view: np.ndarray) -> np.ndarray:
        # The float32 cast _finish's assignment makes, channel-first, nothing else.
        if view.ndim == 2:
            return np.ascontiguousarray(view, np.float32)[None]
        out = np.empty((view.shape[2], *view.shape[:2]), np.float32)
        out[...] = view.transpose(2, 0, 1)
        return out

    def _finish(self, view: np.ndarray) -> np.ndarray:
        # Channel-first before any arithmetic: numpy broadcasting over a trailing axis
        # of 3 runs its inner loop 3 elements at a time. Writing into one array made
        # here costs ~60-90 us per 224 px view instead of ~1.2 ms, bitwise the same.
        out = np.empty((3, *view.shape[:2]), np.float32)
        out[...] = view if view.ndim == 2 else view.transpose(2, 0, 1)
        np.clip(out, 0.0, 1.0, out=out)
        out -= self.mean[:, None, None]
        out /= self.std[:, None, None]
        return out

    # -------------------------------------------------------------- per batch
    def _ops(self, device: Any) -> Any:
        if self._device_ops is None:
            import kornia.augmentation as K
            import torch

            jitter = torch.nn.Sequential(
                K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=self.jitter_p),
                K.RandomGrayscale(p=0.2),
            )
            blur = [K.RandomGaussianBlur((23, 23), (0.1, 2.0), p=p) for p in self.blur_global]
            local_blur = K.RandomGaussianBlur((9, 9), (0.1, 2.0), p=0.5)
            solarize = K.RandomSolarize(thresholds=0.0, additions=0.0, p=self.solarize_p)
            self._device_ops = (jitter, blur, local_blur, solarize)
        return self._device_ops

    def batch_transform(self, batch: Batch) -> Batch:
        if not self.views.color_augment or not batch.global_views:
            return batch
        import torch

        device = batch.global_views[0].device
        jitter, blur, local_blur, solarize = self._ops(device)
        mean = torch.as_tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.as_tensor(self.std, device=device).view(1, 3, 1, 1)
        size = batch.global_views[0].shape[0]
        dtype = batch.global_views[0].dtype

        def unit(views: list[torch.Tensor]) -> torch.Tensor:
            x = torch.cat(views) if len(views) > 1 else views[0]
            return (x.float() * std + mean).clamp(0, 1)

        def normalised(y: torch.Tensor) -> torch.Tensor:
            return ((y - mean) / std).to(dtype)

        # Views that share their ops go through kornia as one batch: kornia draws its
        # parameters per image either way, and its cost per call is hundreds of small
        # tensor ops, which a GPU pays for in kernel launches. The papers' 2x224 + 8x96
        # recipe went from 3,142 ops per batch, view by view, to 761 (counted by
        # benchmarks/profile_step.py).
        with torch.no_grad():
            globals_: list[torch.Tensor] = []
            for group in _fusable(batch.global_views):
                globals_ += jitter(unit(group)).split(size)
            for i, y in enumerate(globals_):
                y = blur[min(i, len(blur) - 1)](y)
                globals_[i] = normalised(solarize(y) if i == 1 else y)
            locals_: list[torch.Tensor] = []
            for group in _fusable(batch.local_views):
                locals_ += normalised(local_blur(jitter(unit(group)))).split(size)
        return Batch(
            global_views=globals_, local_views=locals_, labels=batch.labels, modality=batch.modality
        )


# On a CPU, element-wise ops over tensors past the cache run slower per element than
# the per-call overhead that fusing saves: fusing all views of the 224/96 recipe
# (up to 39 MB of float32 per call at batch 32) made it 1.2-1.7x slower on 2 cores.
CPU_FUSE_ELEMENTS = 2**20


def _fusable(views: list[Any]) -> list[list[Any]]:
    """Consecutive groups of views to run through kornia together (all of them on a GPU)."""
    groups: list[list[Any]] = []
    elements = 0
    for view in views:
        on_cpu = view.device.type == "cpu"
        if groups and not (on_cpu and elements + view.numel() > CPU_FUSE_ELEMENTS):
            groups[-1].append(view)
            elements += view.numel()
        else:
            groups.append([view])
            elements = view.numel()
    return groups


class CTRecipe(MultiCropRecipe):
    """CT in Hounsfield units: each view picks a clinical window (level/width) and
    jitters it, then maps [level - width/2, level + width/2] to [0, 1].

    Options
    -------
    windows: comma list of ``level/width`` presets (soft tissue, lung, bone, brain).
    jitter: relative jitter of level and width.
    Plus the multi-crop options of ``MultiCropRecipe`` (flip, mean, std, jitter_p,
    blur_global, solarize_p).
    """

    def __init__(
        self,
        views: ViewSpec,
        *,
        windows: str = "40/400,-600/1500,400/1800,40/80",
        jitter: float = 0.1,
        **multi_crop: Any,
    ) -> None:
        super().__init__(views, **multi_crop)
        self.windows = [
            tuple(float(x) for x in w.split("/")) for w in windows.split(",") if w.strip()
        ]
        self.jitter = jitter

    def prepare(self, image: np.ndarray, record: SampleRecord) -> Any:
        # CT stored as uint8 (e.g. PNG exports) is already windowed; treat it as gray.
        if image.dtype == np.uint8:
            return None
        return "hu"

    def intensity(
        self, crop: np.ndarray, state: Any, dtype: np.dtype, rng: np.random.Generator
    ) -> np.ndarray:
        if state != "hu":
            return super().intensity(crop, None, dtype, rng)
        level, width = self.windows[rng.integers(len(self.windows))]
        level += rng.uniform(-self.jitter, self.jitter) * width
        width *= 1.0 + rng.uniform(-self.jitter, self.jitter)
        return window(crop, level, width)


def window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Hounsfield window → [0, 1]."""
    lo = level - width / 2.0
    return np.clip((hu - np.float32(lo)) / np.float32(width), 0.0, 1.0)


class MRRecipe(MultiCropRecipe):
    """MR: percentile normalisation, a smooth multiplicative bias field (quadratic
    polynomial, as scanners' coil inhomogeneity looks), and a random gamma.

    Options
    -------
    bias: maximum amplitude of the log bias field.
    gamma: range the gamma exponent is drawn from.
    p: probability of the bias field, and separately of the gamma, per view.
    Plus the multi-crop options of ``MultiCropRecipe`` (flip, mean, std, jitter_p,
    blur_global, solarize_p).
    """

    def __init__(
        self,
        views: ViewSpec,
        *,
        bias: float = 0.3,
        gamma: tuple[float, float] = (0.7, 1.5),
        p: float = 0.5,
        **multi_crop: Any,
    ) -> None:
        super().__init__(views, **multi_crop)
        self.bias, self.gamma, self.p = bias, gamma, p

    def prepare(self, image: np.ndarray, record: SampleRecord) -> Any:
        return _stats(image)

    def intensity(
        self, crop: np.ndarray, state: Any, dtype: np.dtype, rng: np.random.Generator
    ) -> np.ndarray:
        x = to_unit_range(crop, state, np.dtype(np.float32))
        if rng.random() < self.p:
            h, w = x.shape[:2]
            yy, xx = np.meshgrid(
                np.linspace(-1, 1, h, dtype=np.float32),
                np.linspace(-1, 1, w, dtype=np.float32),
                indexing="ij",
            )
            c = rng.uniform(-1, 1, 5).astype(np.float32)
            field = c[0] * xx + c[1] * yy + c[2] * xx * yy + c[3] * xx**2 + c[4] * yy**2
            field = np.exp(self.bias * field / max(1e-6, float(np.abs(field).max())))
            x = x * (field[..., None] if x.ndim == 3 else field)
        if rng.random() < self.p:
            x = np.clip(x, 0, 1) ** np.float32(rng.uniform(*self.gamma))
        return x


class XRayRecipe(MultiCropRecipe):
    """X-ray: CLAHE (contrast-limited adaptive histogram equalisation) on a 16-bit or
    8-bit mapping, then random contrast/brightness.

    Options
    -------
    clahe_p: probability of CLAHE per view.
    clip_limit: CLAHE contrast limit (OpenCV's ``clipLimit``; 8x8 tiles).
    contrast: contrast factor drawn from ``1 ± contrast``.
    brightness: offset drawn from ``± brightness``.
    Plus the multi-crop options of ``MultiCropRecipe`` (flip, mean, std, jitter_p,
    blur_global, solarize_p).
    """

    def __init__(
        self,
        views: ViewSpec,
        *,
        clahe_p: float = 0.5,
        clip_limit: float = 2.0,
        contrast: float = 0.2,
        brightness: float = 0.1,
        **multi_crop: Any,
    ) -> None:
        super().__init__(views, **multi_crop)
        self.clahe_p, self.clip_limit = clahe_p, clip_limit
        self.contrast, self.brightness = contrast, brightness

    def intensity(
        self, crop: np.ndarray, state: Any, dtype: np.dtype, rng: np.random.Generator
    ) -> np.ndarray:
        import cv2

        x = to_unit_range(crop, state, dtype)
        if rng.random() < self.clahe_p:
            clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(8, 8))
            gray = x if x.ndim == 2 else x.mean(axis=-1)
            x = clahe.apply((gray * 65535).astype(np.uint16)).astype(np.float32) / 65535.0
        c = 1.0 + rng.uniform(-self.contrast, self.contrast)
        b = rng.uniform(-self.brightness, self.brightness)
        return (x - 0.5) * np.float32(c) + np.float32(0.5 + b)


class MicroscopyRecipe(MultiCropRecipe):
    """Pathology: HED stain jitter (Tellez et al. 2018): RGB → haematoxylin / eosin /
    DAB optical densities, each scaled by ``1 ± sigma`` and shifted by ``± bias``,
    back to RGB. Gray microscopy (fluorescence, phase contrast) is left as is.

    Options
    -------
    sigma: stain scale drawn from ``1 ± sigma`` per channel.
    bias: stain shift drawn from ``± bias`` (times the channel's largest density).
    p: probability of the stain jitter per view.
    Plus the multi-crop options of ``MultiCropRecipe`` (flip, mean, std, jitter_p,
    blur_global, solarize_p).
    """

    def __init__(
        self,
        views: ViewSpec,
        *,
        sigma: float = 0.05,
        bias: float = 0.05,
        p: float = 0.8,
        **multi_crop: Any,
    ) -> None:
        super().__init__(views, **multi_crop)
        self.sigma, self.bias, self.p = sigma, bias, p

    def intensity(
        self, crop: np.ndarray, state: Any, dtype: np.dtype, rng: np.random.Generator
    ) -> np.ndarray:
        x = to_unit_range(crop, state, dtype)
        if x.ndim != 3 or rng.random() >= self.p:
            return x
        from skimage.color import hed2rgb, rgb2hed

        hed = rgb2hed(np.clip(x, 0, 1))
        alpha = rng.uniform(1 - self.sigma, 1 + self.sigma, 3)
        beta = rng.uniform(-self.bias, self.bias, 3)
        return hed2rgb(hed * alpha + beta * np.abs(hed).max(axis=(0, 1))).astype(np.float32)


class UltrasoundRecipe(MultiCropRecipe):
    """Ultrasound: multiplicative speckle, gamma-distributed with mean 1 (the
    fully developed speckle model), strength drawn per view.

    Options
    -------
    strength: largest speckle standard deviation (drawn from [0.02, strength]).
    p: probability of speckle per view.
    Plus the multi-crop options of ``MultiCropRecipe`` (flip, mean, std, jitter_p,
    blur_global, solarize_p).
    """

    def __init__(
        self,
        views: ViewSpec,
        *,
        strength: float = 0.15,
        p: float = 0.5,
        **multi_crop: Any,
    ) -> None:
        super().__init__(views, **multi_crop)
        self.strength, self.p = strength, p

    def intensity(
        self, crop: np.ndarray, state: Any, dtype: np.dtype, rng: np.random.Generator
    ) -> np.ndarray:
        x = to_unit_range(crop, state, dtype)
        if rng.random() < self.p:
            s = rng.uniform(0.02, self.strength)
            k = 1.0 / (s * s)  # gamma(k, 1/k): mean 1, std s
            noise = rng.gamma(k, 1.0 / k, size=x.shape[:2]).astype(np.float32)
            x = x * (noise[..., None] if x.ndim == 3 else noise)
        return x


class ColourConstancyRecipe(MultiCropRecipe):
    """Fundus and dermoscopy: shades-of-gray colour constancy (Finlayson & Trezzi
    2004; standard for ISIC) removes the camera's illuminant cast, applied with
    probability ``p`` so the model also sees the raw colours.

    Options
    -------
    power: Minkowski norm of the illuminant estimate (6 is the ISIC choice).
    p: probability of the correction per view.
    Plus the multi-crop options of ``MultiCropRecipe`` (flip, mean, std, jitter_p,
    blur_global, solarize_p).
    """

    def __init__(
        self,
        views: ViewSpec,
        *,
        power: float = 6.0,
        p: float = 0.5,
        **multi_crop: Any,
    ) -> None:
        super().__init__(views, **multi_crop)
        self.power, self.p = power, p

    def intensity(
        self, crop: np.ndarray, state: Any, dtype: np.dtype, rng: np.random.Generator
    ) -> np.ndarray:
        x = to_unit_range(crop, state, dtype)
        if x.ndim == 3 and rng.random() < self.p:
            x = shades_of_gray(x, self.power)
        return x


def shades_of_gray(rgb: np.ndarray, power: float = 6.0) -> np.ndarray:
    """Scale channels so their Minkowski-p means are equal (illuminant → gray)."""
    illum = np.power(np.mean(np.power(np.clip(rgb, 0, 1), power), axis=(0, 1)), 1.0 / power)
    illum = illum / max(1e-6, float(np.sqrt(np.sum(illum**2))))
    gain = 1.0 / (illum * np.sqrt(3.0) + 1e-6)
    return np.clip(rgb * gain.astype(np.float32), 0.0, 1.0)
