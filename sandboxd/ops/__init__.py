"""Operating the daemon: gRPC health, systemd notification, metrics, logging and the doctor's checks."""
