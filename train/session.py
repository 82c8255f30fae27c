"""The life of one offset session, shared by every entry point: validate, admit, measure, intervene, account.

An entry point (train/lora_offset.py, train/soft_prompt.py, train/exposure.py) reads like a recipe:

    session = Session(kind, args, run)          # validate: bad input fails here, before any GPU time
    subject = session.load_subject()            # a bad model or adapter fails here, before any reservation
    session.admit()                             # reserve the budget in the ledger, start metering and W&B
    session.measure("before", subject)          # held-out baseline and post-dysphoric, on the main process
    ...the intervention, under session.budget...
    session.measure("after", changed_subject)
    session.finish(...)                         # recovery, results.json, ledger entries, W&B summary
    session.close()                             # settle (every rank); `with session:` does it, also on errors

Only the main process evaluates and writes (files, ledger, W&B); the other ranks train and wait.
Evaluations are saved in the output folder, so a resumed session reuses its "before" and never pays twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.common.checks import integers_at_least, number_in
from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.eval.common.output_folder import claim, open_in_place
from welfare_offsets.eval.common.outputs import write_json_file
from welfare_offsets.eval.common.results import EvaluationResult, SessionResult, read_result, write_result
from welfare_offsets.eval.common.safe_read import load_json_bounded, load_jsonl_bounded
from welfare_offsets.eval.evaluate import EvalConfig, reliable_reading
from welfare_offsets.eval.experiences import StimulusError, StimulusSet, load_stimuli
from welfare_offsets.eval.settings import (
    CapabilitySettings,
    ExperienceSettings,
    OverwriteSettings,
    PairSettings,
    SubjectSettings,
    TrackingSettings,
    setting,
)
from welfare_offsets.ledger.budget import SPEND_FILE
from welfare_offsets.train.guard import refuse_ledger_paths
from welfare_offsets.train.ledger_settings import LedgerSettings

AFTER_EVAL_MARGIN = 1.5  # the "after" evaluation is budgeted at this multiple of the measured "before": the
# changed subject can cost more to evaluate (a soft prompt adds positions, LoRA adds compute, own replies vary)
# Everything a session of any kind writes into its folder (the lists a marker records: output_folder.py), so
# that --overwrite deletes an earlier session only while it holds nothing else: never a user's file or ledger.
SESSION_FILES = (
    "results.json",
    "results-*.json",  # an earlier session's results, kept by a resume
    "ledger.json",
    "episodes.json",  # exposure
    "train_data.jsonl",  # LoRA
    "README.md",  # the model card TRL writes beside a LoRA session's checkpoints
    "adapter/**",
    "soft_prompt/**",
    "checkpoint-*/**",
    "eval-*/**",
    "wandb/**",
)


class SessionError(InputError):
    """A session's settings or output folder are not usable as given."""


@dataclass(kw_only=True)
class SessionArguments(
    OverwriteSettings,
    TrackingSettings,
    LedgerSettings,
    CapabilitySettings,
    PairSettings,
    ExperienceSettings,
    SubjectSettings,
):
    """Settings every offset session shares: the subject, its experiences, the capability tasks measured
    before and after, and the run's tracking (the shared concerns, eval/settings.py), and the session's own:
    its folder, the ledger and budget, the before/after evaluation and the capability gate. YAML keys and
    flags are these field names; in a LoRA session they win over TRL's own seed, report_to, output_dir and
    trust_remote_code (train/config.py)."""

    output_dir: str = setting(help="session folder: checkpoints, evaluations, results.json, ledger.json (required)")
    budget_hours: float = setting(0.0, "accelerator-hours this session may spend, over all its resumes (> 0)")
    max_train_items: int | None = setting(None, "cap on train-split experiences used")
    eval_max_items: int | None = setting(24, "held-out items per condition in the before/after evaluations")
    eval_probes: str = setting(
        "self_report,experienced_utility,stop",
        f"probes of the before/after evaluations (of {','.join(P.PROBES)}; decision utility, a validity "
        "check, doubles the pairwise cost)",
    )
    eval_replies: str = setting("authored", "authored or own: whose replies the evaluated experiences contain")
    eval_batch_size: int | None = setting(
        None, "most prompts per scoring forward pass in evaluations; default: no cap, the scorer's token budget decides"
    )
    eval_bootstrap: int = setting(1000, "bootstrap resamples for the CIs of the evaluations and the recovery")
    probe_every_steps: int = setting(0, "log a quick self-report probe to W&B every N steps (0: off)")
    max_perplexity_ratio: float = setting(
        1.25,
        "capability gate of a session measured before and after (LoRA, soft prompt): held-out neutral perplexity "
        "after / before may be at most this (> 1); a session beyond it is marked capability lost and its "
        "recovery is no offset",
    )
    max_accuracy_drop: float = setting(
        0.05,
        "capability gate on the capability_tasks (when given): their mean accuracy may fall by at most this "
        "(absolute, 0-1) from before to after",
    )
    capability_gate_on: str | None = setting(
        None,
        "what the capability gate judges: perplexity, tasks or perplexity,tasks; default: both when "
        "capability_tasks are given, else perplexity",
    )

    def check(self):
        from welfare_offsets.ledger.accounts import check_hours
        from welfare_offsets.ledger.errors import LedgerError

        try:  # the ledger's own rule: finite, > 0, at least its resolution (one micro-hour), at most one entry
            check_hours(self.budget_hours, field="budget_hours")
        except LedgerError as error:
            raise ValueError(str(error)) from None
        integers_at_least(self, 1, "max_train_items", "eval_batch_size")
        integers_at_least(self, 0, "probe_every_steps")
        number_in(self, "max_perplexity_ratio", 1.0, above=True)
        number_in(self, "max_accuracy_drop", 0.0, 1.0)
        if "tasks" in self.gate_criteria and not self.capability_task_names:
            raise ValueError(
                "capability_gate_on: the gate cannot judge tasks when no capability_tasks are given; name them "
                "(e.g. --capability_tasks mmlu) or gate on perplexity"
            )
        self.eval_config()  # the before/after evaluation's settings, validated where they are defined

    @property
    def gate_criteria(self) -> tuple[str, ...]:
        """What the capability gate judges (`capability_gate_on`, or its default)."""
        if self.capability_gate_on is None:
            return ("perplexity", "tasks") if self.capability_task_names else ("perplexity",)
        names = tuple(n.strip() for n in self.capability_gate_on.split(","))
        if not names or any(n not in ("perplexity", "tasks") for n in names) or len(set(names)) < len(names):
            raise ValueError(
                f"capability_gate_on: expected perplexity, tasks or perplexity,tasks, got {self.capability_gate_on!r}"
            )
        return names

    def eval_config(self, *, progress: bool = True) -> EvalConfig:
        """The held-out before/after evaluation: this session's subject and experiences, its eval_* settings."""
        shared = {
            f.name: getattr(self, f.name)
            for cls in (SubjectSettings, ExperienceSettings, PairSettings)
            for f in dataclasses.fields(cls)
        }
        return EvalConfig(
            **shared,
            probes=self.eval_probes,
            replies=self.eval_replies,
            max_items=self.eval_max_items,
            batch_size=self.eval_batch_size,
            bootstrap=self.eval_bootstrap,
            seed=self.seed,
            split="heldout",
            empathy_split="heldout",
            progress=self.progress and progress,
        )


@dataclass(frozen=True)
class Measurement:
    """One of a session's evaluations: its results (eval-<tag>/results.json, read back), per-item scores."""

    result: EvaluationResult
    items: list[dict]
    folder: Path


@dataclass(frozen=True)
class CheckpointForm:
    """What a checkpoint of an entry's kind holds, so that one of another kind is refused before any work:
    its adapter's peft_type and the file its training state is saved in."""

    peft_type: str
    state_file: str


@dataclass(frozen=True)
class RunSettings:
    """What an entry passes besides the shared settings: the checkpoint to resume (its intervention's own
    setting, or TRL's), and every config as passed and as resolved (for results.json and the W&B config)."""

    resume_from_checkpoint: str | None
    recipe: dict


class Session:
    """One metered session; see the module docstring for the order of calls."""

    def __init__(
        self,
        kind: str,
        args: SessionArguments,
        run: RunSettings,
        *,
        needs: dict[str, str],
        trains: bool = True,
        checkpoint: CheckpointForm | None = None,
    ):
        """Validate everything that can be checked without a model. `needs` maps a valence to the split
        the intervention must find experiences of, e.g. {"euphoric": "train"}; `trains`: the session trains
        its subject (so it cannot be a placed one); `checkpoint`: what its checkpoints hold (a session that
        saves none cannot resume)."""
        self.kind, self.args, self.run, self.checkpoint_form = kind, args, run, checkpoint
        if trains and args.device_map is not None:
            raise SessionError(
                f"device_map: a {kind} session trains its subject, which needs the whole model on each rank's "
                "device; a placed subject is for measuring (welfare eval, welfare sweep, exposure sessions), and a "
                "big one trains with FSDP (accelerate/fsdp)"
            )
        # The folder first: a file, a link or someone else's folder fails before anything loads.
        self.folder = claim(
            args.output_dir,
            f"{kind} session",
            overwrite=args.overwrite,
            resumable=True,
            flag="--output_dir",
            files=SESSION_FILES,
        )
        refuse_ledger_paths(self.folder.path, args.ledger, "--output_dir")
        if args.overwrite and run.resume_from_checkpoint:
            raise SessionError(
                "--overwrite (start over) and --resume_from_checkpoint (continue) contradict "
                "each other; pass one of them"
            )
        self.out = self.folder.path

        import torch
        from accelerate import PartialState

        # cpu=True where there is no GPU: accelerate then joins the ranks over gloo instead of staying alone.
        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.is_main = self.state.is_main_process
        self.stimuli: StimulusSet = load_stimuli(args.stimuli)
        for valence, split in {**needs, "neutral": "heldout", "dysphoric": "heldout"}.items():
            if not self.stimuli.select(valence=valence, split=split):
                raise StimulusError(
                    self.stimuli.source,
                    [
                        f"a {kind} session needs {valence} experiences in the "
                        f"{split!r} split, and there are none; add some"
                    ],
                )
        self.eval_config = args.eval_config(progress=self.is_main)
        # Every task and its data load now: an unknown task or unreachable data fails before any reservation.
        self.capability_tasks = (
            args.prepare_capability_tasks(seed=args.seed) if self.is_main and args.capability_task_names else None
        )
        if self.capability_tasks is not None and kind == "soft-prompt":
            from welfare_offsets.eval.capability_tasks import check_soft_prompt_tasks

            check_soft_prompt_tasks(self.capability_tasks)  # the "after" subject has one: refuse now, not then
        self.resume = self._resolve_resume(run.resume_from_checkpoint)
        self.saved_before = self._saved_before() if self.resume is not None else None
        if self.is_main:
            self._check_funds()
        self.budget = None
        self.wandb_run = None
        self.ledger = None
        self.evaluations: dict[str, Measurement] = {}

    # -- validate ---------------------------------------------------------------------------------

    def _resolve_resume(self, resume: str | None) -> Path | None:
        finished = self.out / "results.json"
        if resume is None:
            if (finished.exists() or any(self.out.glob("checkpoint-*"))) and not self.args.overwrite:
                raise SessionError(
                    f"output_dir {self.out} already holds a session ({'finished' if finished.exists() else 'checkpoints'}); "
                    "resume it with --resume_from_checkpoint last (or a checkpoint folder), start over with "
                    "--overwrite (deletes it), or choose another output_dir"
                )
            return None
        if resume == "last":
            # The spend file is written last, so a checkpoint without it was cut short (killed mid-save).
            checkpoints = sorted(
                (p for p in self.out.glob("checkpoint-*") if (p / SPEND_FILE).exists()),
                key=lambda p: int(p.name.rsplit("-", 1)[-1]),
            )
            if not checkpoints:
                raise SessionError(f"--resume_from_checkpoint last: no complete checkpoint-* folder in {self.out}")
            path = checkpoints[-1]
        else:
            path = Path(resume).expanduser().resolve()
            if not path.is_dir():
                raise SessionError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
        self._check_checkpoint(path)
        return path

    def _check_checkpoint(self, path: Path) -> None:
        """A checkpoint of another kind (a LoRA one given to a soft-prompt session) is refused now, before
        a model loads or budget is reserved."""
        form = self.checkpoint_form
        problem = None
        if form is None:
            problem = f"a {self.kind} session saves no checkpoints to resume from"
        elif not (path / form.state_file).is_file():
            problem = f"it has no {form.state_file}"
        else:
            config = path / "adapter_config.json"
            found = load_json_bounded(config, what="checkpoint adapter config") if config.is_file() else None
            peft_type = found.get("peft_type") if isinstance(found, dict) else None
            if peft_type != form.peft_type:
                problem = f"its adapter is {peft_type or 'missing'}, a {self.kind} checkpoint's is {form.peft_type}"
        if problem:
            raise SessionError(
                f"--resume_from_checkpoint {path}: not a {self.kind} checkpoint ({problem}); resume from a "
                f"checkpoint-* folder of a {self.kind} session, or start a new one"
            )

    def _saved_before(self) -> EvaluationResult | None:
        """A resumed session's "before" evaluation, reused as it is (its subject has not changed), and its
        finished results.json if any: both read through the schema now, so a file from a newer version or
        of another kind is refused before a model loads or budget is reserved."""
        finished = self.out / "results.json"
        if finished.exists():
            read_result(finished, SessionResult)
        saved = self.out / "eval-before" / "results.json"
        return read_result(saved, EvaluationResult) if saved.exists() else None

    def _check_funds(self) -> None:
        """Refuse now, before a model loads, if the account cannot cover the budget (admit reserves it)."""
        from welfare_offsets.ledger.book import Ledger
        from welfare_offsets.ledger.budget import CheckpointSpend
        from welfare_offsets.ledger.location import is_server_url, resolve_ledger_path

        path = resolve_ledger_path(self.args.ledger)
        if not is_server_url(path) and not path.exists():  # a server says itself if it holds no ledger
            raise SessionError(
                f"no ledger at {path}: fund an account first, e.g. "
                f"welfare ledger fund --account {self.args.account} --hours 10 --ledger {path}"
            )
        with Ledger.open(path, create=False) as ledger:
            available = ledger.balance(self.args.account).available_hours
            spent = CheckpointSpend.read(self.resume).run_spent_hours(ledger) if self.resume else 0.0
        needed = self.args.budget_hours - spent
        if needed > available:
            raise SessionError(
                f"account {self.args.account!r} has {available:g} accelerator-hours available, less than the "
                f"{needed:g} this session needs (budget_hours); fund it (welfare ledger fund --account "
                f"{self.args.account} --hours H) or lower budget_hours"
            )

    # -- admit ------------------------------------------------------------------------------------

    def admit(self) -> None:
        """Reserve the budget (refused if the account cannot cover it), start metering and the W&B run."""
        from welfare_offsets.ledger.book import Ledger
        from welfare_offsets.ledger.budget import BudgetSession

        if self.is_main:  # an earlier session here is deleted only now, with --overwrite, the subject loaded
            open_in_place(self.folder, overwrite=self.args.overwrite)
        self.state.wait_for_everyone()
        if self.is_main:
            self.ledger = Ledger.open(self.args.ledger)
            if self.args.report_to == "wandb":
                from welfare_offsets.eval.common.tracking import start_run

                self.wandb_run = start_run(
                    self.args.wandb_project,
                    name=f"{self.kind}-{self.out.name}",
                    config=self.run.recipe,
                    job_type=self.kind,
                    directory=str(self.out),
                    entity=self.args.wandb_entity,
                )
        print(
            f"[{self.kind}] rank {self.state.process_index} of {self.state.num_processes} on {self.state.device}",
            flush=True,
        )
        self.budget = BudgetSession.start(
            self.ledger,
            account=self.args.account,
            budget_hours=self.args.budget_hours,
            device=self.state.device.type,
            processes=self.state.num_processes,
            gpus=self.args.held_gpus(),
            purpose=f"{self.kind}: {self.out}",
            resume_from=self.resume,
            wandb_run=self.wandb_run,
            is_main=self.is_main,
        )

    def load_subject(self):
        from welfare_offsets.eval.subject import load_subject

        return load_subject(
            self.args.model,
            self.args.adapter,
            trust_remote_code=self.args.trust_remote_code,
            device=str(self.state.device),
            dtype=self.args.dtype,
            placement=self.args.placement(),
        )

    # -- measure ----------------------------------------------------------------------------------

    def measure(self, tag: str, subject) -> Measurement | None:
        """Evaluate the held-out conditions and the capability check (main process; others wait). A resumed
        session reuses its saved "before" (the subject it measured has not changed) and always measures
        "after" anew. After the "before" evaluation the training budget is cut by what the "after" one will cost."""
        folder = self.out / f"eval-{tag}"
        started = self.budget.meter.hours
        if self.is_main:
            saved = self.saved_before if tag == "before" else None
            if (
                saved is not None
                and self.capability_tasks is not None
                and not _same_tasks(saved, self.capability_tasks, self.args.capability_limit)
            ):
                # Resumed with other capability tasks: the subject is still the one measured before, so measure
                # them on it now.
                saved = dataclasses.replace(saved, capability_tasks=self._measure_tasks(subject))
                write_result(folder / "results.json", saved)
            if saved is None:
                from welfare_offsets.eval.capability import perplexity
                from welfare_offsets.eval.run import run_evaluation

                def capability_and_cost(_) -> dict:
                    neutral = self.stimuli.select(valence="neutral", split="heldout")
                    measured = {"heldout_neutral_perplexity": perplexity(subject, neutral)}
                    if self.capability_tasks is not None:
                        measured["capability_tasks"] = self._measure_tasks(subject)
                    return {**measured, "metered_hours": self.budget.meter.hours - started}

                # Inside our own session folder: an earlier evaluation there (a resume's "after") is ours to replace.
                config = dataclasses.replace(self.eval_config, out=str(folder), overwrite=True)
                run_evaluation(
                    config, {"session": self.kind, "tag": tag}, subject=subject, measure_more=capability_and_cost
                )
            result = saved or read_result(folder / "results.json", EvaluationResult)
            items = load_jsonl_bounded(folder / "items.jsonl", what="evaluation items")
            self.evaluations[tag] = Measurement(result, items, folder)
        self.state.wait_for_everyone()
        if tag == "before":
            cost = self.budget.meter.hours - started  # every rank's meter saw the same wall time
            if self.resume is not None and self.is_main:
                metered = self.evaluations[tag].result.metered_hours
                cost = cost if metered is None else metered
            cost = _broadcast(cost)
            self.budget.guard.limit_hours -= AFTER_EVAL_MARGIN * cost
            if self.budget.guard.limit_hours <= 0:
                raise SessionError(
                    f"budget_hours {self.args.budget_hours:g} leaves nothing for the intervention: the held-out "
                    f"evaluation alone costs ~{cost:.3g} accelerator-hours here, and one more is needed after it; "
                    "raise budget_hours or lower eval_max_items"
                )
        return self.evaluations.get(tag)

    def _measure_tasks(self, subject) -> dict:
        from welfare_offsets.eval.capability_tasks import measure_tasks

        return measure_tasks(
            subject,
            self.capability_tasks,
            limit=self.args.capability_limit,
            batch_size=self.args.capability_batch_size,
            per_item=True,
        )

    # -- account ----------------------------------------------------------------------------------

    def finish(
        self, *, optimised_probe: str | None, extra: dict, artifact: Path | None = None, artifact_type: str = "adapter"
    ) -> SessionResult | None:
        """Recovery with CIs, capability retention and the recipe's capability gate, results.json, one ledger
        measurement per probe, the W&B summary and artifact. `extra`: the intervention's SessionResult fields
        (training, artifact, ...)."""
        if not self.is_main:
            return None
        import numpy as np

        from welfare_offsets.eval.capability import capability_gate
        from welfare_offsets.eval.common.tracking import flatten_numbers
        from welfare_offsets.eval.recovery import recovery
        from welfare_offsets.eval.retention import preference_retention, task_retention
        from welfare_offsets.eval.subject import adapter_digest

        before, after = self.evaluations["before"], self.evaluations["after"]
        ppl = [e.result.heldout_neutral_perplexity for e in (before, after)]
        capability = {
            "heldout_neutral_perplexity": {
                "before": ppl[0],
                "after": ppl[1],
                "ratio": ppl[1]["perplexity"] / ppl[0]["perplexity"],
            }
        }
        rng = np.random.default_rng(self.args.seed)
        if before.result.capability_tasks and after.result.capability_tasks:
            capability["task_accuracy"] = task_retention(
                before.result.capability_tasks, after.result.capability_tasks, n_boot=self.args.eval_bootstrap, rng=rng
            )
        kept = preference_retention(before.items, after.items, n_boot=self.args.eval_bootstrap, rng=rng)
        if kept is not None:
            capability["preference_retention"] = kept
        criteria = self.args.gate_criteria
        gate = capability_gate(
            capability,
            max_perplexity_ratio=self.args.max_perplexity_ratio if "perplexity" in criteria else None,
            max_accuracy_drop=self.args.max_accuracy_drop if "tasks" in criteria else None,
        )
        recovered = recovery(
            before.items,
            after.items,
            optimised=optimised_probe,
            n_boot=self.args.eval_bootstrap,
            rng=np.random.default_rng(self.args.seed),
            # A probe that is no reading (off its valid answers, no preferences) says little; say so beside its recovery.
            reliable={
                probe: all(reliable_reading(e.result.probes[probe]) for e in (before, after))
                for probe in before.result.probes
                if probe in after.result.probes
            },
        )
        results, path = self.write_results(
            run=self.budget.run,
            recovery=recovered,
            capability=capability,
            capability_gate=gate,
            artifact_sha256=None if artifact is None else adapter_digest(artifact),
            **extra,
            budget={
                "budget_hours": self.args.budget_hours,
                "spent_before_resume_hours": self.budget.spent_before_hours,
                "stopped_by_budget": self.budget.guard.stopped_at_hours is not None,
            },
            subject=before.result.subject,
            stimuli=before.result.stimuli,
        )
        context = _ledger_context(recovered, capability, gate)
        for probe, numbers in recovered["probes"].items():
            self.ledger.record_measurement(
                self.budget.id,
                probe,
                wellbeing_before=numbers["post_dysphoric"],
                wellbeing_after=numbers["post_intervention"],
                recovered=numbers["recovered"]["mean"],
                results=[path],
                wandb_run=getattr(self.wandb_run, "id", None),
                note=f"{self.kind}; held-out, paired over {recovered['n_items']['post_dysphoric']} items{context}"
                + ("" if numbers["reliable"] else "; NOT a reliable reading (see the evaluations' reading reasons)"),
            )
        if self.wandb_run is not None:
            summary = flatten_numbers({"recovery": recovered, "capability": capability})
            self.wandb_run.summary.update(
                {**summary, "capability_gate": gate["criterion"], "capability_lost": not gate["passed"]}
            )
            if artifact is not None:
                import wandb

                art = wandb.Artifact(
                    f"{self.kind}-{self.budget.run}",
                    type=artifact_type,
                    metadata={"session": self.budget.id, "base_model": results.subject},
                )
                art.add_dir(str(artifact))
                self.wandb_run.log_artifact(art)
        return results

    def write_results(self, **fields) -> tuple[SessionResult, Path]:
        """The session's results.json, its one writer (offset and exposure sessions alike): `fields` with the
        session's kind, ledger id, recipe and provenance (main process)."""
        from welfare_offsets.eval.common.outputs import provenance

        result = SessionResult(
            kind=self.kind, session=self.budget.id, config=self.run.recipe, provenance=provenance(), **fields
        )
        self._keep_earlier_results()
        return result, write_result(self.out / "results.json", result)

    def _keep_earlier_results(self) -> None:
        """A resumed run's earlier session left results.json, which its ledger entries cite by sha256: keep
        it beside the new one, named by the start of that sha256, rather than write over it."""
        from welfare_offsets.ledger.files import sha256_file

        path = self.out / "results.json"
        if path.is_file():
            path.replace(self.out / f"results-{sha256_file(path)[:16]}.json")

    def record_balance(
        self, probe: str, *, debt: float | None = None, credit: float | None = None, results: Path, note: str
    ) -> None:
        """An exposure session's welfare balance on one probe (main process)."""
        if self.is_main:
            self.ledger.record_measurement(
                self.budget.id,
                probe,
                debt=debt,
                credit=credit,
                results=[results],
                wandb_run=getattr(self.wandb_run, "id", None),
                note=note,
            )

    def log(self, metrics: dict) -> None:
        """Metrics for W&B (main process), with the budget's state beside them."""
        if self.wandb_run is not None:
            self.wandb_run.log({**metrics, **self.budget_metrics()})

    def trainer_callbacks(self) -> list:
        """For a transformers Trainer: the budget (every rank) and, on the main process, W&B extras."""
        callbacks = [self.budget.trainer_callback()]
        if self.wandb_run is not None:
            callbacks.append(_session_log_callback(self))
        return callbacks

    def quick_probe(self, model, tokenizer, n_items: int = 8) -> float:
        """Mean self-report after a few held-out dysphoric experiences: a cheap live wellbeing trace."""
        from welfare_offsets.eval.in_context import score_in_context
        from welfare_offsets.eval.scoring import NextTokenScorer

        items = self.stimuli.select(valence="dysphoric", split="heldout")[:n_items]
        scorer = NextTokenScorer(model, tokenizer, batch_size=self.args.eval_batch_size, progress=False)
        scored = score_in_context(scorer, items, ("self_report",), instrument=self.args.load_instrument())
        _, expected, _ = scored.prompt_scores("self_report")
        return float(expected.mean())

    def budget_metrics(self) -> dict:
        spent = self.budget.run_spent_hours
        return {"budget/spent_hours": spent, "budget/left_hours": self.args.budget_hours - spent}

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self.close(failed=exc_type is not None)

    def close(self, *, failed: bool = False) -> None:
        """Settle on every rank (the energy sum is collective), write ledger.json, finish the W&B run, and
        leave the process group together. After a failure, nothing collective: the other ranks may be gone."""
        if self.budget is None:
            return
        settlement = self.budget.settle(collective=not failed)
        if self.is_main and settlement is not None:
            head = self.ledger.head()
            write_json_file(
                self.out / "ledger.json",
                {
                    "ledger": str(self.ledger.path),
                    "session": self.budget.id,
                    "run": self.budget.run,
                    "settlement": {"seq": settlement.seq, "hash": settlement.hash, **settlement.payload},
                    "head": {"seq": head.seq, "hash": head.hash},
                    "verify": f"welfare ledger verify --ledger {self.ledger.path}",
                },
            )
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.ledger is not None:
            self.ledger.close()
        if not failed and self.state.num_processes > 1:
            # Leave together: a rank that exits with the group still up can abort in its gloo threads.
            self.state.wait_for_everyone()
            self.state.destroy_process_group()


def _same_tasks(saved: EvaluationResult, tasks, limit: int | None) -> bool:
    """Whether a saved evaluation measured exactly these prepared capability tasks, on as many items."""
    measured = saved.capability_tasks or {}
    hashes = {row: m.get("config_sha256") for row, m in measured.get("tasks", {}).items()}
    return hashes == tasks.config_sha256 and measured.get("limit") == limit


def _ledger_context(recovered: dict, capability: dict, gate: dict) -> str:
    """The Goodhart gap, capability retention and the capability gate's verdict, for the note of each
    measurement entry (the full numbers are in the results.json the entry cites by sha256)."""
    from welfare_offsets.eval.retention import retention_text

    parts = [_goodhart_text(recovered["goodhart_gap"]), *recovered["flags"]]
    parts += [retention_text(name, c) for name, c in capability.items()]
    parts.append(f"capability gate {gate['criterion']}: " + ("passed" if gate["passed"] else "CAPABILITY LOST"))
    return "".join(f"; {p}" for p in parts)


def _session_log_callback(session: Session):
    from transformers import TrainerCallback

    class SessionLog(TrainerCallback):
        """Budget spent and left beside the Trainer's own W&B logs, and the periodic wellbeing probe."""

        def on_log(self, args, state, control, model=None, processing_class=None, **kwargs):
            metrics = {"train/global_step": state.global_step}
            every = session.args.probe_every_steps
            if every and state.global_step % every == 0 and model is not None and processing_class is not None:
                was_training = model.training
                model.eval()
                metrics["probe/self_report_post_dysphoric"] = session.quick_probe(model, processing_class)
                model.train(was_training)
            session.log(metrics)

    return SessionLog()


def _broadcast(value: float) -> float:
    """The main process's value on every rank (a no-op in a single process)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    if PartialState().num_processes == 1:
        return value
    holder = [value]
    broadcast_object_list(holder, from_process=0)
    return float(holder[0])


def _goodhart_text(gap: dict) -> str:
    """The Goodhart gap in one phrase, for the end-of-session summary and the ledger notes."""
    from welfare_offsets.eval.recovery import describe

    versus = f" ({gap['optimised']} vs {', '.join(gap['compared_with'])})" if gap["estimable"] else ""
    return f"Goodhart gap{versus} {describe(gap, 'sd')}"


def recovery_summary(results: SessionResult, out) -> str:
    """What a person reads at the end of an offset session."""
    from welfare_offsets.eval.recovery import describe
    from welfare_offsets.eval.retention import retention_text

    lines = [f"{results.kind} session {results.session}: recovery on held-out post-dysphoric items (+ is better)"]
    for probe, r in results.recovery["probes"].items():
        unreliable = "" if r.get("reliable", True) else " (not a reliable reading: the model mostly does not answer)"
        lines += [
            f"  {probe}{unreliable}",
            f"    recovered            {describe(r['recovered'])}",
            f"    in sd units          {describe(r['standardised_recovery'], 'sd')}",
            f"    fraction of harm     {describe(r['recovery_fraction'])}",
            f"    baseline shift       {describe(r['baseline_shift'])}",
        ]
    lines.append(f"  {_goodhart_text(results.recovery['goodhart_gap'])}")
    lines += [f"  flag: {flag}" for flag in results.recovery["flags"]]
    lines += [f"  {retention_text(name, c)}" for name, c in (results.capability or {}).items()]
    gate = results.capability_gate
    if gate:
        verdict = (
            "CAPABILITY LOST: no offset; `welfare plan` counts none of it" if results.capability_lost else "passed"
        )
        lines.append(f"  capability gate ({gate['criterion']}): {verdict}")
    lines.append(f"Results: {out}/results.json   Ledger: {out}/ledger.json")
    return "\n".join(lines)
