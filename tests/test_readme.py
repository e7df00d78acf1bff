"""README's two commands stay the ones CI and newcomers run."""

import re

import pytest

from .conftest import REPO


def readme_commands():
    return re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)[:2]


def test_ci_runs_readme_test_command():
    setup_run, setup_test = readme_commands()
    ci = (REPO / ".ci" / "run").read_text()
    assert setup_test.strip() in ci
    assert "pip install torch==2.13.0" in setup_run and setup_run.strip().endswith("python run.py")
    assert setup_test.index("torch==2.13.0") < setup_test.index("pip install -e")


def documented_runs(path) -> list[tuple[int, list[str]]]:
    """Every ``python run.py ...`` command in the bash blocks of a document: (line, argv after run.py), with the
    shell variables its block sets (ARGS="...") and its ``for`` loops expanded, line continuations joined, and the
    <placeholders> a reader fills in given a value."""
    import shlex

    runs = []
    text = (REPO / path).read_text()
    for block in re.finditer(r"```bash\n(.*?)\n```", text, re.S):
        first = text[: block.start()].count("\n") + 2
        env: dict[str, str] = {}
        loop: tuple[str, list[str]] | None = None  # a multi-line `for X in ...; do` being read
        for offset, line in enumerate(block.group(1).replace("\\\n", " ").splitlines()):
            line = line.split(" #")[0].strip()
            assigned = re.fullmatch(r"(\w+)=\"(.*)\"", line)
            if assigned:
                env[assigned.group(1)] = assigned.group(2)
                continue
            one_line = re.fullmatch(r"for (\w+) in ([^;]*); do (.*); done", line)
            opened = re.fullmatch(r"for (\w+) in ([^;]*); do", line)
            if opened:
                loop = (opened.group(1), opened.group(2).split())
                continue
            if line == "done":
                loop = None
                continue
            var, values = (one_line.group(1), one_line.group(2).split()) if one_line else loop or (None, [None])
            body = one_line.group(3) if one_line else line
            for value in values:
                command = body.replace(f"${var}", value) if var else body
                for name, setting in env.items():
                    command = command.replace(f"${name}", setting)
                if "python run.py" not in command:
                    continue
                words = shlex.split(re.sub(r"<[^<>]*>", "PLACEHOLDER", command))  # a <path the reader fills in>
                runs.append((first + offset, words[words.index("run.py") + 1:]))
    return runs


def expanded(argv: list[str]) -> list[list[str]]:
    """The jobs of a command: its sweeps (``method=pld,sps``) expanded as Hydra's multirun expands them."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in argv if a != "-m"]
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.input_line] for o in parsed]
    keys = [o.get_key_element() for o in parsed]
    return [[f"{k}={v}" if o.is_sweep_override() else v for k, v, o in zip(keys, combo, parsed)]
            for combo in itertools.product(*choices)]


# methods that need trained weights: the option that names them, and the committed default for a model
TRAINED = {"sps": ("draft.path", ""), "hf_assisted": ("draft.path", ""), "eagle": ("head", "eagle"),
           "eagle2": ("head", "eagle"), "eagle3": ("head", "eagle3"), "medusa": ("head", "medusa"), "hydra": ("head", "hydra")}


def missing_weights(node, model_name: str) -> str | None:
    """Why a method config could not find its trained weights for ``model_name``, or None: it names them, or the
    model has them committed under drafts/."""
    from omegaconf import OmegaConf

    if node.family not in TRAINED:
        return None
    key, folder = TRAINED[node.family]
    if OmegaConf.select(node, key):
        return None
    default = REPO / "drafts" / model_name / folder / "config.json"
    return None if default.is_file() else f"{node.name} on {model_name} needs method.{key} (no {default.parent})"


@pytest.mark.parametrize("document", ["README.md", "BENCHMARKS.md"])
def test_every_documented_run_composes_as_written(document):
    """Each ``python run.py`` command of the README and of BENCHMARKS.md, every job of its sweeps, composes with its
    schemas (every key exists for its method and task, every value has its type; ``compare`` entries too), and each
    method that needs trained weights names them or finds the model's committed ones: an example runs as written."""
    from hydra import compose, initialize_config_dir

    from harness.core.config import CONF_DIR
    from harness.core.presets import as_config, method_node
    from harness.core.registry import METHODS, TASKS

    runs = documented_runs(document)
    assert len(runs) >= (5 if document == "README.md" else 20)
    failures = []
    for line, argv in runs:
        for job in expanded(argv):
            try:
                with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                    cfg = compose(config_name="config", overrides=job, return_hydra_config=True)
                    run_cfg = as_config(cfg)
                    METHODS.typed(run_cfg.method), TASKS.typed(run_cfg.task)
                    for node in [run_cfg.method] + [method_node(entry) for entry in run_cfg.compare]:
                        METHODS.typed(node)
                        missing = missing_weights(node, run_cfg.model.name)
                        if missing:
                            raise AssertionError(missing)
            except Exception as e:  # noqa: BLE001 - every failure is listed with its line
                failures.append(f"{document}:{line}: {' '.join(job)}: {type(e).__name__}: {str(e).splitlines()[0]}")
    assert not failures, "\n".join(failures)
