"""config.json and report.json as typed records, and the export folder written whole or not at all."""
