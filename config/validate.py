"""The valid values of every config key and its role, declared once per key (its meaning is in
``config/defaults.py``), and the checks built on them.

:data:`RULES` maps each key to a :class:`Rule`: the check of its value and its *role*, which decides what a
resumed run may change and what ``test.py`` compares with a checkpoint:

======== ============================================================ ============== ======================
role     what the key decides                                         on resume      test.py vs checkpoint
======== ============================================================ ============== ======================
run      how a run executes or reports (device, workers, periods,     may change     ignored
         paths): not its numbers, up to float rounding
eval     how a model is evaluated                                     may change     yours is used
model    the network's computation for given weights                  must be equal  a difference is
                                                                                     reported
training the training trajectory (data, losses, optimizer, schedule,  must be equal  ignored (weights
         seed, initial values of learned parameters)                                 are loaded)
length   SOLVER.MAX_EPOCHS: see :func:`resume_conflict`               see there      ignored
======== ============================================================ ============== ======================

A resumed run continues the run that wrote ``last.pth``: a changed ``model`` or ``training`` setting would
either be ignored (the optimizer and scheduler states carry the old learning rates) or break the run
half-way, while ``config.yaml`` recorded the new value; so a resume refuses it.

:data:`CROSS_RULES` check keys against each other. Nothing here imports torch: the CLIs run these checks
before any heavy import.
"""

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from yacs.config import CfgNode

from utils.errors import UserError
from utils.modalities import PROTOCOLS, initial, setting_error

__all__ = ["CROSS_RULES", "EVAL", "LENGTH", "MODEL", "RULES", "RUN", "TRAINING", "Rule", "flat_items",
           "model_differences", "resume_conflict", "shown", "validate"]

RUN, EVAL, MODEL, TRAINING, LENGTH = "run", "eval", "model", "training", "length"

#: Why a value is out of range (a phrase such as "must be >= 1"), or None when it is valid.
Check = Callable[[object], str | None]


@dataclass(frozen=True)
class Rule:
    check: Check
    role: str


# --- checks ---------------------------------------------------------------------------------------------
def _finite(value) -> bool:
    return isinstance(value, bool) or not isinstance(value, float) or math.isfinite(value)


def anything(value) -> None:  # every value of the key's type (checked when the value is read) is valid
    return None


def at_least(low: float) -> Check:
    def check(value):
        if not _finite(value) or value < low:
            return f"must be >= {low}"
        return None
    return check


def above(low: float) -> Check:
    def check(value):
        if not _finite(value) or value <= low:
            return f"must be > {low}"
        return None
    return check


def between(low: float, high: float, *, high_open: bool = False) -> Check:
    def check(value):
        if not _finite(value) or value < low or value > high or (high_open and value == high):
            return f"must be in [{low}, {high}{')' if high_open else ']'}"
        return None
    return check


def finite(value) -> str | None:
    return None if _finite(value) else "must be a finite number"


def one_of(*choices: str) -> Check:
    def check(value):
        return None if value in choices else f"must be one of {', '.join(choices)}"
    return check


def non_empty(value) -> str | None:
    return None if str(value).strip() else "must not be empty"


def vector(length: int, each: Check) -> Check:
    def check(value):
        problems = [each(v) for v in value]
        if len(value) != length or any(problems):
            detail = next((p for p in problems if p), None)
            return f"must list {length} values" + (f", each {detail.removeprefix('must be ')}" if detail else "")
        return None
    return check


def image_size(value) -> str | None:
    if len(value) != 2 or min(value) < 1:
        return "must be [height, width] in pixels, both >= 1"
    return None


def epochs(value) -> str | None:
    if any(v < 1 for v in value) or list(value) != sorted(set(value)):
        return "must be increasing epoch numbers, each >= 1"
    return None


def modality_names(value) -> str | None:
    names = list(value)
    if not names or len(set(names)) != len(names):
        return "must list distinct modality names, at least one"
    if not all(isinstance(n, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", n) for n in names):
        return "must be names made of letters, digits and _ (starting with a letter)"
    if len({initial(n) for n in names}) != len(names):
        return "must start with distinct letters (TEST.MISS names missing modalities by their initials)"
    return None


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device(value) -> str | None:
    return None if _DEVICE.fullmatch(value) else 'must be "auto", "cpu", "cuda" or "cuda:N"'


def seed(value) -> str | None:
    return None if 0 <= value < 2**32 else "must be in [0, 2**32 - 1] (NumPy's seed range)"


# --- every key, once --------------------------------------------------------------------------------------
RULES: dict[str, Rule] = {
    "MODEL.DEVICE": Rule(device, RUN),
    "MODEL.NAME": Rule(one_of("ViT-B-16", "ViT-B-32", "ViT-L-14", "ViT-L-14-336px", "ViT-Mini-8"), MODEL),  # ARCHS
    "MODEL.PRETRAIN_PATH": Rule(anything, TRAINING),
    "MODEL.INIT_WEIGHTS": Rule(anything, TRAINING),
    "MODEL.PRETRAIN_CACHE": Rule(anything, RUN),
    "MODEL.MODALITIES": Rule(modality_names, MODEL),
    "MODEL.SHARED_BACKBONE": Rule(anything, MODEL),
    "MODEL.MODALITY_HEADS": Rule(anything, MODEL),
    "MODEL.SOFT_MARGIN": Rule(anything, TRAINING),
    "MODEL.ID_LOSS_WEIGHT": Rule(at_least(0), TRAINING),
    "MODEL.TRIPLET_LOSS_WEIGHT": Rule(at_least(0), TRAINING),
    "MODEL.LABEL_SMOOTHING": Rule(between(0, 1, high_open=True), TRAINING),
    "MODEL.DROP_PATH": Rule(between(0, 1, high_open=True), TRAINING),
    "MODEL.GRAD_CKPT": Rule(anything, RUN),
    "MODEL.SYNC_BN": Rule(anything, RUN),
    "MODEL.COMPILE": Rule(anything, RUN),
    "MODEL.ONEDNN": Rule(anything, RUN),
    "MODEL.TF32": Rule(anything, RUN),
    "MODEL.HEAT.DIFFUSION": Rule(one_of("dct", "stencil"), MODEL),
    "MODEL.HEAT.ORDER": Rule(anything, MODEL),  # a permutation of MODEL.MODALITIES (CROSS_RULES)
    "MODEL.HEAT.NUM_CYCLES": Rule(at_least(0), MODEL),   # 0: the "no heat" ablation
    "MODEL.HEAT.SHARE_OPERATOR": Rule(anything, MODEL),
    "MODEL.HEAT.ALPHA": Rule(finite, TRAINING),
    "MODEL.HEAT.BETA": Rule(finite, TRAINING),
    "MODEL.HEAT.TAU": Rule(above(0), TRAINING),
    "MODEL.HEAT.LEARN_TAU": Rule(anything, TRAINING),
    "MODEL.HEAT.INIT_CONDUCTIVITY": Rule(above(0), TRAINING),
    "INPUT.SIZE_TRAIN": Rule(image_size, MODEL),
    "INPUT.SIZE_TEST": Rule(image_size, MODEL),  # equal to SIZE_TRAIN (CROSS_RULES)
    "INPUT.FLIP_PROB": Rule(between(0, 1), TRAINING),
    "INPUT.RE_PROB": Rule(between(0, 1), TRAINING),
    "INPUT.PADDING": Rule(at_least(0), TRAINING),
    "INPUT.PIXEL_MEAN": Rule(vector(3, finite), MODEL),
    "INPUT.PIXEL_STD": Rule(vector(3, above(0)), MODEL),
    "INPUT.SYNC_AUG": Rule(anything, TRAINING),
    "INPUT.MODALITY_DROPOUT": Rule(between(0, 1), TRAINING),  # needs two MODEL.MODALITIES (CROSS_RULES)
    "INPUT.MODALITY_DROPOUT_RAMP": Rule(at_least(0), TRAINING),
    "DATASETS.NAMES": Rule(non_empty, TRAINING),  # the registry (datasets/) names the valid ones
    "DATASETS.ROOT_DIR": Rule(non_empty, RUN),
    "DATALOADER.NUM_WORKERS": Rule(at_least(0), RUN),
    "DATALOADER.NUM_INSTANCE": Rule(at_least(1), TRAINING),
    "DATALOADER.CACHE": Rule(anything, RUN),
    "DATALOADER.PIN_MEMORY": Rule(anything, RUN),
    "DATALOADER.PERSISTENT_WORKERS": Rule(anything, RUN),
    "SOLVER.OPTIMIZER_NAME": Rule(one_of("Adam", "AdamW", "SGD"), TRAINING),
    "SOLVER.BASE_LR": Rule(at_least(0), TRAINING),  # 0 keeps the initial weights (a check of what was loaded)
    "SOLVER.BIAS_LR_FACTOR": Rule(at_least(0), TRAINING),
    "SOLVER.WEIGHT_DECAY": Rule(at_least(0), TRAINING),
    "SOLVER.WEIGHT_DECAY_BIAS": Rule(at_least(0), TRAINING),
    "SOLVER.MOMENTUM": Rule(between(0, 1, high_open=True), TRAINING),
    "SOLVER.MAX_EPOCHS": Rule(at_least(1), LENGTH),
    "SOLVER.IMS_PER_BATCH": Rule(at_least(1), TRAINING),  # a multiple of NUM_INSTANCE (CROSS_RULES)
    "SOLVER.MARGIN": Rule(at_least(0), TRAINING),
    "SOLVER.SCHEDULER": Rule(one_of("cosine", "multistep"), TRAINING),
    "SOLVER.WARMUP_EPOCHS": Rule(at_least(0), TRAINING),
    "SOLVER.WARMUP_FACTOR": Rule(between(0, 1), TRAINING),
    "SOLVER.COSINE_MIN_FACTOR": Rule(between(0, 1), TRAINING),
    "SOLVER.COSINE_MIN_FACTOR_OF": Rule(one_of("base", "group"), TRAINING),
    "SOLVER.SCHEDULE_START": Rule(at_least(0), TRAINING),
    "SOLVER.WARMUP_FACTOR_OF": Rule(one_of("base", "group"), TRAINING),
    "SOLVER.STEPS": Rule(epochs, TRAINING),
    "SOLVER.GAMMA": Rule(above(0), TRAINING),
    "SOLVER.AMP": Rule(one_of("off", "fp16", "bf16"), TRAINING),
    "SOLVER.CHECKPOINT_PERIOD": Rule(at_least(0), RUN),
    "SOLVER.LOG_PERIOD": Rule(at_least(1), RUN),
    "SOLVER.EVAL_PERIOD": Rule(at_least(0), RUN),
    "SOLVER.SEED": Rule(seed, TRAINING),
    "SOLVER.RESUME": Rule(anything, RUN),
    "TEST.IMS_PER_BATCH": Rule(at_least(1), EVAL),
    "TEST.WEIGHT": Rule(anything, EVAL),  # test.py requires a checkpoint file (model/checkpoint.py)
    "TEST.FEAT_NORM": Rule(anything, EVAL),
    "TEST.NECK_FEAT": Rule(one_of("before", "after"), EVAL),
    "TEST.MISS": Rule(anything, EVAL),  # a setting of MODEL.MODALITIES (CROSS_RULES)
    "TEST.MISS_PROTOCOL": Rule(one_of(*PROTOCOLS), EVAL),
    "TEST.QUERY_MISS": Rule(anything, EVAL),  # "" or a setting of MODEL.MODALITIES (CROSS_RULES)
    "TEST.GALLERY_MISS": Rule(anything, EVAL),  # "" or a setting of MODEL.MODALITIES (CROSS_RULES)
    "TEST.CENTRE_VIEWS": Rule(anything, EVAL),  # any-to-any only (CROSS_RULES)
    "TEST.RE_RANKING": Rule(anything, EVAL),
    "TEST.RE_RANKING_K1": Rule(at_least(1), EVAL),
    "TEST.RE_RANKING_K2": Rule(at_least(1), EVAL),
    "TEST.RE_RANKING_LAMBDA": Rule(between(0, 1), EVAL),
    "TEST.MODAL_BIAS": Rule(anything, EVAL),
    "TEST.EVAL_CHUNK": Rule(at_least(1), EVAL),
    "OUTPUT_DIR": Rule(non_empty, RUN),
}


# --- keys against each other: (cfg) -> (key, problem, the other keys involved) or None ----------------------
def _heat_order(cfg):
    if sorted(cfg.MODEL.HEAT.ORDER) != sorted(cfg.MODEL.MODALITIES):
        return "MODEL.HEAT.ORDER", f"must be a permutation of MODEL.MODALITIES {list(cfg.MODEL.MODALITIES)}", \
            ("MODEL.MODALITIES",)
    return None


def _batch(cfg):
    s, k = cfg.SOLVER, cfg.DATALOADER.NUM_INSTANCE
    if s.IMS_PER_BATCH % k:
        return "SOLVER.IMS_PER_BATCH", f"must be a multiple of DATALOADER.NUM_INSTANCE ({k})", \
            ("DATALOADER.NUM_INSTANCE",)
    if s.IMS_PER_BATCH // k < 2 and cfg.MODEL.TRIPLET_LOSS_WEIGHT > 0:
        return "SOLVER.IMS_PER_BATCH", (f"must hold at least 2 identities of DATALOADER.NUM_INSTANCE ({k}) "
                                        f"samples: the triplet loss needs negatives"), \
            ("DATALOADER.NUM_INSTANCE", "MODEL.TRIPLET_LOSS_WEIGHT")
    return None


def _test_size(cfg):
    if list(cfg.INPUT.SIZE_TEST) != list(cfg.INPUT.SIZE_TRAIN):
        return "INPUT.SIZE_TEST", (f"must equal INPUT.SIZE_TRAIN {list(cfg.INPUT.SIZE_TRAIN)}: the position "
                                   f"embeddings are laid out for that grid"), ("INPUT.SIZE_TRAIN",)
    return None


def _miss(cfg):
    for key in ("MISS", "QUERY_MISS", "GALLERY_MISS"):  # "" is a valid QUERY_MISS / GALLERY_MISS: TEST.MISS
        value = cfg.TEST[key]
        problem = setting_error(value, list(cfg.MODEL.MODALITIES)) if key == "MISS" or value else None
        if problem:
            return f"TEST.{key}", problem.removesuffix(f"; got {value!r}"), ("MODEL.MODALITIES",)
    return None


def _centre_views(cfg):
    if cfg.TEST.CENTRE_VIEWS and not (cfg.TEST.QUERY_MISS or cfg.TEST.GALLERY_MISS):
        return "TEST.CENTRE_VIEWS", ("applies to any-to-any retrieval only: set TEST.QUERY_MISS and/or "
                                     "TEST.GALLERY_MISS"), ("TEST.QUERY_MISS", "TEST.GALLERY_MISS")
    return None


def _dropout(cfg):
    if cfg.INPUT.MODALITY_DROPOUT > 0 and len(cfg.MODEL.MODALITIES) < 2:
        return "INPUT.MODALITY_DROPOUT", "needs at least two MODEL.MODALITIES (a sample keeps at least one)", \
            ("MODEL.MODALITIES",)
    return None


def _losses(cfg):
    if cfg.MODEL.ID_LOSS_WEIGHT == 0 and cfg.MODEL.TRIPLET_LOSS_WEIGHT == 0:
        return "MODEL.ID_LOSS_WEIGHT", "and MODEL.TRIPLET_LOSS_WEIGHT are both 0: nothing would be trained", \
            ("MODEL.TRIPLET_LOSS_WEIGHT",)
    return None


CROSS_RULES: Sequence[Callable[[CfgNode], tuple[str, str, tuple[str, ...]] | None]] = (
    _heat_order, _batch, _test_size, _miss, _centre_views, _dropout, _losses)


# --- checks over a whole config ----------------------------------------------------------------------------
def flat_items(cfg: CfgNode, prefix: str = ""):
    """``(dotted key, value)`` of every leaf of ``cfg``."""
    for name, value in cfg.items():
        if isinstance(value, CfgNode):
            yield from flat_items(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _value(cfg: CfgNode, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def shown(value, limit: int = 80) -> str:
    """``repr(value)`` (lists as lists), cut to ``limit`` characters: an error message stays one short line."""
    text = repr(list(value) if isinstance(value, (list, tuple)) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _problem(key: str, value, problem: str, origins: Mapping[str, str], related: Sequence[str] = ()) -> UserError:
    """The error of ``key``, prefixed by where its value (or, for a default, that of a ``related`` key) came
    from."""
    origin = next((origins[k] for k in (key, *related) if k in origins), "default")
    return UserError(f"{origin}: {key} {problem}; got {shown(value)}" + ("" if key in origins else " (its default)"))


def validate(cfg: CfgNode, origins: Mapping[str, str] | None = None) -> None:
    """Raise a one-line UserError for the first value out of range, naming the key and where its value came
    from (``origins``: key -> file or "command line"; "default" otherwise)."""
    origins = origins or {}
    for key, value in flat_items(cfg):
        problem = RULES[key].check(value)
        if problem:
            raise _problem(key, value, problem, origins)
    for rule in CROSS_RULES:
        found = rule(cfg)
        if found:
            key, problem, related = found
            raise _problem(key, _value(cfg, key), problem, origins, related)


# --- a checkpoint's config against the current one ---------------------------------------------------------
def resume_conflict(cfg: CfgNode, saved: Mapping[str, object], epochs_done: int, path: str) -> str | None:
    """Why ``cfg`` cannot resume the run of the checkpoint ``path`` (its config ``saved``, ``epochs_done``
    epochs trained), or None. The roles of :data:`RULES` decide: ``model`` and ``training`` keys must be
    equal; SOLVER.MAX_EPOCHS may not fall below the epochs done, and may change only when the schedule does
    not depend on it (multistep)."""
    max_epochs = cfg.SOLVER.MAX_EPOCHS
    if max_epochs < epochs_done:
        return (f"SOLVER.MAX_EPOCHS {max_epochs} is below the {epochs_done} epochs {path} has trained; "
                f"evaluate its weights with test.py, or resume with SOLVER.MAX_EPOCHS >= {epochs_done}")
    for key, value in flat_items(cfg):
        role, theirs = RULES[key].role, saved.get(key, value)
        if role == LENGTH and value != theirs and cfg.SOLVER.SCHEDULER != "multistep":
            return (f"SOLVER.MAX_EPOCHS {value} differs from {path}'s {theirs}: the {cfg.SOLVER.SCHEDULER} "
                    f"schedule of the epochs done was laid out over {theirs} epochs (set it back, or start a "
                    f"new run in another OUTPUT_DIR)")
        if role in (MODEL, TRAINING) and value != theirs:
            return (f"{key} {shown(value)} differs from {path}'s {shown(theirs)}: a resume continues that run "
                    f"as it was configured (set it back, or start a new run in another OUTPUT_DIR)")
    return None


def model_differences(cfg: CfgNode, saved: Mapping[str, object]) -> dict[str, tuple[object, object]]:
    """``{key: (value used, checkpoint's value)}`` of the ``model`` keys where ``cfg`` differs from a
    checkpoint's config: the evaluated network computes differently from the one that was trained."""
    return {key: (value, saved[key]) for key, value in flat_items(cfg)
            if RULES[key].role == MODEL and key in saved and value != saved[key]}
