"""Layer 2: the models under test. `hf`: in-process transformers (the embedded Gemma, a local checkpoint, PEFT
adapters, bitsandbytes quantisation) and its requests (hf_requests: rolling log-likelihoods, batched generation);
`distributed`: processes sharing the work under torchrun or accelerate."""

from harness.backends.embedded import EMBEDDED_MODEL
from harness.backends.hf import LoadedModel, ModelOptions, load_model
from harness.backends.hf_requests import generate, loglikelihood_rolling

__all__ = ["EMBEDDED_MODEL", "LoadedModel", "ModelOptions", "generate", "load_model", "loglikelihood_rolling"]
