"""Official heads named by Hub id, as README says users name them: ``method.head=<org/name>`` with the default
``method.vocab_size`` (auto) loads each from a local Hub cache laid out as huggingface_hub lays it, with the files
named as the official repositories name them, and decodes exactly what plain greedy decoding does.

Offline, ``snapshot_download`` returns the cached snapshot whole, whatever ``allow_patterns`` says; an online
download brings only the files the patterns match. The fake download here runs the real offline lookup and then
keeps what an online one would, so a pattern that leaves out ``medusa_lm_head.pt`` fails here as it would for a user.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub.utils import filter_repo_objects

from harness.core.config import EngineConfig
from harness.core.errors import SpeclabError
from harness.core.registry import METHODS
from harness.drafting.vocab import AUTO_VOCAB, frequency_vocab
from harness.engine.method import MethodContext
from harness.engine.sampling import Sampling

from .conftest import compose
from .test_greedy_equivalence import hf_greedy
from .test_official_layouts import eagle1_head, eagle3_head, hydra_head, medusa_head

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_NEW = 12

# Hub id -> (method, how its files are written); ids in the official organisations' naming
REPOS = {
    "yuhuili/EAGLE-tiny-llama": ("eagle", lambda t, f: eagle1_head(t, f)),  # config.json + pytorch_model.bin
    "yuhuili/EAGLE3-tiny-llama": ("eagle3", lambda t, f: eagle3_head(t, f, "official")),  # same file names
    "FasterDecoding/medusa-tiny-llama": ("medusa", lambda t, f: medusa_head(t, f)),  # + medusa_lm_head.pt
    "ankner/hydra-tiny-llama": ("hydra", lambda t, f: hydra_head(t, f)),  # + hydra_lm_head.pt
}


def publish(cache: Path, repo_id: str, files: Path) -> Path:
    """Lay ``files`` out as huggingface_hub caches a repository: blobs by content hash, a snapshot of links to
    them under the commit, ``refs/main`` naming the commit. Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in files.iterdir():
        blob = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, repo / "blobs" / blob)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", blob))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_target):
    """The offline Hub cache holding every repository of :data:`REPOS`."""
    root = tmp_path_factory.mktemp("hub")
    for repo_id, (_, write) in REPOS.items():
        write(tiny_target, root / "files" / repo_id)
        publish(root / "cache", repo_id, root / "files" / repo_id)
    return root


@pytest.fixture
def downloads(hub, tmp_path, monkeypatch):
    """Point huggingface_hub at the cache, offline, and fetch as an online download would; returns the calls."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hub / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    real = huggingface_hub.snapshot_download
    calls = []

    def download(repo_id, *args, allow_patterns=None, **kwargs):
        snapshot = Path(real(repo_id, *args, allow_patterns=allow_patterns, **kwargs))  # the real cache lookup
        assert snapshot.parent.parent.parent == hub / "cache"
        fetched = tmp_path / "fetched" / repo_id.replace("/", "--")
        fetched.mkdir(parents=True)
        names = [p.name for p in snapshot.iterdir()]
        ignore = kwargs.get("ignore_patterns")
        for name in filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore):
            shutil.copyfile(snapshot / name, fetched / name)
        calls.append((repo_id, sorted(p.name for p in fetched.iterdir())))
        return str(fetched)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    return calls


@pytest.fixture(scope="module")
def references(tiny_target, tiny_prompts):
    return [hf_greedy(tiny_target, p, MAX_NEW) for p in tiny_prompts[:2]]


@pytest.mark.parametrize("repo_id", list(REPOS))
def test_official_head_by_hub_id_decodes_as_plain_greedy(tiny_target, tiny_prompts, references, hub, downloads,
                                                           repo_id):
    method = REPOS[repo_id][0]
    node = compose(f"method={method}", f"method.head={repo_id}").method  # vocab_size as the YAML sets it
    gen = METHODS.build(node, MethodContext(tiny_target, Sampling(), EngineConfig(kernel="torch")))
    assert method == "eagle3" or node.vocab_size == "auto"  # no token_frequency.json in an official head
    files = {p.name for p in (hub / "files" / repo_id).iterdir()}
    assert downloads == [(repo_id, sorted(files))]  # every file the repository ships was fetched
    vocab = tiny_target.vocab_size // 3 if method == "eagle3" else tiny_target.vocab_size  # EAGLE-3: its d2t
    assert gen.drafter.draft_vocab_size == vocab
    for prompt, ref in zip(tiny_prompts, references):
        assert gen.generate(prompt, MAX_NEW, None).token_ids == ref


def test_rows_record_the_draft_vocabulary(hub, downloads, tmp_path):
    from harness.api import run

    cfg = compose("model=tiny-llama", "method=medusa", "method.head=FasterDecoding/medusa-tiny-llama",
                  "task.limit=1", "max_new_tokens=8", "engine.warmup=false", "progress=false",
                  "engine.verify_cost=off")
    cfg.out_dir = str(tmp_path)
    df = run(cfg)
    method = df[df.role == "method"]
    assert len(method) and (method.draft_vocab_size == 259).all()
    assert df[df.role == "baseline"].draft_vocab_size.isna().all()


# -- method.vocab_size ---------------------------------------------------------------------------------------

@pytest.fixture
def listed(tmp_path):
    """A folder whose token_frequency.json lists 100 token ids, most frequent first."""
    import json

    ids = torch.randperm(259, generator=torch.Generator().manual_seed(0))[:100].tolist()
    (tmp_path / "token_frequency.json").write_text(json.dumps({"token_ids": ids}))
    return tmp_path, ids


def test_auto_reads_the_frequency_file_when_there_is_one(listed, caplog):
    folder, ids = listed
    with caplog.at_level(logging.INFO, logger="speclab"):
        vocab = frequency_vocab(SimpleNamespace(vocab_size="auto"), folder, 259)
    assert vocab.ids.tolist() == sorted(ids[:AUTO_VOCAB])
    assert [r.message for r in caplog.records if "vocab_size=auto" in r.message] == [
        f"method.vocab_size=auto: drafting over the 100 most frequent tokens of {folder / 'token_frequency.json'}"]
    assert frequency_vocab(SimpleNamespace(vocab_size=10), folder, 259).ids.tolist() == sorted(ids[:10])


def test_auto_without_the_file_is_the_full_vocabulary(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="speclab"):
        assert frequency_vocab(SimpleNamespace(vocab_size="auto"), tmp_path, 259) is None
    assert [r.message for r in caplog.records if "vocab_size=auto" in r.message] == [
        f"method.vocab_size=auto: {tmp_path} has no token_frequency.json, drafting over the full vocabulary "
        "(259 tokens)"]
    assert frequency_vocab(SimpleNamespace(vocab_size=None), tmp_path, 259) is None


@pytest.mark.parametrize("value,message", [
    (64, "method.vocab_size=64 needs"),  # a number names the file it needs
    (0, "method.vocab_size must be positive"),
    ("most", "method.vocab_size must be auto, null or a positive integer, got 'most'"),
    (True, "must be auto, null or a positive integer"),
])
def test_bad_vocab_sizes_are_one_line(tmp_path, value, message):
    with pytest.raises(SpeclabError, match=message) as err:
        frequency_vocab(SimpleNamespace(vocab_size=value), tmp_path, 259)
    assert "\n" not in str(err.value)
