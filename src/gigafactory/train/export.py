"""Export a trained model (safetensors + config.json + tokenizer.json) and sample from it.

``load_for_inference`` accepts an export folder, a run folder (its ``model/`` export, or else
its newest verified checkpoint) or one checkpoint folder (DCP, read without a process group).
Sampling is temperature plus nucleus (top-p) sampling, Holtzman et al. 2019.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from gigafactory.spec.model import ModelSpec
from gigafactory.train.checkpoint import PREFIX, quiet_single_process, verify
from gigafactory.train.errors import CheckpointError, TrainConfigError
from gigafactory.train.model import KVCache, Transformer
from gigafactory.train.tokenizer import EOT, load_tokenizer

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"


def export_model(
    state_dict: dict[str, torch.Tensor],
    spec: ModelSpec,
    tokenizer: Tokenizer,
    out_dir: Path,
    step: int = 0,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` (the ModelSpec) and ``tokenizer.json`` into a
    temporary folder, then rename it to ``out_dir`` (replacing an older export)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainConfigError(f"--out {out_dir} is a file; give a folder for the export")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / CONFIG).is_file():
        raise TrainConfigError(
            f"{out_dir} exists and is not a model export; give --out a new folder"
        )
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "step": str(step)})
    config = {"architecture": "gigafactory-grok", "step": step, "model": spec.to_dict()}
    (tmp / CONFIG).write_text(json.dumps(config, indent=1))
    tokenizer.save(str(tmp / TOKENIZER))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def _from_export(folder: Path, device: torch.device) -> tuple[Transformer, Tokenizer]:
    config = json.loads((folder / CONFIG).read_text())
    model = Transformer(ModelSpec.from_dict(config["model"]))
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval(), load_tokenizer(folder / TOKENIZER)


def _from_checkpoint(folder: Path, device: torch.device) -> tuple[Transformer, Tokenizer]:
    import torch.distributed.checkpoint as dcp

    manifest, reason = verify(folder)
    if manifest is None:
        raise CheckpointError(f"checkpoint {folder} cannot be read: {reason}")
    model = Transformer(ModelSpec.from_dict(manifest["model"]))
    state = {"model": model.state_dict()}
    with quiet_single_process():
        dcp.load(state, checkpoint_id=folder)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), load_tokenizer(folder.parent.parent / TOKENIZER)


def inference_device(device: str) -> torch.device:
    """``cpu`` or ``cuda``, refused with the fix where this build or machine has no CUDA."""
    if device not in ("cpu", "cuda"):
        raise TrainConfigError(f"--device must be cpu or cuda; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        reason = (
            "this PyTorch build has no CUDA support"
            if torch.version.cuda is None
            else "no CUDA GPU is visible"
        )
        raise TrainConfigError(f"--device cuda: {reason}; use --device cpu")
    return torch.device(device)


@dataclass(frozen=True)
class Weights:
    """Where a model's weights are: an export folder or a DCP checkpoint, and their step."""

    folder: Path
    step: int
    checkpoint: bool


def _export_step(folder: Path) -> int:
    try:
        return int(json.loads((folder / CONFIG).read_text()).get("step", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def find_weights(path: Path) -> Weights:
    """The weights ``path`` names. For a run folder: the newest of its ``model/`` export and
    its newest checkpoint that verifies (a run trained on after its export, or killed before
    exporting, is read from the checkpoint); an export of the same step wins the tie."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run folder, model/ or checkpoint")
    if (path / CONFIG).is_file() and (path / WEIGHTS).is_file():
        return Weights(path, _export_step(path), checkpoint=False)
    if path.name.startswith(PREFIX):
        manifest, reason = verify(path)
        if manifest is None:
            raise CheckpointError(f"checkpoint {path} cannot be read: {reason}")
        return Weights(path, int(manifest["step"]), checkpoint=True)
    found = []
    if (path / "model" / CONFIG).is_file():
        found.append(Weights(path / "model", _export_step(path / "model"), checkpoint=False))
    for folder in sorted((path / "checkpoints").glob(f"{PREFIX}*"), reverse=True):
        manifest, _ = verify(folder)
        if manifest is not None:
            found.append(Weights(folder, int(manifest["step"]), checkpoint=True))
            break
    if not found:
        raise CheckpointError(
            f"{path} holds no exported model and no complete checkpoint; pass a run folder "
            "written by gigafactory train (its --out), its model/ folder, or a checkpoint folder"
        )
    return max(found, key=lambda w: (w.step, not w.checkpoint))


def load_for_inference(path: Path, device: str = "cpu") -> tuple[Transformer, Tokenizer]:
    """A model and its tokenizer from an export, a run folder or a checkpoint folder."""
    dev = inference_device(device)
    weights = find_weights(path)
    if weights.checkpoint:
        return _from_checkpoint(weights.folder, dev)
    return _from_export(weights.folder, dev)


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> int:
    """One token from (V,) logits: greedy at temperature 0, else softmax(logits / T) cut to the
    smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling)."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(descending=True)
    keep = sorted_p.cumsum(0) - sorted_p < top_p  # the top token is always kept
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
    return int(order[choice])


@torch.no_grad()
def generate(
    model: Transformer,
    tok: Tokenizer,
    prompt: str,
    max_tokens: int = 100,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
) -> Iterator[str]:
    """Yield the continuation of ``prompt`` piece by piece; stops at ``<|endoftext|>``.

    Decodes through a KV cache (one position per new token); when the context reaches the
    model's ``seq_len`` the newest half is kept and re-encoded."""
    if temperature < 0:
        raise TrainConfigError(f"--temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise TrainConfigError(f"--top-p must be in (0, 1], got {top_p}")
    if max_tokens < 1:
        raise TrainConfigError(f"--max-tokens must be >= 1, got {max_tokens}")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    ids = tok.encode(prompt).ids or [tok.token_to_id(EOT)]
    eot, new, printed = tok.token_to_id(EOT), [], ""
    window = model.spec.seq_len

    def prefill(context: list[int]) -> tuple[KVCache, torch.Tensor]:
        cache = model.new_cache()
        logits = model(torch.tensor([context], device=device), cache=cache).logits  # (1, T, V)
        return cache, logits[0, -1].cpu()

    cache, logits = prefill(ids[-window:])
    for _ in range(max_tokens):
        token = sample_next(logits, temperature, top_p, gen)
        if token == eot:
            break
        ids.append(token)
        new.append(token)
        text = tok.decode(new)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            yield text[len(printed) :]
            printed = text
        if cache.length < window:  # one position through the KV cache
            step = torch.tensor([[token]], device=device)  # (1, 1)
            logits = model(step, cache=cache).logits[0, -1].cpu()
        else:  # context full: keep the newest half and re-encode it
            cache, logits = prefill(ids[-max(1, window // 2) :])
