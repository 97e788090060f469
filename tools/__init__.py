"""One module per MCP tool: typed input/output models and a thin handler over `server.service.Rift`.

`ALL_TOOLS` is the registry `server.app` installs; a new tool module adds its `TOOL` here."""

from tools import (
    add_documents,
    add_paths,
    create_collection,
    delete_collection,
    delete_documents,
    feedback,
    get_document,
    hybrid_search,
    list_collections,
    list_documents,
    list_models,
    retrain,
    retrain_status,
    rollback,
    stats,
    update_metadata,
)
from tools._common import ToolSpec

ALL_TOOLS: list[ToolSpec] = [add_documents.TOOL, hybrid_search.TOOL, delete_documents.TOOL, stats.TOOL]
# Corpus management (server/ingest).
ALL_TOOLS += [
    add_paths.TOOL,
    update_metadata.TOOL,
    get_document.TOOL,
    list_documents.TOOL,
    list_collections.TOOL,
    create_collection.TOOL,
    delete_collection.TOOL,
]
# Learning from use (server/learning).
ALL_TOOLS += [retrain.TOOL, retrain_status.TOOL, feedback.TOOL, rollback.TOOL, list_models.TOOL]
