"""``runbook lint``: the migration linter, and the analysis ``migrate`` and ``--dry-run`` share.

- ``rules.py``: the rules (names, levels, why, the safe way) and the per-statement checks;
- ``analysis.py``: a range of revisions rendered offline, parsed, judged (transactions, new tables);
- ``source.py``: the line of a revision file a finding points at;
- ``settings.py``: ``[tool.runbook.lint]`` and ``# runbook: ignore[...]`` comments;
- ``report.py``: text, JSON and GitHub annotations; ``command.py``: the ``lint`` command;
- ``preflight.py``: the same analysis in a ``migrate`` (tables for the lock check, the refusal).
"""
