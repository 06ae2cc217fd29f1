"""The model presets: how ENCODER_MODEL and ENCODER_PRETRAINED resolve, and each preset's
architecture built at random weights (nothing is downloaded), encoding an image and a text.

`fast` and `small` always run; `best` (ViT-L/14, 428 M parameters) and the full-size
`multilingual` text tower run when GLIMPSE_TEST_BIG_PRESETS=1, as they take tens of seconds
on a small CPU. The multilingual preset's Hugging Face files (the xlm-roberta-base config and
tokenizer) cannot be fetched here, so a local stand-in replaces them: the code path is the
preset's, the real tokenizer's vocabulary is not verified.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from glimpse.encoder import model as model_module
from glimpse.encoder.config import Settings
from glimpse.encoder.model import RANDOM_WEIGHTS_SEED, ModelLoadError, load_encoder
from glimpse.encoder.presets import PRESETS, markdown_table, resolve

BIG = os.environ.get("GLIMPSE_TEST_BIG_PRESETS") == "1"
big_only = pytest.mark.skipif(not BIG, reason="set GLIMPSE_TEST_BIG_PRESETS=1 (tens of seconds)")


def _settings(**values: object) -> Settings:
    return Settings(device="cpu", **values)  # type: ignore[arg-type]


def test_a_preset_sets_model_and_weights_together() -> None:
    for name, preset in PRESETS.items():
        settings = _settings(model=name)
        assert (settings.model, settings.pretrained) == (preset.model, preset.pretrained)
    assert PRESETS["fast"].model == Settings().model
    assert PRESETS["fast"].pretrained == Settings().pretrained


def test_explicit_weights_win_over_the_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_MODEL", "best")
    monkeypatch.setenv("ENCODER_PRETRAINED", "/models/dfn.safetensors")
    settings = Settings()
    assert settings.model == "ViT-L-14-quickgelu"
    assert settings.pretrained == "/models/dfn.safetensors"
    # Any open_clip model passes through untouched.
    assert resolve("ViT-B-16", "dfn2b") == ("ViT-B-16", "dfn2b")
    assert resolve("small", None) == ("MobileCLIP-S1", "datacompdr")


def test_every_preset_names_a_known_open_clip_tag() -> None:
    for preset in PRESETS.values():
        assert preset.model in open_clip.list_models()
        assert preset.pretrained in open_clip.list_pretrained_tags_by_model(preset.model)
        assert preset.source
    table = markdown_table()
    assert all(f"`{name}`" in table for name in PRESETS)


def test_an_unknown_model_names_the_presets() -> None:
    with pytest.raises(ModelLoadError, match="fast, small, best, multilingual"):
        load_encoder(_settings(model="ViT-Q-99", pretrained="none"))


def _photo() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))


def _check_preset(name: str) -> model_module.ClipEncoder:
    """Load the preset at random weights; an image and two texts come out as unit vectors of
    the preset's dimension."""
    encoder = load_encoder(_settings(model=name, pretrained="none"))
    preset = PRESETS[name]
    assert encoder.name == preset.model and encoder.dim == preset.dim
    pixels = encoder.preprocess(_photo()).unsqueeze(0)
    assert pixels.shape[-1] == encoder.image_size
    image = encoder.encode_pixels(pixels)
    texts = encoder.encode_texts(["a dog on a beach", "un chien sur la plage"])
    assert image.shape == (1, preset.dim) and texts.shape == (2, preset.dim)
    for vectors in (image, texts):
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(texts[0], texts[1])
    return encoder


def _params_m(encoder: model_module.ClipEncoder) -> float:
    return sum(p.numel() for p in encoder.model.parameters()) / 1e6


def test_fast_preset_architecture() -> None:
    encoder = _check_preset("fast")
    assert _params_m(encoder) == pytest.approx(PRESETS["fast"].params_m, abs=0.01)


def test_small_preset_architecture_is_fused_without_changing_vectors() -> None:
    encoder = _check_preset("small")
    assert encoder.image_size == 256
    # The same seeded model, not fused: the fused one must give the same image vectors.
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        plain, _, _ = open_clip.create_model_and_transforms("MobileCLIP-S1", pretrained=None)
    pixels = encoder.preprocess(_photo()).unsqueeze(0)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(plain.eval().encode_image(pixels), dim=-1)
    np.testing.assert_allclose(encoder.encode_pixels(pixels), expected.numpy(), atol=2e-4)
    # Fusing the MobileOne branches leaves fewer parameters than the 84.9 M trained.
    assert _params_m(encoder) < PRESETS["small"].params_m


@big_only
def test_best_preset_architecture() -> None:
    encoder = _check_preset("best")
    assert _params_m(encoder) == pytest.approx(PRESETS["best"].params_m, abs=0.01)


def _xlm_roberta_stand_in(monkeypatch: pytest.MonkeyPatch, *, full_size: bool) -> None:
    """Serve xlm-roberta-base's config and tokenizer from here instead of the hub: the config
    has the real shape (or a 2-layer one), the tokenizer a few words of vocabulary."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    words = "a dog on the beach un chien sur la plage".split()
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", mask_token="<mask>",
    )
    config = transformers.XLMRobertaConfig(
        vocab_size=250002 if full_size else len(vocab), hidden_size=768,
        num_hidden_layers=12 if full_size else 2, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
    )

    def fake_config(name: str, *args: object, **kwargs: object) -> object:
        assert name == "xlm-roberta-base"
        return config

    def fake_tokenizer(name: str, *args: object, **kwargs: object) -> object:
        assert name == "xlm-roberta-base"
        return tokenizer

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake_config)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tokenizer)


@pytest.fixture
def fresh_tokenizers() -> Iterator[None]:
    # The stand-in tokenizer must not outlive the test in the per-name cache.
    model_module._tokenizer.cache_clear()
    yield
    model_module._tokenizer.cache_clear()


def test_multilingual_preset_with_a_small_stand_in(
    monkeypatch: pytest.MonkeyPatch, fresh_tokenizers: None
) -> None:
    _xlm_roberta_stand_in(monkeypatch, full_size=False)
    encoder = _check_preset("multilingual")
    # Random weights ask Hugging Face for no base weights of the text tower.
    assert type(encoder.model.text.transformer).__name__ == "XLMRobertaModel"


@big_only
def test_multilingual_preset_full_size(
    monkeypatch: pytest.MonkeyPatch, fresh_tokenizers: None
) -> None:
    _xlm_roberta_stand_in(monkeypatch, full_size=True)
    encoder = _check_preset("multilingual")
    assert _params_m(encoder) == pytest.approx(PRESETS["multilingual"].params_m, abs=0.01)
