"""Model code, checkpoint formats and loading; importing this package registers every checkpoint format."""

from . import gguf  # noqa: F401  (registers the GGUF format beside checkpoint.py's safetensors folder)
