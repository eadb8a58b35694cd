"""A tiny web shop used by jobs.example.yaml: orders in a local SQLite file, a flaky CRM stub."""
