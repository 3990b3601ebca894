"""The models of a score run as the user names them: an open_clip spec plus the key naming its columns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from poolsieve.core.errors import ConfigError
from poolsieve.core.formats import model_key
from poolsieve.core.models import ModelSpec


@dataclass(frozen=True)
class ModelEntry:
    """One model of a score run: its open_clip spec and the key naming its columns."""

    spec: ModelSpec
    key: str

    @classmethod
    def parse(cls, value: Any) -> ModelEntry:
        """``"[KEY=]ARCH[:PRETRAINED_OR_PATH]"`` or ``{arch, pretrained, key}``.

        The key names the columns; by default ``b32``/``l14`` for OpenAI's ViT-B-32/L-14 (DataComp's
        names), else the sanitised architecture. ``b32=ViT-B-32:/ckpt/openai-b32.pt`` names it explicitly.
        """
        key = value.get("key") if isinstance(value, dict) else None
        if isinstance(value, str) and "=" in value.split(":", 1)[0]:
            key, value = value.split("=", 1)
        spec = ModelSpec.parse(value)
        return cls(spec, str(key) if key else model_key(spec.arch, spec.pretrained))


def parse_models(values: Sequence[Any] | str | dict, trust_checkpoint: bool = False) -> list[ModelEntry]:
    """``trust_checkpoint``: local checkpoints may need full unpickling (``--trust-checkpoint``)."""
    if isinstance(values, (str, dict)):
        values = [values]
    if not values:
        raise ConfigError("score: no models given (e.g. --model ViT-B-32:openai)")
    entries = [ModelEntry.parse(v) for v in values]
    if trust_checkpoint:
        entries = [replace(e, spec=replace(e.spec, trust_checkpoint=True)) for e in entries]
    keys = [e.key for e in entries]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"score: two models share the column key {dupes[0]!r}; give one a 'key' of its own")
    return entries
