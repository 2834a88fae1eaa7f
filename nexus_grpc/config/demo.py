"""The built-in demo fleet that `nexus-grpc serve` runs without `--config`.

It is an ordinary config file, loaded and validated like any other, so it doubles as an example.
The app keeps `DEMO_LOADING_BACKEND` LOADING with a rolling ETA and seeds the global spend to
`DEMO_SEED_SPEND_USD` (the soft limit), so the README's three calls always show:

- Route:  model `gpt-4`     -> alias of llama3:70b, restricted by policy -> gpu-1;
- Queue:  model `reasoning` -> alias of deepseek-r1:70b, served only by gpu-loading (LOADING);
- Reject: model `claude-3-opus` -> MODEL_NOT_FOUND; `gpt-4-turbo` -> NO_ELIGIBLE_BACKEND (the
  `gpt-4*` policy keeps it on restricted backends and only the open `openai` backend serves it).
"""

from __future__ import annotations

from nexus_grpc.config.loader import load_config_text
from nexus_grpc.config.schema import Config

DEMO_SOURCE = "<demo>"
DEMO_LOADING_BACKEND = "gpu-loading"
DEMO_SEED_SPEND_USD = 80.0

DEMO_TOML = """\
# nexus-grpc demo fleet: local GPUs (restricted zone) and two cloud providers (open zone).

[routing]
strategy = "smart"

[routing.aliases]
"gpt-4" = "llama3:70b"            # clients ask for gpt-4, a local 70B answers
"fast" = "llama3:8b"
"reasoning" = "deepseek-r1:70b"

[routing.fallbacks]
"llama3:70b" = ["qwen2:72b"]

[[routing.policies]]              # anything called gpt-4* stays on our hardware, tier 3 or better
model_pattern = "gpt-4*"
privacy = "restricted"
min_tier = 3

[[routing.policies]]
model_pattern = "llama3:*"
privacy = "restricted"

[routing.budget]
monthly_limit_usd = 100.0
soft_limit_percent = 75.0
hard_limit_action = "block_cloud"

[routing.budget.tenants]
"team-a" = 20.0

[ledger]
kind = "memory"

[[backends]]
id = "gpu-1"
url = "http://127.0.0.1:11434"
type = "ollama"
tier = 3
priority = 1
[[backends.models]]
id = "llama3:70b"
context_length = 8192
tools = true
json_mode = true
[[backends.models]]
id = "llama3:8b"
context_length = 8192

[[backends]]
id = "gpu-2"
url = "http://127.0.0.1:8000"
type = "vllm"
tier = 2
priority = 10
[[backends.models]]
id = "llama3:8b"
context_length = 8192
[[backends.models]]
id = "mixtral:8x7b"
context_length = 32768
tools = true
[[backends.models]]
id = "qwen2:72b"
context_length = 32768
tools = true
json_mode = true

[[backends]]
id = "gpu-loading"                # the demo keeps this one LOADING with a rolling ETA
url = "http://127.0.0.1:8001"
type = "vllm"
tier = 4
priority = 5
[[backends.models]]
id = "deepseek-r1:70b"
context_length = 32768

[[backends]]
id = "openai"
url = "https://api.openai.com"
type = "openai"
tier = 5
priority = 60
[[backends.models]]
id = "gpt-4-turbo"
context_length = 128000
vision = true
tools = true
json_mode = true
[[backends.models]]
id = "gpt-3.5-turbo"
context_length = 16385
tools = true
json_mode = true

[[backends]]
id = "anthropic"
url = "https://api.anthropic.com"
type = "anthropic"
tier = 4
priority = 70
[[backends.models]]
id = "claude-3-haiku-20240307"
context_length = 200000
vision = true
tools = true
[[backends.models]]
id = "claude-3-sonnet-20240229"
context_length = 200000
vision = true
tools = true
"""


def demo_config() -> Config:
    """The demo fleet, validated like any config file."""
    return load_config_text(DEMO_TOML, source=DEMO_SOURCE)
