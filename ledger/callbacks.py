"""The budget as a transformers TrainerCallback. Imported only by trainers: it imports transformers."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


class BudgetCallback(TrainerCallback):
    """Stops training, after a checkpoint, before the session's projected spend would cross its budget.

    Every rank runs it and the stop decision is reduced across ranks, so all stop at the same step;
    only the main process writes the spend into the checkpoint.
    """

    def __init__(self, session):
        self.session = session

    def on_train_begin(self, args, state, control, **kwargs):
        self.session.loop_started()

    def on_step_end(self, args, state, control, **kwargs):
        if not self.session.guard.save_measured:
            # A stop always ends with a checkpoint, so the stop rule must know what one costs before it
            # matters: save once right away, so that cost is measured, not guessed.
            control.should_save = True
        if self.session.step_done(save_due=control.should_save):
            control.should_save = True
            control.should_training_stop = True
        if control.should_save:
            self.session.saving_checkpoint()
        return control

    def on_save(self, args, state, control, **kwargs):
        self.session.checkpoint_saved(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
