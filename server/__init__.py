"""rift: an MCP server for hybrid retrieval that learns from the agent's own searches."""

import os

# stdout is the MCP wire: keep Hugging Face libraries offline, quiet and free of progress bars by default.
# A user who has the hub sets HF_HUB_OFFLINE=0 explicitly.
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "ANONYMIZED_TELEMETRY": "False",
    # A validation error reaches the agent as text, where pydantic's docs link per error is noise. Set before any
    # error is rendered: pydantic-core reads it once, so setting it later (in create_server) came too late in a
    # process that had already shown one.
    "PYDANTIC_ERRORS_INCLUDE_URL": "0",
}.items():
    os.environ.setdefault(_name, _value)

__version__ = "0.1.0"
