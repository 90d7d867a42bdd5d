"""Layer 1: GPU speed shared by evaluation and training, with no knowledge of tasks: the LM head's NLL without
full logits (headloss; its Triton kernel in head_kernel, imported only where Triton is installed), cuDNN attention
with sliding windows and soft-caps, flex attention's tuned tiles, and the NF4 dequantisation kernel (nf4)."""

from harness.kernels.attention import caps_attention, flex_kwargs
from harness.kernels.headloss import output_head, summed_nll, token_nll

__all__ = ["caps_attention", "flex_kwargs", "output_head", "summed_nll", "token_nll"]
