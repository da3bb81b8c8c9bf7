"""Adjudication: the findings readers called both ways, each reader's call, and the adjudicator's decision.

Opened from the worklist (``D``). The table lists exactly :func:`cxr_core.eval.disagreements` of the root's
current decisions; ``a`` / ``x`` / ``u`` store the adjudicated decision (role ``adjudicator``, under the reader's
name) for the row under the cursor, ``enter`` opens the study to look at the film first. The status line gives
the readers' agreement (Fleiss' kappa with three or more readers, Cohen's with two) over every finding.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from cxr_core.errors import CxrError
from cxr_core.eval import ALL_FINDINGS, Disagreement, disagreements, reader_agreement
from cxr_core.text import name_text, visible
from cxr_tui.messages import ReviewRecorded
from cxr_tui.screens.base import CxrScreen


def agreement_summary(tables: dict, readers: list[str]) -> str:
    """One line: how many readers, their kappa over every finding, and how many items they called."""
    if len(readers) < 2:
        return f"{len(readers)} reader{'' if len(readers) == 1 else 's'}: agreement needs two or more (--reader NAME)"
    pooled = tables.get(ALL_FINDINGS)
    if pooled is None:
        return f"{len(readers)} readers, no shared calls yet"
    name, value, items = pooled.headline()
    kappa = "—" if value is None else f"{value:.2f}"
    possessive = "Fleiss'" if name == "Fleiss" else f"{name}'s"
    what = f"{possessive} κ {kappa} over {items} items {'all' if name == 'Fleiss' else 'both'} read"
    return f"{len(readers)} readers ({', '.join(readers)}) · {what} · {pooled.disagreements} disagreements"


class AdjudicationScreen(CxrScreen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back", id="adjudication.back"),
        Binding("a", "adjudicate('accept')", "Accept", id="adjudication.accept"),
        Binding("x", "adjudicate('reject')", "Reject", id="adjudication.reject"),
        Binding("u", "adjudicate('uncertain')", "Unsure", id="adjudication.uncertain"),
        Binding("enter", "open", "Open study", id="adjudication.open"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Disagreement] = []
        self.readers: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="adjudication-status", markup=False)
        yield DataTable(id="adjudication-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.reload()
        self.query_one(DataTable).focus()

    def on_screen_resume(self) -> None:
        self.reload()

    def reload(self) -> None:
        root = self.app.workspace.root
        table = self.query_one(DataTable)
        keep = table.cursor_row
        table.clear(columns=True)
        if root is None:
            self.query_one("#adjudication-status", Static).update("no data set")
            return
        try:
            reviews = self.app.reviews.reviews(root)
        except CxrError as err:
            self.notify(str(err), severity="error")
            return
        self.readers = sorted({r.reviewer for r in reviews if r.role == "reader" and r.decided})
        self.rows = disagreements(reviews)
        status = agreement_summary(reader_agreement([r for r in reviews if r.role == "reader"]), self.readers)
        settled = sum(d.settled for d in self.rows)
        self.query_one("#adjudication-status", Static).update(
            Text(visible(f"{status} · {settled} of {len(self.rows)} adjudicated"), style="bold"))
        cells = [[name_text(d.study), name_text(d.finding), *(d.calls.get(r, "—") for r in self.readers),
                  d.adjudicated_text] for d in self.rows]
        headers = ["study", "finding", *(visible(r) for r in self.readers), "adjudicated"]
        for k, header in enumerate(headers):  # widths from the content: nothing cut
            table.add_column(header, width=max([len(header), *(len(row[k]) for row in cells)]))
        for row in cells:
            table.add_row(*(Text(cell) for cell in row))
        if self.rows:
            table.move_cursor(row=min(max(keep, 0), len(self.rows) - 1))

    def _selected(self) -> Disagreement | None:
        table = self.query_one(DataTable)
        return self.rows[table.cursor_row] if self.rows and 0 <= table.cursor_row < len(self.rows) else None

    def action_adjudicate(self, decision: str) -> None:
        row = self._selected()
        if row is None:
            return
        workspace = self.app.workspace
        try:
            self.app.reviews.record(workspace.root, row.study, row.finding, decision, reviewer=workspace.reviewer,
                                    role="adjudicator")
        except CxrError as err:
            self.notify(str(err), severity="error")
            return
        self.app.post_message(ReviewRecorded(row.study, row.finding, decision))
        self.reload()
        table = self.query_one(DataTable)
        if table.cursor_row < len(self.rows) - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def action_open(self) -> None:
        from cxr_tui.screens.study import StudyScreen

        row = self._selected()
        if row is not None:
            self.app.push_screen(StudyScreen(row.study))

    def action_back(self) -> None:
        self.app.pop_screen()
