"""EpochLoop: checkpoints and an interrupted run resumes to exactly the uninterrupted result."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from defectbench import training
from defectbench.data.images import DataError
from defectbench.plan import Run
from defectbench.provenance import config_hash
from defectbench.runtime.runlock import hold_run
from defectbench.training import EpochLoop, seed_everything, training_run


class Interrupted(Exception):
    pass


def _train(
    checkpoint: Path | None,
    epochs: int,
    stop_after: int | None = None,
    lr: float = 0.1,
    width: int = 8,
    epoch_s: float = 0.0,
) -> tuple[torch.nn.Module, list]:
    seed_everything(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Dropout(0.3), torch.nn.Linear(width, 1))
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    data_rng = np.random.default_rng(1)

    def epoch_fn(epoch: int) -> dict[str, float]:
        if stop_after is not None and epoch == stop_after:
            raise Interrupted
        x = torch.from_numpy(data_rng.normal(size=(16, 4)).astype(np.float32))
        loss = (model(x).squeeze(1) - x.sum(1)).pow(2).mean()  # dropout draws from the global torch RNG
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        time.sleep(epoch_s)
        return {"loss": float(loss.detach())}

    log = EpochLoop(epochs, checkpoint, every=2).run(
        {"model": model, "optimiser": optimiser, "data_rng": data_rng}, epoch_fn
    )
    return model, log


def test_resume_after_interruption_gives_identical_weights(tmp_path: Path) -> None:
    reference, reference_log = _train(None, epochs=7)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupted):
        _train(
            checkpoint, epochs=7, stop_after=5
        )  # checkpoints after epochs 2 and 4, then crashes in epoch 5
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 4
    resumed, resumed_log = _train(checkpoint, epochs=7)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [row["loss"] for row in resumed_log] == [row["loss"] for row in reference_log]


def test_finished_checkpoint_runs_no_more_epochs(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    _train(checkpoint, epochs=3)
    calls = []
    log = EpochLoop(3, checkpoint).run({}, lambda epoch: calls.append(epoch) or {})
    assert calls == [] and len(log) == 3


# ---------------------------------------------------------------- issue 9: checkpoints from other settings


def _settings(**params: object) -> str:
    """The settings hash `defectbench.run.train` gives `training_run` (it hashes the resolved settings likewise)."""
    return config_hash(params)


def _interrupted(checkpoint: Path, **params: object) -> None:
    with training_run(_settings(**params)), pytest.raises(Interrupted):
        _train(checkpoint, epochs=7, stop_after=5, **params)  # checkpoints after epochs 2 and 4


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_checkpoint_from_another_lr_is_discarded_with_a_logged_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    _interrupted(checkpoint, lr=0.1)
    reference, reference_log = _train(None, epochs=7, lr=0.05)
    with training_run(_settings(lr=0.05)), caplog.at_level(logging.WARNING, logger="defectbench.training"):
        resumed, log = _train(checkpoint, epochs=7, lr=0.05)
    assert _same_weights(resumed, reference)  # trained from scratch, not a mix of both settings
    assert [row["loss"] for row in log] == [row["loss"] for row in reference_log]
    assert f"not resuming from {checkpoint}" in caplog.text and "other settings" in caplog.text


def test_checkpoint_of_another_layer_width_is_discarded_not_a_crash(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    _interrupted(checkpoint, width=8)
    with training_run(_settings(width=16)):
        model, log = _train(checkpoint, epochs=7, width=16)
    assert len(log) == 7 and _same_weights(model, _train(None, epochs=7, width=16)[0])


def test_checkpoint_that_does_not_fit_the_model_names_the_file(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    _interrupted(checkpoint)
    with training_run(_settings()), pytest.raises(DataError, match=rf"(?s){checkpoint}.*delete it"):
        _train(checkpoint, epochs=7, width=16)  # settings that do not describe the model: still named


def test_truncated_checkpoint_is_an_error_naming_the_file(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    _interrupted(checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with training_run(_settings()), pytest.raises(DataError, match=rf"{checkpoint}.*truncated or damaged"):
        _train(checkpoint, epochs=7)


def test_fewer_epochs_than_the_checkpoint_trains_only_those(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    _interrupted(checkpoint)  # at epoch 4
    with training_run(_settings()):
        model, log = _train(checkpoint, epochs=3)
    assert [row["epoch"] for row in log] == [0, 1, 2]
    assert _same_weights(model, _train(None, epochs=3)[0])


def test_checkpoint_of_another_code_version_is_discarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    _interrupted(checkpoint)
    assert torch.load(checkpoint, weights_only=False)["code"] == training.code_version()
    monkeypatch.setattr(training, "code_version", lambda: "0.1.0+edited")
    with training_run(_settings()):
        model, log = _train(checkpoint, epochs=7)
    assert len(log) == 7 and _same_weights(model, _train(None, epochs=7)[0])


def test_wall_time_after_a_resume_counts_the_whole_training(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    with training_run(_settings()) as first, pytest.raises(Interrupted):
        _train(checkpoint, epochs=7, stop_after=5, epoch_s=0.1)  # 4 epochs up to the checkpoint
    assert first.elapsed_s() >= 0.5
    with training_run(_settings()) as second:
        _train(checkpoint, epochs=7, epoch_s=0.1)  # the 3 remaining epochs
    assert second.resumed_s >= 0.4  # from the checkpoint's record
    assert second.elapsed_s() >= 0.7  # all 7 epochs, not the 0.3 s of the resumed part


def _hold(directory: str, held: mp.synchronize.Event, release: mp.synchronize.Event) -> None:
    with hold_run(Path(directory)):
        held.set()
        release.wait(30)


def test_a_run_directory_is_held_by_one_job_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job left running (snakemake was SIGKILLed, then --unlock) holds its run: a second one fails clearly."""
    from defectbench.run import train

    monkeypatch.chdir(tmp_path)
    run = Run("ksdd2", "ksdd2", "segdec_ksdd2_n16", 0)
    context = mp.get_context("fork")
    held, release = context.Event(), context.Event()
    orphan = context.Process(target=_hold, args=(str(run.directory), held, release), daemon=True)
    orphan.start()
    try:
        assert held.wait(30)
        with pytest.raises(
            RuntimeError, match=rf"{run.directory} is in use by another job \(pid {orphan.pid}"
        ):
            train(
                run, {}, None, run.directory / "model.pt", run.directory / "log.csv", run.directory / "t.json"
            )
    finally:
        release.set()
        orphan.join(30)
    with hold_run(run.directory):  # free again once the first job ended
        assert os.path.exists(run.directory / ".lock")
