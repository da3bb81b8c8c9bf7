"""Everything random about a phantom, drawn in canonical units before any pixel exists.

Each draw comes from its own ``SeedSequence`` keyed by (seed, patient or image, purpose), so a phantom
depends on its index alone (sets can be generated in parallel or resumed), and the same phantom at another
pixel size has the same anatomy, findings and boxes (scaled).

Patients: indices are cut into aligned blocks of three; inside a block each index after the first starts a
new patient with probability 1/2, so a patient has 1-3 consecutive images and the patient of an index is
found by looking back at most two indices. A patient is named after the index of its first image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr_core.labels import get_space

SPACE = get_space("phantom")
FINDINGS: tuple[str, ...] = SPACE.findings

P_NORMAL = 0.40  # share of images with no finding
P_EXTRA = 0.035  # chance of each further, unrelated finding in an abnormal image
FOLLOW_UP_KEEPS = 0.6  # a follow-up image keeps the patient's findings, else draws afresh
# Findings that travel together (heart failure: big heart, edema, effusions): (given, then) -> extra chance.
LINKED = {
    ("Cardiomegaly", "Edema"): 0.30,
    ("Cardiomegaly", "Effusion"): 0.30,
    ("Edema", "Effusion"): 0.35,
    ("Edema", "Cardiomegaly"): 0.20,
}
PRIMARY_WEIGHT = {"Cardiomegaly": 0.85, "Edema": 0.85, "Effusion": 0.8}

_PRIMARY_CDF = np.cumsum([PRIMARY_WEIGHT.get(name, 1.0) for name in FINDINGS])

# SeedSequence purposes
_START, _PATIENT, _IMAGE, _LESION, _VESSELS = 0, 1, 2, 3, 4


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def _starts_patient(seed: int, index: int) -> bool:
    if index % 3 == 0:
        return True
    return bool(np.random.SeedSequence([seed, index, _START]).generate_state(1)[0] & 1)


def patient_start(seed: int, index: int) -> int:
    """Index of the first image of the patient that image ``index`` belongs to."""
    start = index
    while not _starts_patient(seed, start):
        start -= 1
    return start


def image_id(seed: int, index: int) -> tuple[str, str, int]:
    """``(image id, patient id, image number)``; ids look like ``ph00042_001`` (patient 00042, image 1)."""
    start = patient_start(seed, index)
    patient = f"ph{start:05d}"
    return f"{patient}_{index - start:03d}", patient, index - start


@dataclass(frozen=True)
class Anatomy:
    """A patient's build, in canonical units; fixed across that patient's images."""

    sex: str
    age: int
    habitus: float  # -1 slender .. 1 heavy: body width and soft-tissue thickness
    thorax: float  # half-width of the rib cage at the lung bases
    lung_shape: float  # -1 narrow, tapering apices .. 1 broad, square upper lungs
    apex: float  # v of the lung apices
    dome: float  # v of the right hemidiaphragm dome (image left)
    dome_gap: float  # the left dome sits this much lower
    cp_depth: float  # costophrenic angles lie this far below their dome
    ctr: float  # cardiothoracic ratio
    heart_h: float  # half the height of the cardiac silhouette above the left dome
    heart_right: float  # share of the heart's width right of the midline (image left)
    rib_pitch: float  # spacing of the posterior ribs
    rib_arch: float  # how strongly they arch
    clavicle: float  # v of the clavicles' medial ends
    clavicle_tilt: float  # their lateral ends sit this much higher (negative v)
    knob: float  # aortic knob radius (grows with age)
    mediastinum: float  # half-width of the upper mediastinum
    hilum: float  # v of the hila
    breast: float  # 0 for men; size of the breast shadows for women
    tissue: float  # soft-tissue attenuation (habitus)
    p_ap: float  # chance that an image of this patient is an AP (portable, supine) film
    shift: float = 0.0  # mediastinal shift: volume loss pulls it towards the collapsed side
    lift: tuple[float, float] = (0.0, 0.0)  # extra elevation of the (right, left) hemidiaphragm


@dataclass(frozen=True)
class Setup:
    """How one image was taken: projection, positioning, inspiration, exposure and noise."""

    view: str
    angle: float
    scale: float
    dx: float
    dy: float
    inspiration: float  # lowers both domes (deep breath) or raises them (shallow)
    magnification: float  # AP films magnify the heart
    window: tuple[float, float]  # attenuation mapped to black and white
    gamma: float
    noise: float
    offsets: tuple[float, ...]  # where this image's grain, mottle and texture are cut from the shared fields
    severity: dict[str, float]  # per finding: conspicuity on this image (a lesion varies between follow-ups)


@dataclass(frozen=True)
class Spec:
    """One phantom before rendering: who, how it was taken, what it shows, and where its lesions' draws live."""

    image_id: str
    patient_id: str
    anatomy: Anatomy
    setup: Setup
    findings: tuple[str, ...]
    lesion_seeds: dict[str, tuple[int, ...]]
    vessel_seed: tuple[int, ...]


def _span(x: float, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * x)


def _anatomy(rng: np.random.Generator) -> Anatomy:
    r = rng.random(22).tolist()  # one draw for all uniform parameters: cheaper than twenty calls
    male = r[0] < 0.5
    age = int(np.clip(54 + 17 * rng.standard_normal(), 18, 92))
    habitus = _span(r[1], -1, 1)
    return Anatomy(
        sex="M" if male else "F",
        age=age,
        habitus=habitus,
        thorax=_span(r[2], 0.73, 0.81) + 0.02 * male,
        lung_shape=_span(r[20], -1, 1),
        apex=_span(r[3], -0.72, -0.62),
        dome=_span(r[4], 0.25, 0.36),
        dome_gap=_span(r[5], 0.02, 0.07),
        cp_depth=_span(r[6], 0.14, 0.21),
        ctr=_span(r[7], 0.37, 0.46),
        heart_h=_span(r[8], 0.22, 0.27),
        heart_right=_span(r[9], 0.28, 0.37),
        rib_pitch=_span(r[10], 0.098, 0.112),
        rib_arch=_span(r[11], 0.24, 0.36),
        clavicle=_span(r[12], -0.68, -0.58),
        clavicle_tilt=_span(r[13], -0.22, -0.1),
        knob=_span(r[14], 0.045, 0.065) + 0.0004 * max(age - 40, 0),
        mediastinum=_span(r[15], 0.085, 0.11),
        hilum=_span(r[16], -0.12, -0.03),
        breast=0.0 if male else _span(r[17], 0.3, 1.0),
        tissue=1.0 + 0.08 * habitus + _span(r[18], -0.05, 0.05),
        p_ap=0.1 if r[19] < 0.5 else 0.5,
    )


def _setup(rng: np.random.Generator, anatomy: Anatomy) -> Setup:
    r = rng.random(12).tolist()
    ap = r[0] < anatomy.p_ap
    lo = _span(r[1], 0.06, 0.2)
    return Setup(
        view="AP" if ap else "PA",
        angle=float(np.clip(0.025 * rng.standard_normal(), -0.07, 0.07)),
        scale=_span(r[2], 0.92, 1.05),
        dx=_span(r[3], -0.04, 0.04),
        dy=_span(r[4], -0.05, 0.04),
        inspiration=_span(r[5], -0.05, 0.05) - 0.04 * ap,
        magnification=1.07 if ap else 1.0,
        window=(lo, lo + _span(r[6], 1.15, 1.45)),
        gamma=float(np.exp(0.12 * rng.standard_normal())),
        noise=_span(r[7], 0.5, 1.5),
        offsets=tuple(rng.random(3).tolist()),
        severity=dict(zip(FINDINGS, (0.85 + 0.27 * rng.random(len(FINDINGS))).tolist(), strict=True)),
    )


def draw_findings(rng: np.random.Generator) -> tuple[str, ...]:
    """A finding set: none with P_NORMAL, else one primary finding plus linked and chance extras."""
    if rng.random() < P_NORMAL:
        return ()
    chosen = {FINDINGS[int(np.searchsorted(_PRIMARY_CDF, rng.random() * _PRIMARY_CDF[-1], side="right"))]}
    extra = rng.random(len(FINDINGS))
    linked = rng.random(len(LINKED))
    for ((given, then), p), roll in zip(LINKED.items(), linked, strict=True):
        if given in chosen and roll < p:
            chosen.add(then)
    chosen.update(name for name, roll in zip(FINDINGS, extra, strict=True) if roll < P_EXTRA)
    return tuple(name for name in FINDINGS if name in chosen)


def make_spec(seed: int, index: int) -> Spec:
    """The full description of phantom ``index`` of set ``seed``."""
    if index < 0:
        raise ValueError(f"phantom index must be >= 0, got {index}")
    image, patient, number = image_id(seed, index)
    start = index - number
    prng = _rng(seed, start, _PATIENT)
    anatomy = _anatomy(prng)
    findings = draw_findings(prng)
    irng = _rng(seed, index, _IMAGE)
    setup = _setup(irng, anatomy)
    if number > 0 and irng.random() >= FOLLOW_UP_KEEPS:
        findings = draw_findings(irng)
    seeds = {name: (seed, start, _LESION, k) for k, name in enumerate(FINDINGS)}
    return Spec(image, patient, anatomy, setup, findings, seeds, (seed, start, _VESSELS))


def lesion_rng(spec: Spec, name: str) -> np.random.Generator:
    """The generator a finding's geometry is drawn from: per patient, so follow-ups show the same lesion."""
    return _rng(*spec.lesion_seeds[name])


def vessel_rng(spec: Spec) -> np.random.Generator:
    """The generator of the patient's lung vessel trees."""
    return _rng(*spec.vessel_seed)
