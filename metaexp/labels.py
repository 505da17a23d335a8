"""The short names of test settings, shared by `metaexp eval` (report file names) and `metaexp summarize`
(table rows), so that two evaluations under different settings never share a name."""

# Sampler settings a setting's name already spells out (`5w1s15q`, `10shot`, `40traj`, `4000envsteps`).
NAMED = ("ways", "shots", "queries", "trajectories", "budget")


def setting(sampler: dict) -> str:
    """`5w1s` for classification episodes, `10shot` for regression, `40traj` for policies (`4000envsteps` for
    a policy tested on a budget of environment steps)."""
    if "ways" in sampler:
        return f"{sampler['ways']}w{sampler['shots']}s"
    if sampler.get("budget"):
        return f"{sampler['budget']}envsteps"
    if "trajectories" in sampler:
        return f"{sampler['trajectories']}traj"
    return f"{sampler['shots']}shot"


def departures(standard: dict, used: dict) -> str:
    """`-gamma2-later_rate0.1`: the sampler settings of a test that differ from the run's own test protocol
    (`standard`) and that the setting's name does not spell out; empty for the standard test."""
    changed = sorted(k for k, v in used.items() if k not in NAMED and k != "_target_" and standard.get(k) != v)
    return "".join(f"-{key}{used[key]}" for key in changed)
