"""A ``worker_process_setup_hook`` for local Ray clusters started without the dashboard.

Ray Train V2 starts a detached ``PlacementGroupCleaner`` beside every run. It polls the
controller through the state API, which lives in the dashboard; without one, every poll
fails and logs a warning, once a second for the whole run, to the driver's console. On a
local cluster the run's placement group dies with the cluster anyway, so the warning
says nothing actionable there. Kept to the stdlib: Ray imports it in every worker.
"""

from __future__ import annotations

import logging

PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def silence_placement_group_cleaner() -> None:
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)
