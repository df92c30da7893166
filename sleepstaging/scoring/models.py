"""The models: creating them, their weights files, and predicting with them.

What training (:mod:`engine`) and inference (:mod:`infer_blend`) share,
without the trainer: the timm model factory with its checks
(``--pretrained imagenet|none|PATH``, the offline check before timm is
asked), safetensors weights (pickles refused), the device and precision
helpers, the softmax of a model over a loader, and the fold of the
original's 1000-class EfficientNet into the 5 stages.
"""
from __future__ import annotations

import json
import struct
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import huggingface_hub.errors
import numpy as np
import safetensors
import safetensors.torch
import timm
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sleepstaging.data import batch_augment
from sleepstaging.data import psg_layout
from sleepstaging import recipe
from sleepstaging import script_io
from sleepstaging.script_io import InputError, where


# --pretrained: timm's ImageNet weights (downloaded and cached by timm), random initialisation, or a file.
PRETRAINED_IMAGENET, PRETRAINED_NONE = "imagenet", "none"
# The ImageNet weights the original loaded, by the tag timm gives them today when that is not timm's default:
# jx_vit_base_p16_224-80ecf9dd.pth is vit_base_patch16_224.orig_in21k_ft_in1k (timm's default is augreg2).
# The original's tf_efficientnet_b4_ns-d6313a46.pth is timm's default for tf_efficientnet_b4_ns (ns_jft_in1k).
ORIGINAL_PRETRAINED_TAGS = {"vit_base_patch16_224": "orig_in21k_ft_in1k"}
# What timm and huggingface_hub raise when the weights cannot be fetched: hub access disabled
# (HF_HUB_OFFLINE=1) or no network, and nothing cached.
HUB_UNREACHABLE = (huggingface_hub.errors.LocalEntryNotFoundError, huggingface_hub.errors.OfflineModeIsEnabled,
                   ConnectionError, TimeoutError, urllib.error.URLError)
HUB_PROBE_SECONDS = 2.0  # the longest the reachability check of timm's weight source may wait
WEIGHTS_METADATA_KEY = "model"  # safetensors metadata: JSON {"architecture": ..., "num_classes": ...}
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"``, ``"cpu"`` or ``"cuda"`` to a device (``cuda:<local_rank>``).

    Raises
    ------
    InputError
        ``"cuda"`` asked for on a machine without CUDA.
    """
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but no CUDA device is available")
    return torch.device("cuda", local_rank)

def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision actually used: ``amp`` on CUDA, ``"off"`` on CPU."""
    return amp if device.type == "cuda" else "off"
# Tensors and models in channels_last on every device: faster convolutions under mixed precision on
# CUDA, and a faster EfficientNet on the CPU too (measured in docs/speed.md, "On CUDA"); the same
# arithmetic up to rounding.
MEMORY_FORMAT = torch.channels_last

def autocast(device: torch.device, amp: str):
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES.get(amp, torch.float32),
                          enabled=device.type == "cuda" and amp in AMP_DTYPES)

def rescale_input(model: torch.nn.Module, input_mean, input_std) -> torch.nn.Module:
    """In place: the model takes the pipeline's ImageNet-normalised images and first rescales them to
    ``(pixel - input_mean) / input_std`` (``--input-norm data``), the training images' own statistics.

    The loaders, their augmentation (dropout holes filled with 0 after the
    ImageNet normalisation: mid-grey squares, as the original's) and every
    inference path stay as they are; only the scale the network's first
    layer meets changes. ``x = (p - m_I) / s_I`` becomes
    ``x * s_I / input_std + (m_I - input_mean) / input_std``. The two
    constants are buffers that move with the model and stay out of its
    state dict: the checkpoints are plain timm weights, and the training
    configuration (``input_mean``, ``input_std``) says how to rebuild the model.

    Parameters
    ----------
    model : torch.nn.Module
    input_mean, input_std : sequence of 3 float
        Per RGB channel, as a share of 255 (:func:`image_cache.pixel_statistics`).
    """
    imagenet_mean = torch.tensor(recipe.IMAGENET_MEAN, dtype=torch.float64)
    imagenet_std = torch.tensor(recipe.IMAGENET_STD, dtype=torch.float64)
    mean = torch.tensor(input_mean, dtype=torch.float64)
    std = torch.tensor(input_std, dtype=torch.float64)
    if mean.shape != (3,) or std.shape != (3,) or not bool((std > 0).all()):
        raise InputError(f"input_mean and input_std must be 3 values each, the spreads above 0: "
                         f"{list(input_mean)!r}, {list(input_std)!r}")
    model.register_buffer("input_scale", (imagenet_std / std).float().view(1, 3, 1, 1), persistent=False)
    model.register_buffer("input_shift", ((imagenet_mean - mean) / std).float().view(1, 3, 1, 1), persistent=False)
    model.register_forward_pre_hook(_rescaled_input)
    return model


def _rescaled_input(model: torch.nn.Module, args: tuple) -> tuple:
    return (torch.addcmul(model.input_shift, args[0], model.input_scale), *args[1:])


def model_for_run(arch: str, config: dict, **options) -> torch.nn.Module:
    """The model a training configuration describes, random or as ``options`` say (:func:`create_model`):
    ``img_size``, ``num_classes`` (5 when absent) and, for ``input_norm`` ``data``, :func:`rescale_input`."""
    model = create_model(arch, config["img_size"], config.get("num_classes", psg_layout.NUM_CLASSES), **options)
    if config.get("input_norm", "imagenet") == "data":
        rescale_input(model, config["input_mean"], config["input_std"])
    return model


def progress_enabled(quiet: bool) -> bool:
    """Progress bars only for a person watching: stderr a terminal and not ``--quiet``."""
    return not quiet and sys.stderr.isatty()

def create_model(arch: str, img_size, num_classes: int = psg_layout.NUM_CLASSES,
                 pretrained: str | Path | None = None, keep_classifier: bool = False) -> torch.nn.Module:
    """A timm classifier with ``num_classes`` outputs.

    Parameters
    ----------
    arch : str
        timm architecture name (``vit_base_patch16_224``, ``tf_efficientnet_b4_ns``...).
    img_size : (int, int)
        Input size in pixels, (height, width), passed as it is to
        architectures that take it (vision transformers, whose patch size
        must divide both); convolutional networks take any size.
    num_classes : int
        Classifier outputs (the five stages).
    pretrained : str or path-like, optional
        None or ``"none"``: random initialisation. ``"imagenet"``: timm's
        ImageNet weights for ``arch`` (the original's, see
        :data:`ORIGINAL_PRETRAINED_TAGS`), downloaded and cached by timm;
        not cached and without network, or with hub access disabled, this
        fails at once (:func:`check_imagenet_weights_reachable`).
        Otherwise a local weights file (safetensors, or a plain state dict
        read with ``weights_only=True``). Either way the classifier is a
        fresh ``num_classes`` ``nn.Linear`` with torch's default
        initialisation, as the original's ViT head (timm drops the
        1000-class one), unless ``keep_classifier``; so is an
        EfficientNet's from random initialisation (:func:`_needs_fresh_head`).
    keep_classifier : bool
        Keep the pretrained classifier where the weights hold one of
        ``num_classes`` outputs (``--original-defects``: the original's
        EfficientNet kept its 1000-class ImageNet classifier, the weights and
        bias of the file). Without pretrained weights, or with a classifier of
        another size, it changes nothing.

    Raises
    ------
    InputError
        Unknown architecture; a size that the architecture's patches do not
        divide; ImageNet weights that timm does not have or
        cannot fetch (one line naming the architecture and the
        alternatives); a pretrained file that does not fit.
    """
    if not timm.is_model(arch):
        raise InputError(f"unknown model architecture {arch!r} (not in timm {timm.__version__})")
    shape = tuple(img_size)
    name, options = _timm_request(arch, num_classes, pretrained)
    try:
        model = _timm_model(name, shape, options)
        _check_patch_size(model, arch, shape)
        if pretrained == PRETRAINED_IMAGENET:
            _check_imagenet_source(model, arch)
        elif pretrained not in (None, PRETRAINED_NONE):
            _check_pretrained_coverage(model, pretrained)
        if _needs_fresh_head(model, pretrained, keep_classifier):
            model.reset_classifier(num_classes)  # as the original replaced its ViT's head: a plain nn.Linear
        return model
    except Exception as err:
        if isinstance(err, InputError) or pretrained in (None, PRETRAINED_NONE) or (
                pretrained == PRETRAINED_IMAGENET and not isinstance(err, HUB_UNREACHABLE)):
            raise
        raise _pretrained_error(err, arch, pretrained) from None


def _needs_fresh_head(model: torch.nn.Module, pretrained, keep_classifier: bool) -> bool:
    """Whether :func:`create_model` replaces ``model``'s classifier by torch's default nn.Linear: always on
    pretrained weights (but a kept classifier), from random initialisation where timm drew it from the
    outputs' count."""
    if pretrained in (None, PRETRAINED_NONE):
        return _fan_out_initialised(model)
    return not (keep_classifier and _classifier_loaded(model))


def _fan_out_initialised(model: torch.nn.Module) -> bool:
    """Whether timm drew ``model``'s classifier from its outputs' count: its EfficientNet class (B0-B8, the
    ``tf_`` and NS variants; ``_init_weight_goog``: uniform within 1/sqrt(outputs)). For 5 stages that is +-0.447, 14 times the
    +-0.032 of the 1000-class head the architecture was made with: from random initialisation the first
    batches' logits reach +-27 and the loss 5 nats, and training from scratch starts by undoing it. Such
    a head is replaced by torch's default nn.Linear (+-1/sqrt(inputs): +-0.028 for B0's 1,280 features),
    the head these models get on pretrained weights. ViTs draw theirs with a fixed spread (0.02) and keep it."""
    from timm.models.efficientnet import EfficientNet

    return isinstance(model, EfficientNet)


def _timm_request(arch: str, num_classes: int, pretrained) -> tuple[str, dict]:
    """(the name timm is asked for, its keyword options) for :func:`create_model`'s ``pretrained``.

    With ``imagenet``, first checks that the weights can be had
    (:func:`check_imagenet_weights_reachable`).
    """
    options = dict(num_classes=num_classes)
    name = arch
    if pretrained == PRETRAINED_IMAGENET:
        name = imagenet_weights_name(arch)
        options.update(pretrained=True)
        check_imagenet_weights_reachable(arch)
    elif pretrained not in (None, PRETRAINED_NONE):
        options.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained)))
    return name, options


def _pretrained_error(err: Exception, arch: str, pretrained) -> InputError:
    """The one-line error for pretrained weights timm could not give: ImageNet's unreachable, or a local file
    that is unreadable (pickle, zip or safetensors errors) or does not fit."""
    if pretrained == PRETRAINED_IMAGENET:
        return InputError(f"cannot fetch timm's ImageNet weights for {arch} ({type(err).__name__}: offline, or "
                          f"hub access disabled by HF_HUB_OFFLINE); run once online to cache them, or pass "
                          f"--pretrained none (random initialisation) or --pretrained PATH (a local weights "
                          f"file)")
    message = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return InputError(f"cannot use pretrained weights for {arch}: {message} {where(pretrained)}")

def _classifier_loaded(model: torch.nn.Module) -> bool:
    """Whether timm loaded the pretrained classifier: it does when the model has the pretrained configuration's
    number of classes (a file of another classifier size then fails to load), and drops it otherwise."""
    return model.num_classes == model.pretrained_cfg.get("num_classes")

def imagenet_weights_name(arch: str) -> str:
    """timm's name of the ImageNet weights ``--pretrained imagenet`` loads for ``arch`` (the original's)."""
    tag = ORIGINAL_PRETRAINED_TAGS.get(arch)
    return f"{arch}.{tag}" if tag else arch

def _imagenet_weights_sources(name: str) -> tuple[list[Path], str | None]:
    """Where timm would find ``name``'s ImageNet weights: files already in the local caches, and the URL it
    would fetch them from (None when timm's configuration names no source)."""
    cfg = timm.models.get_pretrained_cfg(timm.models.get_deprecated_models().get(name, name))
    if cfg is None:
        return [], None
    if cfg.hf_hub_id:
        names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else []
        names += ["model.safetensors", "pytorch_model.bin"]
        cached = [huggingface_hub.try_to_load_from_cache(cfg.hf_hub_id, file_name) for file_name in names]
        return [Path(path) for path in cached if isinstance(path, str)], huggingface_hub.constants.ENDPOINT
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(cfg.url).path).name
        return [path] if path.is_file() else [], cfg.url
    return [], None

def check_imagenet_weights_reachable(arch: str) -> None:
    """Refuse at once when ``arch``'s ImageNet weights are neither cached nor fetchable.

    Without this check, timm and huggingface_hub retry an unreachable hub for
    about a minute before failing. The probe is one HEAD request of
    :data:`HUB_PROBE_SECONDS` at most (any HTTP answer counts as reachable;
    proxies from the environment apply).
    """
    cached, source = _imagenet_weights_sources(imagenet_weights_name(arch))
    if cached or source is None:
        return  # timm loads the cached file, or decides itself
    how = ("run once online to cache them, or pass --pretrained none (random initialisation) or "
           "--pretrained PATH (a local weights file)")
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise InputError(f"timm's ImageNet weights for {arch} are not cached and hub access is disabled "
                         f"(HF_HUB_OFFLINE); {how}")
    try:
        urllib.request.urlopen(urllib.request.Request(source, method="HEAD"), timeout=HUB_PROBE_SECONDS).close()
    except urllib.error.HTTPError:
        return  # the server answered: the network works, timm's own request decides
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise InputError(f"timm's ImageNet weights for {arch} are not cached and {source} cannot be reached "
                         f"({reason}); {how}") from None

def _timm_model(name: str, shape: tuple[int, int], options: dict) -> torch.nn.Module:
    """``timm.create_model(name, img_size=shape, **options)``, or without ``img_size`` where the architecture takes none.

    A convolutional network (EfficientNet, ResNet) takes any input size and
    refuses the keyword; only that refusal leads to the second call. Any
    other TypeError propagates: retrying it without ``img_size`` would
    build a vision transformer for its default size, not the one asked for.
    """
    try:
        return timm.create_model(name, img_size=shape, **options)
    except TypeError as err:
        if "unexpected keyword argument 'img_size'" not in str(err):
            raise
    return timm.create_model(name, **options)

def _check_patch_size(model: torch.nn.Module, arch: str, shape: tuple[int, int]) -> None:
    """Refuse an input size that a vision transformer's patches do not divide (timm would fail at the first batch)."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None and (shape[0] % patch[0] or shape[1] % patch[1]):
        raise InputError(f"--img-size {shape[0]} {shape[1]} does not suit {arch}: its height and width must be "
                         f"multiples of the patch size {patch[0]} x {patch[1]}")

def _check_imagenet_source(model: torch.nn.Module, arch: str) -> None:
    """Refuse an architecture for which timm has no weights (timm would leave it at random initialisation)."""
    cfg = model.pretrained_cfg
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        raise InputError(f"timm {timm.__version__} has no ImageNet weights for {arch}; pass --pretrained none "
                         f"(random initialisation) or --pretrained PATH (a local weights file)")

def _check_pretrained_coverage(model: torch.nn.Module, pretrained: str | Path) -> None:
    """Refuse a pretrained file that lacks weights of the model's body.

    timm loads non-strictly whenever the classifier is replaced (5 classes
    instead of 1000), so a file of another architecture would otherwise
    leave the model silently at random initialisation.
    """
    classifiers = model.pretrained_cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    available = set(timm.models.load_state_dict(str(pretrained)))
    missing = [name for name in model.state_dict()
               if name not in available and not name.endswith("num_batches_tracked")
               and not any(name.startswith(c + ".") for c in classifiers)]
    if missing:
        raise InputError(f"pretrained weights do not fit {model.pretrained_cfg.get('architecture')}: "
                         f"{len(missing)} tensors missing (first: {missing[0]}) {where(pretrained)}")

def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model

def save_weights(model: torch.nn.Module, path: Path | str) -> None:
    """Write the model's weights as a safetensors file, atomically.

    The file's metadata records the timm architecture and class count, so a
    mismatched load can say what the file holds. They are one JSON value
    under one key: safetensors writes metadata keys in a random order per
    process, and the same weights must give the same bytes.
    """
    model = unwrapped(model)
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    described = {"architecture": str(getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)),
                 "num_classes": str(getattr(model, "num_classes", ""))}
    metadata = {WEIGHTS_METADATA_KEY: json.dumps(described, sort_keys=True)}
    with script_io.atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)

def _described_model(metadata: dict) -> dict:
    """``architecture`` and ``num_classes`` from a checkpoint's metadata (``{}`` when it has none)."""
    try:
        described = json.loads(metadata.get(WEIGHTS_METADATA_KEY, "{}"))
    except json.JSONDecodeError:
        return {}
    # files written before the one-key form held the two keys directly
    return described if isinstance(described, dict) and described else metadata

def _safetensors_header_ok(path: Path) -> bool:
    """Whether the file starts like safetensors: an 8-byte length, then a JSON object."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    header_length = struct.unpack("<Q", head[:8])[0]
    return head[8:9] == b"{" and 8 + header_length <= path.stat().st_size

def load_weights(model: torch.nn.Module, path: Path | str) -> torch.nn.Module:
    """Load a safetensors checkpoint into ``model`` (strict: same names and shapes).

    Raises
    ------
    InputError
        Missing file; a file that is not safetensors (pickled ``torch.save``
        checkpoints are refused, never unpickled); or a checkpoint of another
        architecture or class count.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found {where(path)}")
    if not _safetensors_header_ok(path):
        raise InputError(f"not a safetensors checkpoint (pickled torch.save files are refused) {where(path)}")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = _described_model(handle.metadata() or {})
        saved = safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise InputError(f"unreadable safetensors checkpoint: {err} {where(path)}") from None
    target = unwrapped(model)
    expected = target.state_dict()
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong_shape = [name for name in expected if name in saved and saved[name].shape != expected[name].shape]
    if missing or unexpected or wrong_shape:
        holds = (f"it holds {metadata.get('architecture', 'another model')} with "
                 f"{metadata.get('num_classes', '?')} classes")
        wants = f"the model is {target.pretrained_cfg.get('architecture', type(target).__name__)} " \
                f"with {getattr(target, 'num_classes', '?')} classes" if hasattr(target, "pretrained_cfg") else ""
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected, "
                  f"{len(wrong_shape)} wrongly shaped tensors" + (f" (first: {wrong_shape[0]})" if wrong_shape else ""))
        raise InputError(f"checkpoint does not fit the model: {holds}; {wants}; {detail} {where(path)}")
    target.load_state_dict(saved, strict=True)
    return model

def fold_to_stages(probabilities):
    """Probabilities over ``5 k`` classes folded into the 5 stages: class ``c`` counts for stage ``c mod 5``.

    The original's ``inferblend.py`` folded its EfficientNet's 1000-way
    softmax so (the sum of 200 slices of 5 columns; its further division by
    200 is the dump scale ``blend.py --dump-scale original`` applies). Rows
    stay summing to 1. Five columns are returned as they are.

    Parameters
    ----------
    probabilities : np.ndarray or torch.Tensor, shape (rows, 5 k)

    Returns
    -------
    The same kind, shape (rows, 5).
    """
    rows, classes = probabilities.shape
    if classes % psg_layout.NUM_CLASSES:
        raise ValueError(f"cannot fold {classes} classes into {psg_layout.NUM_CLASSES} stages")
    return probabilities.reshape(rows, classes // psg_layout.NUM_CLASSES, psg_layout.NUM_CLASSES).sum(1)

@torch.no_grad()
def predict(model: torch.nn.Module, loader, device: torch.device, amp: str = "off",
            progress: bool = False) -> np.ndarray:
    """Softmax probabilities of ``model`` for every item of ``loader``, in loader order.

    Parameters
    ----------
    model : torch.nn.Module
        Already on ``device``.
    loader : DataLoader
        Yields images (batch, 3, H, W), ``(images, targets)`` tuples, or cached
        batches, all finished on ``device`` by :func:`batch_augment.device_batches`
        (targets ignored).
    device : torch.device
    amp : {"fp16", "bf16", "off"}
        Autocast precision on CUDA (ignored on CPU).
    progress : bool
        Show a progress bar.

    Returns
    -------
    np.ndarray of float32, shape (rows, num_classes)
    """
    model.eval().to(memory_format=MEMORY_FORMAT)
    probabilities = []
    for images, _ in tqdm(batch_augment.device_batches(loader, device, MEMORY_FORMAT), total=len(loader),
                          desc="predict", disable=not progress, dynamic_ncols=True):
        probabilities.append(softmax_batch(model, images, device, amp))
    if not probabilities:
        return np.zeros((0, getattr(unwrapped(model), "num_classes", psg_layout.NUM_CLASSES)), dtype=np.float32)
    return torch.cat(probabilities).numpy().astype(np.float32)


@torch.no_grad()
def softmax_batch(model: torch.nn.Module, images: torch.Tensor, device: torch.device, amp: str = "off") -> torch.Tensor:
    """Softmax probabilities of one finished batch (:func:`predict`'s step; the model in eval mode on ``device``).

    Returns
    -------
    torch.Tensor of float32 on the CPU, shape (batch, num_classes)
    """
    with autocast(device, amp):
        logits = model(images)
    return torch.softmax(logits.float(), dim=1).cpu()
