"""A reviewer at the keyboard, in its own process: the real CxrApp (headless, driven by Pilot) recording decisions.

``python -m tests.functional.app_driver ROOT MODEL ACKS --seed N [--reviewer NAME]``

Visits the worklist, the thresholds screen and back, opens a study, then presses review keys at random
(accept, reject, uncertain, next finding, next study, and now and then out to the thresholds screen and
back) until it is killed. Every action the reviews store acknowledged (``record``/``set_note`` returned, i.e.
committed) is appended to ACKS as ``action_id<TAB>study<TAB>finding<TAB>decision`` and fsync'ed before the
app goes on, so whoever kills this process knows exactly what it was told was saved.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
from pathlib import Path

from cxr_core.store import reviews as reviews_module
from cxr_tui.app import CxrApp
from cxr_tui.screens.study import StudyScreen
from cxr_tui.screens.worklist import WorklistScreen

REVIEW_KEYS = ["a", "a", "x", "x", "u", "j", "j", "n", "k"]


def log_acknowledgements(path: Path) -> None:
    """Append each committed action to ``path`` (fsync'ed) the moment the store returns it."""
    log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    append = reviews_module.ReviewStore._append

    def acknowledged(self, *args, **kwargs):
        review = append(self, *args, **kwargs)
        log.write(f"{review.action_id}\t{review.study}\t{review.finding}\t{review.decision}\n")
        log.flush()
        os.fsync(log.fileno())
        return review

    reviews_module.ReviewStore._append = acknowledged


async def drive(app: CxrApp, rng: random.Random, ready: Path | None) -> None:
    async with app.run_test(size=(120, 40)) as pilot:
        while not app.workspace.studies:
            await pilot.pause(0.05)
        if ready is not None:
            ready.touch()
        for _ in range(600):  # up to a minute for the predictions the thresholds screen needs
            if app.workspace.last_load is not None:
                break
            await pilot.pause(0.1)
        await visit_thresholds(app, pilot)
        while True:
            if not isinstance(app.screen, StudyScreen):
                if isinstance(app.screen, WorklistScreen):
                    await pilot.press("enter")
                else:
                    await pilot.press("escape")
                await pilot.pause(0.05)
                continue
            if rng.random() < 0.1:
                await pilot.press("escape")
                await visit_thresholds(app, pilot)
                continue
            await pilot.press(rng.choice(REVIEW_KEYS))
            await pilot.pause(rng.uniform(0.0, 0.05))


async def visit_thresholds(app: CxrApp, pilot) -> None:
    """Open the thresholds screen, let it read the reviews for its agreement panel, and come back."""
    await pilot.press("t")
    await app.workers.wait_for_complete()
    await pilot.pause(0.05)
    await pilot.press("escape")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("acks", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reviewer", default=None)
    parser.add_argument("--ready", type=Path, default=None, help="touched once the worklist has its studies")
    args = parser.parse_args()
    log_acknowledgements(args.acks)
    app = CxrApp(args.root, args.model, image_protocol="halfcell")
    if args.reviewer:
        app.workspace.reviewer = args.reviewer
    asyncio.run(drive(app, random.Random(args.seed), args.ready))


if __name__ == "__main__":
    main()
