"""What every script shares: the one-line error contract, atomic writes, the help formatter.

* Bad input raises :class:`InputError`, whose message names what is wrong
  and where (:func:`where`: ``(file:row)``); :func:`run_main` turns it (and
  an ``OSError`` that reaches it) into one ``error: ...`` line on stderr
  and exit status 2, without a traceback.
* Every output file is written through :func:`atomic_path` (a temporary
  name beside it, renamed into place when complete), so a killed run never
  leaves a half-written file; :func:`write_csv_rows` and :func:`write_lines`
  write the challenge's CSVs and line files that way.
* :class:`HelpFormatter` shows each option's default once.

Standard library only.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import tempfile
from pathlib import Path


# --------------------------------------------------------------------------
# Errors the user can act on: one line, exit status 2, no traceback
# --------------------------------------------------------------------------
class InputError(Exception):
    """Bad input. The message names what is wrong and where (file:row)."""


def read_json_object(path: Path | str, what: str = "configuration") -> dict:
    """The object (``{...}``) a JSON file holds, such as a script's recorded configuration.

    Raises
    ------
    InputError
        Not UTF-8 JSON, or JSON that is not an object; the message names
        ``what`` and the file.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"not a valid JSON {what}: {err} {where(path)}") from None
    if not isinstance(document, dict):
        raise InputError(f"{what} is not a JSON object {where(path)}")
    return document


def where(path: Path | str, row: int | None = None) -> str:
    """``(file:row)`` or ``(file)``, the location suffix of error messages."""
    return f"({path}:{row})" if row is not None else f"({path})"


def first_line(err: Exception) -> str:
    """The first line of a library's error message, for a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else "no details"


def describe_os_error(err: OSError) -> str:
    """``Permission denied (path)``: the system's reason and the file(s) it concerns, on one line."""
    reason = err.strerror or str(err) or type(err).__name__
    files = [str(name) for name in (err.filename, err.filename2) if name is not None]
    return f"{reason} ({' -> '.join(files)})" if files else reason


def run_main(main) -> None:
    """Run ``main()``; bad input or a failing file system ends with one ``error: ...`` line and exit 2.

    An :class:`InputError` prints its message. An ``OSError`` that reaches
    this far (a folder that cannot be written, a full disk) prints the
    system's reason and the file. Files are written under a temporary name
    and renamed into place when complete, so none is left half-written.
    """
    try:
        main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        sys.exit(2)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary path beside ``path``; rename it into place on success.

    On any exception the temporary file is removed and ``path`` keeps its old
    content (or stays absent), so readers never see a half-written file.
    The temporary name keeps the suffix, so libraries that dispatch on it
    (``np.save``, ``cv2.imwrite``) behave.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); outputs get the usual umask-based mode.
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield Path(tmp)
        # again: some writers (safetensors) replace the file with a private one
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_csv_rows(path: Path | str, rows) -> None:
    """Write rows (sequences of strings) as a headerless CSV, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def write_lines(path: Path | str, lines) -> None:
    """Write one string per line, atomically (the submission format)."""
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.writelines(f"{line}\n" for line in lines)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, shown once.

    argparse's own formatter appends ``(default: ...)`` to every option,
    also to one whose help already says what its default is, and
    ``(default: None)`` to options without a fixed default; this one leaves
    both out.
    """

    def _get_help_string(self, action):
        if action.default is None or "(default:" in (action.help or "") or "default: " in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def read_csv_with_header(path: Path | str, header: tuple, what: str) -> list[list[str]]:
    """The rows of a CSV file after its first line, which must be ``header`` (cells stripped).

    Raises
    ------
    InputError
        A missing file (named as ``what``), one that is not readable CSV text,
        or another first line (``<path>:1``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found {where(path)}")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"not a readable CSV ({type(err).__name__}: {err}) {where(path)}") from None
    if not rows or tuple(cell.strip() for cell in rows[0]) != tuple(header):
        raise InputError(f"{what}'s header must be {','.join(header)} {where(path, 1)}")
    return rows[1:]
