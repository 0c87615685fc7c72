"""DNA sequence models over nucleotide (or byte) tokens, with any mixer.

``DNAModel`` is an embedding, a stack of :class:`~omniseq.backbones.blocks.Block`
and a language-model head, with three ways of treating the two DNA strands
(``rc_mode``), after Caduceus (Schiff et al. 2024, https://arxiv.org/abs/2403.03234):

- ``"none"``: an ordinary model.
- ``"ps"``: reverse-complement equivariance by parameter sharing. The hidden state
  has ``dim`` channels in two halves; the shared trunk runs on the first half and,
  reverse-complemented, on the second, so that ``features(RC(x)) = RC(features(x))``
  exactly, where RC of features flips both the sequence and the channel axis.
  Running one trunk on a half and on the flipped other half is the same as
  Caduceus' per-layer RCPS wrapping (the wrapper composes), so the trunk runs
  once on the batch and its reverse complement packed together. The embedding
  gives the second half ``embed(complement(x))`` channel-flipped and the LM head
  adds the complement-permuted logits of the second half, both equivariant.
- ``"ph"``: post-hoc conjoining. A non-equivariant model (train it with RC
  augmentation) whose outputs at inference average the prediction on ``x`` and the
  reverse-complemented prediction on ``RC(x)``.

``patch_size=s > 1`` shortens the sequence before the blocks: a k-mer stem embeds
each run of ``s`` bases as one token (a stride-``s`` convolution over one-hot bases,
kernel ``patch_kernel``, by default ``s``; a larger one overlaps neighbouring patches),
the blocks run on ``ceil(L / s)`` tokens, and per-base
outputs (``forward``, ``forward_features``) come from each patch token through a
per-offset channel scaling and bias (a depthwise transposed convolution, kernel =
stride = ``s``). DNABERT-2's BPE tokens shorten GUE sequences ~4-5x in the same spirit
(Zhou et al. 2024, https://arxiv.org/abs/2306.15006). A length not divisible by
``s`` is right-padded with ``pad_id`` to whole patches and the padded outputs are
cut off. Each strand is patched from its own 5' end, so the two strands of a PS
model see different patch boundaries; the RC equivariance stays exact, because PS
only needs the shared trunk to be the same function on both strands. Pooling weights
every patch token by its number of real bases.

``causal=True`` gives a left-to-right language model (e.g. over bytes) with
``init_state`` / ``step`` / ``generate``, equal to the parallel form.

Padding: ``attention_mask`` marks real tokens; sequences are right-padded and the
reverse complement of a padded row reverses only its real prefix, which keeps the
RC equivariance exact for padded batches too. Pooling ignores padding, but a
bidirectional (or attention) mixer still reads the padded positions, so a padded
row's outputs differ slightly from the same row unpadded; batch equal lengths
together where that matters (``DNAEncoder`` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from omniseq.backbones.blocks import Block, make_norm

__all__ = ["DNAModel", "CHAR_COMPLEMENT", "masked_mean", "rc_gather_index"]

RCMode = Literal["none", "ps", "ph"]
PosEmbed = Literal["none", "sinusoidal", "learned"]
# Complement permutation of the character vocabulary [PAD] [MASK] [CLS] [SEP] [UNK] A C G T N
# (omniseq.domains.genomics.NucleotideTokenizer("char").complement_ids).
CHAR_COMPLEMENT = (0, 1, 2, 3, 4, 8, 7, 6, 5, 9)
# Initial scale of token (and learned position) embeddings; fixed sinusoidal codes are
# scaled to it too, else unit-size codes swamp the tokens ~35:1 and every sequence
# starts with nearly the same pooled features (an attention model then cannot learn).
EMBED_INIT_STD = 0.02
# Initial scale of each per-offset table of a k-mer stem. At 0.02 / sqrt(s) (a token at a
# base embedding's scale) AdamW's first steps at lr 1e-3 swamped the differences between
# bases and Caduceus-PS's pooled features collapsed to a constant within 25 steps (GUE
# tf2 / tf4 stayed at chance); at 0.05 the same runs learn.
PATCH_EMBED_INIT_STD = 0.05


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the sequence axis of ``x (B, L, D)`` counting positions where ``mask (B, L)`` is True
    (or weighting them by ``mask`` when it holds numbers)."""
    if mask is None:
        return x.mean(1)
    weight = mask.to(x.dtype).unsqueeze(-1)
    return (x * weight).sum(1) / weight.sum(1).clamp(min=1.0)


def rc_gather_index(mask: torch.Tensor) -> torch.Tensor:
    """Index ``(B, L)`` reversing each row's real prefix (``mask`` True) and fixing its padding."""
    length = mask.sum(1, keepdim=True)
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(pos < length, length - 1 - pos, pos)


def _flip_seq(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Reverse the sequence axis (dim 1) of ``x (B, L, ...)``, per row when an index is given."""
    if index is None:
        return x.flip(1)
    view = index.view(*index.shape, *([1] * (x.ndim - 2))).expand_as(x)
    return x.gather(1, view)


def sinusoidal_positions(length: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed sine/cosine position codes ``(length, dim)`` (Vaswani et al. 2017)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, device=device).float() / dim)
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.to(dtype or torch.float32)


def _check_options(vocab_size, dim, rc_mode, causal, pos_embed, max_length, complement, patch_size,
                   patch_kernel) -> torch.Tensor:
    """Validate DNAModel options; returns the complement permutation as a tensor."""
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int (bases per token), got {patch_size!r}")
    if patch_kernel is not None and (not isinstance(patch_kernel, int) or patch_kernel < patch_size or patch_size == 1):
        raise ValueError(f"patch_kernel must be an int >= patch_size > 1 (bases each token reads), got "
                         f"patch_kernel={patch_kernel!r} with patch_size={patch_size}")
    if causal and patch_size > 1:
        raise ValueError("a causal LM steps one base at a time: use patch_size=1 with causal=True")
    if rc_mode not in ("none", "ps", "ph"):
        raise ValueError(f"rc_mode must be 'none', 'ps' or 'ph', got {rc_mode!r}")
    if causal and rc_mode != "none":
        raise ValueError("a causal LM reads one strand left to right: use rc_mode='none'")
    if rc_mode == "ps" and dim % 2:
        raise ValueError(f"rc_mode='ps' splits dim into two strand halves; dim must be even, got {dim}")
    if pos_embed == "learned" and max_length is None:
        raise ValueError("pos_embed='learned' needs max_length")
    if pos_embed not in ("none", "sinusoidal", "learned"):
        raise ValueError(f"pos_embed must be 'none', 'sinusoidal' or 'learned', got {pos_embed!r}")
    complement = tuple(range(vocab_size)) if complement is None and vocab_size != 10 else complement
    complement = torch.tensor(CHAR_COMPLEMENT if complement is None else complement, dtype=torch.long)
    if complement.shape != (vocab_size,) or not torch.equal(complement[complement], torch.arange(vocab_size)):
        raise ValueError(f"complement must be an involution of the {vocab_size} token ids, got {complement.tolist()}")
    return complement


class PatchEmbed(nn.Module):
    """One token per ``patch_size`` bases from a window of ``kernel_size`` bases around them:
    the sum of one embedding table per offset in the window.

    That is a stride-``s`` convolution (kernel ``k >= s``) over one-hot tokens, without
    building the one-hot. ``k > s`` overlaps the windows by ``(k - s) // 2`` bases on the
    left and the rest on the right (``pad_id`` beyond the ends), so a motif across a patch
    boundary is still seen whole by one token. Input ``(B, L)``, ``L`` a multiple of ``s``.
    """

    def __init__(self, vocab_size: int, width: int, patch_size: int, kernel_size: int | None = None,
                 pad_id: int = 0) -> None:
        super().__init__()
        kernel_size = patch_size if kernel_size is None else kernel_size
        self.vocab_size, self.patch_size, self.kernel_size, self.pad_id = vocab_size, patch_size, kernel_size, pad_id
        self.table = nn.Embedding(vocab_size * kernel_size, width)
        nn.init.normal_(self.table.weight, std=PATCH_EMBED_INIT_STD)
        self.register_buffer("offsets", torch.arange(kernel_size) * vocab_size, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        batch, length = ids.shape
        size, kernel = self.patch_size, self.kernel_size
        if kernel == size:
            windows = ids.view(batch, length // size, size)
        else:
            left = (kernel - size) // 2
            windows = F.pad(ids, (left, kernel - size - left), value=self.pad_id).unfold(1, kernel, size)
        flat = (windows + self.offsets).flatten(0, 1)
        return F.embedding_bag(flat, self.table.weight, mode="sum").view(batch, -1, self.table.embedding_dim)


class PatchUnembed(nn.Module):
    """Per-base features from patch tokens: a depthwise transposed convolution, kernel = stride = ``s``.

    Base ``j`` of a patch gets ``token * weight[j] + bias[j]`` (per channel). A linear head
    on it reads a different channel mix for every offset, which is all a per-base
    readout of one token needs, at ``2 s width`` parameters instead of a full
    ``s width^2`` projection (which a classification fine-tune would carry unused).
    """

    def __init__(self, width: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.weight = nn.Parameter(torch.ones(patch_size, width))  # starts as repeating each token
        self.bias = nn.Parameter(torch.zeros(patch_size, width))

    def forward(self, tokens: torch.Tensor, length: int) -> torch.Tensor:
        """``(B, P, width)`` -> ``(B, length, width)``, ``length <= P * patch_size``."""
        batch, num_tokens, width = tokens.shape
        bases = torch.addcmul(self.bias, tokens.unsqueeze(2), self.weight)  # (B, P, s, width)
        return bases.view(batch, num_tokens * self.patch_size, width)[:, :length]


class DNAModel(nn.Module):
    """Nucleotide/byte model: embedding, mixer blocks, final norm, LM head.

    Args:
        vocab_size: token vocabulary (10 for the character tokenizer, 261 for bytes).
        dim: hidden width; with ``rc_mode="ps"`` it counts both strand halves.
        depth: number of blocks.
        mixer, mixer_options: the sequence mixer of every block (any registered mixer).
        rc_mode: ``"none"``, ``"ps"`` (parameter sharing) or ``"ph"`` (post-hoc conjoining).
        causal: left-to-right LM (needs ``rc_mode="none"``).
        mlp_ratio, channel_mixer, norm: block options (Caduceus: no channel MLP, RMSNorm).
        pos_embed: ``"none"`` (recurrent mixers carry order), ``"sinusoidal"`` or ``"learned"``
            (needs ``max_length``); attention needs one of the latter.
        max_length: longest input; required for ``pos_embed="learned"`` and the ``mlp`` mixer.
        complement: vocabulary permutation to the complementary token (default: characters).
        pad_id: padding token id.
        drop_path, dropout: regularisation.
        num_heads: heads of attention/GLA mixers.
        tie_embeddings: share the LM head weight with the token embedding (``patch_size=1`` only:
            a patch stem has one table per offset, so its head is untied).
        patch_size: bases per token (k-mer stem, see the module docstring); 1 = one token per base.
        patch_kernel: bases each stem token reads (default ``patch_size``; larger overlaps neighbours).
    """

    def __init__(
        self,
        vocab_size: int = 10,
        dim: int = 128,
        depth: int = 4,
        mixer: str = "mamba",
        mixer_options: dict | None = None,
        rc_mode: RCMode = "none",
        causal: bool = False,
        mlp_ratio: float = 4.0,
        channel_mixer: Literal["mlp", "glu", "none"] = "none",
        norm: Literal["layernorm", "rmsnorm"] = "rmsnorm",
        pos_embed: PosEmbed = "none",
        max_length: int | None = None,
        complement: Sequence[int] | None = None,
        pad_id: int = 0,
        drop_path: float = 0.0,
        dropout: float = 0.0,
        num_heads: int | None = None,
        tie_embeddings: bool = True,
        patch_size: int = 1,
        patch_kernel: int | None = None,
    ) -> None:
        super().__init__()
        complement = _check_options(vocab_size, dim, rc_mode, causal, pos_embed, max_length, complement, patch_size,
                                    patch_kernel)
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.config["complement"] = complement.tolist()
        self.vocab_size, self.dim, self.depth = vocab_size, dim, depth
        self.rc_mode, self.causal, self.pad_id = rc_mode, causal, pad_id
        self.max_length, self.pos_embed_kind, self.patch_size = max_length, pos_embed, patch_size
        self.width = dim // 2 if rc_mode == "ps" else dim
        max_tokens = None if max_length is None else -(-max_length // patch_size)
        self.register_buffer("complement", complement, persistent=False)
        if patch_size == 1:
            self.embed = nn.Embedding(vocab_size, self.width)
            # Small init (as GPT-2 / Mamba): with a tied head, N(0, 1) embeddings give huge initial logits.
            nn.init.normal_(self.embed.weight, std=EMBED_INIT_STD)
        else:
            self.embed = PatchEmbed(vocab_size, self.width, patch_size, patch_kernel, pad_id)
            self.unpatch = PatchUnembed(self.width, patch_size)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, max_tokens, self.width))
            nn.init.trunc_normal_(self.pos_embed, std=EMBED_INIT_STD)
        self.drop = nn.Dropout(dropout)
        rates = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [drop_path]
        self.blocks = nn.ModuleList(
            Block(self.width, mixer=mixer, mixer_options=mixer_options, mlp_ratio=mlp_ratio,
                  channel_mixer=channel_mixer, norm=norm, drop=dropout, drop_path=rate, causal=causal,
                  seq_len=max_tokens if mixer == "mlp" else None, num_heads=num_heads)
            for rate in rates
        )
        self.norm_f = make_norm(norm, self.width)
        self.lm_head = nn.Linear(self.width, vocab_size, bias=False)
        if tie_embeddings and patch_size == 1:
            self.lm_head.weight = self.embed.weight

    @property
    def pooled_dim(self) -> int:
        """Width of :meth:`forward_pooled` (one strand half for PS: the pooled halves are summed)."""
        return self.width

    @property
    def feature_dim(self) -> int:
        return self.dim

    # -- the trunk ---------------------------------------------------------------

    def _check_ids(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if ids.ndim != 2 or ids.dtype != torch.long:
            raise ValueError(f"DNAModel expects token ids of shape (B, L) and dtype long, got {tuple(ids.shape)} {ids.dtype}")
        if self.max_length is not None and ids.shape[1] > self.max_length:
            raise ValueError(f"DNAModel: length {ids.shape[1]} exceeds max_length={self.max_length}")
        if attention_mask is not None and attention_mask.shape != ids.shape:
            raise ValueError(f"attention_mask must have shape {tuple(ids.shape)}, got {tuple(attention_mask.shape)}")

    def _positions(self, length: int, x: torch.Tensor, offset: int = 0) -> torch.Tensor | None:
        if self.pos_embed_kind == "learned":
            return self.pos_embed[:, offset : offset + length]
        if self.pos_embed_kind == "sinusoidal":
            # sin/cos have RMS 1/sqrt(2): scaled to the token embeddings' initial RMS.
            codes = sinusoidal_positions(offset + length, self.width, x.device, x.dtype)[offset:]
            return codes * (EMBED_INIT_STD * math.sqrt(2.0))
        return None

    def trunk_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding, blocks and final norm on one strand: ``(B, L)`` -> ``(B, ceil(L / patch_size), width)``."""
        if ids.shape[1] % self.patch_size:
            ids = F.pad(ids, (0, -ids.shape[1] % self.patch_size), value=self.pad_id)
        x = self.embed(ids)
        pos = self._positions(x.shape[1], x)
        if pos is not None:
            x = x + pos
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm_f(x)

    def trunk(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-base features of one strand: ``(B, L)`` -> ``(B, L, width)``."""
        tokens = self.trunk_tokens(ids)
        return tokens if self.patch_size == 1 else self.unpatch(tokens, ids.shape[1])

    def _token_weights(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Pooling weight of each trunk token: its number of real bases (None: all tokens equal)."""
        length, size = ids.shape[1], self.patch_size
        if size == 1 or (attention_mask is None and length % size == 0):
            return attention_mask
        mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask
        mask = F.pad(mask, (0, -length % size), value=False)
        return mask.view(mask.shape[0], -1, size).sum(-1)

    def _both_strands(self, ids: torch.Tensor, attention_mask: torch.Tensor | None, trunk=None):
        """``trunk`` (per-base by default) on the batch and on its reverse complement, packed into one batch."""
        index = None
        if attention_mask is not None and not bool(attention_mask.all()):
            index = rc_gather_index(attention_mask)
        rc_ids = _flip_seq(self.complement[ids], index)
        h = (trunk or self.trunk)(torch.cat([ids, rc_ids]))
        h_fwd, h_rc = h.chunk(2)
        return h_fwd, h_rc, index

    def _conjoin(self) -> bool:
        return self.rc_mode == "ps" or (self.rc_mode == "ph" and not self.training)

    # -- outputs -------------------------------------------------------------------

    def forward_features(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token features: ``(B, L, dim)`` (PS: strand halves, RC-equivariant), else ``(B, L, width)``."""
        self._check_ids(ids, attention_mask)
        if not self._conjoin():
            return self.trunk(ids)
        h_fwd, h_rc, index = self._both_strands(ids, attention_mask)
        h_rc = _flip_seq(h_rc, index)
        if self.rc_mode == "ps":
            return torch.cat([h_fwd, h_rc.flip(-1)], dim=-1)
        return 0.5 * (h_fwd + h_rc)

    def forward_pooled(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence embedding ``(B, pooled_dim)``: masked mean; RC-invariant for PS (and Ph at eval)."""
        self._check_ids(ids, attention_mask)
        if not self._conjoin():
            return masked_mean(self.trunk_tokens(ids), self._token_weights(ids, attention_mask))
        h_fwd, h_rc, _ = self._both_strands(ids, attention_mask, self.trunk_tokens)
        # Right padding: the RC strand's real tokens are also the row's prefix, same mask.
        weights = self._token_weights(ids, attention_mask)
        return 0.5 * (masked_mean(h_fwd, weights) + masked_mean(h_rc, weights))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """LM logits ``(B, L, vocab)``; for PS/Ph the RC strand's logits are complement-permuted and added."""
        self._check_ids(ids, attention_mask)
        if not self._conjoin():
            return self.lm_head(self.trunk(ids))
        h_fwd, h_rc, index = self._both_strands(ids, attention_mask)
        logits_rc = _flip_seq(self.lm_head(h_rc), index)[..., self.complement]
        logits = self.lm_head(h_fwd) + logits_rc
        return logits if self.rc_mode == "ps" else 0.5 * logits

    # -- recurrent generation (causal) -------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        if not self.causal:
            raise RuntimeError("init_state/step need a causal DNAModel (causal=True)")
        return {"blocks": [b.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks], "pos": 0}

    def step(self, token: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token id per sequence ``(B,)`` -> next-token logits ``(B, vocab)`` and the new state."""
        if token.ndim != 1:
            raise ValueError(f"step expects token ids of shape (B,), got {tuple(token.shape)}")
        x = self.embed(token)
        pos = self._positions(1, x, offset=state["pos"])
        if pos is not None:
            x = x + pos[0]
        new_states = []
        for block, block_state in zip(self.blocks, state["blocks"], strict=True):
            x, block_state = block.step(x, block_state)
            new_states.append(block_state)
        return self.lm_head(self.norm_f(x)), {"blocks": new_states, "pos": state["pos"] + 1}

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        num_tokens: int,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ``prompt (B, L0)`` by ``num_tokens`` tokens, greedy (temperature 0) or sampled."""
        if prompt.ndim != 2 or prompt.shape[1] < 1:
            raise ValueError(f"generate expects a prompt of shape (B, L0) with L0 >= 1, got {tuple(prompt.shape)}")
        state = self.init_state(prompt.shape[0], device=prompt.device)
        for t in range(prompt.shape[1]):
            logits, state = self.step(prompt[:, t], state)
        out = [prompt]
        for _ in range(num_tokens):
            if temperature > 0:
                probs = F.softmax(logits / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                token = logits.argmax(-1)
            out.append(token[:, None])
            logits, state = self.step(token, state)
        return torch.cat(out, dim=1)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"} if self.pos_embed_kind == "learned" else set()
