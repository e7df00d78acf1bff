"""``python run.py``: compose the config with Hydra, run, and turn bad input into one clear line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from harness.core.config import CONF_DIR
from harness.core.errors import SpeclabError
from harness.bench.sweep import warn_if_parallel

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
    from harness.bench.runner import Runner, as_config, print_summary

    for noisy in ("httpx", "matplotlib"):  # Hydra logs INFO; these libraries would fill the job log
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        out_dir = HydraConfig.get().runtime.output_dir
        warn_if_parallel(HydraConfig.get())  # in each job's own log too, beside the timings it warns about
        cfg = as_config(cfg)
        OmegaConf.set_readonly(cfg, False)
        cfg.out_dir = out_dir
        runner = Runner(cfg)
        df = runner.run()
        summary = print_summary(df, Path(out_dir))
        from harness.results.tables import write_reports

        report = write_reports(df, summary, Path(out_dir), cfg)
        if cfg.task.family == "digits":  # image runs: sample quality beside speed (issue 17)
            from harness.results.image_quality import image_report

            print(image_report([Path(out_dir)]))
        if cfg.logger.name == "wandb":
            from harness.results.wandb_log import log_run

            log_run(df, report, cfg)
    except SpeclabError as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(e.exit_code) from None


def main() -> None:
    from transformers.utils import logging as hf_logging

    import methods  # noqa: F401  (register method and task schemas before Hydra composes)
    import tasks  # noqa: F401

    hf_logging.disable_progress_bar()  # per-file loading bars would bury the run's own progress bar
    check_choices(sys.argv[1:])
    _main()
