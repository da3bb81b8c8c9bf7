"""Normal chest anatomy: the geometry of one patient's chest and how it is drawn.

:class:`Chest` turns an :class:`~cxr_core.phantoms.spec.Anatomy` (after findings such as volume loss have
adjusted it) into outlines in the canonical frame; findings place themselves with it, so a lesion drawn at
"lower third of the left lung, lateral half" lands in lung on every patient.
"""

from __future__ import annotations

import math

import numpy as np

from cxr_core.phantoms.layers import BODY, BONE, DENSE, FAINT, LUNG, VESSEL, Canvas
from cxr_core.phantoms.spec import Anatomy, Setup

# Lung apex and lateral wall as (f, g): f = share of the thorax half-width from the midline,
# g = share of the height from apex to costophrenic angle. Ends at the costophrenic angle (1, 1).
WALL_F = np.array([0.13, 0.20, 0.30, 0.42, 0.54, 0.66, 0.77, 0.87, 0.94, 0.98, 1.0])
WALL_G = np.array([0.13, 0.04, 0.00, 0.015, 0.06, 0.15, 0.28, 0.45, 0.63, 0.82, 1.0])
_DOME_F = np.array([0.97, 0.92, 0.85, 0.77, 0.68, 0.58, 0.48, 0.38, 0.28, 0.19, 0.12])
_TOP = 2  # index of the apex in WALL_*: from here on g grows monotonically down the lateral wall
_T9, _T10, _T12, _T13 = (np.linspace(0.0, 1.0, n) for n in (9, 10, 12, 13))
_LIVER_F = np.linspace(1.1, 0.0, 8)
# Cardiac borders over their height (0 = top, 1 = at the dome): the right atrium bulges most two thirds of
# the way down, the left ventricle lower, and both tuck in a little at the diaphragm.
_RIGHT_BULGE = np.sin(0.5 * np.pi * np.minimum(_T10 / 0.65, 1)) * (1 - 0.07 * np.maximum(_T10 - 0.65, 0) / 0.35)
_LEFT_BULGE = np.sin(0.5 * np.pi * np.minimum(_T12 / 0.8, 1)) * (1 - 0.12 * np.maximum(_T12 - 0.8, 0) / 0.2)


class Chest:
    """Canonical outlines of one chest. ``side`` is -1 for the patient's right (image left), +1 for the left."""

    def __init__(self, anatomy: Anatomy, setup: Setup):
        a = anatomy
        self.anatomy = a
        self.thorax = a.thorax
        self.apex = a.apex
        self.shift = a.shift
        self.ap = setup.view == "AP"
        self.dome = {-1: a.dome + setup.inspiration - a.lift[0],
                     1: a.dome + a.dome_gap + setup.inspiration - a.lift[1]}
        self.cp = {s: self.dome[s] + a.cp_depth for s in (-1, 1)}
        self.wall = np.minimum(WALL_F * (1 + 0.08 * a.lung_shape * (1 - WALL_G)), 1.0)
        self.hilum = {s: (s * 0.24 * a.thorax + a.shift, a.hilum) for s in (-1, 1)}
        self.outline = {s: self._lung(s) for s in (-1, 1)}
        self._silhouette(a.ctr * setup.magnification, a.heart_h)

    def v_at(self, side: int, g):
        return self.apex + np.asarray(g) * (self.cp[side] - self.apex)

    def wall_f(self, side: int, v):
        """``f`` of the lateral lung wall at height(s) ``v``."""
        g = (np.asarray(v) - self.apex) / (self.cp[side] - self.apex)
        return np.interp(g, WALL_G[_TOP:], self.wall[_TOP:])

    def diaphragm_v(self, side: int, f):
        """Height of the hemidiaphragm at ``f``: a dome peaking near mid-lung, steep into the CP angle."""
        f = np.asarray(f, dtype=np.float64)
        depth = self.anatomy.cp_depth
        lateral = depth * (np.maximum(f - 0.42, 0.0) / 0.58) ** 1.8
        medial = 0.45 * depth * (np.maximum(0.42 - f, 0.0) / 0.32) ** 1.8
        return self.dome[side] + lateral + medial

    def free_u(self, side: int, v: float, t: float, margin: float = 0.06) -> float:
        """The point a share ``t`` across the open lung at height ``v``, clear of heart and mediastinum."""
        vb, ub = self._borders[side]
        edge = side * float(np.interp(v, vb, ub, left=ub[0], right=ub[-1]))
        inner = max(0.24 * self.thorax, edge + margin * self.thorax)
        outer = max((float(self.wall_f(side, v)) - 0.12) * self.thorax, inner + 0.02)
        return side * (inner + t * (outer - inner))

    def _lung(self, side: int) -> tuple[np.ndarray, np.ndarray]:
        wall_v = self.v_at(side, WALL_G)
        dome_v = self.diaphragm_v(side, _DOME_F)
        medial_v = np.array([dome_v[-1] - 0.02, self.hilum[side][1] + 0.1, self.v_at(side, 0.3)])
        f = np.concatenate([self.wall, _DOME_F, [0.085, 0.075, 0.09]])
        v = np.concatenate([wall_v, dome_v, medial_v])
        return side * f * self.thorax, v

    def _silhouette(self, ctr: float, half_h: float) -> None:
        """The cardiomediastinal silhouette: mediastinum above, right atrium and left ventricle below.

        Its cardiac part spans exactly ``ctr`` of the chest width (``2 * thorax``), so the cardiothoracic
        ratio is a parameter, not an accident of the drawing.
        """
        a, s, m = self.anatomy, self.shift, self.anatomy.mediastinum
        width = ctr * 2 * self.thorax
        rw, lw = a.heart_right * width, (1 - a.heart_right) * width
        top = self.dome[1] - 2 * half_h
        vr = top + _T10 * (self.dome[-1] + 0.03 - top)
        ur = s - (m + (rw - m) * _RIGHT_BULGE)
        vl = top - 0.04 + _T12 * (self.dome[1] + 0.07 - top)
        ul = s + 1.1 * m + (lw - 1.1 * m) * _LEFT_BULGE
        knob_v = -0.33
        self.silhouette = (
            np.concatenate([[s - m, s - 1.05 * m], ur, [ur[-1], ul[-1]], ul[::-1],
                            [s + m + 0.45 * a.knob, s + 0.95 * m, s + 0.85 * m]]),
            np.concatenate([[-1.4, top - 0.1], vr, [self.dome[-1] + 0.2, self.dome[1] + 0.2], vl[::-1],
                            [knob_v + 0.13, knob_v - 0.1, -1.4]]),
        )
        self.knob = (s + m + 0.3 * a.knob, knob_v, a.knob)
        self.heart_rect = (s - rw, s + lw, top, self.dome[1])
        self._borders = {-1: (vr, ur), 1: (vl, ul)}


def draw_anatomy(canvas: Canvas, chest: Chest, vessel_rng: np.random.Generator, haze: float) -> None:
    """Body, lungs, mediastinum, bones and lung vessels of a normal chest."""
    a = chest.anatomy
    if a.breast > 0:
        for side in (-1, 1):
            canvas.soft_ellipse(DENSE, side * 0.5 * a.thorax, chest.dome[side] + 0.04, 0.3 + 0.1 * a.breast,
                                0.2 + 0.06 * a.breast, fill=0.4 * a.breast)
    _body(canvas, chest)
    for side in (-1, 1):
        canvas.soft_polygon(LUNG, *chest.outline[side], fill=1.0)
    _mediastinum(canvas, chest)
    _spine(canvas, chest)
    _ribs(canvas, chest)
    for side in (-1, 1):
        _clavicle_and_shoulder(canvas, chest, side)
    _vessels(canvas, chest, vessel_rng, haze)


def _body(canvas: Canvas, chest: Chest) -> None:
    """Neck, shoulders and trunk; liver and spleen under the diaphragm; the gastric bubble."""
    a = chest.anatomy
    neck = 0.19 + 0.04 * a.habitus
    shoulder = a.thorax + 0.42 + 0.06 * a.habitus
    side_w = a.thorax + 0.1 + 0.08 * a.habitus
    half_u = [neck, neck, neck + 0.08, 0.5, 0.8, shoulder, shoulder - 0.02, side_w + 0.03, side_w,
              side_w + 0.04, side_w + 0.08]
    half_v = [-1.4, -0.98, -0.9, -0.86, -0.8, -0.72, -0.45, -0.3, 0.1, 0.7, 1.4]
    u = np.concatenate([np.array(half_u), -np.array(half_u[::-1])])
    v = np.concatenate([half_v, half_v[::-1]])
    canvas.soft_polygon(BODY, *_rounded(u, v), fill=1.0)
    for side in (-1, 1):  # liver and spleen under the domes
        canvas.soft_polygon(DENSE, np.concatenate([side * _LIVER_F * a.thorax, [0.0, side * 1.2]]),
                            np.concatenate([chest.diaphragm_v(side, _LIVER_F) + 0.03, [1.4, 1.4]]), fill=0.8)
    bubble_v = float(chest.diaphragm_v(1, 0.5)) + 0.08
    canvas.soft_ellipse(LUNG, 0.5 * a.thorax, bubble_v, 0.09, 0.05, fill=0.3)  # gastric bubble


def _rounded(u, v, passes: int = 2) -> tuple[list[float], list[float]]:
    """Chaikin corner cutting of a closed polygon: smooth outlines from a few control points."""
    u, v = np.asarray(u).tolist(), np.asarray(v).tolist()
    for _ in range(passes):
        nu, nv = [], []
        for a, b, c, d in zip(u, u[1:] + u[:1], v, v[1:] + v[:1], strict=True):
            nu += (0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b)
            nv += (0.75 * c + 0.25 * d, 0.25 * c + 0.75 * d)
        u, v = nu, nv
    return u, v


def _mediastinum(canvas: Canvas, chest: Chest) -> None:
    """The cardiomediastinal silhouette and aortic knob (no lung there), trachea and main bronchi (air)."""
    s = chest.shift
    ku, kv, kr = chest.knob
    silhouette = _rounded(*chest.silhouette, passes=1)
    for channel, fill in ((LUNG, 0.0), (DENSE, 1.0)):
        canvas.soft_polygon(channel, *silhouette, fill=fill)
        canvas.soft_ellipse(channel, ku, kv, kr, kr * 1.1, fill=fill)
    carina = chest.anatomy.hilum - 0.16
    canvas.soft_polygon(LUNG, [s - 0.035, s - 0.03, s + 0.035, s + 0.03], [-1.4, carina, carina, -1.4], fill=0.4)
    for side in (-1, 1):
        hx, hy = chest.hilum[side]
        canvas.soft_polygon(LUNG, [s - 0.015 * side, s + 0.02 * side, hx - 0.02 * side, hx - 0.05 * side],
                            [carina, carina - 0.01, hy + 0.01, hy + 0.04], fill=0.3)


def _spine(canvas: Canvas, chest: Chest) -> None:
    """Vertebral bodies with disc spaces, pedicles and spinous processes, as a field over a narrow strip."""
    pitch = chest.anatomy.rib_pitch
    window = canvas.half.window([-0.13, 0.13, 0.13, -0.13], [-1.45, -1.45, 1.45, 1.45])
    if window is None:
        return
    u, v = canvas.half.grid(window)
    level = (v - (chest.apex - 0.06)) * (1.0 / pitch)
    phase = (level - np.floor(level + 0.5)) * pitch  # distance from the middle of the nearest vertebra
    grow = 1.0 + 0.02 * np.maximum(level, 0.0)
    hw, hh = 0.06 * grow, 0.37 * pitch * grow
    au = np.abs(u)
    body = np.clip((hw - au) * 150.0, 0.0, 1.0) * np.clip((hh - np.abs(phase)) * 150.0, 0.0, 1.0)
    pedicle = ((au - hw + 0.018) * (1 / 0.015)) ** 2 + ((phase + 0.15 * hh) * (1 / 0.02)) ** 2
    spinous = (u * (1 / 0.01)) ** 2 + ((phase - 0.6 * hh) * (1 / 0.028)) ** 2
    field = 0.3 * body
    np.maximum(field, 0.5 * np.clip((1.0 - pedicle) * 3.0, 0.0, 1.0), out=field)
    np.maximum(field, 0.45 * np.clip((1.0 - spinous) * 3.0, 0.0, 1.0), out=field)
    canvas.add_bone(window, field)


def _ribs(canvas: Canvas, chest: Chest) -> None:
    """Posterior ribs rise from the spine, then curve down along the lateral wall; anterior ribs, fainter,
    run from the lateral wall down towards the sternum, crossing them. Both sides' 22 ribs at once."""
    a = chest.anatomy
    k = np.tile(np.arange(11), 2)[:, None]
    side = np.repeat([-1.0, 1.0], 11)[:, None]
    v0 = chest.apex + a.rib_pitch * k * (1 + 0.03 * k)
    reach = np.concatenate([chest.wall_f(-1, v0[:11] + 0.1), chest.wall_f(1, v0[11:] + 0.1)]) + 0.06
    rise = a.rib_arch * (0.22 - 0.008 * k)
    drop = a.rib_arch * (0.3 + 0.02 * k)
    q = _T13[None, :]
    peak = 0.45 * reach
    s = np.where(q < 0.33, 0.05 + (peak - 0.05) * (q / 0.33), peak + (reach - peak) * ((q - 0.33) / 0.67))
    up = np.sin((0.5 * np.pi) * np.minimum((s - 0.05) / (peak - 0.05), 1.0))
    down = 1 - np.cos((0.5 * np.pi) * np.maximum((s - peak) / (reach - peak), 0.0))
    v = v0 - rise * up + (rise + drop) * down
    width = (0.042 + 0.0015 * k).ravel().tolist()
    for row, w in zip(canvas.half.rows(side * s * a.thorax, v), width, strict=True):
        canvas.line(BONE, row, w, fill=0.3)
    front = ((k >= 1) & (k <= 6)).ravel()
    sa = reach[front] - 0.03 - (reach[front] - 0.45) * q
    va = v[front, -1:] + 0.02 + 0.4 * (reach[front] - sa) + 0.22 * (reach[front] - sa) ** 2
    for row, w in zip(canvas.half.rows(side[front] * sa * a.thorax, va), np.array(width)[front].tolist(), strict=True):
        canvas.line(FAINT, row, 1.3 * w, fill=0.8)


def _clavicle_and_shoulder(canvas: Canvas, chest: Chest, side: int) -> None:
    """Clavicle (flatter and higher on AP films), humeral head, and the scapula (over the lung on AP films)."""
    a = chest.anatomy
    ap = chest.ap
    tt = _T9
    v_med = a.clavicle + 0.02 - 0.05 * ap
    v_lat = a.clavicle + a.clavicle_tilt * (0.4 if ap else 1.0) - 0.05 * ap
    u = side * (0.1 + tt * (a.thorax + 0.1)) + chest.shift * (1 - tt)
    v = v_med + tt * (v_lat - v_med) + 0.03 * np.sin(2 * math.pi * tt)
    points = canvas.half.points(u, v)
    canvas.line(BONE, points, 0.058, fill=0.9)
    canvas.line(BONE, points, 0.03, fill=0.72)
    canvas.ellipse(BONE, side * (a.thorax + 0.32), v_lat + 0.14, 0.1, 0.11, fill=0.6)
    medial = 0.1 if ap else 0.0
    su = side * (a.thorax + np.array([0.2, -0.02 - medial, 0.03 - medial, 0.22]))
    sv = np.array([v_lat + 0.04, v_lat + 0.14, 0.02, -0.1])
    canvas.polygon(FAINT, *_rounded(su, sv, passes=1), fill=0.7)


_GENERATIONS = 3
_ANGLES = np.array([-2.0, -1.5, -1.05, -0.6, -0.15, 0.3, 0.75, 1.15])  # left lung; mirrored for the right
_TREES = 2 * len(_ANGLES)


def _tour(n: int, generations: int, upto: int) -> np.ndarray:
    """Indices of a walk down and back up every edge of generations ``< upto`` of ``n`` binary trees.

    Edges are stored generation after generation, four points each; the children of edge ``e`` of
    generation ``g`` are ``e`` and ``e + n * 2**g``. Retracing edges lets one polyline draw a whole forest
    (the step from one hilum to the other crosses the mediastinum, where there is no lung to show it).
    """
    offsets = [4 * n * (2**g - 1) for g in range(generations)]
    walk: list[int] = []

    def visit(g: int, e: int) -> None:
        first = offsets[g] + 4 * e
        walk.extend(range(first, first + 4))
        if g + 1 < upto:
            for child in (e, e + n * 2**g):
                visit(g + 1, child)
        walk.extend(range(first + 3, first - 1, -1))

    for root in range(n):
        visit(0, root)
    return np.array(walk)


_TOURS = {upto: _tour(_TREES, _GENERATIONS, upto) for upto in (2, 3)}


def _vessels(canvas: Canvas, chest: Chest, rng: np.random.Generator, haze: float) -> None:
    """Branching pulmonary vessels from the hila, thinning and fading towards the periphery.

    Grown a generation at a time for all branches of both lungs at once (each branch forks in two), then
    drawn as one polyline per calibre: all generations thin, the first two wider on top, the trunks widest.
    ``haze`` (edema) widens and softens them and enlarges the upper-zone vessels.
    """
    for side in (-1, 1):
        hx, hy = chest.hilum[side]
        canvas.ellipse(VESSEL, hx, hy, 0.04, 0.075, fill=0.5 + 0.25 * haze)
    n = _TREES
    draws = iter(rng.random((2 * _GENERATIONS + 2, 4 * n * 2 ** (_GENERATIONS - 1))))
    ang = np.concatenate([math.pi - _ANGLES, _ANGLES]) + 0.3 * (next(draws)[:n] - 0.5)
    length = 0.15 + 0.06 * next(draws)[:n]
    x = np.repeat([chest.hilum[-1][0], chest.hilum[1][0]], n // 2)
    y = np.repeat([chest.hilum[-1][1], chest.hilum[1][1]], n // 2)
    us, vs = [], []
    for _ in range(_GENERATIONS):
        m = len(ang)
        turns = np.cumsum(0.4 * (next(draws)[: 3 * m].reshape(m, 3) - 0.5), axis=1) + ang[:, None]
        steps = length[:, None] * (1 / 3)
        pu = np.cumsum(np.concatenate([x[:, None], np.cos(turns) * steps], axis=1), axis=1)
        pv = np.cumsum(np.concatenate([y[:, None], np.sin(turns) * steps], axis=1), axis=1)
        us.append(pu.ravel())
        vs.append(pv.ravel())
        r = next(draws)
        spread = 0.3 + 0.35 * r[:m]
        ang = np.concatenate([turns[:, -1] - spread, turns[:, -1] + spread])
        length = np.concatenate([length, length]) * (0.66 + 0.15 * r[m : 3 * m])
        x, y = np.concatenate([pu[:, -1], pu[:, -1]]), np.concatenate([pv[:, -1], pv[:, -1]])
    u, v = np.concatenate(us), np.concatenate(vs)
    soften = 1 - 0.4 * haze
    wider = 1.3 + 0.8 * haze
    for upto, width, fill in ((3, 0.008, 0.28), (2, 0.0116, 0.5)):
        tour = _TOURS[upto]
        canvas.line(VESSEL, canvas.half.points(u[tour], v[tour]), width * wider, fill=fill * soften)
    upper = np.concatenate([_ANGLES, _ANGLES]) < -0.5
    trunks = canvas.half.rows(us[0].reshape(n, 4), vs[0].reshape(n, 4))
    for row, big in zip(trunks, upper.tolist(), strict=True):
        canvas.line(VESSEL, row, 0.017 * (1 + 0.6 * haze * big) * wider, fill=0.9 * soften)
