"""Our BEATs: config, modules and official-checkpoint I/O. Import from here."""

from asdcli.frontend.beats.backbone import (
    BEATs,
    Encoder,
    EncoderLayer,
    MultiheadAttention,
    WeightNormConv1d,
    relative_position_buckets,
)
from asdcli.frontend.beats.checkpoint import (
    CHECKPOINT_ENV,
    DEFAULT_CHECKPOINT,
    LoadedBeats,
    load_beats,
    resolve_checkpoint,
    save_official_checkpoint,
)
from asdcli.frontend.beats.config import BeatsConfig, tiny_beats_config

__all__ = [
    "CHECKPOINT_ENV",
    "DEFAULT_CHECKPOINT",
    "BEATs",
    "BeatsConfig",
    "Encoder",
    "EncoderLayer",
    "LoadedBeats",
    "MultiheadAttention",
    "WeightNormConv1d",
    "load_beats",
    "relative_position_buckets",
    "resolve_checkpoint",
    "save_official_checkpoint",
    "tiny_beats_config",
]
