"""Files rba writes and reads back (recipe.json, onnx.json, report.json, summary.json, compare.json, the CSV
tables of a study): one schema per file kind, used by its writer before the file is written and by its reader
before anything in it is used, so that a damaged, edited or foreign file ends in one line naming the file, what is
wrong in it and how to write it again, never in a traceback from deep inside the code that trusted it.

JSON records are pydantic models (strict: no ``"1"`` for 1, no ``1`` for true); tables are checked for their
columns and for numbers in their number columns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, ValidationError

from rba.errors import RBAError

__all__ = ["Record", "schema_problems", "checked", "read_record", "read_table"]


class Record(BaseModel):
    """Base of the JSON records' schemas: strict types; keys beyond the schema's are kept (measurements carry
    more than the readers use)."""

    model_config = ConfigDict(strict=True, extra="allow")


def schema_problems(exc: ValidationError, prefix: str = "") -> str:
    """Pydantic's errors as one line: unknown keys, missing fields, then wrong values, each named by its path."""
    unknown, missing, wrong = [], [], []
    for err in exc.errors(include_url=False):
        if err["type"] == "json_invalid":
            return f"not JSON: {err['ctx']['error']}" if "ctx" in err else "not JSON"
        where = prefix + ".".join(str(p) for p in err["loc"] if not _is_type_tag(p))
        if err["type"] == "extra_forbidden":
            unknown.append(where)
        elif err["type"] == "missing":
            missing.append(where)
        elif err["type"] == "value_error":  # a check across keys (a model validator): its message names them
            wrong.append(f"{where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}")
        else:
            wrong.append(f"{where or 'the file'} ({err['msg']}, got {_short(err.get('input'))})")
    parts = [f"{label}: {', '.join(sorted(dict.fromkeys(names)))}" for label, names in
             (("unknown keys", unknown), ("missing fields", missing), ("invalid values", wrong)) if names]
    return "; ".join(parts)


def _is_type_tag(part: Any) -> bool:
    """pydantic names the union member it tried (``float``, ``list[str]``) in an error's location: not a key."""
    return isinstance(part, str) and (part in ("float", "int", "str", "bool", "none") or "[" in part
                                      or part.startswith(("function-", "constrained-", "_")))


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def checked(payload: Any, schema: type[BaseModel], what: str) -> Any:
    """``payload`` as its writer is about to write it, checked against the schema its reader uses (as JSON, so
    that what is checked is what will be read back); a failure is the writer's bug, raised as one."""
    try:
        schema.model_validate_json(json.dumps(payload, default=str))
    except ValidationError as exc:
        raise RuntimeError(f"{what} about to be written does not follow its own schema: {schema_problems(exc)}") \
            from None
    return payload


def read_record(path: str | Path, schema: type[BaseModel], *, fix: str, error: type[RBAError] = RBAError) -> dict:
    """The JSON object in ``path``, checked against ``schema``; otherwise ``error``, one line naming the file,
    what is wrong in it and ``fix`` (what writes it again)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path} cannot be read ({type(exc).__name__}: {exc}): {fix}") from None
    try:
        schema.model_validate_json(text)
    except ValidationError as exc:
        raise error(f"{path} is damaged ({schema_problems(exc)}): {fix}") from None
    return json.loads(text)  # as written (the schema has checked it; the readers use the plain data)


def read_table(path: str | Path, *, columns: Iterable[str], numeric: Iterable[str] | None = (), fix: str,
               error: type[RBAError] = RBAError, **read_csv):
    """The CSV table in ``path`` (pandas), with every one of ``columns`` present and only numbers (or empty cells)
    in the ``numeric`` ones (None: in every column); otherwise ``error``, one line naming the file, the column and
    ``fix``."""
    import pandas as pd  # lazy: pandas; loading an export (rba.export) needs none

    path = Path(path)
    try:
        frame = pd.read_csv(path, **read_csv)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise error(f"{path} cannot be read ({' '.join(str(exc).split())[:200]}): {fix}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise error(f"{path} is damaged (no column {', '.join(missing)}): {fix}")
    for column in list(frame.columns) if numeric is None else numeric:
        if column not in frame.columns or pd.api.types.is_numeric_dtype(frame[column]):
            continue
        values = frame[column]
        bad = values[pd.to_numeric(values, errors="coerce").isna() & values.notna()]
        if len(bad):
            raise error(f"{path} is damaged (column {column} holds {str(bad.iloc[0])[:40]!r} in data row "
                        f"{int(bad.index[0]) + 1}, where a number belongs): {fix}")
        frame[column] = pd.to_numeric(values)
    return frame
