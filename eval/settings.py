"""The settings every command shares, one dataclass per concern; each field is declared, documented,
defaulted and checked here once.

A command's config inherits the concerns it needs (`EvalConfig(SubjectSettings, ProbeSettings, ...)`), so
its YAML keys and flags are these field names wherever they appear. After init, `Settings.__post_init__`
runs the `check` of every class in the hierarchy, base concerns first: a composed config validates each
concern exactly once, and a command only adds the checks of the fields it declares itself.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.capability_tasks import (
    HarnessTasks,
    check_include_path,
    prepare_tasks,
    require_lm_eval,
    task_names,
)
from welfare_offsets.eval.common.checks import integers_at_least, number_in, one_of
from welfare_offsets.eval.experiences import check_stimuli_path
from welfare_offsets.eval.instrument import DEFAULT_INSTRUMENT, Instrument, load_instrument
from welfare_offsets.eval.placement import (
    Placement,
    PlacementError,
    check_gpus,
    check_offload_folder,
    held_gpus,
    parse_device_map,
    parse_max_memory,
)
from welfare_offsets.eval.subject import check_adapter
from welfare_offsets.eval.utilities import PairDesign

SPLITS = ("heldout", "train", "all")
DTYPES = ("auto", "float32", "bfloat16", "float16")
REPORT_TO = ("none", "wandb")
REUSE_PREFIX = {"auto": "auto", "on": True, "off": False}  # the setting's words -> NextTokenScorer's reuse_prefix
MIN_BOOTSTRAP = 100  # fewer replicates cannot place the tails of a 95% interval


def setting(default=MISSING, help: str = "", **kwargs):
    """A settings field: its default and its help, the one text that `--help` shows for the flag and the
    recipe key alike."""
    return field(default=default, metadata={"help": help}, **kwargs)


class Settings:
    """Base of every settings dataclass: validation by each class's own `check`, base classes first."""

    def __post_init__(self):
        for cls in reversed(type(self).__mro__):
            check = vars(cls).get("check")
            if check is not None:
                check(self)


@dataclass(kw_only=True)
class LoadingSettings(Settings):
    """How a subject's weights load, and where they go when one device cannot hold them (eval/placement.py)."""

    dtype: str = setting("auto", "auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    trust_remote_code: bool = setting(False, "allow the model repo's own Python code to run")
    device_map: dict | str | None = setting(
        None,
        "spread the subject over devices, as transformers' from_pretrained does: auto, balanced, balanced_low_0, "
        "sequential, or module=device pairs (model.layers.0=0,lm_head=cpu; devices: a GPU index of this rank, "
        "cpu, disk); default: the whole model on one device",
    )
    max_memory: dict | str | None = setting(
        None,
        "with a device_map strategy, the most each device may hold: 0=70GiB,1=70GiB,cpu=100GiB (GPU indices of "
        "this rank; a device left out gets nothing); default: the free memory of this rank's GPUs and the CPU",
    )
    offload_folder: str | None = setting(
        None, "folder for the weights of modules placed on disk (each load writes only in a new folder inside it)"
    )
    gpus_per_rank: int = setting(
        1,
        "GPUs each process holds for its subject (needs a device_map), billed for its whole wall time: rank r of R "
        "holds cuda:r and cuda:R+r(k-1) onwards, k in all",
    )

    def check(self):
        one_of(self, "dtype", DTYPES)
        integers_at_least(self, 1, "gpus_per_rank")
        self.device_map = parse_device_map(self.device_map, self.gpus_per_rank)
        self.max_memory = parse_max_memory(self.max_memory, self.gpus_per_rank)
        if self.device_map is None:
            given = [n for n in ("max_memory", "offload_folder") if getattr(self, n) is not None]
            given += ["gpus_per_rank"] if self.gpus_per_rank > 1 else []
            if given:
                raise PlacementError(
                    f"{', '.join(given)}: only a placed subject spans devices; set device_map too (auto spreads "
                    "it over this rank's GPUs)"
                )
            return
        mapped = isinstance(self.device_map, dict)
        if mapped and self.max_memory is not None:
            raise PlacementError(
                "max_memory caps what a device_map strategy (auto, ...) places, and a module mapping ignores it; "
                "give one of them"
            )
        devices = [*self.device_map.values()] if mapped else [*(self.max_memory or ())]
        if "disk" in devices and self.offload_folder is None:
            raise PlacementError(
                "device_map or max_memory places weights on disk: set offload_folder, a folder for them"
            )
        if self.offload_folder is not None:
            check_offload_folder(self.offload_folder)
        check_gpus(self.gpus_per_rank, names_gpus=any(isinstance(d, int) for d in devices))

    def placement(self) -> Placement | None:
        """Where this process loads its subject (None: whole, on its one device)."""
        if self.device_map is None:
            return None
        return Placement.for_this_rank(self.device_map, self.max_memory, self.offload_folder, self.gpus_per_rank)

    def held_gpus(self) -> tuple[int, ...]:
        """The GPUs this process holds for its subject, to meter and bill (empty: its one device, as accelerate
        gave it)."""
        return () if self.device_map is None else held_gpus(self.gpus_per_rank)


@dataclass(kw_only=True)
class SubjectSettings(LoadingSettings):
    """Which subject: a model and, optionally, an adapter on it."""

    model: str | None = setting(None, "HF hub id or local folder; default: SmolLM2-135M-Instruct")
    adapter: str | None = setting(None, "peft adapter (LoRA or soft prompt) applied to the model: a folder or hub id")

    def check(self):
        if self.adapter is not None:
            check_adapter(self.adapter)


@dataclass(kw_only=True)
class ExperienceSettings(Settings):
    """What the subject lives through, how long its own replies may be, and the instrument that asks about it."""

    stimuli: str | None = setting(None, "stimulus JSONL file or datasets folder; default: built-in v1")
    reply_tokens: int = setting(48, "most new tokens per reply the subject writes")
    instrument: str | None = setting(
        None,
        f"the probes' wording: a built-in instrument name or a file (ours, or a self-report battery in the anchor "
        f"paper's format); default: {DEFAULT_INSTRUMENT}",
    )

    def check(self):
        integers_at_least(self, 1, "reply_tokens")
        if self.stimuli is not None:
            check_stimuli_path(self.stimuli)
        load_instrument(self.instrument)  # refused here, before any model loads

    def load_instrument(self) -> Instrument:
        return load_instrument(self.instrument)


@dataclass(kw_only=True)
class PairSettings(Settings):
    """How many pairwise comparisons a utility fit asks, how they are chosen, and the zero point's bundles."""

    pair_budget: float = setting(
        PairDesign.budget,
        "pairwise comparisons per utility fit, as a multiple of N log2 N for N experiences (the anchor paper's "
        "2 N log2 N), at most every pair; each is asked in both orders",
    )
    pair_active_share: float = setting(
        PairDesign.active_share,
        "share of the fitted comparisons chosen from the fit (near-ties, least-compared items first)",
    )
    pair_active_rounds: int = setting(
        PairDesign.active_rounds, "refits the actively chosen comparisons are spread over (0: none)"
    )
    pair_holdout: float = setting(
        PairDesign.holdout, "share of comparisons held out of the fit, to report its accuracy on pairs it never saw"
    )
    zero_point_bundles: int | None = setting(
        None,
        "bundles of 2-4 experiences compared with the single ones for the combination zero point "
        "(default: half as many as the experiences; 0: none)",
    )

    def check(self):
        integers_at_least(self, 0, "pair_active_rounds", "zero_point_bundles")
        number_in(self, "pair_budget", 0.1, 1000.0)
        number_in(self, "pair_active_share", 0.0, 1.0)
        number_in(self, "pair_holdout", 0.0, 0.5)

    @property
    def pair_design(self) -> PairDesign:
        return PairDesign(self.pair_budget, self.pair_active_share, self.pair_active_rounds, self.pair_holdout)

    def bundle_count(self, n_items: int) -> int:
        """How many bundles the zero point compares beside `n_items` experiences."""
        return n_items // 2 if self.zero_point_bundles is None else self.zero_point_bundles


@dataclass(kw_only=True)
class ProbeSettings(PairSettings, ExperienceSettings):
    """What is measured and how: probes, splits, sample sizes, the utility design, CIs."""

    DEFAULT_PROBES = P.PROBES  # the probes a command measures when `probes` is not given

    probes: str | None = setting(
        None,
        f"comma-separated subset of {','.join(P.PROBES)}; default: every probe the "
        "command reports (eval: all; sweep: self_report,experienced_utility, which its "
        "profile uses)",
    )
    replies: str = setting(
        "authored",
        "authored: probe after the stimulus file's replies; own: the subject writes its own replies first (greedy)",
    )
    split: str = setting(
        "heldout",
        "split of the measured experiences (eval: the baseline and post-dysphoric "
        "conditions; sweep: the everyday ones): heldout, train or all",
    )
    empathy_split: str = setting("all", "split of the empathy experiences: heldout, train or all")
    max_items: int | None = setting(
        None, "cap per condition (sweep: per group) and per empathy target, evenly over categories"
    )
    batch_size: int | None = setting(
        None,
        "most prompts per scoring forward pass; default: no cap, max_batch_tokens decides (not in a sweep's cache key)",
    )
    max_batch_tokens: int | None = setting(
        None,
        "padded tokens per scoring forward pass (prompts x their padded width); default: 4096 on CPU, 16384 on an "
        "accelerator (not in a sweep's cache key)",
    )
    reuse_prefix: str = setting(
        "auto",
        "shared-prefix reuse in scoring: auto (a timed batch of each path picks the faster, per call; results.json "
        "records the choice), on or off. Either path gives the same scores to float tolerance; pin on or off for "
        "reruns equal to the last digit (not in a sweep's cache key)",
    )
    bootstrap: int = setting(
        2000, f"bootstrap resamples for every CI (at least {MIN_BOOTSTRAP}; not part of a sweep's cache key)"
    )

    def check(self):
        if self.probes is None:
            self.probes = ",".join(self.DEFAULT_PROBES)
        names = self.probe_names
        unknown = [p for p in names if p not in P.PROBES]
        if unknown or not names:
            raise ValueError(f"probes: unknown or empty {unknown or self.probes!r}; choose from {', '.join(P.PROBES)}")
        one_of(self, "replies", ("authored", "own"))
        one_of(self, "split", SPLITS)
        one_of(self, "empathy_split", SPLITS)
        integers_at_least(self, 1, "batch_size", "max_batch_tokens")
        if isinstance(self.reuse_prefix, bool):  # YAML's true/false
            self.reuse_prefix = "on" if self.reuse_prefix else "off"
        one_of(self, "reuse_prefix", tuple(REUSE_PREFIX))
        if self.max_items is not None and self.max_items < 2:
            raise ValueError(f"max_items: expected at least 2 (or unset), got {self.max_items}")
        if self.bootstrap < MIN_BOOTSTRAP:
            raise ValueError(
                f"bootstrap: at least {MIN_BOOTSTRAP} replicates are needed for a 95% interval, got {self.bootstrap}"
            )

    @property
    def probe_names(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.probes.split(",") if p.strip())


@dataclass(kw_only=True)
class CapabilitySettings(Settings):
    """Capability measured with lm-evaluation-harness tasks (eval/capability_tasks.py): which, on how many
    items, and where tasks of your own live."""

    capability_tasks: str | None = setting(
        None,
        "comma-separated lm-eval tasks, groups or tags (mmlu, arc_easy, hellaswag, ...), measured on the "
        "subject (in LoRA and soft-prompt sessions: before and after, for retention; in a sweep: each "
        "subject's capability, their mean accuracy); default: none",
    )
    capability_limit: int | None = setting(
        None, "most items per task, lm-eval's first ones (a group's: per task in it); default: all"
    )
    capability_include_path: str | None = setting(
        None, "folder of lm-eval task YAML files of your own (e.g. over local data files), found before lm-eval's"
    )
    capability_batch_size: int = setting(16, "lm-eval requests per forward pass")

    def check(self):
        integers_at_least(self, 1, "capability_limit", "capability_batch_size")
        names = self.capability_task_names
        if self.capability_include_path is not None:
            check_include_path(self.capability_include_path)
        if names:
            require_lm_eval()  # refused here, before any model loads

    @property
    def capability_task_names(self) -> tuple[str, ...]:
        return task_names(self.capability_tasks)

    def prepare_capability_tasks(self, *, seed: int = 0) -> HarnessTasks:
        """The tasks loaded with their data, ready to measure; an unknown task or unreachable data is refused
        (CapabilityTaskError), so call it before anything is reserved or computed."""
        return prepare_tasks(self.capability_task_names, self.capability_include_path, seed=seed)


@dataclass(kw_only=True)
class TrackingSettings(Settings):
    """How a run is reproduced and reported: its seed, W&B, progress bars."""

    seed: int = setting(0, "seed of every random choice: pair selection, subsampling, bootstrap, training data order")
    report_to: str = setting("none", "none or wandb (offline unless a W&B key is configured)")
    wandb_project: str = setting("welfare-offsets", "W&B project when report_to=wandb ($WANDB_PROJECT wins)")
    wandb_entity: str | None = setting(None, "W&B entity when report_to=wandb ($WANDB_ENTITY wins)")
    progress: bool = setting(True, "show progress bars")

    def check(self):
        integers_at_least(self, 0, "seed")
        one_of(self, "report_to", REPORT_TO)


@dataclass(kw_only=True)
class OverwriteSettings(Settings):
    """Whether a command may start over in a folder holding its own earlier output."""

    overwrite: bool = setting(
        False,
        "start over in an output folder holding an earlier output of this command: it is "
        "deleted (eval, capability and a sweep refuse, untouched, one that holds anything they "
        "did not write there, such as a ledger or a file of yours); without it eval refuses, a "
        "sweep continues its cache, a session must be resumed",
    )


@dataclass(kw_only=True)
class OutputSettings(OverwriteSettings):
    """Where an evaluation or a study writes."""

    out: str | None = setting(
        None,
        "output folder, written atomically; default: eval prints only, a sweep writes "
        "welfare-runs/sweep (report, results.json and the per-subject cache that makes it "
        "resumable)",
    )

    def check(self):
        if self.out == "":  # it would read as "no folder": a whole run written nowhere
            raise ValueError("out: '' is an empty path; name a folder, e.g. --out runs/my-run (or leave it out)")
