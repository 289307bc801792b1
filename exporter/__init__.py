"""docspace-backup-exporter: Prometheus exporter for ONLYOFFICE DocSpace backups."""

__version__ = "0.1.0"
