"""Help: every key of every screen, from the bindings themselves (so it never goes stale)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.keys import format_key
from textual.screen import ModalScreen
from textual.widgets import Markdown

NOTES = """
**Image.** `+`/`-` zoom (1.25x steps; the mouse wheel zooms at the pointer), `z` the whole film again,
shift+arrows or a left drag pan, `[`/`]` narrower / wider window and `{`/`}` level down / up (or a right drag),
`w` window presets (full, lung, mediastinum, bone), `i` inverts, `F` full screen (escape returns), `c` the
Grad-CAM of the selected finding (computed in the background), `b` the patient's prior study beside it.
The film uses 24-bit colour whenever the terminal can (`--color` overrides the detection).

**Review.** A study opens on its most probable flag. `a` accept, `x` reject, `u` unsure (the cursor then
moves to the next flag still undecided), `e` note; `f` next flag, `j`/`k` or the arrows any finding.
One key for a whole study: `0` normal (every finding rejected), `A` agree with the model (flags accepted,
the rest rejected), `X` reject every finding still undecided; the next unreviewed study then opens (`N` goes
there at any time). `b` shows the patient's prior study beside the film; `B` blind reading (hide the data
set's labels, then the model's output too). Each decision is saved to the reviews database at once, with
your login name, the time and the model.

**Thresholds.** left/right fine (±0.01), `[`/`]` coarse (±0.05), `1` max-F1, `2` sensitivity 0.80,
`3` Youden; `s` saves (thresholds JSON + a history row), `r` reverts. The worklist's flags follow.

The command palette (ctrl+p) lists the current screen's actions. `NO_COLOR` is respected.
"""


def key_name(key: str) -> str:
    """A key as people write it: ``left_square_bracket`` is ``[``, ``shift+left`` is ``shift+←``."""
    *modifiers, last = key.split("+") if key != "plus" else ["plus"]
    return "+".join([*modifiers, format_key(last)])


def key_names(binding: Binding) -> str:
    """Every key of a binding (``left,minus`` -> ``← / -``), or its own display text when it has one."""
    if binding.key_display:
        return binding.key_display
    return " / ".join(key_name(key.strip()) for key in binding.key.split(",") if key.strip())


def binding_rows(nodes) -> list[tuple[str, str]]:
    rows, seen = [], set()
    for node in nodes:
        for binding in getattr(node, "BINDINGS", []):
            if not isinstance(binding, Binding) or not binding.description:
                continue
            key = key_names(binding)
            if (key, binding.description) in seen:
                continue
            seen.add((key, binding.description))
            rows.append((key, binding.description))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close help", key_display="esc")]

    def compose(self) -> ComposeResult:
        from cxr_tui.screens.study import StudyScreen
        from cxr_tui.screens.thresholds import ThresholdsScreen
        from cxr_tui.screens.training import TrainingScreen
        from cxr_tui.screens.worklist import WorklistScreen

        parts = ["# cxr keys"]
        sections = [("Worklist", [WorklistScreen, _table()]), ("Study", [StudyScreen]),
                    ("Thresholds", [ThresholdsScreen]), ("Training", [TrainingScreen])]
        below = next((screen for screen in reversed(self.app.screen_stack) if screen is not self), None)
        sections.sort(key=lambda section: not isinstance(below, section[1][0]))  # the screen you are on first
        for title, nodes in (*sections[:1], ("Everywhere", [type(self.app)]), *sections[1:]):
            parts.append(f"\n## {title}\n\n| key | action |\n| --- | --- |")
            parts += [f"| `{key}` | {description} |" for key, description in binding_rows(nodes)]
        parts.append(NOTES)
        with VerticalScroll(id="help-body"):
            yield Markdown("\n".join(parts))

    def action_close(self) -> None:
        self.dismiss(None)


def _table():
    from cxr_tui.widgets.worklist import WorklistTable

    return WorklistTable
