"""Every configuration error names the file, the key path and the problem."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from nexus_grpc.config import _reader
from nexus_grpc.config.errors import ConfigError, ConfigIssue
from nexus_grpc.config.loader import load_config_text

FILE = "cfg.toml"

GPU = """
[[backends]]
id = "gpu"
url = "http://127.0.0.1:11434"
type = "ollama"
[[backends.models]]
id = "llama3:70b"
"""


def with_backend(lines: str) -> str:
    """GPU with `lines` added to the backend (before its model)."""
    return GPU.replace('type = "ollama"', f'type = "ollama"\n{lines}')


OPENAI = """
[[backends]]
id = "cloud"
url = "https://api.openai.com"
type = "openai"
[[backends.models]]
id = "gpt-4-turbo"
"""


def issues_of(text: str, base_dir: Path | None = None) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source=FILE, base_dir=base_dir)
    return info.value.issues


def assert_issue(issues: tuple[ConfigIssue, ...], key_path: str, words: str | tuple[str, ...]) -> None:
    wanted = (words,) if isinstance(words, str) else words
    for issue in issues:
        if issue.key_path == key_path and all(word in issue.problem for word in wanted):
            assert issue.file == FILE
            assert str(issue).startswith(f"{FILE}: {key_path}: ")
            return
    listing = "\n".join(str(i) for i in issues)
    raise AssertionError(f"no issue at {key_path!r} containing {wanted!r}; got:\n{listing}")


# Every refusal, one file each in errors/: a leading comment names the case, the key path the issue
# is reported at (`# key: ...`) and the words its problem contains (one `# says: ...` line each);
# the rest of the file is the TOML the loader refuses. Relative paths in it are relative to the
# `files` fixture's directory (see conftest.py). Phase 2 (types, ranges, unknown keys) and phase 3
# (cross-references and files) cases alike.
ERRORS_DIR = Path(__file__).parent / "errors"
KEY, SAYS = "# key: ", "# says: "


@dataclass(frozen=True)
class Refusal:
    text: str  # the TOML, after the leading comment
    key_path: str
    words: tuple[str, ...]


def read_refusal(path: Path) -> Refusal:
    lines = path.read_text().splitlines(keepends=True)
    head = list(itertools.takewhile(lambda line: line.startswith("#"), lines))
    keys = [line.removeprefix(KEY).rstrip("\n") for line in head if line.startswith(KEY)]
    words = tuple(line.removeprefix(SAYS).rstrip("\n") for line in head if line.startswith(SAYS))
    assert len(keys) == 1 and words, f"{path.name}: one '{KEY}' line and at least one '{SAYS}' line"
    return Refusal("".join(lines[len(head) :]), keys[0], words)


REFUSALS = sorted(ERRORS_DIR.glob("*.toml"))


def test_the_errors_directory_is_found() -> None:
    assert REFUSALS, f"no refusals in {ERRORS_DIR}"  # else the test below would only be skipped


@pytest.mark.parametrize("path", REFUSALS, ids=[p.stem for p in REFUSALS])
def test_a_refused_file_names_its_key_path_and_problem(path: Path, files: Path) -> None:
    refusal = read_refusal(path)
    assert_issue(issues_of(refusal.text, base_dir=files), refusal.key_path, refusal.words)


def test_syntax_error_names_line() -> None:
    issues = issues_of("[server]\nlisten = = 1\n")
    assert len(issues) == 1
    assert issues[0].key_path == "line 2, column 10"
    assert issues[0].problem.startswith("TOML syntax error: ")
    assert str(issues[0]).startswith(f"{FILE}: line 2, column 10: TOML syntax error")


def test_a_phase_reports_every_issue() -> None:
    text = '[server]\nworkers = 0\nbogus = 1\n[quality]\nmin_requests = 0\n[routing]\nstrategy = "x"'
    paths = {issue.key_path for issue in issues_of(text)}
    assert paths == {"server.workers", "server.bogus", "quality.min_requests", "routing.strategy"}


def test_phase3_runs_only_after_a_clean_phase2() -> None:
    # a duplicate id (phase 3) is not reported while a range error (phase 2) remains
    text = GPU.replace('type = "ollama"', 'type = "ollama"\ntier = 9') + GPU
    issues = issues_of(text)
    assert [i.key_path for i in issues] == ["backends[0].tier"]
    fixed = text.replace("tier = 9", "tier = 2")
    assert [i.key_path for i in issues_of(fixed)] == ["backends[1].id"]


def test_phase3_reports_every_issue() -> None:
    text = GPU + GPU + '[routing.aliases]\n"a" = "a"\n[routing.budget.tenants]\n"global" = 1'
    paths = [issue.key_path for issue in issues_of(text)]
    assert paths == ["backends[1].id", 'routing.aliases."a"', 'routing.budget.tenants."global"']


def test_alias_chain_of_three_hops_is_allowed() -> None:
    config = load_config_text('[routing.aliases]\n"a" = "b"\n"b" = "c"\n"c" = "d"', source=FILE)
    assert config.routing.aliases == {"a": "b", "b": "c", "c": "d"}


def test_unpriced_open_model_is_fine_with_default_price_or_without_budget() -> None:
    text = OPENAI + '[[backends.models]]\nid = "gpt-5"\n'
    load_config_text(text, source=FILE)  # no budget: no price needed
    budget = "[routing.budget]\nmonthly_limit_usd = 10\n"
    load_config_text(
        text + budget + "[pricing.default]\ninput_per_1k = 0.001\noutput_per_1k = 0.002", source=FILE
    )
    load_config_text(
        text + budget + '[pricing."gpt-5"]\ninput_per_1k = 0.001\noutput_per_1k = 0.002', source=FILE
    )
    restricted = GPU.replace("llama3:70b", "unpriced")
    load_config_text(restricted + budget, source=FILE)  # restricted backends cost 0


def test_unsupported_keys_and_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_reader, "UNSUPPORTED", frozenset({"server.watch_config", "ledger.kind=redis"}))
    issues = issues_of('[server]\nwatch_config = true\n[ledger]\nkind = "Redis"')
    assert_issue(issues, "server.watch_config", "not supported yet")
    assert_issue(issues, "ledger.kind", "'redis' is not supported yet")


def test_without_sqlite_the_default_ledger_is_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_reader, "UNSUPPORTED", frozenset({"ledger.kind=sqlite"}))
    assert load_config_text("").ledger.kind == "memory"
    assert_issue(issues_of('[ledger]\nkind = "sqlite"'), "ledger.kind", "not supported yet")


def test_a_bad_weight_is_not_also_reported_as_a_bad_sum() -> None:
    issues = issues_of('[routing.weights]\npriority = "x"\nload = 20')
    assert [i.key_path for i in issues] == ["routing.weights.priority"]
