"""scripts/replay_pld.py: a greedy replay's accepted lengths are the common prefix of each draft and the answer."""

from methods.pld import PLDConfig
from scripts.replay_pld import replay


def test_replay_accepts_the_common_prefix_and_commits_a_bonus_token():
    prompt = [5, 6, 7, 8, 9]
    answer = [5, 6, 7, 1, 2]
    steps = replay(prompt, answer, PLDConfig(), draft=2, depths=4)
    # step 1: suffix [9] never seen before: no draft; commits 5
    # step 2: suffix [9, 5]? no; [5] matched (1 token) -> draft 6 7 8 9: 6, 7 accepted (capped at 2), +bonus 1
    # step 3: suffix [7, 1]/[1] unseen: no draft; commits 2
    assert steps == [(0, 0), (1, 2), (0, 0)]
