"""Richards et al. 2021's Figure 4 from the authors' committed test results (test_results/seed=S_M=M.pkl of
StanfordASL/Adaptive-Control-Oriented-Meta-Learning, commit 093d276), averaged as their plots.py does: the mean
RMS tracking error (and control effort) over the 200 test references of each seed, then mean and standard
deviation over the 10 seeds, per method, gain setting (Lambda, K, Gamma) and M. The pickles hold numpy arrays
only. Usage: python ci/richards2021_figure4.py TEST_RESULTS_DIR > results/control/richards2021_figure4.json"""

import itertools
import json
import pickle
import statistics
import sys
from pathlib import Path

METHODS = {"pid": "pid", "lstsq": "acmrr", "ours": "controloriented"}
SEEDS, MS = range(10), (2, 5, 10, 20, 30, 40, 50)


def main(folder: Path) -> None:
    results = {m: {s: pickle.loads((folder / f"seed={s}_M={m}.pkl").read_bytes()) for s in SEEDS} for m in MS}
    rows = []
    gains = list(itertools.product((1.0,), (1.0, 10.0), (1.0, 10.0)))  # the order of test_all.py's grid
    for (theirs, ours), (index, (rate, feedback, adaptation)), m in itertools.product(
        METHODS.items(), enumerate(gains), MS
    ):
        flights = [results[m][s][theirs].ravel()[index] for s in SEEDS]
        rows.append(summary(flights, ours, f"{rate:g}/{feedback:g}/{adaptation:g}", m))
    for m in MS:
        rows.append(summary([results[m][s]["ours_meta"] for s in SEEDS], "controloriented", "learned", m))
    source = ("Richards et al. 2021, Figure 4, computed from the authors' committed test results "
              "(StanfordASL/Adaptive-Control-Oriented-Meta-Learning@093d276, test_results/*.pkl) as their plots.py "
              "averages them: mean over 200 test references per seed, then mean and std over 10 seeds")  # fmt: skip
    print(json.dumps({"source": source, "rows": rows}, indent=1))


def summary(flights: list, method: str, gains: str, m: int) -> dict:
    errors = [float(f["rms_error"].mean()) for f in flights]
    efforts = [float(f["rms_ctrl"].mean()) for f in flights]
    return {"method": method, "gains": gains, "M": m, "mean": statistics.fmean(errors),
            "std": statistics.pstdev(errors), "rms_control": statistics.fmean(efforts)}  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]))
