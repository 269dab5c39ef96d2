"""Omniglot: find it, download it, read it, preprocess it to 28x28, cache it, split it by character.

Lake, Salakhutdinov, Tenenbaum (2015), "Human-level concept learning through probabilistic program
induction", Science 350(6266): 1,623 handwritten characters from 50 alphabets, each drawn once by
20 people ("drawers"), 105x105 pixels, 1-bit, black strokes on white.

Finn, Abbeel, Levine (2017), Section 5.2, following Santoro et al. (2016) and Vinyals et al. (2016):
images downsampled to 28x28, 1,200 characters for meta-training and the rest for testing (split by
character, so test classes are never seen in training), and the training classes augmented with
rotations by multiples of 90 degrees, each rotation a new class.

    find_omniglot(path)        where the data is (argument, $MAMLKIT_DATA, ../shared/omniglot, user cache)
    download_omniglot()        the official zips into the user cache (atomic, checksummed)
    preprocess(images)         any images -> uint8 (N, 28, 28), strokes 255 on background 0 (preprocess.py)
    load_omniglot(path)        OmniglotData(images (characters, 20, 28, 28), names, source), cached
    split_characters(data)     (train, test) by character, seeded
    rotate_classes(images)     (C, ...) -> (4*C, ...): rotations by 0/90/180/270 degrees as new classes
    load_omniglot_or_glyphs()  Omniglot, or (with a loud warning) procedural glyphs when none is found

The official layout, inside a zip or an extracted folder: `<set>/<Alphabet>/characterNN/<id>_<drawer>.png`.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_save
from ..paths import PACKAGE
from ..progress import progress_bar
from .characters import RAW_SIZE, OmniglotData  # noqa: F401  (OmniglotData is part of this module's API)
from .preprocess import SIZE, preprocess  # preprocess is part of this module's API too

SETS = ("images_background", "images_evaluation", "images_background_small1", "images_background_small2")
URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}.zip"
# Checksums of the official zips. sha256 of the two small ones: published in ../shared/omniglot/README.md
# and checked against the files. The full pair: the md5 sums torchvision.datasets.Omniglot has verified
# its downloads with for years (no sha256 of them is published; this project's machines are offline).
# A set with neither is only checked for a non-empty, readable zip.
SHA256 = {
    "images_background_small1": "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    "images_background_small2": "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
    "images_background": None,
    "images_evaluation": None,
}
MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
DRAWERS = 20  # drawers per character
CACHE_FORMAT = "mamlkit-omniglot-v1"  # change it when preprocessing changes: old caches then rebuild
CHARACTER_PATTERN = re.compile(r"character\d+")
IMAGE_PATTERN = re.compile(r"\d+_(\d+)\.png")
LAYOUT = "<set>/<Alphabet>/characterNN/<id>_<drawer>.png (e.g. images_background/Greek/character01/0394_01.png)"


# ----------------------------------------------------------------------------------------------
# where the data is


def cache_root() -> Path:
    """The per-user cache folder: $MAMLKIT_CACHE, else $XDG_CACHE_HOME/mamlkit, else ~/.cache/mamlkit."""
    if os.environ.get("MAMLKIT_CACHE"):
        return Path(os.environ["MAMLKIT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mamlkit"


def shared_dir() -> Path:
    """../shared/omniglot next to the repository (mamlkit/ sits in the repository root)."""
    return PACKAGE.parents[1] / "shared" / "omniglot"  # a documented fallback for a source checkout (paths.py)


def source_files(path: Path) -> list[Path]:
    """The Omniglot zips / extracted set folders that `path` holds (a zip, a set folder, or a folder of them)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    found = []
    for name in SETS:  # a zip and its extracted folder are the same set: take the zip
        if (path / f"{name}.zip").is_file():
            found.append(path / f"{name}.zip")
        elif (path / name).is_dir():
            found.append(path / name)
    if not found and any(CHARACTER_PATTERN.fullmatch(p.name) for p in path.glob("*/*") if p.is_dir()):
        found.append(path)  # an extracted set folder with a custom name: <path>/<Alphabet>/characterNN/
    return found


def _not_found_message(looked: list[str]) -> str:
    return (
        "No Omniglot data found. Looked in:\n  " + "\n  ".join(looked) + "\n"
        "Put images_background.zip and images_evaluation.zip (the full set, 1,623 characters) or "
        "images_background_small1.zip and images_background_small2.zip (a 242-character subset), from "
        "https://github.com/brendenlake/omniglot/tree/master/python, into one of these folders (or their "
        "extracted folders), or set the environment variable MAMLKIT_DATA to the folder that holds them, "
        "or run `python -m mamlkit.data.omniglot --download` where there is internet."
    )


def find_omniglot(path: str | os.PathLike | None = None) -> Path:
    """The folder (or zip) holding Omniglot, looked for in this order:

    1. `path`, when given (a zip, an extracted set folder, or a folder of zips / set folders);
    2. the environment variable MAMLKIT_DATA;
    3. ../shared/omniglot next to the repository, when it exists;
    4. the user cache `cache_root()/omniglot` that `download_omniglot()` fills.

    A `path` or MAMLKIT_DATA that is given but wrong is an error (never silently skipped).
    Raises FileNotFoundError saying where to put which files when nothing is found.
    """
    for what, given in (("path", path), ("MAMLKIT_DATA", os.environ.get("MAMLKIT_DATA") or None)):
        if given is None:
            continue
        p = Path(given).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"{what}: {p} does not exist. " + _not_found_message([f"{what}: {p}"]))
        if not source_files(p):
            raise ValueError(
                f"{what}: {p} is not in Omniglot's layout: expected one of "
                f"{', '.join(s + '.zip' for s in SETS)} (or their extracted folders) inside it, or {LAYOUT}"
            )
        return p
    looked = ["path argument: not given", "MAMLKIT_DATA: not set"]
    for p in (shared_dir(), cache_root() / "omniglot"):
        if source_files(p):
            return p
        looked.append(f"{p} ({'no Omniglot zips in it' if p.exists() else 'absent'})")
    raise FileNotFoundError(_not_found_message(looked))


# ----------------------------------------------------------------------------------------------
# download (needs internet; machines without it use ../shared/omniglot or MAMLKIT_DATA)


def _check_zip(path: Path, name: str) -> None:
    """Raise ValueError unless `path` is the expected zip: its pinned sha256 or md5, else non-empty and readable."""
    for algorithm, pinned in (("sha256", SHA256), ("md5", MD5)):
        expected = pinned.get(name)
        if expected is not None:
            h = hashlib.new(algorithm, path.read_bytes()).hexdigest()
            if h != expected:
                raise ValueError(f"{name}.zip: {algorithm} {h} does not match the pinned {expected} (corrupt download?)")
            return
    # no checksum pinned for this name: size and zip integrity only
    if path.stat().st_size == 0:
        raise ValueError(f"{name}.zip: the downloaded file is empty")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except zipfile.BadZipFile as e:
        raise ValueError(f"{name}.zip: not a readable zip ({e})") from e
    if bad is not None:
        raise ValueError(f"{name}.zip: member {bad} fails its CRC check (corrupt download?)")


def download_omniglot(dest: str | os.PathLike | None = None, *, sets=("images_background", "images_evaluation"),
                      url: str = URL) -> Path:
    """Download the official zips into `dest` (default `cache_root()/omniglot`) and return `dest`.

    Each file is written to `<name>.zip.part`, checked (`SHA256`), then renamed with `os.replace`, so
    an interrupted download never leaves a file that looks complete. Files already there and valid
    are kept. `url` is a format string with `{name}` (a `file://` URL works too, for tests).
    """
    dest = Path(dest).expanduser() if dest is not None else cache_root() / "omniglot"
    unknown = [s for s in sets if s not in SETS]
    if isinstance(sets, str) or unknown:
        raise ValueError(f"sets: expected a tuple of names from {SETS}, got {sets!r}")
    dest.mkdir(parents=True, exist_ok=True)
    for name in sets:
        final, part = dest / f"{name}.zip", dest / f"{name}.zip.part"
        if final.is_file():
            try:
                _check_zip(final, name)
                continue
            except ValueError:
                pass  # a bad file: download it again
        try:
            try:
                response = urllib.request.urlopen(url.format(name=name), timeout=60)
            except OSError as e:  # URLError, timeouts, DNS failures
                raise ConnectionError(
                    f"url: could not download {url.format(name=name)} ({e}). " + _not_found_message([str(dest)])
                ) from e
            with response, open(part, "wb") as f:
                total = int(response.headers.get("Content-Length") or 0)
                bar = progress_bar(desc=f"{name}.zip (bytes)", total=total or None)
                for block in iter(lambda: response.read(1 << 16), b""):
                    f.write(block)
                    bar.update(len(block))
                bar.close()
            _check_zip(part, name)
            os.replace(part, final)
        finally:
            part.unlink(missing_ok=True)  # nothing half-written stays behind
    return dest


# ----------------------------------------------------------------------------------------------
# reading the official layout from zips or folders


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: not a readable zip file (truncated or corrupt?): {e}") from e


def list_images(path: Path) -> list[tuple[str, str, int, str]]:
    """(alphabet, characterNN, drawer, member) of every image in one zip or extracted set folder.

    Only the listing is read (a zip's directory, a folder's file names). Hidden files, macOS resource
    forks and non-PNG files are skipped; any other file outside Omniglot's layout is an error.
    """
    if path.is_file():
        with _open_zip(path) as z:
            members = [m for m in z.namelist() if not m.endswith("/")]
    else:
        members = [p.relative_to(path).as_posix() for p in path.rglob("*.png")]
    images = []
    for m in members:
        parts = m.split("/")
        if parts[0] == "__MACOSX" or parts[-1].startswith(".") or not parts[-1].endswith(".png"):
            continue  # macOS resource forks, hidden files, READMEs
        drawer = IMAGE_PATTERN.fullmatch(parts[-1])
        if len(parts) < 3 or not CHARACTER_PATTERN.fullmatch(parts[-2]) or drawer is None:
            raise ValueError(f"{path}: {m} is not in Omniglot's layout; expected {LAYOUT}")
        images.append((parts[-3], parts[-2], int(drawer.group(1)), m))
    return images


class _Source:
    """One zip or extracted folder: lists its characters and reads their PNG bytes."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = _open_zip(path) if path.is_file() else None
        self.characters: dict[str, list[tuple[int, str]]] = {}  # "Alphabet/characterNN" -> [(drawer, member)]
        for alphabet, character, drawer, member in list_images(path):
            self.characters.setdefault(f"{alphabet}/{character}", []).append((drawer, member))
        if not self.characters:
            raise ValueError(f"{path}: no Omniglot images found; expected {LAYOUT}")
        for name, files in self.characters.items():
            if len(files) != DRAWERS:
                raise ValueError(f"{path}: {name} has {len(files)} images; Omniglot has {DRAWERS} per character")
            files.sort()

    def read(self, name: str) -> torch.Tensor:
        """The 20 drawings of one character, preprocessed: (20, 28, 28) uint8."""
        from PIL import Image, UnidentifiedImageError

        raws = []
        for _, member in self.characters[name]:
            try:
                data = self.zip.read(member) if self.zip else (self.path / member).read_bytes()
                with Image.open(io.BytesIO(data)) as im:
                    if im.size != (RAW_SIZE, RAW_SIZE) or im.mode not in ("1", "L"):
                        raise ValueError(
                            f"{self.path}: {member} is {im.size[0]}x{im.size[1]} mode {im.mode!r}; Omniglot "
                            f"images are {RAW_SIZE}x{RAW_SIZE}, mode '1' (1-bit)"
                        )
                    raws.append(np.asarray(im.convert("L")))  # (105, 105) uint8, 255 = white
            except (zipfile.BadZipFile, zlib.error, UnidentifiedImageError, OSError, EOFError) as e:
                raise ValueError(f"{self.path}: cannot read {member} (corrupt file?): {e}") from e
        return preprocess(np.stack(raws))  # (20, 28, 28)

    def close(self):
        if self.zip:
            self.zip.close()


def _fingerprint(sources: list[Path]) -> str:
    """Names, sizes and modification times of every source file: any change rebuilds the cache."""
    h = hashlib.sha256(CACHE_FORMAT.encode())
    for s in sources:
        files = [s] if s.is_file() else sorted(s.rglob("*.png"))
        for f in files:
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_cache(file: Path, fingerprint: str) -> dict | None:
    if not file.is_file():
        return None
    try:
        d = torch.load(file, map_location="cpu", weights_only=True)
        ok = (isinstance(d, dict) and d.get("format") == CACHE_FORMAT and d.get("fingerprint") == fingerprint
              and isinstance(d.get("images"), torch.Tensor) and d["images"].dtype == torch.uint8
              and tuple(d["images"].shape[1:]) == (DRAWERS, SIZE, SIZE) and len(d["names"]) == len(d["images"]))
    except Exception as e:  # torch raises several types for a torn file: never trust it, rebuild
        warnings.warn(f"cache_dir: {file} is unreadable ({type(e).__name__}); rebuilding it", stacklevel=3)
        return None
    return d if ok else None


def load_omniglot(path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None) -> OmniglotData:
    """Omniglot as `OmniglotData`: images uint8 (characters, 20, 28, 28), strokes 255 on background 0.

    Reads every set found at `find_omniglot(path)` and takes their union: a character (Alphabet/
    characterNN) that two sets both hold (Greek and Latin are in both small sets) counts once.
    Characters are sorted by name. The result is cached as one tensor file in `cache_dir` (default
    `cache_root()/processed`) keyed by the sources' fingerprint; a cache that is unreadable, of another
    shape, or made from other files is rebuilt, never trusted. `.from_cache` says which happened.
    """
    root = find_omniglot(path)
    sources = source_files(root)
    fingerprint = _fingerprint(sources)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "processed"
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]  # one cache file per data folder
    cache_file = cache_dir / f"omniglot-{key}.pt"
    description = "Omniglot: " + " + ".join(s.name for s in sources) + f" ({root})"

    cached = _read_cache(cache_file, fingerprint)
    if cached is not None:
        return OmniglotData(cached["images"], list(cached["names"]), description, from_cache=True)

    opened = []
    try:
        owner: dict[str, _Source] = {}
        for s in sources:
            opened.append(_Source(s))
            for name in opened[-1].characters:
                owner.setdefault(name, opened[-1])  # de-duplicate: the first set that holds it wins
        names = sorted(owner)
        images = torch.stack([owner[n].read(n) for n in progress_bar(names, desc="Omniglot: reading")])
    finally:
        for s in opened:
            s.close()
    try:
        atomic_save({"format": CACHE_FORMAT, "fingerprint": fingerprint, "images": images, "names": names}, cache_file)
    except OSError as e:  # a read-only or full cache folder: the images are read, so go on without the cache
        warnings.warn(f"cache_dir: could not write the processed cache into {cache_dir} ({e.strerror or e}); "
                      f"continuing without it (the images will be read again next time). Set MAMLKIT_CACHE "
                      f"or cache_dir to a writable folder to cache them.", stacklevel=2)
    return OmniglotData(images, names, description, from_cache=False)  # (characters, 20, 28, 28)


# ----------------------------------------------------------------------------------------------
# splits and augmentation, as in the paper


def _check_data(data) -> None:
    if not isinstance(data, OmniglotData):
        raise TypeError(f"data: expected an OmniglotData (load_omniglot, make_glyphs), got {type(data).__name__}")


def split_characters(data: OmniglotData, *, test_characters: int | None = None, seed: int = 0):
    """(train, test) `OmniglotData`, split by character with `torch.randperm` seeded by `seed`.

    `test_characters`: how many characters go to the test split; default the paper's proportion
    423 of 1,623 (1,200 train), rounded: 423 for full Omniglot, 63 for the 242-character subset.
    The same data and seed give the same split; the two splits share no character.
    """
    _check_data(data)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an integer, got {seed!r}")
    total = len(data.names)
    if total < 2:
        raise ValueError(f"data: {total} character(s); a train/test split needs at least 2")
    if test_characters is None:
        test_characters = round(total * 423 / 1623)
    if isinstance(test_characters, bool) or not isinstance(test_characters, int) or not 0 < test_characters < total:
        raise ValueError(f"test_characters: expected an integer in 1..{total - 1}, got {test_characters!r}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    test_idx, train_idx = order[:test_characters].sort().values, order[test_characters:].sort().values

    def subset(idx, which):
        return OmniglotData(data.images[idx], [data.names[i] for i in idx.tolist()],
                            f"{data.source} [{which} split: {len(idx)} characters, seed {seed}]")

    return subset(train_idx, "train"), subset(test_idx, "test")


# The alphabets held out of meta-training by the "alphabets" split: the two of the minimal sets with at
# least 20 characters that make 62 test characters together (the paper's share of test characters, 423 of
# 1,623, would be 63 of 242). The within-alphabet 20-way test of Lake et al. (2015) needs 20 characters
# of one alphabet, so Tagalog (17) cannot be one of them.
TEST_ALPHABETS = ("Early_Aramaic", "Korean")


def split_alphabets(data: OmniglotData, test_alphabets=TEST_ALPHABETS):
    """(train, test) `OmniglotData`: every character of `test_alphabets` is a test character.

    Meta-training then sees no character, and no drawing style, of the test alphabets: held-out
    accuracy measures adaptation to new *alphabets*, as the paper's split (its test characters are the
    last 423 in alphabet order, mostly whole alphabets) and Lake et al.'s one-shot evaluation do.
    """
    _check_data(data)
    if isinstance(test_alphabets, str) or not all(isinstance(a, str) for a in test_alphabets):
        raise TypeError(f"test_alphabets: expected a list of alphabet names, got {test_alphabets!r}"
                        + (f"; for one alphabet write [{test_alphabets!r}]" if isinstance(test_alphabets, str) else ""))
    present = set(data.alphabets)
    missing = [a for a in test_alphabets if a not in present]
    if not test_alphabets or missing:
        raise ValueError(f"test_alphabets: {missing or 'none given'} not in this data set; its alphabets are {sorted(present)}")
    test = torch.tensor([n.split("/")[0] in test_alphabets for n in data.names])
    if test.all():
        raise ValueError(f"test_alphabets: {list(test_alphabets)} hold every character; nothing is left to train on")
    test_idx, train_idx = test.nonzero().flatten(), (~test).nonzero().flatten()

    def subset(idx, which):
        return OmniglotData(data.images[idx], [data.names[i] for i in idx.tolist()],
                            f"{data.source} [{which} split: {len(idx)} characters; test alphabets {', '.join(test_alphabets)}]")

    return subset(train_idx, "train"), subset(test_idx, "test")


def rotate_classes(images: torch.Tensor) -> torch.Tensor:
    """(C, E, H, W) -> (4*C, E, H, W): each class rotated by 0, 90, 180, 270 degrees is a new class.

    Class c rotated by k·90 degrees (counter-clockwise, `torch.rot90`) is class k*C + c. Apply it to
    the training split only, as the paper does (Santoro et al. 2016).
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[2] != images.shape[3]:
        what = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a tensor (classes, examples, H, W) with H == W, got {what}")
    return torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])  # (4*C, E, H, W)


def load_omniglot_or_glyphs(path: str | os.PathLike | None = None, *, cache_dir=None, characters: int = 242,
                            seed: int = 0) -> OmniglotData:
    """`load_omniglot(path)`, or, when no Omniglot is found anywhere, procedural glyphs with a warning.

    Only a search that finds nothing falls back: an explicit `path` or MAMLKIT_DATA that is wrong
    still raises. `characters` and `seed` are the glyph set's (`mamlkit.data.glyphs.make_glyphs`).
    """
    try:
        return load_omniglot(path, cache_dir=cache_dir)
    except FileNotFoundError as e:
        if path is not None or os.environ.get("MAMLKIT_DATA"):
            raise
        from .glyphs import make_glyphs

        warnings.warn(
            f"Using procedural glyphs, NOT Omniglot: results will not match the paper's numbers.\n{e}",
            stacklevel=2,
        )
        return make_glyphs(characters=characters, seed=seed)


def main(argv=None) -> None:
    """`python -m mamlkit.data.omniglot [--download] [--data PATH]`: find (or download) and load Omniglot."""
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m mamlkit.data.omniglot", allow_abbrev=False,
                                     description="Find Omniglot, load it into the processed cache, report the time.")
    parser.add_argument("--download", action="store_true",
                        help="first download images_background and images_evaluation to the cache (default off)")
    parser.add_argument("--data", default=None, help="an Omniglot zip or folder (default: found automatically)")
    args = parser.parse_args(argv)
    try:
        if args.download:
            print("downloaded to", download_omniglot())
        start = time.perf_counter()
        data = load_omniglot(args.data)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise SystemExit(f"python -m mamlkit.data.omniglot: error: {' '.join(str(e).split())}") from e
    print(data, f"loaded in {time.perf_counter() - start:.2f} s", "from the processed cache" if data.from_cache
          else "from the images (now cached)")


if __name__ == "__main__":
    main()
