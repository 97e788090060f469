"""One module per MCP tool: typed input/output models and a thin handler over `server.service.Rift`.

`ALL_TOOLS` is the registry `server.app` installs; a new tool module adds its `TOOL` here."""

from tools import add_documents, delete_documents, hybrid_search, stats
from tools._common import ToolSpec

ALL_TOOLS: list[ToolSpec] = [add_documents.TOOL, hybrid_search.TOOL, delete_documents.TOOL, stats.TOOL]
