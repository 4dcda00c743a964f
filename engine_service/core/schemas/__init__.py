"""Published JSON Schemas, shipped as package data (a package so `*.json` is included)."""
