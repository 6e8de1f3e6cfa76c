"""sandboxd: a self-hosted service that runs untrusted code snippets in gVisor sandboxes."""

__version__ = "0.1.0"
