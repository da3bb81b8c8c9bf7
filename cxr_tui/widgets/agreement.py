"""AgreementPanel: the model's flags against the reviewers' decisions for one disease (2x2 table, kappa).

The table is :meth:`cxr_core.eval.ReviewedStudies.agreement`'s; the panel only lays it out.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from cxr_core.eval import Agreement, ReaderAgreement

TITLE = "Agreement with reviewer"


def agreement_text(table: Agreement) -> Text:
    """The 2x2 table (study level), kappa and what was left out."""
    kappa = "—" if table.kappa is None else f"{table.kappa:.2f}"
    observed = "—" if table.observed is None else f"{100 * table.observed:.0f}%"
    text = Text.assemble((TITLE, "bold"), f" ({table.n} studies, every split)\n")  # not only the tuning split
    text.append(f"{'':13}{'accept':>8}{'reject':>8}\n", style="dim")
    text.append(f"{'model flags':13}{table.both_positive:>8}{table.model_only:>8}\n")
    text.append(f"{'model does not':13}{table.reviewer_only:>8}{table.both_negative:>8}\n")
    text.append(f"kappa {kappa} · agree {observed}")
    if table.excluded:
        text.append(f"\n{table.excluded} left out (uncertain / no score)", style="dim")
    return text


class AgreementPanel(Static):
    """Shows one :class:`Agreement`, ``no reviews yet``, or nothing."""

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes, markup=False)

    def show(self, table: Agreement | None, *, any_reviews: bool, readers: ReaderAgreement | None = None) -> None:
        if not any_reviews:
            text = Text.assemble((TITLE + "\n", "bold"), "no reviews yet")
        elif table is None:
            text = Text()
        else:
            text = agreement_text(table)
        if readers is not None and len(readers.readers) >= 2:
            text.append("\n")
            text.append_text(readers_text(readers))
        self.update(text)


def readers_text(table: ReaderAgreement) -> Text:
    """Readers among themselves for one finding: Fleiss' kappa (three or more) or Cohen's (two)."""
    name, value, items = table.headline()
    kappa = "—" if value is None else f"{value:.2f}"
    line = f"{name} κ {kappa} ({len(table.readers)} readers, {items} items)"
    return Text.assemble(("Readers", "bold"), f" · {line} · {table.disagreements} disagree")
