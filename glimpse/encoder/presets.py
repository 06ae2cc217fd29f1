"""Named model presets: one word sets the open_clip model, its weights and the vector size.

``ENCODER_MODEL`` takes a preset name or any open_clip model name; ``ENCODER_PRETRAINED``, when
set, replaces the preset's weights (a local checkpoint for air-gapped installs, say). The
figures are quoted, not measured here: weights cannot be downloaded on this machine, so only
each architecture (built at random weights) is checked, by tests/unit/encoder/test_presets.py.
"""

from __future__ import annotations

from dataclasses import dataclass

# Where the quoted figures come from.
OPEN_CLIP_RESULTS = (
    "open_clip docs/openclip_results.csv and docs/model_profile.csv "
    "(github.com/mlfoundations/open_clip, commit 89fb801)"
)
OPEN_CLIP_MULTILINGUAL = (
    "open_clip docs/openclip_multilingual_retrieval_results.csv (commit 89fb801)"
)
MOBILECLIP_README = (
    "apple/ml-mobileclip README.md, table 'Checkpoints' (open_clip's tables have no MobileCLIP row)"
)


@dataclass(frozen=True)
class Preset:
    """One named choice of model, with the published figures that justify it."""

    name: str
    model: str
    pretrained: str
    dim: int
    params_m: float
    imagenet_zero_shot: float
    avg_38_datasets: float
    source: str
    image_gflops: float | None = None
    # Mean image-retrieval recall@1 over Crossmodal-3600's 36 languages (multilingual only).
    xm3600_image_r1: float | None = None
    note: str = ""

    @property
    def fp32_weights_mb(self) -> int:
        """Weight memory in float32 (4 bytes a parameter; fp16 on CUDA halves it)."""
        return round(self.params_m * 4)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="fast",
            model="ViT-B-32",
            pretrained="laion2b_s34b_b79k",
            dim=512,
            params_m=151.28,
            image_gflops=8.82,
            imagenet_zero_shot=66.56,
            avg_38_datasets=56.94,
            source=OPEN_CLIP_RESULTS,
            note="today's default",
        ),
        Preset(
            name="small",
            model="MobileCLIP-S1",
            pretrained="datacompdr",
            dim=512,
            params_m=84.9,
            imagenet_zero_shot=72.6,
            avg_38_datasets=61.3,
            source=MOBILECLIP_README,
            note="21.5 M image + 63.4 M text parameters; image size 256",
        ),
        Preset(
            name="best",
            model="ViT-L-14-quickgelu",
            pretrained="dfn2b",
            dim=768,
            params_m=427.62,
            image_gflops=162.03,
            imagenet_zero_shot=81.41,
            avg_38_datasets=66.87,
            source=OPEN_CLIP_RESULTS,
            note="the best ViT-L/14 row of the table; the bundled BPE tokenizer",
        ),
        Preset(
            name="multilingual",
            model="xlm-roberta-base-ViT-B-32",
            pretrained="laion5b_s13b_b90k",
            dim=512,
            params_m=366.12,
            image_gflops=8.82,
            imagenet_zero_shot=62.36,
            avg_38_datasets=56.43,
            xm3600_image_r1=42.56,
            source=f"{OPEN_CLIP_RESULTS}; {OPEN_CLIP_MULTILINGUAL}",
            note="XLM-RoBERTa text tower: needs transformers and the xlm-roberta-base "
            "tokenizer from the Hugging Face hub (or its cache)",
        ),
    )
}


def resolve(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """The open_clip model and weights for ``model`` (a preset or an open_clip name); explicit
    ``pretrained`` wins over the preset's."""
    preset = PRESETS.get(model)
    if preset is None:
        return model, pretrained
    return preset.model, pretrained if pretrained is not None else preset.pretrained


def markdown_table() -> str:
    """The presets as the Markdown table the docs carry."""
    rows = [
        "| preset | model | weights | dim | params (M) | fp32 weights (MB) | image GFLOPs "
        "| ImageNet zero-shot % | avg 38 datasets % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in PRESETS.values():
        gflops = "—" if p.image_gflops is None else f"{p.image_gflops:g}"
        rows.append(
            f"| `{p.name}` | {p.model} | {p.pretrained} | {p.dim} | {p.params_m:g} | "
            f"{p.fp32_weights_mb} | {gflops} | {p.imagenet_zero_shot:g} | {p.avg_38_datasets:g} |"
        )
    return "\n".join(rows)
