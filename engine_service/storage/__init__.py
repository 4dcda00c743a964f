"""Persistence through SQLAlchemy async (Postgres via asyncpg, SQLite via aiosqlite)."""
