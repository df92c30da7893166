"""Apply a scorer's corrections to scored nights, or rebuild a scored folder's index page.

    python review.py apply --scored scored/ scored/A-corrections.csv [more.csv ...]
    python review.py index --scored scored/

``apply`` checks every corrections file (saved by a night's review page,
``<ID>/review.html``) against its night in ``--scored`` (a ``stage_edf.py``
result, or ``postprocess.py``'s ``recordings/``) before it writes anything;
then, per night, rewrites the hypnogram table, EDF+ annotations,
statistics, figure and review page, appends who changed what to
``<ID>/<ID>-corrections-log.csv``, and rebuilds the folder's
``sleep_statistics.csv`` and ``index.html``. A bad file (a night not in the
folder, an unknown stage, an epoch out of range, a stage before that does
not match) is one ``error:`` line naming file and row, exit status 2, and
nothing changed. Applying the same file twice changes nothing more.

Every night's new files are written under hidden temporary names first
(``.<name>.<pid>.staged.<suffix>``) and only then renamed into place, each
night's hypnogram table last. A failure while writing them changes
nothing. A process killed during the renames leaves each night either
wholly applied or with its old table (maybe some of its other files
already new); the same command run again applies the rest, adding no log
row twice, and rebuilds both cohort files. A kill during writing can leave
staged files behind: hidden, never read, safe to delete.
"""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from sleepstaging import script_io
from sleepstaging.script_io import InputError, where

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=script_io.HelpFormatter)
parser.add_argument("command", choices=("apply", "index"), help="apply corrections files, or rebuild index.html")
parser.add_argument("files", nargs="*", type=Path, help="apply: the corrections files (<ID>-corrections.csv)")
parser.add_argument("--scored", type=Path, required=True, help="the folder of scored nights (<ID>/ folders)")


def main(argv=None) -> None:
    from sleepstaging.scoring import cohort_page, corrections
    args = parser.parse_intermixed_args(argv)
    if not args.scored.is_dir():
        raise InputError(f"--scored is not a folder {where(args.scored)}")
    if args.command == "index":
        if args.files:
            raise InputError("index takes no files")
        print(f"{cohort_page.write_index(args.scored)} is saved")
        return
    if not args.files:
        raise InputError("apply needs one or more corrections files")
    plans = corrections.plan_corrections(args.scored, args.files)  # every file checked before anything is written
    applied_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    changed = corrections.apply_corrections(args.scored, plans, applied_at)  # all written, then all renamed
    for recording_id, (_, planned) in plans.items():
        print(f"{recording_id}: {changed[recording_id]} epoch(s) changed stage ({len(planned)} listed) -> "
              f"{args.scored / recording_id}")
    corrections.rebuild_statistics_table(args.scored)
    print(f"{cohort_page.write_index(args.scored)} and the statistics table are saved")


if __name__ == "__main__":
    script_io.run_main(main)
