"""Stage one's text side: prompt-set embeddings and the image-side projection written into a real tiny_clip
store by the real open_clip text tower (stages/extract/text.py, store_schema/text_store.py), and the errors
for what is missing: a prompt set, a projection, a tokenizer offline, a teacher without a text tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from stages.extract.driver import ExtractConfig, run_extract
from stages.extract.text import extract_text
from stages.prompts import PromptSet, load_templates
from stages.teachers.registry import build_teacher, get_teacher_spec
from stages.teachers.text_tower import MissingTokenizerError, check_tokenizer_offline
from store_schema import text_store
from store_schema.layout import teacher_store_path

pytest_plugins = ["tests.ray_fixture"]


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory):
    from tests.ray_fixture import build_corpus

    root = build_corpus(tmp_path_factory.mktemp("text"), n_ok=4, num_views=1)
    for teacher in ("tiny_clip", "tiny_dinov2"):
        run_extract(root, teacher, ExtractConfig(workers=0, shard_size=4, progress=False))
    return root


def _invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_extract_text_writes_embeddings_matching_the_text_tower(clip_root, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("face\nnonface\tnon-face object\n")
    res = _invoke(["extract-text", "--teacher", "tiny_clip", "--root", clip_root, "--classes", classes,
                   "--templates", "simple", "--receipt", tmp_path / "r.json"])
    assert res.exit_code == 0, res.output
    assert "1 prompt set(s)" in res.output and "projection written" in res.output
    path = teacher_store_path(clip_root, "tiny_clip")
    ps = PromptSet(("face", "nonface"), ("face", "non-face object"), load_templates("simple"))
    emb_LC = text_store.read_text_embeddings(path, ps)
    assert emb_LC.shape == (2, 48) and np.allclose(np.linalg.norm(emb_LC, axis=1), 1, atol=1e-6)
    assert text_store.list_prompt_sets(path) == [ps.hash[:16]]

    # the same sentences through open_clip directly, with the teacher's random-init seed
    import open_clip

    from stages.teachers.weights import random_init_seed

    spec = get_teacher_spec("tiny_clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_init_seed(spec))
        model = open_clip.create_model(spec.arch, pretrained=None, **spec.arch_kwargs).eval()
    tok = open_clip.get_tokenizer(spec.arch, context_length=32)
    with torch.no_grad():
        ref = model.encode_text(tok(["a photo of a non-face object."]), normalize=True)[0].numpy()
    np.testing.assert_allclose(emb_LC[1], ref, atol=1e-5)

    # the projection is the image tower's own: the teacher that filled the store has the same proj
    proj = text_store.read_projection(path)
    teacher = build_teacher(spec)
    np.testing.assert_array_equal(proj.proj_CD, teacher.visual.proj.detach().numpy())
    np.testing.assert_array_equal(proj.ln_post_weight_C, teacher.visual.ln_post.weight.detach().numpy())
    assert proj.stored_patches_to_joint(np.ones((2, 96))).shape == (2, 48)


def test_missing_prompt_set_names_it_and_the_command(clip_root, tmp_path):
    other = PromptSet(("cat", "dog"), ("cat", "dog"), load_templates("simple"))
    with pytest.raises(text_store.MissingTextEmbeddingsError) as e:
        text_store.read_text_embeddings(teacher_store_path(clip_root, "tiny_clip"), other,
                                        classes_file=tmp_path / "pets.txt")
    msg = str(e.value)
    assert other.hash[:16] in msg and "pets.txt" in msg and "pipeline extract-text --teacher tiny_clip" in msg


def test_missing_projection_names_it_and_the_command(clip_root):
    with pytest.raises(text_store.MissingProjectionError, match=r"projection/ln_post_weight.*pipeline extract-text "
                                                                r"--teacher tiny_dinov2"):
        text_store.read_projection(teacher_store_path(clip_root, "tiny_dinov2"))


def test_teacher_without_text_tower_is_refused_cleanly(clip_root, tmp_path):
    classes = tmp_path / "c.txt"
    classes.write_text("a\nb\n")
    res = _invoke(["extract-text", "--teacher", "tiny_dinov2", "--root", clip_root, "--classes", classes])
    assert res.exit_code == 2 and "has no text tower" in res.output
    res = _invoke(["extract-text", "--teacher", "tiny_clip", "--root", tmp_path / "nowhere", "--classes", classes])
    assert res.exit_code == 2 and "no teacher store" in res.output and "Traceback" not in res.output
    extract_text(clip_root, "tiny_clip", [])  # no prompt set: only the projection


def test_siglip_tokenizer_missing_offline_says_what_and_how():
    # SigLIP's tokenizer is a Hugging Face tokenizer: here neither `transformers` nor its files are present
    with pytest.raises(MissingTokenizerError, match=r"timm/ViT-B-16-SigLIP.*(transformers|hub cache)") as e:
        check_tokenizer_offline(get_teacher_spec("siglip_so400m"))
    assert "AutoTokenizer.from_pretrained" in str(e.value)
    check_tokenizer_offline(get_teacher_spec("clip_h_dfn"))  # open_clip's BPE ships in its wheel
