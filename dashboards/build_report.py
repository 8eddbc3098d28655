"""Build the sweep comparison report (same as ``oskar report``).

Runbook::

    python dashboards/build_report.py --experiment oskar-token-budget --out reports/token-budget
    python dashboards/build_report.py --experiment NAME --out DIR --parent-run RUN_ID --tracking-uri URI

See dashboards/README.md for what the page shows.
"""

import sys

from oskar_ray.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
