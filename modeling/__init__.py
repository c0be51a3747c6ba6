"""The three model families and the `midi-generation` pipeline.

Importing this package registers the custom models with the Auto classes (base models with
`AutoModel`, language models with `AutoModelForCausalLM`), marks them so that
`save_pretrained` writes their code and `auto_map` beside the weights (Hub remote code), and
registers the pipeline task with transformers, which loads a name given to it with
`load_model`: LoRA adapter folders load too.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.pipelines import PIPELINE_REGISTRY

from .adapters import MusicModelForCausalLM, load_model
from .configuration_music_mamba import MusicMambaConfig
from .configuration_music_xlstm import MusicXLSTMConfig
from .modeling_music_mamba import MusicMambaForCausalLM, MusicMambaModel
from .modeling_music_xlstm import MusicXLSTMForCausalLM, MusicXLSTMModel
from .pipeline_midi_generation import MidiGenerationPipeline, NoteStreamer
from .presets import FAMILIES, PRESETS, build_config

for config_class, base_class, model_class in (
    (MusicMambaConfig, MusicMambaModel, MusicMambaForCausalLM),
    (MusicXLSTMConfig, MusicXLSTMModel, MusicXLSTMForCausalLM),
):
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, base_class, exist_ok=True)
    AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
    config_class.register_for_auto_class()
    base_class.register_for_auto_class("AutoModel")
    model_class.register_for_auto_class("AutoModelForCausalLM")
PIPELINE_REGISTRY.register_pipeline(
    "midi-generation", pipeline_class=MidiGenerationPipeline, pt_model=MusicModelForCausalLM
)

__all__ = [
    "FAMILIES",
    "MidiGenerationPipeline",
    "NoteStreamer",
    "PRESETS",
    "MusicMambaConfig",
    "MusicMambaForCausalLM",
    "MusicMambaModel",
    "MusicXLSTMConfig",
    "MusicXLSTMForCausalLM",
    "MusicXLSTMModel",
    "build_config",
    "load_model",
]
