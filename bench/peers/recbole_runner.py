"""Train one RecBole 1.2.1 model (SASRec or BPR) and score the full catalogue for test users.

Runs under the RecBole venv (``bench/.venv-recbole``, made by ``setup_recbole.sh``), never
under the project's venv: RecBole pins ray<=2.6.3. It does not import ``rlhf_ray``. The
bench (``bench/sft_vs_peers.py``) writes a job JSON and the atomic files, starts this file
as a subprocess, and computes every metric itself from the scores written here.

    bench/.venv-recbole/bin/python bench/peers/recbole_runner.py JOB.json
    bench/.venv-recbole/bin/python bench/peers/recbole_runner.py --check   # imports only

Job JSON (written by ``bench/peers/atomic.py``):

    data_path, dataset     the atomic files: ``{data_path}/{dataset}/{dataset}.inter`` and ``.item``
    model                  "SASRec" | "BPR"
    config                 RecBole config overrides (epochs, batch size, model sizes, ...)
    time_budget_s          optional: stop after the first validation past this many seconds
    n_items                catalogue size; item tokens are our item_idx as decimal strings
    users                  (U,) test user_idx, in the order the bench evaluates them
    histories              (U,) lists: the item_idx history of each test user, oldest first
    expected_valid         {user token: item token}: our validation item per user; the runner
                           refuses to train if RecBole's validation split differs
    work_dir               RecBole's working directory (its log/, log_tensorboard/, saved/)
    out                    output prefix: writes ``{out}.scores.npy`` and ``{out}.json``

Outputs:

    {out}.scores.npy   (U, n_items) float32: the model's score of every catalogue item,
                       columns in our item_idx order (nothing excluded here; the bench
                       masks seen items and takes the top-k with rlhf_ray.metrics)
    {out}.json         train/score seconds, epochs run, best validation result (RecBole's
                       own numbers, used for early stopping only), the final config, and
                       the RecBole vocabulary sizes

RecBole is used for data loading, the model and its training loop (with early stopping on
the validation item); its test evaluation is not used at all.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings


# --------------------------------------------------------------------------- compatibility shim


def install_shim() -> None:
    """Make RecBole 1.2.1 importable on numpy 2.x and loadable on torch >= 2.6.

    * numpy 2 removed the scalar aliases RecBole still uses (``np.float``, ``np.int``,
      ``np.long``, ``np.bool8``, ``np.float_``, ``np.complex_``, ``np.object``, ...).
    * torch >= 2.6 defaults ``torch.load(weights_only=True)``, which refuses RecBole's own
      checkpoints (they pickle its Config object). Its checkpoints are written by this
      process a few seconds earlier, so loading them with full unpickling is safe here.
    """
    import numpy as np
    import torch

    aliases = {
        "float": float, "int": int, "long": int, "bool": bool, "object": object, "str": str,
        "bool8": np.bool_, "float_": np.float64, "complex_": np.complex128, "unicode_": np.str_,
        "NaN": np.nan, "Inf": np.inf, "infty": np.inf,
    }
    for name, value in aliases.items():
        if name not in np.__dict__:
            setattr(np, name, value)

    original_load = torch.load

    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return original_load(*args, **kwargs)

    torch.load = load


# --------------------------------------------------------------------------- training and scoring


BASE_CONFIG = {
    # our prepared data is already filtered and split: RecBole must not touch it
    "USER_ID_FIELD": "user_id",
    "ITEM_ID_FIELD": "item_id",
    "RATING_FIELD": "rating",
    "TIME_FIELD": "timestamp",
    "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"], "item": ["item_id"]},
    "user_inter_num_interval": "[0,inf)",
    "item_inter_num_interval": "[0,inf)",
    "val_interval": None,
    "rm_dup_inter": None,
    "threshold": None,
    "normalize_all": False,
    # the last interaction of each user in the .inter file is the validation item
    "eval_args": {"split": {"LS": "valid_only"}, "order": "TO", "group_by": "user", "mode": "full"},
    "metrics": ["NDCG", "Recall"],
    "topk": [10],
    "valid_metric": "NDCG@10",
    "use_gpu": False,
    "device": "cpu",
    "show_progress": False,
    "save_dataset": False,
    "save_dataloaders": False,
    "log_wandb": False,
    "worker": 0,
    "seed": 2020,
    "reproducibility": True,
}


def train(job: dict):
    """Build the RecBole dataset from the job's atomic files and fit the model.

    Returns (model, dataset, info dict). The best-validation weights are reloaded.
    """
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    config_dict = {**BASE_CONFIG, **job.get("config", {}),
                   "data_path": job["data_path"], "checkpoint_dir": os.path.join(job["work_dir"], "saved")}
    config = Config(model=job["model"], dataset=job["dataset"], config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)

    t0 = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    build_s = time.perf_counter() - t0
    split = check_split(dataset, train_data._dataset, valid_data._dataset, job)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    # Importing RecBole's model zoo (get_model does) runs sine.py, which switches autograd
    # anomaly detection on for the whole process: a NaN check after every backward op that
    # made SASRec steps ~2x slower here. Nothing in SASRec/BPR needs it.
    torch.autograd.set_detect_anomaly(False)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    t0 = time.perf_counter()
    stopped = time_budget(job.get("time_budget_s"), t0)
    best_score, best_result = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    train_s = time.perf_counter() - t0

    state = torch.load(trainer.saved_model_file, map_location="cpu")
    model.load_state_dict(state["state_dict"])
    model.load_other_parameter(state.get("other_parameter"))
    model.eval()
    info = {
        "build_seconds": round(build_s, 2),
        "train_seconds": round(train_s, 2),
        "best_epoch": int(state["epoch"]),
        "epochs_run": _epochs_run(trainer),
        "best_valid_recbole": {k: float(v) for k, v in dict(best_result or {}).items()},
        "best_valid_score": float(best_score),
        "recbole_users": int(dataset.user_num),
        "recbole_items": int(dataset.item_num),
        "split_check": split,
        "stopped_by": stopped["by"],
        "config": {k: config[k] for k in sorted(job.get("config", {}))},
    }
    return model, dataset, info


def time_budget(budget_s: float | None, t0: float) -> dict:
    """End training after the first validation past ``budget_s`` seconds (None: no limit).

    RecBole's fit loop breaks when its ``early_stopping`` helper says stop, after saving an
    improved model; wrapping that helper is the one hook the loop offers. Returns a dict
    whose "by" becomes "time_budget" or "early_stopping" when either ends the run.
    """
    import recbole.trainer.trainer as loop

    state = {"by": "epochs"}
    plain = loop.early_stopping

    def early_stopping(*args, **kwargs):
        best, cur_step, stop, update = plain(*args, **kwargs)
        if stop:
            state["by"] = "early_stopping"
        elif budget_s is not None and time.perf_counter() - t0 > budget_s:
            state["by"] = "time_budget"
            stop = True
        return best, cur_step, stop, update

    loop.early_stopping = early_stopping
    return state


def check_split(dataset, train_ds, valid_ds, job: dict) -> dict:
    """RecBole's validation interaction of every user must be our validation item.

    Raises if not. Returns the row counts (SASRec's train rows are next-item examples:
    one per train-history position after the first; BPR's are the interactions).
    """
    uid, iid = dataset.uid_field, dataset.iid_field
    users = dataset.id2token(uid, valid_ds.inter_feat[uid].numpy())
    items = dataset.id2token(iid, valid_ds.inter_feat[iid].numpy())
    got = dict(zip(map(str, users), map(str, items)))
    expected = job["expected_valid"]
    wrong = [u for u in expected if got.get(u) != expected[u]]
    if wrong or len(got) != len(users):
        raise RuntimeError(f"RecBole's validation split differs from ours for {len(wrong)} users "
                           f"(e.g. user {wrong[:3]}); {len(users)} validation rows for {len(expected)} users")
    return {"valid_rows": int(len(valid_ds)), "valid_items_match_ours": True,
            "train_rows": int(len(train_ds))}


def _epochs_run(trainer) -> int | None:
    """Epochs actually trained (early stopping may end before ``epochs``)."""
    losses = getattr(trainer, "train_loss_dict", None)
    return len(losses) if losses else None


def item_columns(dataset, n_items: int):
    """(n_items,) long: RecBole internal id of each of our item_idx 0..n_items-1."""
    import torch

    ids = dataset.token2id(dataset.iid_field, [str(i) for i in range(n_items)])
    return torch.as_tensor(ids, dtype=torch.long)


def score(model, dataset, job: dict, batch_size: int = 256):
    """(U, n_items) float32 numpy scores, columns in our item_idx order."""
    import torch

    with torch.no_grad():
        return _score(model, dataset, job, batch_size)


def _score(model, dataset, job: dict, batch_size: int):
    import numpy as np
    import torch
    from recbole.data.interaction import Interaction

    cols = item_columns(dataset, job["n_items"])
    out = np.zeros((len(job["users"]), job["n_items"]), dtype=np.float32)
    if job["model"] == "SASRec":
        max_len = model.max_seq_length
        for s in range(0, len(job["histories"]), batch_size):
            hist = job["histories"][s: s + batch_size]
            seq = torch.zeros((len(hist), max_len), dtype=torch.long)  # RecBole: left-aligned, 0 = padding
            lengths = torch.zeros(len(hist), dtype=torch.long)
            for b, h in enumerate(hist):
                recent = h[-max_len:]
                seq[b, : len(recent)] = cols[torch.as_tensor(recent, dtype=torch.long)]
                lengths[b] = len(recent)
            inter = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})
            scores = model.full_sort_predict(inter).reshape(len(hist), -1)  # (B, recbole_items)
            out[s: s + len(hist)] = scores[:, cols].numpy()
    elif job["model"] == "BPR":
        uids = torch.as_tensor(dataset.token2id(dataset.uid_field, [str(u) for u in job["users"]]), dtype=torch.long)
        for s in range(0, len(uids), batch_size):
            u = uids[s: s + batch_size]
            scores = model.full_sort_predict(Interaction({model.USER_ID: u})).reshape(len(u), -1)
            out[s: s + len(u)] = scores[:, cols].numpy()
    else:
        raise ValueError(f"model must be SASRec or BPR, got {job['model']!r}")
    return out


def check() -> int:
    """``--check``: the shim works and everything the runner imports is importable."""
    install_shim()
    import numpy as np
    import torch
    from recbole.config import Config  # noqa: F401
    from recbole.data import create_dataset, data_preparation  # noqa: F401
    from recbole.model.general_recommender import BPR  # noqa: F401
    from recbole.model.sequential_recommender import SASRec  # noqa: F401
    from recbole.utils import get_model, get_trainer, init_logger, init_seed  # noqa: F401

    print(json.dumps({"recbole": __import__("recbole").__version__, "torch": torch.__version__,
                      "numpy": np.__version__, "pandas": __import__("pandas").__version__}))
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        return check()
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    job = json.loads(open(argv[0]).read())
    warnings.filterwarnings("ignore", category=FutureWarning)  # RecBole on pandas 2.x / torch 2.x
    install_shim()
    import numpy as np
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.chdir(job["work_dir"])  # RecBole writes log/ and log_tensorboard/ into the working directory
    model, dataset, info = train(job)
    t0 = time.perf_counter()
    scores = score(model, dataset, job)
    info["score_seconds"] = round(time.perf_counter() - t0, 2)
    info["versions"] = {"recbole": __import__("recbole").__version__, "torch": torch.__version__,
                        "numpy": np.__version__}
    np.save(job["out"] + ".scores.npy", scores)
    with open(job["out"] + ".json", "w") as f:
        json.dump(info, f, indent=2, default=str)
    print(json.dumps({k: info[k] for k in ("train_seconds", "best_epoch", "epochs_run", "best_valid_recbole")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
