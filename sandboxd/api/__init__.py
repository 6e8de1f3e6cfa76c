"""The HTTP API: the aiohttp application, its middleware and handlers, API keys and rate limits."""
