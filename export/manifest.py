"""What a variant's manifest.json holds beyond the files (``common.manifest``, kind "variant").

The export writes it last, when every check has passed, and publishes it with the variant in one
rename (``common.manifest.publish``): a variant folder without a valid manifest is a partial or
failed build. The export skips a variant only when it verifies (``common.manifest.verify``), and the
server refuses one that does not. Here: the tool versions a manifest records. Standard library only.
"""

from __future__ import annotations

import contextlib
from importlib import metadata

TOOLS = ("onnx", "onnxruntime", "optimum", "optimum-onnx", "torch", "transformers", "tokenizers", "bitsandbytes",
         "tensorrt")


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions
