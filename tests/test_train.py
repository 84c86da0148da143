"""Training from scratch: a run stopped at an epoch boundary and resumed equals an uninterrupted one."""
import json
from pathlib import Path

import pytest
import torch

from natfast import checkpoint as ckpt
from natfast import train as train_module
from natfast.config import TrainConfig
from natfast.train import Trainer

# Drop-path on (it draws random numbers from epoch 1 on), the auxiliary head, cutout: all that is random.
TINY = dict(arch="NAT_DARTS", epochs=3, batch_size=32, channels=6, layers=5, train_limit=96, drop_path=0.3,
            auxiliary_weight=0.4, progress=False)


class _Stopped(Exception):
    pass


def _metrics(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_across_an_epoch_boundary_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    straight = Trainer(TrainConfig(out=str(tmp_path / "straight"), **TINY), log=lambda _: None)
    straight.run()

    # Killed right after epoch 1's checkpoint (2 epochs done): the next save raises.
    saves = []
    real_save = ckpt.save

    def save_then_stop(state, path):
        real_save(state, path)
        saves.append(path)
        if len(saves) == 2:
            raise _Stopped

    monkeypatch.setattr(train_module.ckpt, "save", save_then_stop)
    with pytest.raises(_Stopped):
        Trainer(TrainConfig(out=str(tmp_path / "resumed"), **TINY), log=lambda _: None).run()
    monkeypatch.setattr(train_module.ckpt, "save", real_save)
    resumed = Trainer(TrainConfig(out=str(tmp_path / "resumed"), resume=True, **TINY), log=lambda _: None)
    resumed.run()

    assert resumed.epoch == straight.epoch == 3
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.optimizer.state_dict()["state"].values(), resumed.optimizer.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert _metrics(tmp_path / "straight") == _metrics(tmp_path / "resumed")
