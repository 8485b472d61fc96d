"""float32 master weights: a bf16 parameter trains as far as a float32 one, and the doctor sees through the copies."""

import torch
import torch.nn as nn

from inplace_ttt.train.precision import MasterWeights


def test_small_steps_accumulate_in_the_copies_not_in_bf16():
    module = nn.Linear(1, 1, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        module.weight.fill_(1.0)
    masters = MasterWeights(module)
    opt = masters.attach(torch.optim.SGD([masters.stepped(p) for p in module.parameters()], lr=1e-4))
    plain = nn.Linear(1, 1, bias=False).to(torch.bfloat16)  # the same steps applied to bf16 in place
    reference = nn.Linear(1, 1, bias=False)  # and to float32
    for m in (plain, reference):
        with torch.no_grad():
            m.weight.fill_(1.0)
    plain_opt, reference_opt = (torch.optim.SGD(m.parameters(), lr=1e-4) for m in (plain, reference))
    for _ in range(100):
        for m, o in ((module, opt), (plain, plain_opt), (reference, reference_opt)):
            m.weight.grad = torch.ones_like(m.weight)
            o.step()
    ((_, master),) = masters.pairs.values()
    assert torch.equal(master, reference.weight.detach())  # the float32 run's weight, exactly (about 0.99)
    assert torch.equal(module.weight.detach(), reference.weight.detach().to(torch.bfloat16))  # written back, rounded once
    assert float(plain.weight) == 1.0  # every step below half of bf16's spacing at 1 was lost


def test_float32_parameters_are_stepped_as_they_are_and_the_doctor_sees_the_parameters():
    module = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).to(torch.bfloat16))
    masters = MasterWeights(module)
    assert set(masters.pairs) == {"1.weight", "1.bias"}
    assert masters.stepped(module[0].weight) is module[0].weight
    opt = torch.optim.AdamW([masters.stepped(p) for p in module.parameters()])
    seen = {id(p) for g in masters.seen_through(opt).param_groups for p in g["params"]}
    assert seen == {id(p) for p in module.parameters()}


def test_copies_travel_with_a_checkpoint(tmp_path):
    module = nn.Linear(3, 3).to(torch.bfloat16)
    masters = MasterWeights(module)
    with torch.no_grad():
        for _, m in masters.pairs.values():
            m.add_(1e-4)  # below bf16's resolution: only the copy holds it
    masters.save(tmp_path)
    again = MasterWeights(module)
    again.load(tmp_path)
    for name, (_, m) in masters.pairs.items():
        assert torch.equal(again.pairs[name][1], m)
    fresh = MasterWeights(module)
    fresh.load(tmp_path / "nothing-here")  # a float32 run's checkpoint: start from the parameters
    assert all(torch.equal(m, p.float()) for p, m in fresh.pairs.values())
