"""The stepstream Python SDK and the `stepstream` CLI."""
