"""bottle-mcp: a stdio MCP server that launches and drives sandboxed sub-agents."""

__version__ = "0.1.0"

__all__ = ["__version__"]
