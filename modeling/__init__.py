"""The three model families. Importing this package registers the custom ones with the
Auto classes, and marks them so that `save_pretrained` writes their code and `auto_map`
beside the weights (Hub remote code)."""

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_music_mamba import MusicMambaConfig
from .configuration_music_xlstm import MusicXLSTMConfig
from .modeling_music_mamba import MusicMambaForCausalLM
from .modeling_music_xlstm import MusicXLSTMForCausalLM
from .presets import FAMILIES, PRESETS, build_config

for config_class, model_class in (
    (MusicMambaConfig, MusicMambaForCausalLM),
    (MusicXLSTMConfig, MusicXLSTMForCausalLM),
):
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
    config_class.register_for_auto_class()
    model_class.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "FAMILIES",
    "PRESETS",
    "MusicMambaConfig",
    "MusicMambaForCausalLM",
    "MusicXLSTMConfig",
    "MusicXLSTMForCausalLM",
    "build_config",
]
