"""What a variant's manifest.json holds beyond the files (``common.manifest``, kind "variant").

The export writes it last, when every check has passed, and publishes it with the variant in one
rename (``common.manifest.publish``): a variant folder without a valid manifest is a partial or
failed build. The export skips a variant only when it verifies (``common.manifest.verify``), and the
server refuses one that does not. Here: the tool versions a manifest records. Standard library only.
"""

from __future__ import annotations

import contextlib
from importlib import metadata

# the batch-1 step graph the per-token int8 variants carry beside model.onnx (export.runtime reads it): the same
# weights again, a speed-up, not part of the model's footprint
ROW_MODEL_FILE = "model.row.onnx"

TOOLS = ("onnx", "onnxruntime", "optimum", "optimum-onnx", "torch", "transformers", "tokenizers", "bitsandbytes",
         "tensorrt")


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def footprint_bytes(manifest: dict) -> int:
    """A variant's model on disk, from its manifest: its files, less the batch-1 graph some carry beside it."""
    files = manifest.get("files", {})
    total = manifest.get("total_bytes") or sum(f["bytes"] for f in files.values() if isinstance(f, dict))
    row = files.get(ROW_MODEL_FILE)
    return int(total) - (int(row.get("bytes", 0)) if isinstance(row, dict) else 0)
