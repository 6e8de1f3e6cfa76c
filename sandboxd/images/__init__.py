"""Runtime images: inspecting what containerd holds (the daemon) and building them offline (the CLI)."""
