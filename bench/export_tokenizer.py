"""Export Gemma 3's tokenizer from the embedded model into .carry/tokenizer (xz-packed), for benches that run
on a lent GPU, where the 250 MB model does not travel.

    python bench/export_tokenizer.py
"""

from __future__ import annotations

import lzma
import shutil

from common import TOKENIZER

from harness.backends.embedded import embedded_checkpoint_dir


def main() -> None:
    checkpoint = embedded_checkpoint_dir()
    TOKENIZER.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (checkpoint / name).exists():
            shutil.copy(checkpoint / name, TOKENIZER / name)
    with (checkpoint / "tokenizer.json").open("rb") as source, lzma.open(TOKENIZER / "tokenizer.json.xz", "wb") as sink:
        shutil.copyfileobj(source, sink)
    print(f"wrote {TOKENIZER}")


if __name__ == "__main__":
    main()
