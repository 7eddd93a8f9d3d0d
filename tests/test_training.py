"""EpochLoop: checkpoints and an interrupted run resumes to exactly the uninterrupted result."""

from pathlib import Path

import numpy as np
import pytest
import torch

from defectbench.training import EpochLoop, seed_everything


class Interrupted(Exception):
    pass


def _train(
    checkpoint: Path | None, epochs: int, stop_after: int | None = None
) -> tuple[torch.nn.Module, list]:
    seed_everything(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data_rng = np.random.default_rng(1)

    def epoch_fn(epoch: int) -> dict[str, float]:
        if stop_after is not None and epoch == stop_after:
            raise Interrupted
        x = torch.from_numpy(data_rng.normal(size=(16, 4)).astype(np.float32))
        loss = (model(x).squeeze(1) - x.sum(1)).pow(2).mean()  # dropout draws from the global torch RNG
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
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
