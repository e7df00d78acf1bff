"""``python run.py``: compose the config with Hydra, run, and turn bad input into one clear line."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from harness.api import load_plugins, run
from harness.bench.sweep import warn_if_parallel
from harness.core.config import CONF_DIR
from harness.core.errors import SpeclabError

GROUPS = ("model", "method", "task", "baseline", "logger", "experiment")


def check_choices(argv: list[str]) -> None:
    """Reject an unknown method/model/task/... before Hydra prints a page about it."""
    for arg in argv:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        if key not in GROUPS or value.startswith(("glob(", "choice(", "range(")):
            continue
        known = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
        for choice in value.split(","):
            if choice.strip() and choice.strip() not in known:
                sys.stderr.write(
                    f"error: unknown {key} {choice.strip()!r}; choose one of: {', '.join(known)} "
                    f"(or add conf/{key}/{choice.strip()}.yaml)\n"
                )
                raise SystemExit(2)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    for noisy in ("httpx", "matplotlib"):  # Hydra logs INFO; these libraries would fill the job log
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        warn_if_parallel(HydraConfig.get())  # in each job's own log too, beside the timings it warns about
        run(cfg, out_dir=HydraConfig.get().runtime.output_dir)
    except SpeclabError as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(e.exit_code) from None


def main() -> None:
    from transformers.utils import logging as hf_logging

    load_plugins()  # the method and task schemas, before Hydra composes
    hf_logging.disable_progress_bar()  # per-file loading bars would bury the run's own progress bar
    check_choices(sys.argv[1:])
    _main()
