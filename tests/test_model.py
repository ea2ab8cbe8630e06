"""DeblurDiff on the tiny preset: shapes, variants, losses, training, determinism, save/load, presets."""

import json

import pytest
import torch

from deblurdiff.model import VARIANTS, DeblurDiff
from deblurdiff.presets import build_model, load_frozen_parts
from conftest import perturb


def pair(b=1, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    sharp = torch.rand(b, 3, size, size, generator=g)
    blurry = (sharp + torch.roll(sharp, 1, dims=-1) + torch.roll(sharp, 2, dims=-1)) / 3
    return blurry, sharp


def latents(b=2, h=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, h, h, generator=g), torch.randn(b, 4, h, h, generator=g)


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny")


def test_encode_decode_shapes_and_range(tiny):
    blurry, _ = pair(b=2)
    with torch.no_grad():
        z = tiny.encode(blurry)
        assert z.shape == (2, 4, 4, 4)  # the tiny VAE downsamples ×8 like SD's
        x = tiny.decode(z)
    assert x.shape == (2, 3, 32, 32)
    assert 0 <= x.min() and x.max() <= 1
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny.encode(torch.rand(1, 3, 31, 32))


def test_condition_embedding_is_latent_resolution_and_zero_init(tiny):
    emb = tiny.controlnet.controlnet_cond_embedding
    assert all(m.stride == (1, 1) for m in emb.modules() if isinstance(m, torch.nn.Conv2d))
    assert emb.conv_in.in_channels == 8
    assert torch.equal(emb.conv_out.weight, torch.zeros_like(emb.conv_out.weight))
    assert torch.equal(emb.conv_out.bias, torch.zeros_like(emb.conv_out.bias))
    cond = torch.randn(1, 8, 16, 16)
    assert emb(cond).shape == (1, 32, 16, 16)


@pytest.mark.parametrize("variant", VARIANTS)
def test_predict_eps_all_variants(variant):
    model = build_model("tiny", variant=variant)
    z_t, z_lq = latents()
    with torch.no_grad():
        eps, z_s = model.predict_eps(z_t, torch.tensor([3, 800]), z_lq)
        # zero-initialised ControlNet outputs and LKPN: the frozen UNet's prediction, z_s = z_lq
        text = model.empty_text_emb.expand(2, -1, -1)
        plain = model.unet(z_t, torch.tensor([3, 800]), encoder_hidden_states=text).sample
    assert eps.shape == z_t.shape and z_s.shape == z_lq.shape
    torch.testing.assert_close(eps, plain)
    assert torch.equal(z_s, z_lq)
    assert (model.lkpn is None) == (variant == "blurry")
    if variant != "blurry":
        perturb(model.lkpn)
    perturb(model.controlnet)
    with torch.no_grad():
        eps2, z_s2 = model.predict_eps(z_t, 500, z_lq)  # scalar timestep broadcasts
    assert torch.isfinite(eps2).all()
    assert torch.equal(z_s2, z_lq) == (variant == "blurry")


def test_condition_per_variant():
    z_t, z_lq = latents()
    expected = {"lkpn": (2, 100, 16, 16), "lkpn-static": (2, 100, 16, 16), "lkpn-direct": None, "blurry": None}
    for variant, shape in expected.items():
        z_s, kernels = build_model("tiny", variant=variant).condition(z_lq, z_t, 10)
        assert (None if kernels is None else tuple(kernels.shape)) == shape, variant


def test_training_losses_and_gradients_only_on_trainable_parts():
    model = build_model("tiny", loss_pixel_weight=0.5)
    blurry, sharp = pair(b=2)
    losses = model.training_losses(blurry, sharp, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"loss", "loss_eps", "loss_latent", "loss_pixel"}
    for value in losses.values():
        assert value.ndim == 0 and torch.isfinite(value)
    losses["loss"].backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable and all(p.requires_grad for p in model.trainable_parameters())
    for name, p in model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert model.lkpn.unet.conv_out.weight.grad.abs().sum() > 0
    assert model.controlnet.controlnet_mid_block.weight.grad.abs().sum() > 0
    assert model.training and not model.vae.training and not model.unet.training


def test_blurry_variant_does_not_count_latent_loss():
    model = build_model("tiny", variant="blurry")
    losses = model.training_losses(*pair(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(losses["loss"], losses["loss_eps"])
    assert losses["loss_latent"] > 0


def test_training_losses_are_reproducible_with_a_generator(tiny):
    blurry, sharp = pair()
    with torch.no_grad():
        a = tiny.training_losses(blurry, sharp, generator=torch.Generator().manual_seed(5))
        b = tiny.training_losses(blurry, sharp, generator=torch.Generator().manual_seed(5))
        c = tiny.training_losses(blurry, sharp, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a["loss"], b["loss"]) and not torch.equal(a["loss"], c["loss"])


def test_a_few_steps_overfit_one_pair():
    model = build_model("tiny", loss_latent_weight=100.0)  # tiny latents are small; make z_s matter
    blurry, sharp = pair()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    history = []
    for _ in range(15):
        losses = model.training_losses(blurry, sharp, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    assert history[-1]["loss"] < 0.75 * history[0]["loss"]
    assert history[-1]["loss_eps"] < history[0]["loss_eps"]
    assert history[-1]["loss_latent"] < history[0]["loss_latent"]


def test_tiny_build_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = build_model("tiny", seed=3), build_model("tiny", seed=3), build_model("tiny", seed=4)
    assert torch.equal(state, torch.random.get_rng_state())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.empty_text_emb, b.empty_text_emb)
    assert not torch.equal(a.empty_text_emb, c.empty_text_emb)
    assert not torch.equal(sa["unet.conv_in.weight"], sc["unet.conv_in.weight"])


@pytest.mark.parametrize("variant", ["lkpn", "blurry"])
def test_save_load_gives_identical_predictions(tmp_path, variant):
    model = build_model("tiny", variant=variant, seed=2, kernel_size=3, loss_pixel_weight=0.25)
    perturb(model.controlnet, seed=7)
    if model.lkpn is not None:
        perturb(model.lkpn, seed=8)
    target = tmp_path / "ckpt"
    model.save_pretrained(target)
    model.save_pretrained(target)  # overwriting an existing checkpoint works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp folders left behind
    record = json.loads((target / "deblurdiff.json").read_text())
    assert record["config"]["variant"] == variant and record["config"]["kernel_size"] == 3
    assert set(record["versions"]) >= {"torch", "diffusers", "deblurdiff"}

    loaded = DeblurDiff.from_pretrained(target)
    assert loaded.config == model.config
    z_t, z_lq = latents()
    with torch.no_grad():
        eps_a, z_s_a = model.predict_eps(z_t, 250, z_lq)
        eps_b, z_s_b = loaded.predict_eps(z_t, 250, z_lq)
        eps_fresh, _ = build_model("tiny", variant=variant, seed=2, kernel_size=3).predict_eps(z_t, 250, z_lq)
    assert torch.equal(eps_a, eps_b) and torch.equal(z_s_a, z_s_b)
    assert not torch.allclose(eps_a, eps_fresh)  # the perturbation is visible, so the test can fail


def test_from_pretrained_missing_folder_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="deblurdiff.json missing"):
        DeblurDiff.from_pretrained(tmp_path)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="variant 'lkpn-fancy' unknown"):
        build_model("tiny", variant="lkpn-fancy")
    with pytest.raises(ValueError, match="preset 'sd3' unknown"):
        build_model("sd3")
    with pytest.raises(TypeError, match="unknown option"):
        build_model("tiny", loss_weight_eps=1.0)


def test_sd_preset_missing_folder_gives_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="needs a pretrained folder"):
        build_model("sd21-base")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        build_model("sd21-base", pretrained=tmp_path / "nope")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"unet/config\.json missing — point --pretrained at a local "
                       r"diffusers copy of stabilityai/stable-diffusion-2-1-base"):
        build_model("sd21-base", pretrained=tmp_path)


def fake_sd_folder(root):
    """A diffusers-layout folder with tiny random parts and a hand-made CLIP tokenizer vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    parts = load_frozen_parts("tiny", seed=11)
    parts.vae.save_pretrained(root / "vae")
    parts.unet.save_pretrained(root / "unet")
    parts.scheduler.save_pretrained(root / "scheduler")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(vocab_file=str(root / "vocab.json"), merges_file=str(root / "merges.txt"),
                  model_max_length=77).save_pretrained(root / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        text_config = CLIPTextConfig(vocab_size=16, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                     num_attention_heads=2, max_position_embeddings=77)
        CLIPTextModel(text_config).save_pretrained(root / "text_encoder")


def test_sd_preset_loads_a_local_diffusers_folder(tmp_path, monkeypatch):
    import socket

    from transformers import CLIPTextModel, CLIPTokenizer

    def no_network(*args, **kwargs):
        raise AssertionError("the sd preset tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    root = tmp_path / "sd"
    fake_sd_folder(root)
    model = build_model("sd21-base", pretrained=root, lkpn={"block_out_channels": [32, 64], "layers_per_block": 1,
                                                           "attention_head_dim": 16, "norm_num_groups": 8})
    assert model.config.pretrained == str(root.resolve())
    assert not hasattr(model, "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = CLIPTextModel.from_pretrained(root / "text_encoder")(ids)[0]
    torch.testing.assert_close(model.empty_text_emb, expected)
    assert model.lkpn.config.cross_attention_dim == 32
    perturb(model.controlnet)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = DeblurDiff.from_pretrained(tmp_path / "ckpt")
    z_t, z_lq = latents()
    with torch.no_grad():
        assert torch.equal(model.predict_eps(z_t, 9, z_lq)[0], loaded.predict_eps(z_t, 9, z_lq)[0])
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        DeblurDiff.from_pretrained(tmp_path / "ckpt")
    assert DeblurDiff.from_pretrained(tmp_path / "ckpt", pretrained=moved).config.pretrained == str(moved.resolve())


def test_gradient_checkpointing_keeps_losses_and_gradients():
    blurry, sharp = pair()
    results = []
    for enabled in (False, True):
        model = build_model("tiny", loss_pixel_weight=1.0)
        perturb(model.controlnet)
        perturb(model.lkpn)
        model.set_gradient_checkpointing(enabled)
        losses = model.training_losses(blurry, sharp, generator=torch.Generator().manual_seed(0))
        losses["loss"].backward()
        grads = torch.cat([p.grad.flatten() for p in model.trainable_parameters()])
        results.append((losses["loss"].detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs (outside checkpointed regions)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize("part", ["unet", "controlnet", "lkpn"])
def test_gradient_checkpointing_saves_activations_in_every_part(part):
    """Checkpointing must actually drop activations in each part — also in the frozen UNet, which is
    in eval mode (diffusers < 0.32 checkpointed only modules in training mode, so there it did nothing)."""
    model = build_model("tiny")
    perturb(model.controlnet)
    perturb(model.lkpn)
    z_t, z_lq = latents(b=2, h=16)
    t = torch.tensor([10, 700])
    text = model.empty_text_emb.expand(2, -1, -1)
    cond = torch.cat([z_lq, z_lq], 1)

    def make_forward():  # the part's forward as in training, returning the scalar to backpropagate
        if part == "lkpn":
            return lambda: model.lkpn(z_lq, z_t, t, text).z_s.square().mean()
        if part == "controlnet":
            return lambda: sum(r.square().mean() for r in model.controlnet(z_t, t, text, controlnet_cond=cond,
                                                                           return_dict=False)[0])
        down, mid = model.controlnet(z_t, t, text, controlnet_cond=cond, return_dict=False)  # outside the count
        return lambda: model.unet(z_t, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                                  mid_block_additional_residual=mid).sample.square().mean()

    grads, sizes = [], []
    for enabled in (False, True):
        if enabled:
            getattr(model, part).enable_gradient_checkpointing()
        assert not model.unet.training and model.controlnet.training
        for p in model.trainable_parameters():
            p.grad = None
        forward, loss = make_forward(), {}
        sizes.append(saved_bytes(lambda: loss.update(value=forward())))
        loss["value"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.trainable_parameters() if p.grad is not None]))
    off, on = sizes
    assert on < 0.5 * off, f"{part}: {on} bytes saved with checkpointing vs {off} without"
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = build_model("tiny")
    perturb(model.controlnet)
    perturb(model.lkpn)
    blurry, sharp = pair(b=2)
    with torch.no_grad():
        cpu = model.training_losses(blurry, sharp, generator=torch.Generator().manual_seed(0))
        model.to("cuda")
        gpu = model.training_losses(blurry.cuda(), sharp.cuda(), generator=torch.Generator().manual_seed(0))
    for key in cpu:
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=1e-3, atol=1e-4)
