"""Omniglot: source resolution, reading, de-duplication, preprocessing, cache, splits, rotations, errors.

Real-data tests read ../shared/omniglot (skipped when it is absent); everything else runs on small
zips written to tmp_path in Omniglot's layout. No test writes into the user's cache or the repository.
"""
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mamlkit.data import omniglot
from mamlkit.data.omniglot import (
    OmniglotData,
    download_omniglot,
    find_omniglot,
    load_omniglot,
    preprocess,
    rotate_classes,
    split_characters,
)

torch.set_num_threads(1)
SHARED = omniglot.shared_dir()
needs_shared = pytest.mark.skipif(
    not (SHARED / "images_background_small1.zip").is_file(), reason=f"no Omniglot subset at {SHARED}"
)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No user cache, no MAMLKIT_DATA from the caller's shell: every default path points into tmp_path."""
    monkeypatch.delenv("MAMLKIT_DATA", raising=False)
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "user-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def drawing(character: int, drawer: int, size=105, mode="1") -> Image.Image:
    """A black stroke on white whose position encodes the character; the drawer adds a small shift."""
    im = Image.new("L", (size, size), 255)
    y = 10 + 12 * character + drawer % 3
    ImageDraw.Draw(im).line([(10, y), (90, y + 5)], fill=0, width=4)
    return im.convert(mode)


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_zip(path: Path, set_name="images_background", alphabets=(("Alpha", 2), ("Beta", 1)), drawers=20,
              start=0, **kw) -> Path:
    """A zip in the official layout: <set>/<Alphabet>/characterNN/<id>_<drawer>.png."""
    with zipfile.ZipFile(path, "w") as z:
        c = start
        for alphabet, n in alphabets:
            for k in range(1, n + 1):
                for d in range(1, drawers + 1):
                    z.writestr(f"{set_name}/{alphabet}/character{k:02d}/{1000 + c:04d}_{d:02d}.png", png(drawing(c, d, **kw)))
                c += 1
    return path


@pytest.fixture
def small_set(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_zip(data / "images_background.zip")
    return data


# ----------------------------------------------------------------------------------------------
# real data


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def shared_data(shared_cache):
    return load_omniglot(SHARED, cache_dir=shared_cache)


@needs_shared
def test_shared_subset_deduplicated_counts(shared_data):
    # the README's known answer: union of small1 and small2 = 8 alphabets, 242 characters, 4,840 images
    assert shared_data.images.shape == (242, 20, 28, 28) and shared_data.images.dtype == torch.uint8
    assert len(shared_data.alphabets) == 8 and len(set(shared_data.names)) == 242
    # independent count straight from the two zips' listings
    keys = set()
    for name in ("images_background_small1.zip", "images_background_small2.zip"):
        with zipfile.ZipFile(SHARED / name) as z:
            keys |= {"/".join(m.split("/")[1:3]) for m in z.namelist() if m.endswith(".png")}
    assert keys == set(shared_data.names)
    assert sum(n.startswith("Greek/") for n in shared_data.names) == 24  # Greek counted once, not 48


@needs_shared
def test_shared_values_polarity_and_pixels_match_an_independent_resize(shared_data):
    x = shared_data.images.float() / 255
    assert (shared_data.images == 0).float().mean() > 0.6  # mostly background 0
    assert 0.02 < x.mean() < 0.2 and shared_data.images.max() == 255  # strokes are 1 (255)
    # one image, read and resized with PIL instead of our code: same picture (not transposed, not inverted)
    i = shared_data.names.index("Greek/character05")
    with zipfile.ZipFile(SHARED / "images_background_small1.zip") as z:
        member = sorted(m for m in z.namelist()
                        if m.startswith("images_background_small1/Greek/character05/") and m.endswith(".png"))[0]
        im = Image.open(io.BytesIO(z.read(member))).convert("L")
    reference = 1 - np.asarray(im.resize((28, 28), Image.BOX), dtype=np.float64) / 255
    ours = x[i, 0].numpy()
    assert np.abs(ours - reference).mean() < 0.05, np.abs(ours - reference).mean()
    assert np.abs(ours - reference.T).mean() > 2 * np.abs(ours - reference).mean()


@needs_shared
def test_shared_second_load_reads_the_cache(shared_data, shared_cache):
    assert not shared_data.from_cache
    again = load_omniglot(SHARED, cache_dir=shared_cache)
    assert again.from_cache and torch.equal(again.images, shared_data.images) and again.names == shared_data.names


@needs_shared
def test_find_omniglot_uses_shared_folder_when_nothing_else(monkeypatch):
    assert find_omniglot() == SHARED
    monkeypatch.setenv("MAMLKIT_DATA", str(SHARED / "images_background_small2.zip"))
    assert find_omniglot() == SHARED / "images_background_small2.zip"


# ----------------------------------------------------------------------------------------------
# source resolution


def test_find_order_explicit_then_env_then_cache(small_set, tmp_path, monkeypatch):
    monkeypatch.setattr(omniglot, "shared_dir", lambda: tmp_path / "no-shared")
    other = tmp_path / "other"
    other.mkdir()
    write_zip(other / "images_evaluation.zip")
    monkeypatch.setenv("MAMLKIT_DATA", str(other))
    assert find_omniglot(small_set) == small_set  # explicit path first
    assert find_omniglot() == other  # then MAMLKIT_DATA
    monkeypatch.delenv("MAMLKIT_DATA")
    cache = omniglot.cache_root() / "omniglot"
    cache.mkdir(parents=True)
    write_zip(cache / "images_background_small1.zip")
    assert find_omniglot() == cache  # then the user cache that download_omniglot fills


def test_nothing_found_says_where_to_put_which_files(tmp_path, monkeypatch):
    monkeypatch.setattr(omniglot, "shared_dir", lambda: tmp_path / "no-shared")
    with pytest.raises(FileNotFoundError) as info:
        find_omniglot()
    msg = str(info.value)
    for words in ("images_background.zip", "images_evaluation.zip", "images_background_small1.zip",
                  "images_background_small2.zip", "MAMLKIT_DATA", str(tmp_path / "no-shared")):
        assert words in msg, words
    with pytest.raises(FileNotFoundError, match="path: .*does-not-exist"):
        find_omniglot(tmp_path / "does-not-exist")


def test_folder_not_in_layout_is_a_clear_error(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not in Omniglot's layout.*images_background.zip"):
        find_omniglot(tmp_path / "stuff")


def test_extracted_folder_reads_like_the_zip(small_set, tmp_path):
    extracted = tmp_path / "extracted"
    with zipfile.ZipFile(small_set / "images_background.zip") as z:
        z.extractall(extracted)
    from_folder = load_omniglot(extracted, cache_dir=tmp_path / "c1")
    from_zip = load_omniglot(small_set, cache_dir=tmp_path / "c2")
    assert from_folder.names == from_zip.names == ["Alpha/character01", "Alpha/character02", "Beta/character01"]
    assert torch.equal(from_folder.images, from_zip.images)
    # pointing at the set folder itself works too
    assert torch.equal(load_omniglot(extracted / "images_background", cache_dir=tmp_path / "c3").images,
                       from_zip.images)


def test_duplicates_across_sets_count_once(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_zip(data / "images_background_small1.zip", "images_background_small1", (("Greek", 2), ("Korean", 1)))
    write_zip(data / "images_background_small2.zip", "images_background_small2", (("Greek", 2), ("Tagalog", 1)))
    d = load_omniglot(data, cache_dir=tmp_path / "cache")
    assert d.names == ["Greek/character01", "Greek/character02", "Korean/character01", "Tagalog/character01"]
    assert d.images.shape == (4, 20, 28, 28) and d.alphabets == ["Greek", "Korean", "Tagalog"]


# ----------------------------------------------------------------------------------------------
# cache


def test_cache_second_load_fast_path_and_truncated_cache_rebuilt(small_set, tmp_path):
    cache = tmp_path / "cache"
    first = load_omniglot(small_set, cache_dir=cache)
    assert not first.from_cache
    second = load_omniglot(small_set, cache_dir=cache)
    assert second.from_cache and torch.equal(first.images, second.images) and first.names == second.names
    (file,) = cache.glob("*.pt")
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # a torn write
    with pytest.warns(UserWarning, match="unreadable"):
        third = load_omniglot(small_set, cache_dir=cache)
    assert not third.from_cache and torch.equal(third.images, first.images)
    assert load_omniglot(small_set, cache_dir=cache).from_cache  # the rebuilt file is good again
    assert [p.name for p in cache.iterdir()] == [file.name]  # no temporary files left


def test_cache_rebuilt_when_source_changes_or_contents_are_wrong(small_set, tmp_path):
    cache = tmp_path / "cache"
    load_omniglot(small_set, cache_dir=cache)
    (file,) = cache.glob("*.pt")
    # a readable file with a wrong shape is not trusted
    state = torch.load(file, weights_only=True)
    torch.save({**state, "images": state["images"][:, :5]}, file)
    assert not load_omniglot(small_set, cache_dir=cache).from_cache
    # the source changes (another zip, one more character): rebuilt, with the new character
    write_zip(small_set / "images_background.zip", alphabets=(("Alpha", 3), ("Beta", 1)))
    changed = load_omniglot(small_set, cache_dir=cache)
    assert not changed.from_cache and len(changed.names) == 4


def test_default_cache_goes_to_the_user_cache_not_the_repo(small_set, tmp_path):
    load_omniglot(small_set)
    assert len(list((tmp_path / "user-cache" / "processed").glob("omniglot-*.pt"))) == 1


# ----------------------------------------------------------------------------------------------
# bad data


def test_truncated_zip_is_a_clear_error_naming_the_file(small_set, tmp_path):
    z = small_set / "images_background.zip"
    z.write_bytes(z.read_bytes()[:3000])
    with pytest.raises(ValueError, match="images_background.zip.*not a readable zip"):
        load_omniglot(small_set, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_corrupt_member_is_a_clear_error(small_set, tmp_path):
    z = small_set / "images_background.zip"
    raw = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:  # flip bytes inside the first image's data; the directory stays intact
        info = zf.infolist()[0]
    start = info.header_offset + 30 + len(info.filename) + 20
    raw[start:start + 8] = bytes(255 - b for b in raw[start:start + 8])
    z.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="images_background.zip: cannot read .*1000_01.png.*CRC"):
        load_omniglot(small_set, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_wrong_layout_inside_zip(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with zipfile.ZipFile(data / "images_background.zip", "w") as z:
        z.writestr("images_background/Alpha/0001_01.png", png(drawing(0, 1)))  # no characterNN level
    with pytest.raises(ValueError, match="0001_01.png is not in Omniglot's layout"):
        load_omniglot(data, cache_dir=tmp_path / "cache")
    write_zip(data / "images_background.zip", drawers=19)
    with pytest.raises(ValueError, match="Alpha/character01 has 19 images"):
        load_omniglot(data, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("kw, words", [(dict(size=64), "64x64"), (dict(mode="RGB"), "mode 'RGB'")])
def test_image_of_wrong_size_or_mode(tmp_path, kw, words):
    data = tmp_path / "data"
    data.mkdir()
    write_zip(data / "images_background.zip", alphabets=(("Alpha", 1),), **kw)
    with pytest.raises(ValueError, match=words):
        load_omniglot(data, cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------------------------
# download (offline: a file:// URL stands in for GitHub)


def test_download_atomic_and_checked(small_set, tmp_path, monkeypatch):
    from mamlkit.data import omniglot

    # the real images_evaluation.zip's pinned md5 refuses a stand-in
    served = tmp_path / "served"
    served.mkdir()
    (served / "images_evaluation.zip").write_bytes((small_set / "images_background.zip").read_bytes())
    with pytest.raises(ValueError, match="images_evaluation.zip: md5 .* does not match the pinned 6b91aef0"):
        download_omniglot(tmp_path / "dl", sets=("images_evaluation",), url=served.as_uri() + "/{name}.zip")
    # below, the small stand-in zips play the full sets: unpin those (size and zip integrity only)
    monkeypatch.setitem(omniglot.MD5, "images_background", None)
    monkeypatch.setitem(omniglot.MD5, "images_evaluation", None)
    (served / "images_background.zip").write_bytes((small_set / "images_background.zip").read_bytes())
    url = served.as_uri() + "/{name}.zip"
    dest = download_omniglot(tmp_path / "dl", sets=("images_background",), url=url)
    assert sorted(p.name for p in dest.iterdir()) == ["images_background.zip"]
    assert load_omniglot(dest, cache_dir=tmp_path / "cache").images.shape == (3, 20, 28, 28)
    # a truncated download fails the zip check; nothing (no .part, no zip) is left behind
    (served / "images_evaluation.zip").write_bytes((small_set / "images_background.zip").read_bytes()[:2000])
    with pytest.raises(ValueError, match="images_evaluation.zip"):
        download_omniglot(tmp_path / "dl", sets=("images_evaluation",), url=url)
    assert sorted(p.name for p in dest.iterdir()) == ["images_background.zip"]
    # a pinned checksum that does not match is refused
    (served / "images_background_small1.zip").write_bytes((small_set / "images_background.zip").read_bytes())
    with pytest.raises(ValueError, match="sha256"):
        download_omniglot(tmp_path / "dl", sets=("images_background_small1",), url=url)
    assert sorted(p.name for p in dest.iterdir()) == ["images_background.zip"]
    with pytest.raises(ValueError, match="sets"):
        download_omniglot(tmp_path / "dl", sets="images_background", url=url)
    # offline: a clear error that says where to put the files, and no file left
    with pytest.raises(ConnectionError, match="url: could not download.*images_background_small2.zip"):
        download_omniglot(tmp_path / "dl", sets=("images_background_small2",), url=url)
    assert sorted(p.name for p in dest.iterdir()) == ["images_background.zip"]


# ----------------------------------------------------------------------------------------------
# preprocess


def test_preprocess_polarity_range_and_position():
    im = Image.new("L", (105, 105), 255)
    ImageDraw.Draw(im).rectangle([0, 0, 51, 51], fill=0)  # a black square, top-left quadrant
    out = preprocess(im)
    assert out.shape == (1, 28, 28) and out.dtype == torch.uint8
    assert out[0, :12, :12].min() == 255 and out[0, 15:, :].max() == 0 and out[0, :, 15:].max() == 0
    # a 28x28 image is only inverted, exactly
    a = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    assert torch.equal(preprocess(a)[0], torch.from_numpy(255 - a))
    assert torch.equal(preprocess(a, invert=False)[0], torch.from_numpy(a))
    # uniform gray c -> uniform 255 * (1 - c)
    assert torch.equal(preprocess(np.full((60, 60), 0.25))[0], torch.full((28, 28), 191, dtype=torch.uint8))


def test_preprocess_modes_agree_and_nonsquare_is_padded_not_stretched():
    im = drawing(3, 1, mode="L")
    gray = preprocess(im)
    assert torch.equal(preprocess(im.convert("RGB")), gray)
    assert torch.equal(preprocess(im.convert("1")), gray)
    assert torch.equal(preprocess(torch.from_numpy(np.array(im))), gray)
    rgba = im.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: all background, whatever the colour underneath
    assert preprocess(rgba).max() == 0
    batch = preprocess([im, im.convert("RGB"), Image.new("L", (50, 50), 255)])  # mixed sizes and modes
    assert batch.shape == (3, 28, 28) and torch.equal(batch[1], gray[0]) and batch[2].max() == 0
    # a wide image: a full-height black bar stays full height and lands in the middle band of rows
    wide = Image.new("L", (210, 105), 255)
    ImageDraw.Draw(wide).rectangle([100, 0, 109, 104], fill=0)
    out = preprocess(wide)[0].float()
    rows = out.sum(dim=1)
    assert rows[:6].max() == 0 and rows[-6:].max() == 0 and rows[8:20].min() > 0


@pytest.mark.parametrize(
    "images, error, words",
    [
        (Image.new("CMYK", (40, 40)), ValueError, "mode 'CMYK'"),
        (np.full((40, 40), 2.0), ValueError, r"\[0, 1\]"),
        (np.full((40, 40), 300), ValueError, "0..255"),
        (np.zeros((5, 5)), ValueError, "at least 8x8"),
        (torch.zeros(4, 1, 40, 40), ValueError, "channels-first"),
        (np.zeros((40, 40), dtype=complex), TypeError, "complex"),
        ("a.png", TypeError, "str"),
        ([], ValueError, "empty"),
    ],
)
def test_preprocess_errors(images, error, words):
    with pytest.raises(error, match=words):
        preprocess(images)


# ----------------------------------------------------------------------------------------------
# split and rotations


def fake_data(characters=30):
    images = torch.randint(0, 256, (characters, 20, 28, 28), dtype=torch.uint8)
    return OmniglotData(images, [f"A{i // 10}/character{i % 10:02d}" for i in range(characters)], "fake")


def test_split_by_character_reproducible_and_disjoint():
    data = fake_data(30)
    train, test = split_characters(data, test_characters=8, seed=1)
    again_train, again_test = split_characters(data, test_characters=8, seed=1)
    assert train.names == again_train.names and test.names == again_test.names
    assert len(test.names) == 8 and len(train.names) == 22
    assert not set(train.names) & set(test.names) and set(train.names) | set(test.names) == set(data.names)
    for part in (train, test):  # images follow their names
        for name, im in zip(part.names, part.images):
            assert torch.equal(im, data.images[data.names.index(name)])
    assert split_characters(data, test_characters=8, seed=2)[1].names != test.names
    # the paper's proportion by default: 423 of 1,623
    assert len(split_characters(fake_data(242))[1].names) == round(242 * 423 / 1623)
    for bad in (0, 30, -1, 2.5):
        with pytest.raises(ValueError, match="test_characters"):
            split_characters(data, test_characters=bad)


def test_rotations_are_exact_rot90():
    images = fake_data(3).images
    rotated = rotate_classes(images)
    assert rotated.shape == (12, 20, 28, 28)
    for k in range(4):
        for c in range(3):
            for e in (0, 19):
                assert np.array_equal(rotated[k * 3 + c, e].numpy(), np.rot90(images[c, e].numpy(), k))
    with pytest.raises(ValueError, match="H == W"):
        rotate_classes(torch.zeros(2, 3, 28, 20, dtype=torch.uint8))
