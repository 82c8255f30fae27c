"""Budgets that hold: the meter, the guard's stop rule, sessions that settle and refund, repair of
killed sessions, resumes that continue the spend, and a real transformers Trainer run on CPU."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import types

import pytest

from tests.ledger.helpers import funded_ledger, killed_session
from welfare_offsets.ledger import BudgetSession, CheckpointSpend, Ledger, LedgerError, Meter, SpendGuard
from welfare_offsets.ledger import budget as budget_module
from welfare_offsets.ledger.budget import SPEND_FILE, BudgetExhausted
from welfare_offsets.ledger.meter import NvmlEnergy


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def hours(seconds: float) -> float:
    return seconds / 3600


# ---- meter -------------------------------------------------------------------------------------


def test_meter_bills_wall_time_times_processes():
    clock = FakeClock()
    meter = Meter("cuda", processes=4, clock=clock).start()
    clock.now = 900.0
    assert meter.hours == pytest.approx(1.0)  # 15 minutes x 4 processes
    meter.stop()
    clock.now = 5000.0
    assert meter.seconds == 900.0


def test_meter_on_cpu_counts_cpu_hours_and_reports_no_energy():
    meter = Meter.for_device("cpu").start()
    meter.stop()
    assert meter.device == "cpu" and meter.hours >= 0
    assert meter.energy_kwh() is None


def test_meter_reads_nvml_energy_when_present(monkeypatch):
    readings = iter([1_000_000, 1_000_000 + 3_600_000_000])  # millijoules: 1 kWh apart
    nvml = types.SimpleNamespace(nvmlDeviceGetTotalEnergyConsumption=lambda handle: next(readings))
    meter = Meter("cuda", energy=NvmlEnergy(nvml, [None]), clock=FakeClock()).start()
    meter.stop()
    assert meter.energy_kwh() == pytest.approx(1.0)


def test_a_process_holding_several_gpus_is_billed_and_metered_for_each():
    clock = FakeClock()
    readings = iter([1_000, 2_000, 1_000 + 1_800_000_000, 2_000 + 1_800_000_000])  # two GPUs, 0.5 kWh each
    nvml = types.SimpleNamespace(nvmlDeviceGetTotalEnergyConsumption=lambda handle: next(readings))
    meter = Meter("cuda", processes=2, devices_per_process=4, energy=NvmlEnergy(nvml, ["a", "b"]), clock=clock)
    meter.start()
    clock.now = 900.0
    meter.stop()
    assert meter.accelerators == 8 and meter.hours == pytest.approx(2.0)  # 15 minutes x 2 ranks x 4 GPUs
    assert meter.energy_kwh() == pytest.approx(1.0)  # the sum over the GPUs this process holds


def test_a_reservation_records_the_accelerators_billed(tmp_path, monkeypatch):
    monkeypatch.setattr(NvmlEnergy, "for_cuda_devices", classmethod(lambda cls, indices=(): None))
    ledger = funded_ledger(tmp_path / "ledger.sqlite", hours=1.0)
    with BudgetSession.start(
        ledger, account="lab", budget_hours=0.5, device="cuda", processes=2, gpus=(0, 2, 3, 4)
    ) as session:
        assert session.meter.accelerators == 8
    (reserve,) = ledger.entries(kind="reserve")
    assert (reserve.payload["device"], reserve.payload["processes"]) == ("cuda", 8)
    settle = ledger.entries(kind="settle")[0].payload
    assert settle["postings"][f"@spent/{session.id}"] / 1e6 == pytest.approx(
        settle["wall_seconds"] * 8 / 3600, abs=1e-6
    )


def test_nvml_missing_gives_no_energy_rather_than_a_guess(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert NvmlEnergy.for_cuda_devices() is None
    assert NvmlEnergy.for_cuda_devices((0, 1)) is None


def test_nvml_counters_are_found_by_each_held_gpus_uuid(monkeypatch):
    """torch's device index -> its UUID -> NVML's handle (NVML numbers GPUs its own way, CUDA_VISIBLE_DEVICES
    aside), given as bytes, which old and new NVML bindings alike take; the reading sums the GPUs held."""
    import torch

    def by_uuid(uuid):
        assert isinstance(uuid, bytes), "old bindings pass the argument to ctypes as it is"
        return uuid.decode()

    energy = {"GPU-aa": 1_000, "GPU-cc": 2_000}
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByUUID=by_uuid,
        nvmlDeviceGetTotalEnergyConsumption=lambda handle: energy[handle],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    uuids = {0: "aa", 1: "bb", 2: "cc"}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(uuid=uuids[index]))
    counter = NvmlEnergy.for_cuda_devices((0, 2))
    assert counter is not None and counter.read_millijoules() == 3_000


def test_meter_refuses_unknown_device_and_bad_process_count():
    with pytest.raises(LedgerError, match="device 'tpu'"):
        Meter("tpu")
    with pytest.raises(LedgerError, match="processes"):
        Meter("cpu", processes=0)
    with pytest.raises(LedgerError, match="devices_per_process"):
        Meter("cuda", devices_per_process=0)


# ---- the stop rule -------------------------------------------------------------------------------


def test_guard_stops_before_the_next_step_would_cross_the_limit():
    clock = FakeClock()
    meter = Meter("cpu", clock=clock).start()
    guard = SpendGuard(meter, limit_hours=hours(10))
    decisions = []
    for _ in range(12):
        clock.now += 1.0  # each step costs one second
        decisions.append(guard.step_done())
        if decisions[-1]:
            break
    # after 9 s, one more 1 s step would reach exactly 10 s (not over); after 10 s it would cross
    assert decisions == [False] * 9 + [True]
    assert guard.stopped_at_hours == pytest.approx(hours(10))


def test_guard_projects_the_slowest_recent_step_and_the_checkpoint_save():
    clock = FakeClock()
    meter = Meter("cpu", clock=clock).start()
    guard = SpendGuard(meter, limit_hours=hours(20), window=4)
    clock.now = 3.0
    assert guard.step_done() is False  # 3 s spent, slowest 3 s
    clock.now = 5.0
    guard.save_done()  # a 2 s save, kept out of the step's cost
    clock.now = 6.0
    assert guard.step_done() is False  # 6 + 3 + 2 = 11
    assert guard.last_step_hours == pytest.approx(hours(1))
    clock.now = 14.0
    assert guard.step_done(save_due=True) is True  # 14 + 8 + 2 x 2 = 26 > 20


def test_guard_started_after_setup_does_not_take_setup_for_a_step():
    clock = FakeClock()
    meter = Meter("cpu", clock=clock).start()
    guard = SpendGuard(meter, limit_hours=hours(100))
    clock.now = 60.0  # model loading
    guard.restart_interval()
    clock.now = 61.0
    assert guard.step_done() is False
    assert guard.last_step_hours == pytest.approx(hours(1))


# ---- sessions ------------------------------------------------------------------------------------


def test_session_reserves_settles_and_refunds(tmp_path):
    ledger = funded_ledger(tmp_path / "ledger.sqlite", hours=1.0)
    with BudgetSession.start(ledger, account="lab", budget_hours=0.5, device="cpu", processes=2) as session:
        assert ledger.balance("lab").available_hours == pytest.approx(0.5)
        assert ledger.balance("lab").reserved_hours == pytest.approx(0.5)
    spent = ledger.entries(kind="settle")[0].payload["postings"][f"@spent/{session.id}"] / 1e6
    assert spent == pytest.approx(session.meter.hours, abs=1e-6)
    balance = ledger.balance("lab")
    assert balance.reserved_hours == 0
    assert balance.available_hours == pytest.approx(1.0 - spent)
    assert ledger.entries(kind="settle")[0].payload["energy_kwh"] is None  # CPU: absent, not zero
    assert ledger.verify().ok


def test_session_is_refused_when_the_account_cannot_cover_the_budget(tmp_path):
    ledger = funded_ledger(tmp_path / "ledger.sqlite", hours=0.1)
    with pytest.raises(LedgerError, match="less than the 0.5 asked for"):
        BudgetSession.start(ledger, account="lab", budget_hours=0.5, device="cpu")
    assert [entry.kind for entry in ledger.entries()] == ["fund"]


def test_session_settles_even_when_the_work_fails(tmp_path):
    ledger = funded_ledger(tmp_path / "ledger.sqlite")
    with pytest.raises(RuntimeError), BudgetSession.start(ledger, account="lab", budget_hours=1.0, device="cpu"):
        raise RuntimeError("training crashed")
    assert [entry.kind for entry in ledger.entries()] == ["fund", "reserve", "settle"]


@pytest.fixture
def no_grace(monkeypatch):
    """The backstop without its grace, so that a test need not wait BACKSTOP_GRACE_S past a budget."""
    monkeypatch.setattr(budget_module, "BACKSTOP_GRACE_S", 0.0)


def test_work_that_checks_no_budget_is_stopped_when_the_reservation_is_used_up(tmp_path, no_grace):
    """The backstop: a stage with no step checks (here a sleep standing for an evaluation) is interrupted at
    the reservation (and its grace), the session settles as stopped by its budget, and the alarm is put away
    afterwards."""
    ledger = funded_ledger(tmp_path / "ledger.sqlite")
    budget = hours(1.0)  # one second of one CPU
    began = time.monotonic()
    with (
        pytest.raises(BudgetExhausted, match="used up its"),
        BudgetSession.start(ledger, account="lab", budget_hours=budget, device="cpu"),
    ):
        while time.monotonic() - began < 120:
            time.sleep(0.01)
    assert time.monotonic() - began < 120, "the backstop never fired"
    settle = ledger.entries(kind="settle")[0].payload
    assert settle["stopped_by_budget"] is True
    spent = next(v for k, v in settle["postings"].items() if k.startswith("@spent/")) / 1e6
    assert spent >= budget - 1e-6  # honest: it is charged what it metered, at least the reservation
    assert ledger.verify().ok
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL


def test_the_backstop_lets_a_checkpoint_save_finish_then_stops(tmp_path, no_grace):
    """A save under way when the reservation runs out is not cut (its steps would be lost): the stop waits
    for checkpoint_saved, after the run's spend is written into the checkpoint."""
    ledger = funded_ledger(tmp_path / "ledger.sqlite")
    with (
        pytest.raises(BudgetExhausted),
        BudgetSession.start(ledger, account="lab", budget_hours=hours(1.0), device="cpu") as session,
    ):
        session.saving_checkpoint()
        time.sleep(1.5)  # the save outlasts the reservation
        session.checkpoint_saved(tmp_path)
        pytest.fail("the backstop did not stop the session once the save was done")
    assert CheckpointSpend.read(tmp_path).spent_hours >= hours(1.0)
    assert ledger.entries(kind="settle")[0].payload["stopped_by_budget"] is True


def test_a_session_that_ends_in_time_leaves_no_alarm_behind(tmp_path):
    ledger = funded_ledger(tmp_path / "ledger.sqlite")
    with BudgetSession.start(ledger, account="lab", budget_hours=0.5, device="cpu") as session:
        assert session._backstop.armed and signal.getitimer(signal.ITIMER_REAL)[0] > 0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL


def test_a_session_outside_the_main_thread_runs_without_a_backstop(tmp_path):
    ledger = funded_ledger(tmp_path / "ledger.sqlite")
    armed = []

    def work():
        with (
            Ledger.open(ledger.path) as own,
            BudgetSession.start(own, account="lab", budget_hours=0.5, device="cpu") as s,
        ):
            armed.append(s._backstop.armed)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert armed == [False]


def test_plain_loop_guard_stops_saves_and_resume_continues_the_spend(tmp_path):
    ledger = funded_ledger(tmp_path / "ledger.sqlite")
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    budget = 1e-4  # 360 ms of CPU time
    with BudgetSession.start(ledger, account="lab", budget_hours=budget, device="cpu") as first:
        # As a session does: the loop stops short of the reservation, leaving room for what follows it (the
        # "after" evaluation), which the backstop at the reservation guards.
        first.guard.limit_hours = budget / 2
        first.loop_started()
        steps = 0
        while not first.step_done():
            steps += 1
            sum(range(20_000))  # a training step
        first.saving_checkpoint()
        first.checkpoint_saved(checkpoint)
        time.sleep(0.2)  # work after the checkpoint (an "after" evaluation): the run spent it too
    assert first.guard.stopped_at_hours <= budget / 2 + first.guard.last_step_hours
    saved = CheckpointSpend.read(checkpoint)
    assert saved.run == first.id
    assert first.guard.stopped_at_hours <= saved.spent_hours <= first.meter.hours

    with BudgetSession.start(
        ledger, account="lab", budget_hours=2 * budget, device="cpu", resume_from=checkpoint
    ) as second:
        assert second.run_spent_hours >= saved.spent_hours
        second.guard.limit_hours /= 2
        while not second.step_done():
            sum(range(20_000))
        second.saving_checkpoint()
        second.checkpoint_saved(checkpoint)
    # The resume starts from what the run was charged, the work after its checkpoint included.
    charged = ledger.entries(session=first.id, kind="settle")[0].payload["postings"][f"@spent/{first.id}"] / 1e6
    assert charged >= saved.spent_hours + hours(0.2)
    reservation = ledger.entries(session=second.id, kind="reserve")[0].payload
    assert reservation["resumes"]["spent_hours"] == charged
    assert reservation["postings"][f"@reserved/{second.id}"] == round((2 * budget - charged) * 1e6)
    # the ledger charges each session only what it metered; the checkpoint carries the run's total
    spent_second = ledger.entries(session=second.id, kind="settle")[0].payload["postings"][f"@spent/{second.id}"]
    assert spent_second == round(second.meter.hours * 1e6)
    final = CheckpointSpend.read(checkpoint)
    assert final.run == first.id and final.session == second.id
    assert charged + second.guard.stopped_at_hours <= final.spent_hours
    assert final.spent_hours <= charged + second.meter.hours


@pytest.mark.parametrize("spent", [-5, float("nan"), "0.1", None, True, 1e400])
def test_a_checkpoint_spend_that_is_not_hours_is_refused(tmp_path, spent):
    """A resume trusts no checkpoint count it cannot believe: a negative one would reserve more than the budget."""
    (tmp_path / SPEND_FILE).write_text(
        json.dumps({"run": "run-1", "session": "run-1", "spent_hours": spent}).replace("Infinity", "1e400")
    )
    with pytest.raises(LedgerError, match="spent_hours must be a finite number of hours >= 0|unreadable"):
        CheckpointSpend.read(tmp_path)


def test_a_run_is_charged_what_its_sessions_spent_and_an_open_ones_reservation(tmp_path):
    ledger = funded_ledger(tmp_path / "ledger.sqlite")
    first = ledger.reserve("lab", 0.5)
    run = first.payload["session"]
    ledger.settle(run, 0.2)
    ledger.reserve("lab", 0.25, resumes={"checkpoint": "c", "session": run, "run": run, "spent_hours": 0.1})
    ledger.reserve("lab", 0.125)  # another run's
    assert ledger.run_spent_hours(run) == pytest.approx(0.2 + 0.25)  # the open resume counts whole
    assert ledger.run_spent_hours("no-such-run") == 0


def test_resume_with_no_budget_left_is_refused(tmp_path):
    ledger = funded_ledger(tmp_path / "ledger.sqlite")
    CheckpointSpend("run-1", "run-1", 0.5).write(tmp_path)
    with pytest.raises(LedgerError, match="already spent 0.5 of its 0.5-hour budget"):
        BudgetSession.start(ledger, account="lab", budget_hours=0.5, device="cpu", resume_from=tmp_path)


def test_resume_from_a_checkpoint_without_spend_is_refused(tmp_path):
    ledger = funded_ledger(tmp_path / "ledger.sqlite")
    with pytest.raises(LedgerError, match=SPEND_FILE):
        BudgetSession.start(ledger, account="lab", budget_hours=0.5, device="cpu", resume_from=tmp_path)


def test_non_main_rank_meters_and_guards_but_never_writes(tmp_path):
    ledger = funded_ledger(tmp_path / "ledger.sqlite")
    with BudgetSession.start(ledger, account="lab", budget_hours=1.0, device="cpu", is_main=False) as session:
        session.step_done()
        session.checkpoint_saved(tmp_path)
    assert [entry.kind for entry in ledger.entries()] == ["fund"]
    assert not (tmp_path / SPEND_FILE).exists()


def test_session_writes_the_ledger_head_into_the_wandb_summary(tmp_path):
    ledger = funded_ledger(tmp_path / "ledger.sqlite")
    run = types.SimpleNamespace(id="run-abc", summary={})
    with BudgetSession.start(ledger, account="lab", budget_hours=1.0, device="cpu", wandb_run=run) as session:
        pass
    assert run.summary["ledger/head"] == str(ledger.head())
    assert run.summary["ledger/session"] == session.id
    assert ledger.entries(kind="reserve")[0].payload["wandb_run"] == "run-abc"
    assert ledger.verify(run.summary["ledger/head"]).ok


# ---- sessions killed without settling -------------------------------------------------------------


def test_repair_settles_a_killed_session_from_its_last_progress(location):
    funded_ledger(location, hours=2.0).close()
    session = killed_session(location, progress_hours=0.25)
    ledger = Ledger.open(location)
    assert [s.session for s in ledger.abandoned_sessions()] == [session]
    [outcome] = ledger.repair()
    settlement = outcome.settlement.payload
    assert settlement["postings"] == {f"@reserved/{session}": -1_000_000, f"@spent/{session}": 250_000, "lab": 750_000}
    assert settlement["basis"].startswith("repair: progress recorded at")
    assert ledger.open_sessions() == [] and ledger.repair() == []
    assert ledger.balance("lab").available_hours == pytest.approx(1.75)


def test_repair_charges_the_whole_reservation_when_no_progress_was_recorded(location):
    funded_ledger(location, hours=2.0).close()
    session = killed_session(location, progress_hours=None)
    ledger = Ledger.open(location)
    [outcome] = ledger.repair()
    assert outcome.settlement.payload["postings"] == {
        f"@reserved/{session}": -1_000_000,
        f"@spent/{session}": 1_000_000,
        "lab": 0,
    }
    assert "whole reservation charged" in outcome.settlement.payload["basis"]


def test_next_session_settles_abandoned_ones_first(location):
    funded_ledger(location, hours=2.0).close()
    abandoned = killed_session(location, progress_hours=0.1)
    ledger = Ledger.open(location)
    with BudgetSession.start(ledger, account="lab", budget_hours=0.5, device="cpu"):
        assert ledger.entries(session=abandoned, kind="settle")


def test_repair_leaves_a_running_session_open(location):
    running = funded_ledger(location)
    session = running.reserve("lab", 1.0).payload["session"]
    auditor = Ledger.open(location)  # another open file description: it cannot take the running session's lock
    assert auditor.abandoned_sessions() == []
    [outcome] = auditor.repair()
    assert outcome.session == session and outcome.settlement is None
    running.settle(session, 0.5)
    assert auditor.open_sessions() == []


# ---- a real Trainer --------------------------------------------------------------------------------


def _tiny_trainer(output_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(config)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (64, 16))]
    args = transformers.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=100_000,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=data)


@pytest.mark.slow
def test_trainer_stops_before_the_budget_saves_settles_and_resume_continues(tmp_path):
    ledger = funded_ledger(tmp_path / "ledger.sqlite", hours=1.0)
    budget = 2 / 3600  # two CPU-seconds
    trainer = _tiny_trainer(tmp_path / "out")
    with BudgetSession.start(ledger, account="lab", budget_hours=budget, device="cpu") as first:
        trainer.add_callback(first.trainer_callback())
        trainer.train()
    steps = trainer.state.global_step
    assert 0 < steps < 100_000  # the budget stopped it
    guard = first.guard
    assert guard.stopped_at_hours <= budget + guard.last_step_hours  # crossed by at most the last step
    checkpoint = tmp_path / "out" / f"checkpoint-{steps}"
    spend = json.loads((checkpoint / SPEND_FILE).read_text())
    assert spend["run"] == first.id and spend["spent_hours"] >= guard.stopped_at_hours
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "optimizer.pt").exists()
    settle = ledger.entries(session=first.id, kind="settle")[0].payload
    spent = settle["postings"][f"@spent/{first.id}"]
    assert settle["stopped_by_budget"] is True
    assert spent == round(first.meter.hours * 1e6)
    assert (tmp_path / "out" / "checkpoint-1").exists()  # the early save that measures a save's cost
    # The final save was projected too: the whole spend stays within one step and one save's jitter.
    assert spent / 1e6 <= budget + guard.last_step_hours + guard.save_hours
    assert settle["postings"]["lab"] == round(budget * 1e6) - spent  # the unused reservation refunded
    assert ledger.balance("lab").available_hours == pytest.approx(1.0 - spent / 1e6)

    resumed = _tiny_trainer(tmp_path / "out")
    with BudgetSession.start(
        ledger, account="lab", budget_hours=2 * budget, device="cpu", resume_from=checkpoint
    ) as second:
        resumed.add_callback(second.trainer_callback())
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step > steps
    final = json.loads((tmp_path / "out" / f"checkpoint-{resumed.state.global_step}" / SPEND_FILE).read_text())
    assert final["run"] == first.id
    assert final["spent_hours"] > spend["spent_hours"]  # continued from the checkpoint's spend
    second_settle = ledger.entries(session=second.id, kind="settle")[0].payload
    assert second_settle["postings"][f"@spent/{second.id}"] == round(second.meter.hours * 1e6)
    reserved = ledger.entries(session=second.id, kind="reserve")[0].payload["postings"][f"@reserved/{second.id}"]
    assert reserved == round(2 * budget * 1e6) - spent  # only what the run had left: its charge, not the checkpoint's
    assert second.guard.stopped_at_hours <= reserved / 1e6 + second.guard.last_step_hours
    assert ledger.verify().ok


# ---- all ranks stop together ------------------------------------------------------------------------


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        clock = FakeClock()
        meter = Meter("cpu", processes=2, clock=clock).start()
        # 2 processes x 1 s per step: rank 1's 7 s budget stops it after step 3 (6 + 2 > 7); rank 0's would not
        guard = SpendGuard(meter, limit_hours=hours(7) if rank == 1 else hours(1000))
        stopped_at_step = None
        for step in range(1, 10):
            clock.now += 1.0
            if guard.step_done():
                stopped_at_step = step
                break
        from welfare_offsets.ledger.distributed import sum_over_ranks

        result = {
            "stopped_at_step": stopped_at_step,
            "energy_sum": sum_over_ranks(1.5 if rank == 0 else 2.5),
            "energy_when_one_rank_lacks_it": sum_over_ranks(1.5 if rank == 0 else None),
        }
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(result, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_ranks_stop_at_the_same_step_and_energy_sums_over_ranks(tmp_path):
    pytest.importorskip("torch")
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ranks = [context.Process(target=_rank_main, args=(rank, str(tmp_path / "init"), str(tmp_path))) for rank in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=120)
        assert process.exitcode == 0
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [result["stopped_at_step"] for result in results] == [3, 3]
    assert [result["energy_sum"] for result in results] == [4.0, 4.0]
    assert [result["energy_when_one_rank_lacks_it"] for result in results] == [None, None]
