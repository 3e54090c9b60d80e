"""The one source of truth for every model variant and every sequence-length rule.

A *variant* names a complete SelVA system: generator hyper-parameters, the audio front end
(mel settings, VAE, vocoder), the checkpoint files with their hub repository and checksums.
Nothing else in the project hard-codes these numbers; modules receive the typed configs below.

Sequence lengths follow one function of the clip duration (:func:`sequence_lengths`), so any
duration that yields at least one 16-frame sync window works.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# --- fixed rates of the conditioning streams (MMAudio / SelVA) -------------------------------
CLIP_FPS = 8  # CLIP-visual frames per second (one token per frame)
SYNC_FPS = 25  # TextSynch input frame rate
SYNC_SEGMENT_FRAMES = 16  # frames per Synchformer window (0.64 s)
SYNC_STEP_FRAMES = 8  # window stride (0.32 s)
SYNC_TOKENS_PER_SEGMENT = 8  # output tokens per window (16 frames / tubelet 2)
TEXT_SEQ_LEN = 77  # CLIP context length
LATENT_DOWNSAMPLE = 2  # the VAE halves the mel frame rate
NUM_SUP_TOKENS = 5  # SelVA's supplementary [SUP] text tokens
# Adapter strengths the LoRA Loader node offers and the evaluator accepts (light to import: the
# node pack reads it at import time).
STRENGTH_RANGE = (-2.0, 2.0)
TRAIN_DURATION_S = 8.0  # duration the official generators were trained at
# Sampling defaults every front end offers (SelVA's and MMAudio's): Euler steps, classifier-free
# guidance strength and the negative prompt (empty: the model's learned empty text condition).
# Light to import for the nodes; flow_matching.DEFAULT_CONFIG is built from them.
SAMPLING_STEPS = 25
CFG_STRENGTH = 4.5
NEGATIVE_PROMPT = ""

# Official hub repositories.
SELVA_REPO = "jnwnlee/SelVA"
MMAUDIO_REPO = "hkchengrex/MMAudio"
BIGVGAN_V2_44K_REPO = "nvidia/bigvgan_v2_44khz_128band_512x"
CLIP_TEXT_HUB_ID = "hf-hub:apple/DFN5B-CLIP-ViT-H-14-384"
CLIP_TOKENIZER_NAME = "ViT-H-14-378-quickgelu"
T5_HUB_ID = "google/flan-t5-base"


def _from_mapping(cls, data: Mapping[str, Any]):
    """Build a dataclass from a dict, ignoring keys it does not know (reference configs)."""
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k in known:
            kwargs[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(
                v, list
            ) else v
    return cls(**kwargs)


# --- audio front end ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MelConfig:
    """Log-mel front end shared by the VAE and the vocoder (Make-An-Audio 2 convention)."""

    sample_rate: int
    n_fft: int
    win_size: int
    hop_size: int
    n_mels: int
    fmin: float
    fmax: float | None
    log: str  # "log10" (16 kHz) or "ln" (44.1 kHz)

    def __post_init__(self):
        if self.log not in ("log10", "ln"):
            raise ValueError(f"MelConfig.log must be 'log10' or 'ln', got {self.log!r}")


MEL_16K = MelConfig(16000, 1024, 1024, 256, 80, 0.0, 8000.0, "log10")
MEL_44K = MelConfig(44100, 2048, 2048, 512, 128, 0.0, 22050.0, "ln")


@dataclass(frozen=True)
class SequenceLengths:
    """Token counts of every stream for one clip duration."""

    duration: float
    latent: int
    clip: int
    sync: int
    text: int
    audio_samples: int

    @property
    def sync_segments(self) -> int:
        return self.sync // SYNC_TOKENS_PER_SEGMENT


def num_sync_segments(num_frames: int) -> int:
    """Number of 16-frame windows (stride 8) in ``num_frames`` frames at 25 fps."""
    if num_frames < SYNC_SEGMENT_FRAMES:
        return 0
    return (num_frames - SYNC_SEGMENT_FRAMES) // SYNC_STEP_FRAMES + 1


def min_duration() -> float:
    """Shortest clip that holds one sync window (0.64 s)."""
    return SYNC_SEGMENT_FRAMES / SYNC_FPS


def sequence_lengths(duration: float, mel: MelConfig) -> SequenceLengths:
    """Sequence lengths of every stream for a clip of ``duration`` seconds.

    latent = ceil(d * sr / hop / 2); clip = int(8 d); sync = 8 * ((25 d - 16) // 8 + 1);
    text = 77; audio samples produced = latent * hop * 2.
    """
    duration = float(duration)
    if not math.isfinite(duration) or duration * SYNC_FPS < SYNC_SEGMENT_FRAMES:
        raise ValueError(
            f"duration {duration!r} s is too short: SelVA needs at least one 16-frame sync "
            f"window, i.e. {min_duration():.2f} s"
        )
    latent = math.ceil(duration * mel.sample_rate / mel.hop_size / LATENT_DOWNSAMPLE)
    clip = int(duration * CLIP_FPS)
    segments = int((duration * SYNC_FPS - SYNC_SEGMENT_FRAMES) // SYNC_STEP_FRAMES + 1)
    sync = SYNC_TOKENS_PER_SEGMENT * segments
    return SequenceLengths(
        duration=duration,
        latent=latent,
        clip=max(clip, 1),
        sync=sync,
        text=TEXT_SEQ_LEN,
        audio_samples=latent * mel.hop_size * LATENT_DOWNSAMPLE,
    )


# --- networks ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratorConfig:
    """MM-DiT generator hyper-parameters (field names as in the reference code)."""

    latent_dim: int
    hidden_dim: int
    depth: int  # total blocks
    fused_depth: int  # latent-only blocks at the end
    num_heads: int
    mlp_ratio: float = 4.0
    clip_dim: int = 1024
    sync_dim: int = 768
    text_dim: int = 1024
    text_seq_len: int = TEXT_SEQ_LEN
    v2: bool = False

    @property
    def joint_depth(self) -> int:
        return self.depth - self.fused_depth

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        return _from_mapping(cls, data)


@dataclass(frozen=True)
class TextSynchConfig:
    """TextSynch: Synchformer video branch + text cross-attention (SelVA)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_hidden: int = 3072  # ViT MLP and spatial aggregator feed-forward width
    frame_size: int = 224
    patch_size: int = 16
    tubelet: int = 2
    segment_frames: int = SYNC_SEGMENT_FRAMES
    segment_step: int = SYNC_STEP_FRAMES
    text_dim: int = 768  # FLAN-T5-base d_model
    num_sup_tokens: int = NUM_SUP_TOKENS
    xattn_depth: int = 1

    @property
    def patches_per_frame(self) -> int:
        return (self.frame_size // self.patch_size) ** 2

    @property
    def tokens_per_segment(self) -> int:
        return self.segment_frames // self.tubelet

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextSynchConfig:
        return _from_mapping(cls, data)


@dataclass(frozen=True)
class VAEConfig:
    """1-D mel VAE with EDM2 magnitude-preserving layers (field names as in the reference)."""

    data_dim: int
    embed_dim: int
    hidden_dim: int
    ch_mult: tuple[int, ...] = (1, 2, 4)
    encoder_num_res_blocks: int = 2
    decoder_num_res_blocks: int = 3
    down_layers: tuple[int, ...] = (0,)
    kernel_size: int = 3
    clip_act: float = 256.0
    mp_sum_t: float = 0.3
    normalize_eps: float = 1e-4
    logvar_clamp: tuple[float, float] = (-30.0, 20.0)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VAEConfig:
        return _from_mapping(cls, data)


@dataclass(frozen=True)
class BigVGANConfig:
    """BigVGAN generator (AMPBlock1 + SnakeBeta, log-scale), v1 16 kHz or v2 44.1 kHz."""

    num_mels: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    use_tanh_at_final: bool = True
    use_bias_at_final: bool = True
    snake_logscale: bool = True

    @property
    def total_upsample(self) -> int:
        return math.prod(self.upsample_rates)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BigVGANConfig:
        return _from_mapping(cls, data)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Which text encoders a variant uses; tiny configs build them locally at random."""

    clip_hub_id: str = CLIP_TEXT_HUB_ID
    clip_tokenizer: str = CLIP_TOKENIZER_NAME
    t5_hub_id: str = T5_HUB_ID
    tiny: bool = False  # build small random encoders locally (tests, demo)


# --- checkpoints -------------------------------------------------------------------------------
HUB_URL = "https://huggingface.co"


@dataclass(frozen=True)
class WeightFile:
    """One downloadable weight file and how to check it.

    ``subkey``: the state dict sits under this key. ``md5`` / ``sha256``: published checksums
    (checked at download and on first use); where neither is published, the sha256 is recorded
    in a sidecar at the first download and checked on later loads. ``size``: exact size in
    bytes where published (checked on every load); ``approx_size``: a rough figure for listings
    only. ``local_dir``: subfolder of the models folder ("" = top level).
    """

    repo_id: str
    filename: str
    md5: str | None = None
    subkey: str | None = None
    sha256: str | None = None
    size: int | None = None
    approx_size: int | None = None
    local_dir: str = ""

    @property
    def local_name(self) -> str:
        return self.filename.rsplit("/", 1)[-1]

    @property
    def relative_path(self) -> str:
        """Where the file lives inside the models folder (``/``-separated)."""
        return f"{self.local_dir}/{self.local_name}" if self.local_dir else self.local_name

    def url(self, endpoint: str = HUB_URL) -> str:
        """Direct download URL on the hub (``endpoint``: the hub or a mirror)."""
        return f"{endpoint.rstrip('/')}/{self.repo_id}/resolve/main/{self.filename}"


_MB = 1_000_000
VIDEO_ENCODER_FILE = WeightFile(
    SELVA_REPO, "weights/video_enc_sup_5.pth", "ff09a6dc36148536ee4db97eba081d05",
    approx_size=515 * _MB,
)
VAE_16K_FILE = WeightFile(
    SELVA_REPO, "ext_weights/v1-16.pth", "69f56803f59a549a1a507c93859fd4d7",
    approx_size=687 * _MB,
)
VAE_44K_FILE = WeightFile(
    SELVA_REPO, "ext_weights/v1-44.pth", "fab020275fa44c6589820ce025191600",
    approx_size=1220 * _MB,
)
BIGVGAN_16K_FILE = WeightFile(
    SELVA_REPO, "ext_weights/best_netG.pt", "eeaf372a38a9c31c362120aba2dde292", subkey="generator",
    approx_size=449 * _MB,
)
# NVIDIA publishes no md5 for this file: its sha256 is recorded at the first download.
BIGVGAN_44K_FILE = WeightFile(
    BIGVGAN_V2_44K_REPO, "bigvgan_generator.pt", None, subkey="generator"
)


def repo_folder_name(hub_id: str) -> str:
    """Local folder name of a text encoder: the hub repository's name."""
    return hub_id.removeprefix("hf-hub:").rstrip("/").rsplit("/", 1)[-1]


CLIP_TEXT_DIR = repo_folder_name(CLIP_TEXT_HUB_ID)  # DFN5B-CLIP-ViT-H-14-384
T5_DIR = repo_folder_name(T5_HUB_ID)  # flan-t5-base
_CLIP_REPO = CLIP_TEXT_HUB_ID.removeprefix("hf-hub:")
# The open_clip repository holds the whole CLIP (the visual tower too); only the text tower's
# tensors are read from it.
CLIP_TEXT_FILES: dict[str, WeightFile] = {
    "clip_text.config": WeightFile(
        _CLIP_REPO, "open_clip_config.json", local_dir=CLIP_TEXT_DIR
    ),
    "clip_text.weights": WeightFile(
        _CLIP_REPO, "open_clip_pytorch_model.bin", local_dir=CLIP_TEXT_DIR,
        approx_size=3950 * _MB,
    ),
}
T5_FILES: dict[str, WeightFile] = {
    f"t5.{key}": WeightFile(T5_HUB_ID, name, local_dir=T5_DIR, approx_size=approx)
    for key, name, approx in (
        ("config", "config.json", None),
        ("weights", "model.safetensors", 990 * _MB),
        ("tokenizer", "tokenizer.json", None),
        ("tokenizer_config", "tokenizer_config.json", None),
        ("special_tokens_map", "special_tokens_map.json", None),
        ("spiece", "spiece.model", None),
    )
}


@dataclass(frozen=True)
class ModelVariant:
    """Everything that defines one SelVA system."""

    name: str
    generator: GeneratorConfig
    mel: MelConfig
    vae: VAEConfig
    vocoder: BigVGANConfig
    video_encoder: TextSynchConfig = field(default_factory=TextSynchConfig)
    text_encoders: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    generator_file: WeightFile | None = None
    video_encoder_file: WeightFile | None = VIDEO_ENCODER_FILE
    vae_file: WeightFile | None = None
    vocoder_file: WeightFile | None = None
    description: str = ""

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @property
    def is_tiny(self) -> bool:
        return self.text_encoders.tiny

    def sequence_lengths(self, duration: float = TRAIN_DURATION_S) -> SequenceLengths:
        return sequence_lengths(duration, self.mel)

    def render_samples(self, duration: float) -> int:
        """Samples of a render of ``duration`` seconds: exactly the duration (the generator
        makes whole latent frames, ``sequence_lengths(duration).audio_samples``, and the
        render cuts the excess)."""
        return int(round(float(duration) * self.sample_rate))

    def checkpoint_files(self) -> dict[str, WeightFile]:
        files = {
            "generator": self.generator_file,
            "video_encoder": self.video_encoder_file,
            "vae": self.vae_file,
            "vocoder": self.vocoder_file,
        }
        return {k: v for k, v in files.items() if v is not None}

    def text_encoder_files(self) -> dict[str, WeightFile]:
        """Files of the CLIP text tower and FLAN-T5 folders (none for tiny variants)."""
        if self.is_tiny:
            return {}
        return {**CLIP_TEXT_FILES, **T5_FILES}

    def required_files(self) -> dict[str, WeightFile]:
        """Every file this variant needs: the four networks, then the text encoders' files."""
        return {**self.checkpoint_files(), **self.text_encoder_files()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


VAE_16K = VAEConfig(data_dim=80, embed_dim=20, hidden_dim=384)
VAE_44K = VAEConfig(data_dim=128, embed_dim=40, hidden_dim=512)
BIGVGAN_V1_16K = BigVGANConfig(
    num_mels=80,
    upsample_rates=(4, 4, 2, 2, 2, 2),
    upsample_kernel_sizes=(8, 8, 4, 4, 4, 4),
    upsample_initial_channel=1536,
    use_tanh_at_final=True,
    use_bias_at_final=True,
)
BIGVGAN_V2_44K = BigVGANConfig(
    num_mels=128,
    upsample_rates=(8, 4, 2, 2, 2, 2),
    upsample_kernel_sizes=(16, 8, 4, 4, 4, 4),
    upsample_initial_channel=1536,
    use_tanh_at_final=False,
    use_bias_at_final=False,
)

_SMALL = dict(hidden_dim=448, depth=12, fused_depth=8, num_heads=7)
_MEDIUM = dict(hidden_dim=896, depth=12, fused_depth=8, num_heads=14)
_LARGE = dict(hidden_dim=896, depth=21, fused_depth=14, num_heads=14)

VARIANTS: dict[str, ModelVariant] = {}


def _register(v: ModelVariant) -> ModelVariant:
    VARIANTS[v.name] = v
    return v


_register(ModelVariant(
    name="small_16k",
    generator=GeneratorConfig(latent_dim=20, **_SMALL),
    mel=MEL_16K, vae=VAE_16K, vocoder=BIGVGAN_V1_16K,
    generator_file=WeightFile(
        SELVA_REPO, "weights/generator_small_16k_sup_5.pth", "1cb0f0deec52de37f67b1fd9965337d0",
        approx_size=601 * _MB,
    ),
    vae_file=VAE_16K_FILE, vocoder_file=BIGVGAN_16K_FILE,
    description="SelVA small, 16 kHz (the released default)",
))
# The 44.1 kHz SelVA files are published without md5s; paths as reported by users of the hub.
for _name, _hp, _approx in (
    ("small_44k", _SMALL, 601 * _MB), ("medium_44k", _MEDIUM, 2400 * _MB),
    ("large_44k", _LARGE, 3900 * _MB),
):
    _size = _name.split("_")[0]
    _register(ModelVariant(
        name=_name,
        generator=GeneratorConfig(latent_dim=40, **_hp),
        mel=MEL_44K, vae=VAE_44K, vocoder=BIGVGAN_V2_44K,
        generator_file=WeightFile(
            SELVA_REPO, f"weights/generator_{_size}_44khz_sup_5.pth", approx_size=_approx
        ),
        vae_file=VAE_44K_FILE, vocoder_file=BIGVGAN_44K_FILE,
        description=f"SelVA {_size}, 44.1 kHz",
    ))
_register(ModelVariant(
    name="large_44k_v2",
    generator=GeneratorConfig(latent_dim=40, v2=True, **_LARGE),
    mel=MEL_44K, vae=VAE_44K, vocoder=BIGVGAN_V2_44K,
    generator_file=WeightFile(
        MMAUDIO_REPO, "weights/mmaudio_large_44k_v2.pth", "01ad4464f049b2d7efdaa4c1a59b8dfe"
    ),
    vae_file=VAE_44K_FILE, vocoder_file=BIGVGAN_44K_FILE,
    description="MMAudio large v2, 44.1 kHz (MMAudio weights; no SelVA release)",
))

# Tiny configurations of the same classes: random init, no downloads (tests and the demo).
TINY_TEXT_DIM = 64  # tiny CLIP text width
TINY_T5_DIM = 32  # tiny T5 d_model
TINY_SYNC_DIM = 64  # tiny TextSynch width
_register(ModelVariant(
    name="tiny_16k",
    generator=GeneratorConfig(
        latent_dim=8, hidden_dim=128, depth=3, fused_depth=1, num_heads=2,
        clip_dim=TINY_TEXT_DIM, sync_dim=TINY_SYNC_DIM, text_dim=TINY_TEXT_DIM,
    ),
    mel=MEL_16K,
    vae=VAEConfig(data_dim=80, embed_dim=8, hidden_dim=32),
    # three upsamplers (8, 8, 4) keep 8 channels at the output rate (six halvings of 64 would
    # leave 1, which cannot learn to make a tone), two resblock kernels keep it cheap on a CPU
    vocoder=replace(BIGVGAN_V1_16K, upsample_rates=(8, 8, 4), upsample_kernel_sizes=(16, 16, 8),
                    upsample_initial_channel=64, resblock_kernel_sizes=(3, 7),
                    resblock_dilation_sizes=((1, 3, 5), (1, 3, 5))),
    video_encoder=TextSynchConfig(
        embed_dim=TINY_SYNC_DIM, depth=1, num_heads=1, mlp_hidden=128, frame_size=32,
        patch_size=16, text_dim=TINY_T5_DIM,
    ),
    text_encoders=TextEncoderConfig(tiny=True),
    generator_file=None, video_encoder_file=None, vae_file=None, vocoder_file=None,
    description="tiny model of the same classes, trained on synthetic clips and shipped in the "
                "package (tests and --demo; no downloads)",
))


@dataclass(frozen=True)
class BundledFile:
    """A weight file shipped inside the package (``selva_core/assets/<path>``), sha256-checked."""

    path: str
    sha256: str


#: Trained weights shipped with the package, per variant and component
#: (``scripts/train_tiny_base.py``; loaded by :mod:`selva_core.weights.bundled`).
BUNDLED_WEIGHTS: dict[str, dict[str, BundledFile]] = {
    "tiny_16k": {
        "generator": BundledFile(
            "tiny_16k/generator.safetensors",
            "27285cc48b0de3f7c720f0fb85f07aa7c27d1c734a4416a92862e53ab0977798"),
        "vae": BundledFile(
            "tiny_16k/vae.safetensors",
            "509159e98f9d84237f20b13c9eb9b233680316c24cb838d17b76d4bf296e49b2"),
        "vocoder": BundledFile(
            "tiny_16k/vocoder.safetensors",
            "21853746eec85f0db30300c38ac1390d59680220fb17f69fb7744c21e488fc67"),
        "video_encoder": BundledFile(
            "tiny_16k/video_encoder.safetensors",
            "5708fc440932d8925965ace772db7e5b517c0c75b03ebc1be8969b9c0f8775ad"),
        "t5": BundledFile(
            "tiny_16k/t5.safetensors",
            "b6158293840ca6b745d8d53343639efb8b9abe9b58b1dd38a752a8308780946d"),
    },
}
#: Seed of the tiny CLIP-text encoder whose features the bundled tiny generator was trained on
#: (that encoder is rebuilt from its seed, not shipped: it is mostly a 49k-token embedding).
TINY_TRAINED_TEXT_SEED = 0

DEFAULT_VARIANT = "small_16k"
OFFICIAL_VARIANTS = tuple(n for n, v in VARIANTS.items() if not v.is_tiny)


def get_variant(name: str) -> ModelVariant:
    """Look a variant up by name; an unknown name lists the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}"
        ) from None
