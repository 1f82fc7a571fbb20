"""OpenAI CLIP weights: reading both of OpenAI's formats safely, conversion, grid resize, download and cache, for
each of OpenAI's image towers."""

import copy
import hashlib
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from model import ClipViT, backbone, build_clip_vit
from model.clip import download
from model.clip.archive import read_openai_state_dict
from model.clip.convert import openai_to_timm, resize_position_grid
from model.clip.download import download_openai
from model.state_dict import check_state_fits
from tests.model.clip_reference import CLIP, randomise
from utils.errors import UserError


@pytest.fixture(scope="module")
def openai_files(tmp_path_factory):
    """A random CLIP ViT-B/16 in OpenAI's layout, float16, saved as a state dict and as a TorchScript archive."""
    folder = tmp_path_factory.mktemp("openai")
    torch.manual_seed(0)
    clip = randomise(CLIP(), seed=1).eval()
    state_path, archive_path = str(folder / "state.pt"), str(folder / "ViT-B-16.pt")
    torch.save({k: v.half() for k, v in clip.state_dict().items()}, state_path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated, and warns about shape arithmetic
        traced = torch.jit.trace(copy.deepcopy(clip), torch.zeros(1, 3, 224, 224), check_trace=False)
    traced.half().save(archive_path)
    return clip, state_path, archive_path


def test_tokens_equal_clip_for_state_dict_and_torchscript(openai_files, tmp_path, monkeypatch):
    clip, state_path, archive_path = openai_files
    with zipfile.ZipFile(archive_path) as z:
        assert any("/code/" in n for n in z.namelist())  # a real TorchScript archive
    from_state = build_clip_vit((256, 128), pretrained=state_path).eval()
    # the archive through the "openai" path: downloaded (from a file:// URL), verified, cached, read
    _serve(tmp_path, monkeypatch, Path(archive_path).read_bytes())
    from_archive = build_clip_vit((256, 128), pretrained="openai", cache_dir=str(tmp_path / "cache")).eval()
    assert os.listdir(tmp_path / "cache") == ["ViT-B-16.pt"]
    a, b = from_state.state_dict(), from_archive.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    images = torch.randn(2, 3, 256, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = from_archive(images)
        ref = clip.visual(images, stored_dtype=torch.float16)
    assert ours.shape == (2, 1 + 16 * 8, 768)
    assert ((ours - ref).norm() / ref.norm()).item() < 1e-5


def test_torchscript_reader_returns_every_tensor(openai_files):
    clip, _, archive_path = openai_files
    state = read_openai_state_dict(archive_path)
    expected = clip.state_dict()
    assert state.keys() == expected.keys()
    assert all(state[k].dtype == torch.float16 and torch.equal(state[k].float(), expected[k]) for k in expected)


def _with_sixth_entry(src: str, dst: str, entry: bytes = pickle.NONE) -> None:
    """``src`` rewritten as older TorchScript writers store it: every storage's persistent id ("storage",
    type, key, location, numel) gets a sixth entry (pickle opcode ``entry``, None by default) before the
    tuple closes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                ops = list(pickletools.genops(data))
                ends = [pos for (op, _, pos), (following, _, _) in zip(ops, ops[1:])
                        if op.name == "TUPLE" and following.name == "BINPERSID"]
                assert ends
                for pos in reversed(ends):
                    data = data[:pos] + entry + data[pos:]
            zout.writestr(info, data)


def test_torchscript_reader_accepts_a_sixth_none_in_persistent_ids(openai_files, tmp_path):
    _, _, archive_path = openai_files
    older = str(tmp_path / "older.pt")
    _with_sixth_entry(archive_path, older)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated
        torch.jit.load(older)            # TorchScript itself reads this form
    expected, state = read_openai_state_dict(archive_path), read_openai_state_dict(older)
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
    # anything else in the sixth place (a view of a storage) is refused, as any unexpected id
    other = str(tmp_path / "view.pt")
    _with_sixth_entry(archive_path, other, entry=pickle.NEWTRUE)
    with pytest.raises(UserError, match="view.pt"):
        read_openai_state_dict(other)


class _Touch:
    """Pickles as a call to ``os.mkdir(path)``: a reader that executed it would create the folder."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_torchscript_reader_executes_nothing(tmp_path):
    marker = str(tmp_path / "executed")
    archive = tmp_path / "evil.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"visual.conv1.weight": _Touch(marker)}, protocol=2))
        z.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("evil/code/__torch__.py", "")
    with pytest.raises(UserError, match="refusing to load posix.mkdir|refusing to load os.mkdir"):
        read_openai_state_dict(str(archive))
    assert not os.path.exists(marker)


def test_position_grid_resize_is_bilinear_without_antialias():
    pos = torch.arange(1 + 4, dtype=torch.float32).reshape(1, 5, 1)  # class position 0, grid [[1, 2], [3, 4]]
    out = resize_position_grid(pos, (4, 2))
    assert out[0, 0, 0] == 0
    # rows at source coordinates (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped 0, 0.25, 0.75, 1
    rows = torch.tensor([0.0, 0.25, 0.75, 1.0])
    expected = torch.stack([1 + 2 * rows, 2 + 2 * rows], dim=1).reshape(-1)
    torch.testing.assert_close(out[0, 1:, 0], expected)


def test_wrong_architecture_is_a_user_error(openai_files):
    with pytest.raises(UserError, match="does not fit the ViT-Mini-8 backbone"):
        build_clip_vit((64, 32), pretrained=openai_files[1], arch="ViT-Mini-8")


def test_missing_file_and_foreign_file_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        build_clip_vit((64, 32), pretrained=str(tmp_path / "nope.pt"), arch="ViT-Mini-8")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="no 'visual.\\*' keys"):
        build_clip_vit((64, 32), pretrained=str(tmp_path / "other.pt"), arch="ViT-Mini-8")


# --- download and cache -------------------------------------------------------------------------------
def _serve(tmp_path, monkeypatch, content: bytes, digest: str | None = None, arch: str = "ViT-B-16") -> str:
    """Make "openai" point at a file:// URL holding ``content`` whose hash segment is ``digest``, named as
    OpenAI names the file of ``arch``."""
    digest = digest or hashlib.sha256(content).hexdigest()
    folder = tmp_path / "server" / digest
    folder.mkdir(parents=True, exist_ok=True)
    name = download.OPENAI_URLS[arch].rsplit("/", 1)[-1]
    (folder / name).write_bytes(content)
    url = (folder / name).as_uri()
    monkeypatch.setitem(download.OPENAI_URLS, arch, url)
    return url


def test_download_is_verified_cached_and_reused(tmp_path, monkeypatch):
    content = b"weights" * 1000
    _serve(tmp_path, monkeypatch, content)
    cache = str(tmp_path / "cache")
    path = download_openai("ViT-B-16", cache)
    assert path == os.path.join(cache, "ViT-B-16.pt")
    assert Path(path).read_bytes() == content
    assert os.listdir(cache) == ["ViT-B-16.pt"]  # no .part file left
    # the verified cache is used without the network
    monkeypatch.setitem(download.OPENAI_URLS, "ViT-B-16",
                        (tmp_path / "gone" / hashlib.sha256(content).hexdigest() / "ViT-B-16.pt").as_uri())
    assert download_openai("ViT-B-16", cache) == path


def test_corrupt_download_is_rejected_and_never_used(tmp_path, monkeypatch):
    content = b"weights" * 1000
    _serve(tmp_path, monkeypatch, b"truncated", digest=hashlib.sha256(content).hexdigest())
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="SHA256 .* expected"):
        download_openai("ViT-B-16", str(cache))
    assert os.listdir(cache) == []  # neither the file nor a .part


def test_corrupt_cached_file_is_replaced_or_refused(tmp_path, monkeypatch):
    content = b"weights" * 1000
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ViT-B-16.pt").write_bytes(content[:100])  # a partial download
    # offline: a clear error saying where to put the file, and the partial file is not used
    monkeypatch.setitem(download.OPENAI_URLS, "ViT-B-16",
                        (tmp_path / "offline" / hashlib.sha256(content).hexdigest() / "ViT-B-16.pt").as_uri())
    with pytest.raises(UserError, match=f"put it at {cache / 'ViT-B-16.pt'}"):
        download_openai("ViT-B-16", str(cache))
    # online again: downloaded anew over the partial file
    _serve(tmp_path, monkeypatch, content)
    assert Path(download_openai("ViT-B-16", str(cache))).read_bytes() == content


def test_openai_weights_exist_only_for_openais_towers():
    with pytest.raises(UserError, match="MODEL.NAME ViT-B-16, ViT-B-32, ViT-L-14, ViT-L-14-336px only"):
        build_clip_vit((64, 32), pretrained="openai", arch="ViT-Mini-8")


# --- the other OpenAI towers ----------------------------------------------------------------------------
#: OpenAI's image towers (clip.py's build_model from their checkpoints): width, layers, heads, patch, the
#: side of the pretraining position grid, and the ReID grid at 256 x 128.
TOWERS = {"ViT-B-32": (768, 12, 12, 32, 7, (8, 4)), "ViT-L-14": (1024, 24, 16, 14, 16, (18, 9)),
          "ViT-L-14-336px": (1024, 24, 16, 14, 24, (18, 9))}


@pytest.mark.parametrize("arch", sorted(TOWERS))
def test_each_tower_at_its_real_size_takes_openais_keys(arch):
    """On the meta device (no memory, no time): OpenAI's full-size layout converts onto our tower key for key
    and shape, position grid included."""
    width, layers, heads, patch, side, grid = TOWERS[arch]
    with torch.device("meta"):
        model = ClipViT(arch, (256, 128))
        openai = CLIP(width=width, layers=layers, heads=heads, patch=patch, positions=1 + side * side)
    assert model.grid_size == grid
    state = openai_to_timm(openai.state_dict(), model)
    state["pos_embed"] = resize_position_grid(state["pos_embed"], model.grid_size)
    check_state_fits(model, state, arch, "the tower")


@pytest.mark.parametrize("arch", sorted(TOWERS))
def test_each_tower_downloads_verified_and_gives_clips_tokens(arch, tmp_path, monkeypatch):
    """Each tower through MODEL.PRETRAIN_PATH "openai" (a file:// URL whose hash segment is the file's SHA256),
    with random weights in OpenAI's layout at a reduced width and depth (same patch, same pretraining grid),
    against the independent CLIP tower."""
    _, _, _, patch, side, grid = TOWERS[arch]
    monkeypatch.setitem(backbone.ARCHS, arch, {**backbone.ARCHS[arch], "embed_dim": 64, "depth": 2, "num_heads": 4})
    torch.manual_seed(0)
    clip = randomise(CLIP(width=64, layers=2, heads=4, patch=patch, positions=1 + side * side), seed=3).eval()
    path = tmp_path / "weights.pt"
    torch.save({k: v.half() for k, v in clip.state_dict().items()}, path)
    _serve(tmp_path, monkeypatch, path.read_bytes(), arch=arch)
    model = build_clip_vit((256, 128), pretrained="openai", arch=arch, cache_dir=str(tmp_path / "cache")).eval()
    assert os.listdir(tmp_path / "cache") == [download.OPENAI_URLS[arch].rsplit("/", 1)[-1]]
    images = torch.randn(2, 3, 256, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, ref = model(images), clip.visual(images, stored_dtype=torch.float16)
    assert ours.shape == ref.shape == (2, 1 + grid[0] * grid[1], 64)
    assert ((ours - ref).norm() / ref.norm()).item() < 1e-5


def test_the_published_urls_name_their_files_and_digests():
    for arch, url in download.OPENAI_URLS.items():
        assert url.startswith("https://openaipublic.azureedge.net/clip/models/")
        digest, name = url.rsplit("/", 2)[-2:]
        assert name == f"{arch}.pt" and re.fullmatch(r"[0-9a-f]{64}", digest)
