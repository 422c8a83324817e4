"""Resume on any device (issue 25, item 1): the generator states of a checkpoint are restored
on the CPU whatever device the run resumes on, and every other state lands where it belongs.

``torch.Generator.set_state`` takes only a CPU byte tensor; loading the checkpoint with
``map_location=<the run's device>`` used to put the saved states on that device and the
resume died with a TypeError on every GPU. The "meta" device reproduces that on a CPU.
"""

from __future__ import annotations

import pytest
import torch

from neuroreg.checkpoint import build_model, restore_trainer_state, save_checkpoint, trainer_state
from neuroreg.config import RunConfig
from neuroreg.similarity import SimilarityHead


def _state(tmp_path):
    cfg = RunConfig.from_dict({"model": {"width": 2}, "regularizer": {"target": "pixel", "alpha": 1.0}})
    torch.manual_seed(0)
    model = build_model(cfg, 10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    opt.step()  # momentum buffers in the optimizer state
    gen_data, gen_pairs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    torch.rand(5, generator=gen_data)
    torch.rand(7, generator=gen_pairs)
    state = trainer_state(cfg, model, opt, None, gen_data, gen_pairs, 10, 1, 3, 0.1, 0.5, 0.25, [{"epoch": 1}])
    path = save_checkpoint(tmp_path / "checkpoint_last.pt", state)
    return cfg, path, gen_data.get_state(), gen_pairs.get_state()


@pytest.mark.filterwarnings("ignore:.*meta:UserWarning")
def test_resume_onto_meta_device_restores_generators_on_cpu(tmp_path):
    """Fails on the code before the fix: the rng states were mapped to "meta" and set_state refused them."""
    cfg, path, data_state, pairs_state = _state(tmp_path)
    with torch.device("meta"):
        model = build_model(cfg, 10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen_data, gen_pairs = torch.Generator(), torch.Generator()
    epoch, best, history, init_sim = restore_trainer_state(
        path, torch.device("meta"), model, opt, None, gen_data, gen_pairs)
    assert (epoch, best, history, init_sim) == (3, 0.5, [{"epoch": 1}], 0.25)
    assert torch.equal(gen_data.get_state(), data_state)
    assert torch.equal(gen_pairs.get_state(), pairs_state)
    # The model and optimizer states stay on the run's device.
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(v.device.type == "meta" for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


def test_resume_on_cpu_restores_everything(tmp_path):
    cfg, path, data_state, pairs_state = _state(tmp_path)
    ref = torch.load(path, weights_only=True)
    model = build_model(cfg, 10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen_data, gen_pairs = torch.Generator(), torch.Generator()
    restore_trainer_state(path, torch.device("cpu"), model, opt, None, gen_data, gen_pairs)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref["model"][k])
    assert torch.equal(gen_data.get_state(), data_state) and torch.equal(gen_pairs.get_state(), pairs_state)
    assert len(opt.state) == len(list(model.parameters()))


@pytest.mark.filterwarnings("ignore:.*meta:UserWarning")
def test_resume_with_head_onto_meta(tmp_path):
    """The similarity head's running means and layer logits also follow the run's device."""
    cfg = RunConfig.from_dict({"model": {"width": 2}})
    head = SimilarityHead(["conv1", "conv5"], [2, 4])
    model = build_model(cfg, 10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
    path = save_checkpoint(tmp_path / "c.pt", trainer_state(cfg, model, opt, head, g1, g2, 10, 1, 1, 0.1, 0.0, 0.0, []))
    with torch.device("meta"):
        model_m = build_model(cfg, 10, 1)
        head_m = SimilarityHead(["conv1", "conv5"], [2, 4])
    opt_m = torch.optim.SGD(model_m.parameters(), lr=0.1)
    h1, h2 = torch.Generator(), torch.Generator()
    restore_trainer_state(path, torch.device("meta"), model_m, opt_m, head_m, h1, h2)
    assert torch.equal(h1.get_state(), g1.get_state()) and torch.equal(h2.get_state(), g2.get_state())
