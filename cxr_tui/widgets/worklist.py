"""WorklistTable: the study table of the worklist, drawn with Textual's line API from a StudyList.

A plain ``DataTable`` builds a renderable per cell up front: 12.8 s to first paint and 73 ms per arrow key
with NIH's 112,120 rows (DESIGN.md). This widget keeps no rows of its own. Its virtual height is the number
of rows in the model's view plus the header, and :meth:`WorklistTable.render_line` asks the model for the
one row a screen line shows, so the cost of a paint is the height of the terminal, not the size of the
data set. Moving the cursor repaints two lines; scrolling repaints the screen.

Columns have fixed widths chosen from the terminal width (:func:`column_layout`): the findings column takes
what is left, and below 80 columns the patient, split, bar and view columns are dropped in that order.
Colours come from component classes (``worklist-table--*``) in ``DEFAULT_CSS``, so themes and NO_COLOR
apply; the status glyphs and the bar's block characters carry the meaning without colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import var
from textual.scroll_view import ScrollView
from textual.strip import Strip

from cxr_tui.study_list import NOT_PREDICTED, StudyList

Align = Literal["left", "right"]

STATUS_GLYPHS = {"": " ", "partial": "◐", "uncertain": "?", "reviewed": "✓", "missing": "∅"}
"""Review status as one cell: nothing, partly reviewed, left uncertain, reviewed, image missing."""

_EIGHTHS = " ▏▎▍▌▋▊▉"
_STATUS_COMPONENTS = {"partial": "worklist-table--partial", "reviewed": "worklist-table--reviewed"}
_ROW_COMPONENTS = ("worklist-table--flagged", "worklist-table--bar", "worklist-table--pending",
                   "worklist-table--partial", "worklist-table--reviewed")


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the table: which field it shows, where, and how wide (cells)."""

    key: str
    title: str
    x: int
    width: int
    align: Align = "left"


def column_layout(width: int, id_width: int = 16, patient_width: int = 8, split_width: int = 5, *,
                  known: bool = False, model: bool = True, prob_title: str = "Max p") -> list[Column]:
    """Columns for a table ``width`` cells wide: natural widths for the fixed columns, the rest to findings
    (shared with the data set's known labels when ``known``).

    When findings would get fewer than 12 cells the patient, split, bar and view columns are dropped in that
    order; on wide terminals the bar grows to 16 cells. 80 columns show everything. ``model=False`` (blind
    reading) leaves out every column of the model's output.
    """
    spec: list[tuple[str, str, int, Align]] = [
        ("status", "", 1, "left"),
        ("study", "Study", min(max(id_width, 5), 24), "left"),
        ("patient", "Patient", min(max(patient_width, 7), 12), "left"),
        ("view", "View", 4, "left"),
        ("split", "Split", min(max(split_width, 5), 9), "left"),
    ]
    if model:
        spec += [("n_flagged", "#", 2, "right"), ("max_prob", prob_title[:5], 5, "right"), ("bar", "", 8, "left")]
    minimum_findings = 12
    for drop in (None, "patient", "split", "bar", "view"):
        if drop is not None:
            spec = [column for column in spec if column[0] != drop]
        used = sum(w for _, _, w, _ in spec) + len(spec)
        if width - used >= minimum_findings:
            break
    spare = width - used
    if spare > 40:
        spec = [(k, t, min(16, w + spare - 40) if k == "bar" else w, a) for k, t, w, a in spec]
    columns, x = [], 0
    for key, title, w, align in spec:
        columns.append(Column(key, title, x, w, align))
        x += w + 1
    rest = max(width - x, 0)
    if known and model:
        half = rest // 2
        columns.append(Column("findings", "Flagged", x, max(half - 1, 0)))
        columns.append(Column("known", "Known labels", x + half, rest - half))
    elif known:
        columns.append(Column("known", "Known labels", x, rest))
    elif model:
        columns.append(Column("findings", "Findings", x, rest))
    return columns


def probability_bar(prob: float, width: int) -> str:
    """``prob`` in [0, 1] as block characters (eighths of a cell), left-aligned, ``width`` cells."""
    if width <= 0 or prob != prob:
        return " " * max(width, 0)
    eighths = round(min(max(prob, 0.0), 1.0) * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (_EIGHTHS[part] if part else "")
    return bar.ljust(width)


def _fit(text: str, width: int, align: Align = "left") -> str:
    """Text in exactly ``width`` cells: padded, or cut with an ellipsis."""
    if width <= 0:
        return ""
    length = cell_len(text)
    if length > width:
        return set_cell_size(text, width - 1) + "…"
    padding = " " * (width - length)
    return padding + text if align == "right" else text + padding


class WorklistTable(ScrollView, can_focus=True):
    """The worklist's study table: a cursor over the rows of a :class:`StudyList`'s view.

    Change the model (sort, filter, new predictions or reviews), then call :meth:`refresh_view`; the
    cursor stays on its study when the study is still in the view, else on the same position.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_study", "Open", show=False, id="worklist.open"),
        Binding("j,down", "cursor_down", "Next study", show=False, id="worklist.down"),
        Binding("k,up", "cursor_up", "Previous study", show=False, id="worklist.up"),
        Binding("pagedown", "cursor_page_down", "Page down", show=False, id="worklist.page_down"),
        Binding("pageup", "cursor_page_up", "Page up", show=False, id="worklist.page_up"),
        Binding("home", "cursor_first", "First study", show=False, id="worklist.first"),
        Binding("end", "cursor_last", "Last study", show=False, id="worklist.last"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "worklist-table--header",
        "worklist-table--cursor",
        "worklist-table--flagged",
        "worklist-table--bar",
        "worklist-table--pending",
        "worklist-table--partial",
        "worklist-table--reviewed",
    }

    DEFAULT_CSS = """
    WorklistTable {
        background: $surface;
        color: $foreground;
        height: 1fr;
        overflow-x: hidden;
        overflow-y: auto;
        scrollbar-size-vertical: 1;
        &:focus {
            background-tint: $foreground 5%;
            & > .worklist-table--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
        }
        & > .worklist-table--header {
            background: $panel;
            color: $foreground;
            text-style: bold;
        }
        & > .worklist-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        & > .worklist-table--flagged {
            color: $text-warning;
        }
        & > .worklist-table--bar {
            color: $primary;
        }
        & > .worklist-table--pending {
            color: $text-muted;
        }
        & > .worklist-table--partial {
            color: $text-warning;
        }
        & > .worklist-table--reviewed {
            color: $text-success;
        }
    }
    """

    @dataclass
    class StudyHighlighted(Message):
        """The cursor landed on a study (a burst of moves delivers only the last one still queued)."""

        study_id: str
        position: int
        worklist: WorklistTable

        @property
        def control(self) -> WorklistTable:
            return self.worklist

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, WorklistTable.StudyHighlighted) and message.worklist is self.worklist

    @dataclass
    class StudyOpened(Message):
        """The user asked to open the study under the cursor (enter, or a double click)."""

        study_id: str
        worklist: WorklistTable

        @property
        def control(self) -> WorklistTable:
            return self.worklist

    cursor_position: var[int] = var(0)
    """View position of the cursor (0 when the view is empty)."""

    def __init__(self, study_list: StudyList | None = None, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None, disabled: bool = False) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._list = study_list if study_list is not None else StudyList([])
        self._cursor_study: str | None = None
        self._layout: tuple[int, list[Column]] | None = None
        self._styles: dict[str | None, tuple[Style, Style]] | None = None
        self._line_cache: LRUCache[tuple[int, bool, int, Style], Strip] = LRUCache(256)
        self.blind = 0
        """0: everything shown; 1: the data set's labels hidden; 2: the model's output hidden as well."""

    # -- public API -----------------------------------------------------------------------------------------

    @property
    def study_list(self) -> StudyList:
        return self._list

    @property
    def study_id(self) -> str | None:
        """The study under the cursor, or None when the view is empty."""
        return self._list.study_at(self.cursor_position) if len(self._list) else None

    def set_study_list(self, study_list: StudyList) -> None:
        """Show another list, keeping the cursor's study when the new view has it."""
        self._list = study_list
        self._layout = None
        self.refresh_view()

    def refresh_view(self) -> None:
        """Redraw after the list's view changed (sort, filter, predictions, reviews)."""
        model = self._list
        position = model.position_of(self._cursor_study) if self._cursor_study is not None else None
        if position is None:
            position = self.cursor_position
        self.virtual_size = Size(0, len(model) + 1)
        self._layout = None
        self._line_cache.clear()
        self.set_reactive(WorklistTable.cursor_position, self.validate_cursor_position(position))
        if self.scroll_y > self.max_scroll_y:  # the view got shorter
            self.scroll_to(y=self.max_scroll_y, animate=False)
        self._scroll_cursor_into_view()
        self._announce()
        self.refresh()

    def set_blind(self, level: int) -> None:
        """Blind reading: hide the known labels (1), and the model's output too (2)."""
        self.blind = level
        self.refresh_view()

    def move_cursor(self, position: int) -> None:
        """Put the cursor on a view position (clamped to the view)."""
        self.cursor_position = position

    # -- cursor ---------------------------------------------------------------------------------------------

    def validate_cursor_position(self, position: int) -> int:
        return min(max(position, 0), max(len(self._list) - 1, 0))

    def watch_cursor_position(self, old: int, new: int) -> None:
        self.refresh_line(old + 1)
        self.refresh_line(new + 1)
        self._scroll_cursor_into_view()
        self._announce()

    def _announce(self) -> None:
        """Post StudyHighlighted when the study under the cursor changed."""
        study = self.study_id
        if study != self._cursor_study:
            self._cursor_study = study
            if study is not None:
                self.post_message(self.StudyHighlighted(study, self.cursor_position, self))

    @property
    def _body_height(self) -> int:
        return max(self.scrollable_content_region.height - 1, 0)

    def _scroll_cursor_into_view(self) -> None:
        body = self._body_height
        if not body:
            return
        top, position = round(self.scroll_y), self.cursor_position
        if position < top:
            self.scroll_to(y=position, animate=False)
        elif position >= top + body:
            self.scroll_to(y=position - body + 1, animate=False)

    def action_cursor_down(self) -> None:
        self.cursor_position += 1

    def action_cursor_up(self) -> None:
        self.cursor_position -= 1

    def action_cursor_page_down(self) -> None:
        page = max(self._body_height, 1)
        self.scroll_to(y=round(self.scroll_y) + page, animate=False)
        self.cursor_position += page

    def action_cursor_page_up(self) -> None:
        page = max(self._body_height, 1)
        self.scroll_to(y=max(round(self.scroll_y) - page, 0), animate=False)
        self.cursor_position -= page

    def action_cursor_first(self) -> None:
        self.cursor_position = 0

    def action_cursor_last(self) -> None:
        self.cursor_position = len(self._list) - 1

    def action_open_study(self) -> None:
        study = self.study_id
        if study is not None:
            self.post_message(self.StudyOpened(study, self))

    def _on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:
            return
        position = round(self.scroll_y) + offset.y - 1
        if position >= len(self._list):
            return
        self.cursor_position = position
        if event.chain >= 2:
            self.action_open_study()

    def _on_mount(self, _: events.Mount) -> None:
        self.refresh_view()

    def _on_resize(self, _: events.Resize) -> None:
        self._layout = None
        self._scroll_cursor_into_view()

    # -- rendering ------------------------------------------------------------------------------------------

    def _columns(self, width: int) -> list[Column]:
        if self._layout is None or self._layout[0] != width:
            model = self._list
            finding = model.sort_finding
            self._layout = (width, column_layout(width, model.id_width, model.patient_width, model.split_width,
                                                 known=model.has_known and self.blind == 0, model=self.blind < 2,
                                                 prob_title=f"p {finding}" if finding else "Max p"))
        return self._layout[1]

    def render_lines(self, crop: Region) -> list[Strip]:
        """One paint: the styles are resolved once for all its lines (they change with focus and theme)."""
        self._styles = None
        return super().render_lines(crop)

    def _resolved_styles(self) -> dict[str | None, tuple[Style, Style]]:
        """Component -> (style on a plain row, style on the cursor row); None is the row's own style.

        The cursor row is drawn in the cursor style alone, so its text keeps the theme's contrast (a bar in
        the primary colour would vanish on a primary-coloured cursor); the glyphs still carry the meaning.
        """
        if self._styles is None:
            base = self.rich_style
            cursor = self.get_component_rich_style("worklist-table--cursor")
            styles: dict[str | None, tuple[Style, Style]] = {None: (base, cursor)}
            for name in _ROW_COMPONENTS:
                styles[name] = (base + self.get_component_rich_style(name, partial=True), cursor)
            styles["worklist-table--header"] = (self.get_component_rich_style("worklist-table--header"),) * 2
            self._styles = styles
        return self._styles

    def render_line(self, y: int) -> Strip:
        """Screen line ``y``: the header on line 0, else the view row under it."""
        width = self.scrollable_content_region.width
        styles = self._resolved_styles()
        if y == 0:
            return self._render_header(width, styles["worklist-table--header"][0])
        position = round(self.scroll_y) + y - 1
        if position < len(self._list):
            cursor = position == self.cursor_position
            key = (self._list.index_at(position), cursor, width, styles[None][cursor])
            strip = self._line_cache.get(key)
            if strip is None:
                strip = self._render_row(position, width, styles, cursor)
                self._line_cache[key] = strip
            return strip
        if position == 0:
            message = "No studies match this filter." if self._list.total else "No studies."
            return Strip([Segment(_fit(" " + message, width), styles["worklist-table--pending"][0])], width)
        return Strip.blank(width, styles[None][0])

    def _render_header(self, width: int, style: Style) -> Strip:
        sorted_column = self._list.sort_key  # columns are keyed by the model's sort keys
        if sorted_column == "finding":
            sorted_column = "max_prob"  # which shows that finding's probability
        arrow = "▼" if self._list.descending else "▲"
        text = [" "] * width
        for column in self._columns(width):
            title = column.title
            if column.key == sorted_column and column.width >= cell_len(title) + 2:
                title = f"{title} {arrow}" if column.align == "left" else f"{arrow} {title}"
            elif (column.key == sorted_column and not title) or (column.key == "bar" and sorted_column == "max_prob"):
                title = arrow  # the status column, or the probability's bar
            text[column.x : column.x + column.width] = _fit(title, column.width, column.align)
        return Strip([Segment("".join(text)[:width], style)], width)

    def _render_row(self, position: int, width: int, styles: dict[str | None, tuple[Style, Style]],
                    cursor: bool) -> Strip:
        """A row as runs of one style each (the gaps join the runs beside them)."""
        model = self._list
        row = model.row(position)
        predicted = row.max_prob != NOT_PREDICTED
        flagged = predicted and row.n_flagged != "0"
        runs: list[tuple[Style, list[str]]] = []

        def add(component: str | None, text: str) -> None:
            style = styles[component][cursor]
            if runs and runs[-1][0] is style:
                runs[-1][1].append(text)
            else:
                runs.append((style, [text]))

        x = 0
        for column in self._columns(width):
            component: str | None = None
            if column.key == "status":
                text = STATUS_GLYPHS.get(row.status, " ")
                component = _STATUS_COMPONENTS.get(row.status)
            elif column.key == "bar":
                text = probability_bar(model.shown_prob_at(position), column.width)
                component = "worklist-table--bar"
            else:
                text = getattr(row, column.key)
                if column.key in ("n_flagged", "max_prob", "findings"):
                    if not predicted:
                        component = "worklist-table--pending"
                    elif flagged and column.key != "max_prob":
                        component = "worklist-table--flagged"
            if column.x > x:
                add(None, " " * (column.x - x))
            add(component, _fit(text, column.width, column.align))
            x = column.x + column.width
        if x < width:
            add(None, " " * (width - x))
        segments = [Segment("".join(texts), style) for style, texts in runs]
        strip = Strip(segments, width)
        return strip.crop(0, width) if x > width else strip
