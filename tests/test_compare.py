"""Several methods in one interleaved run: each paired with the same baseline rows, orders rotated."""

from harness.api import run

from .conftest import compose


def test_method_and_peer_in_one_run(tmp_path):
    cfg = compose("model=tiny-llama", "method=pld", "compare=[hf_pld,ar]", "task.limit=3", "max_new_tokens=10",
                  "engine.warmup=false", "progress=false")
    cfg.out_dir = str(tmp_path)
    df = run(cfg)
    methods = df[df.role == "method"]
    assert sorted(methods.method.unique()) == ["ar", "hf_pld", "pld"]
    assert len(df[df.role == "baseline"]) == 3 and len(methods) == 9
    assert methods.equivalent.all() and methods.speedup.gt(0).all()
    # who goes first rotates from prompt to prompt
    firsts = [set(g[g.order == 0].method) | ({"ar-baseline"} if (g[g.role == "baseline"].order == 0).any() else set())
              for _, g in df.groupby("prompt_id")]
    assert len({frozenset(f) for f in firsts}) > 1
    # head to head: per-prompt tokens/s ratios of two methods of the same run
    from harness.results.metrics import head_to_head

    h2h = head_to_head(df, "pld", "hf_pld")
    overall = h2h[h2h.group == "overall"].iloc[0]
    assert overall.prompts == 3 and overall.ratio_geomean > 0
    per = df[df.role == "method"].set_index(["method", "prompt_id"])
    ratios = [per.loc[("pld", p)].tokens_per_s / per.loc[("hf_pld", p)].tokens_per_s for p in df.prompt_id.unique()]
    from harness.results.metrics import geomean

    assert overall.ratio_geomean == __import__("pytest").approx(geomean(ratios))


def test_unknown_compare_method_is_an_error(tmp_path):
    import pytest

    from harness.core.errors import SpeclabError

    cfg = compose("model=tiny-llama", "compare=[nope]", "task.limit=1", "max_new_tokens=4")
    cfg.out_dir = str(tmp_path)
    with pytest.raises(SpeclabError, match="unknown method 'nope'"):
        run(cfg)


def test_bad_compare_entry_names_the_entry_and_the_problem(tmp_path):
    import pytest

    from harness.core.errors import SpeclabError

    for entry, problem in (("pld nosuchkey=1", "Key 'nosuchkey' not in 'PLDConfig'"),
                           ("pld num_draft=many", "Value 'many' of type 'str' could not be converted to Integer")):
        cfg = compose("model=tiny-llama", f"compare=[{entry!r}]", "task.limit=1", "max_new_tokens=4")
        cfg.out_dir = str(tmp_path)
        with pytest.raises(SpeclabError, match=f"bad compare entry '{entry}': {problem}"):
            run(cfg)
