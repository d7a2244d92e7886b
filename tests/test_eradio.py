"""E-RADIO (AM-RADIO, arXiv 2312.06709): strides, widths per size, the reference large config, input-size
errors, the window schedule and masked windowed attention."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stages.students.eradio import (
    ERADIO,
    ERADIO_SIZES,
    MultiResolutionAttention,
    WindowAttentionBlock,
    build_eradio,
    window_size_for,
)

# Golden parameter count of the reference large config (width 192, depths [3, 3, 5, 5], heads
# [2, 4, 8, 16], 1536 output channels); a change here is an architecture change.
ERADIO_L_PARAMS = 240_299_712


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.mark.parametrize(("size", "width"), [("xt", 64), ("t", 80), ("s", 96), ("b", 128), ("l", 192)])
def test_stage_strides_and_channels_per_size(size: str, width: int) -> None:
    config = dataclasses.replace(ERADIO_SIZES[size], depths=(1, 1, 1, 1))
    assert config.width == width and config.out_dim == 8 * width
    with torch.device("meta"):
        model = ERADIO(config, img_size=256)
    seen: dict[str, tuple[int, ...]] = {}
    for stage in ["stem", "stage1", "stage2", "stage3", "stage4"]:
        hook = lambda module, inputs, out, s=stage: seen.__setitem__(s, tuple(out.shape))  # noqa: E731
        getattr(model, stage).register_forward_hook(hook)
    with torch.device("meta"):
        out = model(torch.empty(2, 3, 256, 192))
    assert seen["stem"] == (2, width, 64, 48)
    assert seen["stage1"] == (2, width, 64, 48)
    assert seen["stage2"] == (2, 2 * width, 32, 24)
    assert seen["stage3"] == (2, 4 * width, 16, 12)
    assert seen["stage4"] == (2, 8 * width, 8, 6)
    assert out.features_BhwC.shape == (2, 16, 12, 8 * width)
    assert out.summary_BKC.shape == (2, 1, 8 * width)
    assert model.stride == 16 and model.embed_dim == 8 * width


def test_reference_large_config_and_parameter_count() -> None:
    config = ERADIO_SIZES["l"]
    got = (config.width, config.depths, config.heads, config.out_dim)
    assert got == (192, (3, 3, 5, 5), (2, 4, 8, 16), 1536)
    with torch.device("meta"):
        model = build_eradio("l", img_size=512)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"E-RADIO-L parameters: {num_params:,}")
    assert num_params == ERADIO_L_PARAMS
    assert len(model.stage3) == 5 and len(model.stage4) == 5
    assert model.stage3[0].fine.heads == 8 and model.stage4[0].heads == 16
    assert model.window_size == 16


@pytest.mark.parametrize(("img_size", "window"), [(224, 7), (256, 8), (384, 12), (512, 16), (64, 2)])
def test_window_size_schedule(img_size: int, window: int) -> None:
    assert window_size_for(img_size) == window
    with torch.device("meta"):
        model = build_eradio("tiny_test", img_size=img_size)
    blocks = [m for m in model.modules() if isinstance(m, WindowAttentionBlock)]
    assert len(blocks) == 3  # one MRA layer (coarse + fine) and one stage-4 layer
    assert {b.window for b in blocks} == {window}


def test_non_multiple_of_32_input_is_a_clear_error() -> None:
    model = build_eradio("tiny_test", img_size=64)
    with pytest.raises(ValueError, match=r"multiples of 32; got 100x64 .*100: \[96, 128\]"):
        model(torch.randn(1, 3, 100, 64))
    with pytest.raises(ValueError, match=r"20: \[32\]"):
        model(torch.randn(1, 3, 64, 20))
    with pytest.raises(ValueError, match=r"got 200x200"):
        build_eradio("tiny_test", img_size=200)


def test_unknown_size_lists_valid() -> None:
    with pytest.raises(ValueError, match="unknown E-RADIO size 'xl'.*'l'.*'xt'"):
        build_eradio("xl", img_size=224)


def test_tiny_forward_at_other_size_pads_windows_and_summary_is_mean() -> None:
    model = build_eradio("tiny_test", img_size=128).eval()  # window 4; a 96x160 input needs padding
    out = model(torch.randn(2, 3, 96, 160))
    assert out.features_BhwC.shape == (2, 6, 10, 64)
    assert torch.isfinite(out.features_BhwC).all()
    torch.testing.assert_close(out.summary_BKC[:, 0], out.features_BhwC.mean(dim=(1, 2)))


def test_padded_window_attention_masks_padding() -> None:
    # One 6x6 window computed exactly, versus an 8x8 window over the zero-padded map: the mask must
    # make padded positions invisible, so the results agree.
    exact = WindowAttentionBlock(32, heads=2, window=6, mlp_ratio=2.0)
    padded = WindowAttentionBlock(32, heads=2, window=8, mlp_ratio=2.0)
    padded.load_state_dict(exact.state_dict())
    x_BCHW = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(padded(x_BCHW), exact(x_BCHW), rtol=1e-5, atol=1e-5)


def test_windows_are_local() -> None:
    # With window 2 on an 8x8 map (and no conv position encoding), changing one pixel changes only its
    # own 2x2 window.
    block = WindowAttentionBlock(16, heads=1, window=2, mlp_ratio=2.0)
    torch.nn.init.zeros_(block.pos.weight)
    torch.nn.init.zeros_(block.pos.bias)
    x = torch.randn(1, 16, 8, 8)
    y = x.clone()
    y[0, :, 5, 2] += torch.randn(16)  # not a constant shift: LayerNorm would cancel that
    changed_HW = (block(x) - block(y)).abs().sum(dim=1)[0] > 0
    expected_HW = torch.zeros(8, 8, dtype=torch.bool)
    expected_HW[4:6, 2:4] = True
    assert torch.equal(changed_HW, expected_HW)


def test_mra_coarse_pass_reaches_beyond_the_fine_window() -> None:
    # The fine pass alone sees one 2x2 window; the coarse pass on the pooled map widens the receptive
    # field, so a change in one corner reaches the far side of the 4x4 map within a single MRA layer.
    layer = MultiResolutionAttention(16, heads=1, window=2, mlp_ratio=2.0).eval()
    for block in (layer.coarse, layer.fine):
        torch.nn.init.zeros_(block.pos.weight)
    x = torch.randn(1, 16, 4, 4)
    y = x.clone()
    y[0, :, 0, 0] += torch.randn(16)
    delta_HW = (layer(x) - layer(y)).abs().sum(dim=1)[0]
    assert delta_HW[3, 3] > 0


@pytest.mark.parametrize(("side", "window"), [(224, 7), (256, 8), (384, 12), (512, 16)])
def test_window_follows_input_resolution(side: int, window: int) -> None:
    """A model built at 224 runs each input with the paper's window for that input (7@224 ... 16@512):
    the same weights built at `side` give the same output; pinning the build window gives another."""
    torch.manual_seed(0)
    at_224 = build_eradio("tiny_test", img_size=224).eval()
    assert at_224.window_for(side, side) == window
    native = build_eradio("tiny_test", img_size=side).eval()
    native.load_state_dict(at_224.state_dict())
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        torch.testing.assert_close(at_224(x).features_BhwC, native(x).features_BhwC)
        if side != 224:
            from stages.students.eradio import ERADIO, ERADIO_SIZES

            pinned = ERADIO(ERADIO_SIZES["tiny_test"], img_size=224, window_size=7).eval()
            pinned.load_state_dict(at_224.state_dict())
            assert pinned.window_for(side, side) == 7
            assert not torch.allclose(pinned(x).features_BhwC, at_224(x).features_BhwC)
