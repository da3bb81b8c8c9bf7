"""CurveChart: named line series over epochs, drawn with plotext, holding the numbers it draws.

The chart keeps its data (``series``) as plain lists so callers and tests read what is plotted without
parsing pixels, and it redraws only when the data changed: a training screen polling a run every two
seconds costs nothing while the run sits between epochs.
"""

from __future__ import annotations

from textual_plotext import PlotextPlot

from cxr_core.text import visible

Series = tuple[list[int], list[float]]
"""One line of a chart: x values (epochs) and y values, the same length."""


class CurveChart(PlotextPlot):
    """A line chart of named series against the epoch (a series with no points is left out)."""

    DEFAULT_CSS = """
    CurveChart {
        width: 1fr;
        height: 1fr;
        min-height: 6;
    }
    """

    def __init__(self, title: str, *, y_range: tuple[float, float] | None = None, name: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.title = title
        self.y_range = y_range
        self.series: dict[str, Series] = {}
        self._draw()

    def set_series(self, series: dict[str, Series], title: str | None = None) -> None:
        """Show ``series`` (name -> (epochs, values)); nothing happens when neither it nor the title changed."""
        kept = {name: (list(xs), list(ys)) for name, (xs, ys) in series.items() if xs}
        title = self.title if title is None else title
        if kept == self.series and title == self.title:
            return
        self.series, self.title = kept, title
        self._draw()
        self.refresh()

    def _draw(self) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.title(visible(self.title))  # a class name in it is outside text
        plt.xlabel("epoch")
        if self.y_range is not None:
            plt.ylim(*self.y_range)
        epochs = sorted({x for xs, _ in self.series.values() for x in xs})
        if epochs:
            step = max(1, len(epochs) // 8)  # integer ticks, at most ~8 of them
            plt.xticks(epochs[::step])
        for name, (xs, ys) in self.series.items():
            plt.plot(xs, ys, label=visible(name), marker="braille")
