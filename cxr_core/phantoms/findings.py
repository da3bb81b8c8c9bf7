"""The eight planted findings: how each is drawn and where its ground-truth box goes.

Each finding draws its geometry from its own per-patient generator (``plan``), may change the anatomy
(``adjust``: a big heart, an elevated hemidiaphragm), and paints itself onto the canvas (``paint``),
returning its boxes. Plans hold canonical units only, so a finding looks the same at every pixel size.
Conspicuity varies per instance (size, density): most are plain at 128 px, a minority are subtle.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from cxr_core.phantoms.anatomy import Chest
from cxr_core.phantoms.frame import Box
from cxr_core.phantoms.layers import AIR, VESSEL, Canvas
from cxr_core.phantoms.spec import FINDINGS, Anatomy, Spec, lesion_rng

Plan = dict
_EFFUSION_F = np.linspace(0.1, 1.0, 46)
_T40 = np.linspace(0.0, 1.0, 40)


def _side(rng: np.random.Generator) -> int:
    return -1 if rng.random() < 0.5 else 1


def _strength(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Mostly near ``hi``; a tail of faint instances (beta(2.5, 1) puts ~18% in the lower half)."""
    return float(lo + (hi - lo) * rng.beta(2.5, 1.0))


def _spheres(canvas: Canvas, blobs: list[tuple[float, float, float]], strength: float) -> None:
    """Union of projected spheres (u, v, r): the profile of a round, well-defined lesion."""
    us = [b[0] for b in blobs]
    vs = [b[1] for b in blobs]
    r = max(b[2] for b in blobs)
    window = canvas.frame.window(us, vs, pad=r + 0.01)
    if window is None:
        return
    U, V = canvas.frame.grid(window)
    out = np.zeros(U.shape, np.float32)
    for bu, bv, br in blobs:
        d2 = ((U - bu) ** 2 + (V - bv) ** 2) * (1.0 / (br * br))
        np.maximum(out, np.sqrt(np.clip(1.0 - d2, 0.0, 1.0)), out=out)
    canvas.add_opacity(window, out * strength)


class Finding:
    name = ""

    def plan(self, rng: np.random.Generator) -> Plan:
        raise NotImplementedError

    def adjust(self, anatomy: Anatomy, plan: Plan) -> Anatomy:
        return anatomy

    def paint(self, canvas: Canvas, chest: Chest, plan: Plan, severity: float) -> list[Box]:
        raise NotImplementedError


class Nodule(Finding):
    """A small (< 3 cm; 1 canonical unit is ~20 cm) round, well-defined opacity."""

    name = "Nodule"

    def plan(self, rng):
        return {"side": _side(rng), "g": rng.uniform(0.15, 0.7), "t": rng.uniform(0.05, 0.95),
                "r": rng.uniform(0.05, 0.075), "strength": _strength(rng, 0.7, 1.0)}

    def paint(self, canvas, chest, p, severity):
        v = float(chest.v_at(p["side"], p["g"]))
        u = chest.free_u(p["side"], v, p["t"])
        r = p["r"]
        _spheres(canvas, [(u, v, r)], min(p["strength"] * severity, 1.0))
        return [canvas.frame.rect(self.name, u - 1.2 * r, u + 1.2 * r, v - 1.2 * r, v + 1.2 * r)]


class Mass(Finding):
    """A larger (> 3 cm) lobulated opacity: a core with three to five lobes."""

    name = "Mass"

    def plan(self, rng):
        n = int(rng.integers(3, 6))
        return {"side": _side(rng), "g": rng.uniform(0.2, 0.62), "t": rng.uniform(0.15, 0.85),
                "r": rng.uniform(0.12, 0.18), "strength": _strength(rng, 0.7, 0.95),
                "lobes": [(rng.uniform(0, 2 * math.pi), rng.uniform(0.35, 0.6), rng.uniform(0.45, 0.7)) for _ in range(n)]}

    def paint(self, canvas, chest, p, severity):
        v = float(chest.v_at(p["side"], p["g"]))
        u = chest.free_u(p["side"], v, p["t"], margin=0.1)
        r = p["r"]
        blobs = [(u, v, 0.8 * r)] + [(u + d * r * math.cos(a), v + d * r * math.sin(a), s * r) for a, d, s in p["lobes"]]
        _spheres(canvas, blobs, min(p["strength"] * severity, 1.0))
        us = [b[0] + sgn * b[2] for b in blobs for sgn in (-1, 1)]
        vs = [b[1] + sgn * b[2] for b in blobs for sgn in (-1, 1)]
        return [canvas.frame.rect(self.name, min(us), max(us), min(vs), max(vs))]


class Consolidation(Finding):
    """Patchy airspace opacity in one zone: confluent fluffy blobs, with air bronchograms in the denser ones."""

    name = "Consolidation"

    def plan(self, rng):
        n = int(rng.integers(10, 17))
        return {"side": _side(rng), "g": rng.uniform(0.3, 0.75), "t": rng.uniform(0.25, 0.75),
                "ru": rng.uniform(0.12, 0.21), "rv": rng.uniform(0.11, 0.19), "strength": _strength(rng, 0.4, 0.9),
                "blobs": rng.uniform(-0.7, 0.7, (n, 2)).tolist(), "sizes": rng.uniform(0.22, 0.42, n).tolist(),
                "peaks": rng.uniform(0.55, 1.0, n).tolist(),
                "bronchi": [(rng.uniform(-0.6, 0.6), rng.uniform(0.5, 0.9)) for _ in range(int(rng.integers(2, 5)))]}

    def paint(self, canvas, chest, p, severity):
        side = p["side"]
        v = float(chest.v_at(side, p["g"]))
        u = chest.free_u(side, v, p["t"], margin=0.08)
        ru, rv = p["ru"], p["rv"]
        window = canvas.frame.window([u - ru, u + ru], [v - rv, v + rv], pad=0.01)
        if window is None:
            return []
        U, V = canvas.frame.grid(window)
        du, dv = (U - u) * (1.0 / ru), (V - v) * (1.0 / rv)
        field = 0.3 * np.clip(1.0 - du * du - dv * dv, 0.0, 1.0)
        for (bu, bv), size, peak in zip(p["blobs"], p["sizes"], p["peaks"], strict=True):
            bump = np.clip(1.0 - ((du - bu) ** 2 + (dv - bv) ** 2) * (1.0 / (size * size)), 0.0, 1.0)
            field += peak * bump * bump
        strength = min(p["strength"] * severity, 1.0)
        canvas.add_opacity(window, strength * np.clip(field, 0.0, 1.0))
        hx, hy = chest.hilum[side]
        toward = math.atan2(v - hy, u - hx)
        for turn, reach in p["bronchi"]:
            ang = toward + turn
            length = reach * min(ru, rv)
            bu = [u - 0.5 * length * math.cos(ang), u + 0.5 * length * math.cos(ang)]
            bv = [v - 0.5 * length * math.sin(ang), v + 0.5 * length * math.sin(ang)]
            canvas.soft_line(AIR, bu, bv, 0.014, fill=strength)
        return [canvas.frame.rect(self.name, u - 0.95 * ru, u + 0.95 * ru, v - 0.95 * rv, v + 0.95 * rv)]


class Effusion(Finding):
    """Fluid in the pleural space: a meniscus rising laterally, blunting the costophrenic angle."""

    name = "Effusion"

    def plan(self, rng):
        both = rng.random() < 0.35
        sides = (-1, 1) if both else (_side(rng),)
        return {"sides": sides, "h": {s: rng.uniform(0.14, 0.42) for s in sides},
                "strength": _strength(rng, 0.55, 1.0)}

    def paint(self, canvas, chest, p, severity):
        boxes = []
        strength = min(p["strength"] * severity, 1.0)
        t = chest.thorax
        for side in p["sides"]:
            h = p["h"][side]
            cp = chest.cp[side]
            top = cp - h
            window = canvas.frame.window([0.0, side * 1.1 * t], [top - 0.06, cp + 0.04])
            if window is None:
                continue
            U, V = canvas.frame.grid(window)
            f = np.clip(U * (side / t), 0.0, 1.0)
            meniscus = cp - h * (1.0 - 0.4 * (1.0 - f) ** 1.5)
            canvas.add_opacity(window, strength * np.clip((V - meniscus) * (1 / 0.035), 0.0, 1.0) * (f > 0.04))
            fs = _EFFUSION_F
            wet = cp - h * (1.0 - 0.4 * (1.0 - fs) ** 1.5) < chest.diaphragm_v(side, fs) - 0.01
            f_in = float(fs[wet].min()) if wet.any() else 0.85
            boxes.append(canvas.frame.rect(self.name, side * f_in * t, side * 1.01 * t, top - 0.02, cp + 0.01))
        return boxes


class Pneumothorax(Finding):
    """Air between lung and chest wall at the apex and lateral wall: lucent, no vessels, a thin pleural line."""

    name = "Pneumothorax"

    def plan(self, rng):
        return {"side": _side(rng), "gap": rng.uniform(0.04, 0.16), "reach": rng.uniform(0.45, 0.85),
                "strength": _strength(rng, 0.3, 1.0)}

    def paint(self, canvas, chest, p, severity):
        side = p["side"]
        wu, wv = chest.outline[side]
        n_wall = 11
        g = (wv[:n_wall] - chest.apex) / (chest.cp[side] - chest.apex)
        keep = np.arange(n_wall) >= 1
        keep &= (np.arange(n_wall) <= 2) | (g <= p["reach"])
        su, sv = wu[:n_wall][keep], wv[:n_wall][keep]
        k = _T40 * (len(su) - 1)
        ou, ov = np.interp(k, np.arange(len(su)), su), np.interp(k, np.arange(len(sv)), sv)
        cu, cv = side * 0.45 * chest.thorax, chest.v_at(side, 0.55)
        du, dv = cu - ou, cv - ov
        norm = np.hypot(du, dv)
        taper = np.sin(math.pi * _T40) ** 0.4
        gap = p["gap"] * taper
        iu, iv = ou + du / norm * gap, ov + dv / norm * gap
        strength = min(p["strength"] * severity, 1.0)
        region_u = np.concatenate([ou, iu[::-1]])
        region_v = np.concatenate([ov, iv[::-1]])
        canvas.soft_polygon(AIR, region_u, region_v, fill=strength)
        canvas.polygon(VESSEL, region_u, region_v, fill=0.0)
        canvas.detail_line(iu[2:-2], iv[2:-2], 0.006, fill=0.15 + 0.45 * strength)
        return [canvas.frame.box(self.name, region_u, region_v)]


class Cardiomegaly(Finding):
    """An enlarged heart: cardiothoracic ratio 0.52-0.66 (normal phantoms stay below 0.5, AP included)."""

    name = "Cardiomegaly"

    def plan(self, rng):
        return {"ctr": rng.uniform(0.52, 0.66), "taller": rng.uniform(1.03, 1.12)}

    def adjust(self, anatomy, p):
        return dataclasses.replace(anatomy, ctr=p["ctr"], heart_h=anatomy.heart_h * p["taller"])

    def paint(self, canvas, chest, p, severity):
        return [canvas.frame.rect(self.name, *chest.heart_rect)]


class Atelectasis(Finding):
    """Collapse: a plate-like band or a basal wedge, with volume loss (raised hemidiaphragm, shift)."""

    name = "Atelectasis"

    def plan(self, rng):
        return {"side": _side(rng), "wedge": rng.random() < 0.4, "lift": rng.uniform(0.08, 0.14),
                "shift": rng.uniform(0.015, 0.035), "g": rng.uniform(0.55, 0.75), "t": rng.uniform(0.2, 0.6),
                "length": rng.uniform(0.24, 0.36), "thick": rng.uniform(0.045, 0.065), "tilt": rng.uniform(-0.3, 0.3),
                "strength": _strength(rng, 0.7, 1.0)}

    def adjust(self, anatomy, p):
        lift = list(anatomy.lift)
        lift[0 if p["side"] < 0 else 1] += p["lift"]
        return dataclasses.replace(anatomy, lift=tuple(lift), shift=anatomy.shift + p["side"] * p["shift"])

    def paint(self, canvas, chest, p, severity):
        side = p["side"]
        strength = min(p["strength"] * severity, 1.0)
        if p["wedge"]:
            return self._wedge(canvas, chest, p, side, strength)
        v = float(chest.v_at(side, p["g"]))
        u = chest.free_u(side, v, p["t"])
        half = 0.5 * p["length"]
        ca, sa = math.cos(p["tilt"]), math.sin(p["tilt"])
        eu, ev = [u - half * ca, u + half * ca], [v - side * half * sa, v + side * half * sa]
        window = canvas.frame.window(eu, ev, pad=p["thick"] + 0.01)
        if window is None:
            return []
        U, V = canvas.frame.grid(window)
        along = np.clip((U - eu[0]) * (eu[1] - eu[0]) + (V - ev[0]) * (ev[1] - ev[0]), 0.0, p["length"] ** 2)
        along *= 1.0 / p["length"] ** 2
        dist = np.hypot(U - (eu[0] + along * (eu[1] - eu[0])), V - (ev[0] + along * (ev[1] - ev[0])))
        th = p["thick"] * 0.5
        canvas.add_opacity(window, strength * np.clip((th - dist) * (2.0 / th), 0.0, 1.0))
        pad = th + 0.01
        return [canvas.frame.rect(self.name, min(eu) - pad, max(eu) + pad, min(ev) - pad, max(ev) + pad)]

    def _wedge(self, canvas, chest, p, side, strength):
        """A collapsed lower lobe: a triangle from near the hilum down onto the diaphragm, beside the heart."""
        t = chest.thorax
        top_v = chest.hilum[side][1] + 0.08
        base = chest.dome[side] - 0.01
        inner = chest.free_u(side, base, 0.0, margin=0.0)
        outer = chest.free_u(side, base, 0.4 + 0.4 * p["t"], margin=0.0)
        base_u = [inner, inner + side * max(abs(outer - inner), 0.1)]
        base_v = [float(chest.diaphragm_v(side, abs(u) / t)) + 0.02 for u in base_u]
        tu, tv = [chest.free_u(side, top_v, 0.05, margin=0.0), *base_u], [top_v, *base_v]
        window = canvas.frame.window(tu, tv, pad=0.02)
        if window is None:
            return []
        U, V = canvas.frame.grid(window)
        inside = np.ones(U.shape, np.float32)
        for k in range(3):
            (au, av), (bu, bv) = (tu[k], tv[k]), (tu[(k + 1) % 3], tv[(k + 1) % 3])
            cu, cv = tu[(k + 2) % 3], tv[(k + 2) % 3]
            nu, nv = bv - av, au - bu
            norm = math.hypot(nu, nv)
            orient = 1.0 if (cu - au) * nu + (cv - av) * nv > 0 else -1.0
            edge = ((U - au) * nu + (V - av) * nv) * (orient / norm)
            np.minimum(inside, np.clip(edge * (1 / 0.04), 0.0, 1.0), out=inside)
        canvas.add_opacity(window, 0.9 * strength * inside)
        return [canvas.frame.box(self.name, tu, tv)]


class Edema(Finding):
    """Bilateral perihilar haze ("bat wing"), indistinct vessels and Kerley-B lines at the bases."""

    name = "Edema"

    def plan(self, rng):
        grade = _strength(rng, 0.0, 1.0)  # one severity drives every sign, so mild edema is mild throughout
        return {"grade": grade, "ru": rng.uniform(0.24, 0.34), "rv": rng.uniform(0.22, 0.32),
                "kerley": [(rng.uniform(0.72, 0.95), rng.uniform(0.05, 0.1)) for _ in range(int(rng.integers(2, 7)))]}

    def paint(self, canvas, chest, p, severity):
        boxes = []
        strength = min((0.12 + 0.4 * p["grade"]) * severity, 1.0)
        ru, rv = p["ru"], p["rv"]
        for side in (-1, 1):
            hx, hy = chest.hilum[side]
            u, v = hx + side * 0.35 * ru, hy + 0.05
            window = canvas.frame.window([u - ru, u + ru], [v - rv, v + rv])
            if window is None:
                continue
            U, V = canvas.frame.grid(window)
            d = np.clip(1.0 - ((U - u) / ru) ** 2 - ((V - v) / rv) ** 2, 0.0, 1.0)
            canvas.add_opacity(window, strength * d * (2.0 - d))
            for g, length in p["kerley"]:
                kv = float(chest.v_at(side, g))
                wall = float(chest.wall_f(side, kv)) * chest.thorax
                canvas.detail_line([side * (wall - length), side * (wall - 0.01)], [kv, kv], 0.007,
                                   fill=0.2 + 0.35 * p["grade"])
            boxes.append(canvas.frame.rect(self.name, u - 0.85 * ru, u + 0.85 * ru, v - 0.85 * rv, v + 0.85 * rv))
        return boxes

    @staticmethod
    def haze(plan: Plan) -> float:
        """How indistinct the vessels are (drawn with the anatomy, before the findings)."""
        return 0.15 + 0.85 * float(plan["grade"])


REGISTRY: dict[str, Finding] = {f.name: f for f in (Atelectasis(), Cardiomegaly(), Consolidation(), Edema(),
                                                    Effusion(), Mass(), Nodule(), Pneumothorax())}
if set(REGISTRY) != set(FINDINGS):
    raise RuntimeError(f"phantom findings {sorted(REGISTRY)} do not match the label space {sorted(FINDINGS)}")


def lesion_plan(spec: Spec, name: str) -> Plan:
    """The geometry of finding ``name`` for the patient of ``spec`` (the same on all their images)."""
    return REGISTRY[name].plan(lesion_rng(spec, name))
