"""Beam jobs (records, scoring) and the synthetic data generator.

Two Beam log lines are dropped here, each false or irrelevant for these jobs: importing
Beam logs "apitools not found, and bigquery client libraries are not available" on every
start, in every worker (no BigQuery is used), and RunInference logs "Resource module is not
available for current platform" on Linux, where it is (its memory probe fails, nothing
else). ``--verbose`` on the jobs still shows the workers' own start-up lines.
"""

import logging


_DROPPED = ("apitools not found, and bigquery client libraries",
            "Resource module is not available for current platform")


class _DropBeamNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_DROPPED)


logging.getLogger().addFilter(_DropBeamNoise())
