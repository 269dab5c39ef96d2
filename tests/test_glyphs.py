"""Procedural glyphs: deterministic, classes distinct, the OmniglotData interface, the offline fallback."""
import pytest
import torch

from mamlkit.data import omniglot
from mamlkit.data.episodes import EpisodeSampler
from mamlkit.data.glyphs import make_glyphs
from mamlkit.data.omniglot import OmniglotData, load_omniglot_or_glyphs, split_characters

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def glyphs():
    return make_glyphs(characters=40, drawers=20, seed=0)


def test_interface_matches_omniglot(glyphs):
    assert isinstance(glyphs, OmniglotData)
    assert glyphs.images.shape == (40, 20, 28, 28) and glyphs.images.dtype == torch.uint8
    assert len(glyphs.names) == 40 == len(set(glyphs.names))
    assert "NOT Omniglot" in glyphs.source
    # Omniglot's polarity: mostly background 0, strokes up to 255
    assert (glyphs.images == 0).float().mean() > 0.6 and glyphs.images.max() == 255
    # every drawing has ink, inside the frame
    ink = glyphs.images.float().sum(dim=(2, 3))  # (characters, drawers)
    assert ink.min() > 0
    # it plugs into the rest of the pipeline
    train, test = split_characters(glyphs, test_characters=10)
    sampler = EpisodeSampler(train.images, n_way=5, k_shot=1, q_query=5, meta_batch_size=2)
    assert sampler.sample(torch.Generator().manual_seed(0))[0].shape == (2, 5, 1, 28, 28)


def test_deterministic_per_seed_and_prefix_stable(glyphs):
    assert torch.equal(make_glyphs(characters=40, seed=0).images, glyphs.images)
    assert torch.equal(make_glyphs(characters=5, seed=0).images, glyphs.images[:5])  # character c is fixed
    assert not torch.equal(make_glyphs(characters=5, seed=1).images, glyphs.images[:5])


def test_classes_differ_more_than_drawers_of_one_class(glyphs):
    x = glyphs.images.float().flatten(2) / 255  # (characters, drawers, 784)
    within = torch.stack([torch.cdist(c, c).sum() / (20 * 19) for c in x]).mean()  # same character, other drawer
    prototypes = x[:, 0]  # drawer 0 of every character
    d = torch.cdist(prototypes, prototypes)
    between = d.sum() / (40 * 39)
    assert within < 0.85 * between, (within, between)
    # and drawers are not copies of each other
    assert within > 0.1 * between
    # 40-way 1-shot nearest neighbour in pixel space (drawers 1..19 against drawer 0) is far above
    # chance (1/40); real Omniglot scores ~0.2 here, the glyphs ~0.5
    nearest = torch.cdist(x[:, 1:].transpose(0, 1), prototypes).argmin(dim=2)  # (19, characters)
    accuracy = (nearest == torch.arange(40)).float().mean()
    assert accuracy > 0.3, accuracy


@pytest.mark.parametrize("kw, name", [(dict(characters=0), "characters"), (dict(drawers=-2), "drawers"),
                                      (dict(characters=2.0), "characters"), (dict(seed=-1), "seed")])
def test_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        make_glyphs(**kw)


def test_fallback_warns_loudly_only_when_nothing_is_found(tmp_path, monkeypatch):
    monkeypatch.delenv("MAMLKIT_DATA", raising=False)
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(omniglot, "shared_dir", lambda: tmp_path / "no-shared")
    with pytest.warns(UserWarning, match="NOT Omniglot") as record:
        data = load_omniglot_or_glyphs(characters=6)
    message = str(record[0].message)
    assert "images_background.zip" in message and "MAMLKIT_DATA" in message  # says where to put the data
    assert data.images.shape == (6, 20, 28, 28) and "NOT Omniglot" in data.source
    assert torch.equal(data.images, make_glyphs(characters=6).images)
    # an explicit path that is wrong is an error, not a silent fallback
    with pytest.raises(FileNotFoundError):
        load_omniglot_or_glyphs(tmp_path / "missing")
    monkeypatch.setenv("MAMLKIT_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="MAMLKIT_DATA"):
        load_omniglot_or_glyphs()


@pytest.mark.skipif(not (omniglot.shared_dir() / "images_background_small1.zip").is_file(),
                    reason="no Omniglot subset in ../shared/omniglot")
def test_no_fallback_when_omniglot_is_there(tmp_path, monkeypatch, recwarn):
    monkeypatch.delenv("MAMLKIT_DATA", raising=False)
    data = load_omniglot_or_glyphs(cache_dir=tmp_path / "cache")
    assert data.source.startswith("Omniglot") and len(data.names) == 242
    assert not [w for w in recwarn if "NOT Omniglot" in str(w.message)]
