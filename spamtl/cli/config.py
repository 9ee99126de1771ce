"""``spamtl config``: every effective setting and where it came from."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from spamtl.cli.options import DbOption, OutputFormat, exit_on_errors, loaded_settings, new_typer, print_json

app = new_typer()


@app.command("config")
def config_(
    output: Annotated[OutputFormat, typer.Option("--format", help="text or JSON.")] = OutputFormat.text,
    db: DbOption = None,
) -> None:
    """Print every effective setting and where it came from (default, a file, the environment or an option).

    Precedence: option > environment (SPAMTL_<NAME>) > user config file ($SPAMTL_CONFIG or
    ~/.config/spamtl/config.toml) > system config file (/etc/spamtl/config.toml) > default.
    Passwords in database URLs are masked.

    Example: spamtl config --format json
    """
    with exit_on_errors():
        loaded = loaded_settings(db)
        rows = loaded.rows()
        if output is OutputFormat.json:
            print_json({"files": list(loaded.files),
                         "settings": {name: {"value": value, "source": source} for name, value, source in rows}})
            return
        typer.echo(f"config files: {', '.join(loaded.files) or 'none'}")
        width = max(len(name) for name, _, _ in rows)
        for name, value, source in rows:
            shown = json.dumps(value) if not isinstance(value, str) else value
            typer.echo(f"{name:<{width}}  {shown:<40}  {source}")
