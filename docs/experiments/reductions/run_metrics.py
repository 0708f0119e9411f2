"""Reading a `tessera train reduce` run's metrics.jsonl, for the experiment plots (outside tessera)."""
import json


def dev_records(path):
    """(step, dev record) for each evaluation of the run at `path`, placed at the step
    of the training record before it (0 for the first)."""
    step = 0
    for line in open(path):
        d = json.loads(line)
        if "dev" in d:
            yield step, d["dev"]
        elif "step" in d:
            step = d["step"]["step"]


def best_dev(path):
    """The run's best dev record by the mean over r, as `train reduce` picks it."""
    return max((dev for _, dev in dev_records(path)), key=lambda dev: dev["ndcg10"])


def ndcg_at(dev, dim):
    """A dev record's nDCG@10 at `dim` dims."""
    return next(p["ndcg10"] for p in dev["per_dim"] if p["dim"] == dim)
