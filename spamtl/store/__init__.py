"""The SQL store: tables (schema), engines and migrations (db), queries."""
