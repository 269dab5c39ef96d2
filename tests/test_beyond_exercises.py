"""Notebook 07's exercise references are what the library runs (mamlkit/course/diagnose.py, section 07, against
mamlkit.algorithms); the checks' named mistakes are in test_exercise_diagnoses.py's catalogue."""
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mamlkit import algorithms
from mamlkit.course import diagnose as d


def test_anil_reference_is_the_librarys_anil():
    model, params, sx, sy, qx, qy = d.anil_fixture()
    theta = d.reference_anil_adapt(model, params, sx, sy, 0.3, 2)
    by_hand = F.cross_entropy(functional_call(model, theta, (qx,)), qy)
    library, _, _ = algorithms.anil_task_losses(model, params, sx[None], sy[None], qx[None], qy[None],
                                                loss_fn=F.cross_entropy, inner_lr=0.3, steps=2, head="head")
    torch.testing.assert_close(library[0], by_hand)


def test_prototype_reference_is_the_librarys():
    g = torch.Generator().manual_seed(0)
    s, q, y = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g), torch.tensor([2, 0, 1, 1, 0, 2])
    library = algorithms.protonet_logits(q, algorithms.prototypes(s, y, 3))
    torch.testing.assert_close(d.reference_prototype_logits(s, y, q, 3), library)


def test_protomaml_reference_is_the_librarys():
    c = torch.randn(4, 3)
    torch.testing.assert_close(algorithms.protomaml_head(c, torch.arange(4), 4), d.reference_protomaml_head(c))
