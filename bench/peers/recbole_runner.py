"""Train one RecBole 1.2.1 model on our exact split and score the full catalogue for test users.

Models: SASRec, GRU4Rec (sequential), BPR, LightGCN (general). Runs under the RecBole venv
(``bench/.venv-recbole``, made by ``setup_recbole.sh``), never under the project's venv:
RecBole pins ray<=2.6.3. It does not import the ``rlhf_ray`` package; it loads the pure-numpy
``rlhf_ray/metrics.py`` by file path, so validation uses the same metric code as the bench.

    bench/.venv-recbole/bin/python bench/peers/recbole_runner.py JOB.json
    bench/.venv-recbole/bin/python bench/peers/recbole_runner.py --check   # imports only

Job JSON (written by ``bench/peers_bench.py`` through ``atomic.write_job``):

    model            "SASRec" | "GRU4Rec" | "BPR" | "LightGCN"
    data_path, dataset   pre-split atomic files ``{data_path}/{dataset}/{dataset}.{train,valid,test}.inter``
                     and ``{dataset}.item`` (``atomic.export_atomic``)
    family, max_len  "sequential" (rows are next-item examples, history <= max_len) | "general"
    expected         {"train": {"rows", "sha256"}, "valid": {...}}: digests of our split
                     (``atomic.expected_split``); training is refused when RecBole's differ
    config           RecBole config overrides (epochs, stopping_step, sizes, learning rate, ...)
    time_budget_s    optional: stop after the first validation past this many seconds
    threads          torch intra-op threads
    n_items          catalogue size; item tokens are our item_idx as decimal strings
    valid            {"users", "histories", "targets"}: our validation users (Prepared.histories("valid"))
    test             {"users", "histories"}: the users to score at the end, in the bench's order
    work_dir         RecBole's working directory (its log/, log_tensorboard/, saved/)
    out              output prefix: writes ``{out}.scores.npy`` and ``{out}.json``

Training and early stopping: RecBole's own data loading, model and training loop, with one
change: the validation score of each epoch is NDCG@10 of our validation protocol computed
here with ``rlhf_ray.metrics`` (full catalogue, the user's history ``items[:valid_start]``
excluded, every validation target of the user relevant), instead of RecBole's evaluator
(which, for sequential models, neither excludes seen items nor groups targets by user).
RecBole's ``early_stopping`` (patience ``stopping_step``) and best-checkpoint saving act on
that score; the best-validation weights are reloaded before scoring.

Outputs:

    {out}.scores.npy   (U, n_items) float32: the score of every catalogue item for each test
                       user, columns in our item_idx order (nothing excluded here)
    {out}.json         stopped_by ("early_stopping" | "epochs" | "time_budget"), best_epoch,
                       epochs_run, per-epoch validation NDCG@10 and seconds, wall and process
                       CPU seconds (build, train, score, total), threads, the split check,
                       the final config and versions
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SEQUENTIAL = ("SASRec", "GRU4Rec")
GENERAL = ("BPR", "LightGCN")


# --------------------------------------------------------------------------- compatibility shim


def install_shim() -> None:
    """Make RecBole 1.2.1 importable on numpy 2.x and loadable on torch >= 2.6.

    * numpy 2 removed the scalar aliases RecBole still uses (``np.float``, ``np.int``,
      ``np.long``, ``np.bool8``, ``np.float_``, ``np.complex_``, ``np.object``, ...).
    * scipy >= 1.12 dropped ``dok_matrix._update`` (LightGCN builds its adjacency with it);
      the dict it updates is ``dok_matrix._dict`` now.
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

    import scipy.sparse as sp

    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = lambda self, data: self._dict.update(data)

    original_load = torch.load

    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return original_load(*args, **kwargs)

    torch.load = load


def load_metrics():
    """``rlhf_ray/metrics.py`` as a standalone module (pure numpy; the package is not imported)."""
    spec = importlib.util.spec_from_file_location("rlhf_ray_metrics", ROOT / "rlhf_ray" / "metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_atomic():
    sys.path.insert(0, str(HERE))
    import atomic

    return atomic


# --------------------------------------------------------------------------- config


BASE_CONFIG = {
    # our prepared data is already filtered and split: RecBole must not touch it
    "USER_ID_FIELD": "user_id",
    "ITEM_ID_FIELD": "item_id",
    "TIME_FIELD": "timestamp",
    "RATING_FIELD": None,
    "benchmark_filename": ["train", "valid", "test"],
    "user_inter_num_interval": "[0,inf)",
    "item_inter_num_interval": "[0,inf)",
    "val_interval": None,
    "rm_dup_inter": None,
    "threshold": None,
    "normalize_all": False,
    "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "full"},
    "metrics": ["NDCG", "Recall"],
    "topk": [10],
    "valid_metric": "NDCG@10",
    "eval_step": 1,
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


def family_config(family: str, max_len: int | None) -> dict:
    if family == "sequential":
        return {"load_col": {"inter": ["user_id", "item_id_list", "item_id", "timestamp"], "item": ["item_id"]},
                "alias_of_item_id": ["item_id_list"], "MAX_ITEM_LIST_LENGTH": int(max_len)}
    return {"load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]}}


# --------------------------------------------------------------------------- split check


def recbole_rows(dataset, part, family: str) -> list[str]:
    """Canonical rows (``atomic.general_row`` / ``sequential_row``) of one RecBole split."""
    import numpy as np

    atomic = load_atomic()
    uid, iid = dataset.uid_field, dataset.iid_field
    feat = part.inter_feat
    users = dataset.id2token(uid, feat[uid].numpy())
    items = dataset.id2token(iid, feat[iid].numpy())
    if family == "general":
        return [atomic.general_row(u, i) for u, i in zip(users, items)]
    seq = feat[dataset.item_id_list_field].numpy()
    lens = feat[dataset.item_list_length_field].numpy()
    vocab = np.asarray(dataset.field2id_token[iid])
    return [atomic.sequential_row(u, vocab[s[:n]], i) for u, s, n, i in zip(users, seq, lens, items)]


def check_split(dataset, train_ds, valid_ds, job: dict) -> dict:
    """RecBole's train and validation parts must be exactly ours (canonical-row digests).

    Raises if not (nothing is trained). Also checks the validation users/targets in the job
    (which drive the validation metric) against RecBole's validation rows.
    """
    atomic = load_atomic()
    got = {"train": atomic.digest(recbole_rows(dataset, train_ds, job["family"])),
           "valid": atomic.digest(recbole_rows(dataset, valid_ds, job["family"]))}
    for part in ("train", "valid"):
        if got[part] != job["expected"][part]:
            raise RuntimeError(f"RecBole's {part} part differs from ours: {got[part]} vs expected "
                               f"{job['expected'][part]}; refusing to train")
    v = job["valid"]
    pairs = sorted(atomic.general_row(u, t) for u, ts in zip(v["users"], v["targets"]) for t in ts)
    rb_pairs = sorted(r.split("\t")[0] + "\t" + r.split("\t")[-1] for r in recbole_rows(dataset, valid_ds, job["family"]))
    if pairs != rb_pairs:
        raise RuntimeError("the job's validation targets differ from RecBole's validation rows; refusing to train")
    return {"train": got["train"], "valid": got["valid"], "matches_ours": True,
            "recbole_users": int(dataset.user_num), "recbole_items": int(dataset.item_num)}


# --------------------------------------------------------------------------- scoring


def item_columns(dataset, n_items: int):
    """(n_items,) long: RecBole internal id of each of our item_idx 0..n_items-1."""
    import torch

    ids = dataset.token2id(dataset.iid_field, [str(i) for i in range(n_items)])
    return torch.as_tensor(ids, dtype=torch.long)


def reset_cache(model) -> None:
    """LightGCN caches its propagated embeddings for full_sort_predict: drop them."""
    for attr in ("restore_user_e", "restore_item_e"):
        if hasattr(model, attr):
            setattr(model, attr, None)


def score(model, dataset, name: str, n_items: int, users, histories, batch_size: int = 256):
    """(U, n_items) float32 numpy scores, columns in our item_idx order.

    Sequential models read the last ``max_seq_length`` items of each history; general
    models score by user id (their user vector was trained on the train part).
    """
    import numpy as np
    import torch
    from recbole.data.interaction import Interaction

    was_training = model.training
    model.eval()
    cols = item_columns(dataset, n_items)
    out = np.zeros((len(users), n_items), dtype=np.float32)
    with torch.no_grad():
        if name in SEQUENTIAL:
            max_len = model.max_seq_length
            for s in range(0, len(histories), batch_size):
                hist = histories[s: s + batch_size]
                seq = torch.zeros((len(hist), max_len), dtype=torch.long)  # left-aligned, 0 = padding
                lengths = torch.zeros(len(hist), dtype=torch.long)
                for b, h in enumerate(hist):
                    recent = h[-max_len:]
                    seq[b, : len(recent)] = cols[torch.as_tensor(recent, dtype=torch.long)]
                    lengths[b] = len(recent)
                inter = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})
                scores = model.full_sort_predict(inter).reshape(len(hist), -1)
                out[s: s + len(hist)] = scores[:, cols].numpy()
        elif name in GENERAL:
            uids = torch.as_tensor(dataset.token2id(dataset.uid_field, [str(u) for u in users]), dtype=torch.long)
            for s in range(0, len(uids), batch_size):
                u = uids[s: s + batch_size]
                scores = model.full_sort_predict(Interaction({model.USER_ID: u})).reshape(len(u), -1)
                out[s: s + len(u)] = scores[:, cols].numpy()
        else:
            raise ValueError(f"model must be one of {SEQUENTIAL + GENERAL}, got {name!r}")
    if was_training:
        model.train()
    return out


class Validator:
    """NDCG@10 of our validation protocol with rlhf_ray.metrics (seen items excluded)."""

    def __init__(self, job: dict, dataset, name: str):
        import numpy as np

        self.M = load_metrics()
        self.job, self.dataset, self.name = job, dataset, name
        v = job["valid"]
        self.users, self.histories = v["users"], v["histories"]
        width = max(len(t) for t in v["targets"])
        self.targets = np.full((len(v["targets"]), width), -1, dtype=np.int64)
        for r, t in enumerate(v["targets"]):
            self.targets[r, : len(t)] = t
        self.seen = np.zeros((len(self.users), job["n_items"]), dtype=bool)
        for r, h in enumerate(self.histories):
            self.seen[r, h] = True
        self.curve: list[dict] = []

    def __call__(self, model) -> tuple[float, dict]:
        t0 = time.perf_counter()
        reset_cache(model)
        scores = score(model, self.dataset, self.name, self.job["n_items"], self.users, self.histories)
        reset_cache(model)
        top = self.M.topk_from_scores(scores, 20, exclude=self.seen)
        ndcg10 = self.M.mean(self.M.ndcg(top[:, :10], self.targets))
        recall20 = self.M.mean(self.M.recall(top, self.targets))
        self.curve.append({"ndcg@10": round(ndcg10, 6), "recall@20": round(recall20, 6),
                           "valid_s": round(time.perf_counter() - t0, 2)})
        return ndcg10, {"ndcg@10": ndcg10, "recall@20": recall20}


# --------------------------------------------------------------------------- training


def train(job: dict):
    """Build RecBole's datasets from the pre-split files, check the split, fit the model.

    Returns (model, dataset, info dict). The best-validation weights are reloaded.
    """
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    config_dict = {**BASE_CONFIG, **family_config(job["family"], job.get("max_len")), **job.get("config", {}),
                   "data_path": job["data_path"], "checkpoint_dir": os.path.join(job["work_dir"], "saved")}
    config = Config(model=job["model"], dataset=job["dataset"], config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)

    t0, c0 = time.perf_counter(), time.process_time()
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    split = check_split(dataset, train_data._dataset, valid_data._dataset, job)
    build = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2)}

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    # Importing RecBole's model zoo (get_model does) runs sine.py, which switches autograd
    # anomaly detection on for the whole process: a NaN check after every backward op that
    # made SASRec steps ~2x slower here. None of these models needs it.
    torch.autograd.set_detect_anomaly(False)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    validator = Validator(job, dataset, job["model"])
    trainer._valid_epoch = lambda valid_data, show_progress=False: validator(trainer.model)
    epoch_marks: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    stopped = time_budget(job.get("time_budget_s"), t0)
    best_score, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                                callback_fn=lambda epoch, s: epoch_marks.append(time.perf_counter() - t0))
    train_info = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2)}

    state = torch.load(trainer.saved_model_file, map_location="cpu")
    model.load_state_dict(state["state_dict"])
    model.load_other_parameter(state.get("other_parameter"))
    reset_cache(model)
    model.eval()
    epochs_run = len(trainer.train_loss_dict)
    for i, row in enumerate(validator.curve):
        row["epoch"] = i
        row["train_loss"] = float(trainer.train_loss_dict.get(i, float("nan")))
        row["elapsed_s"] = round(epoch_marks[i], 1) if i < len(epoch_marks) else None
    info = {
        "model": job["model"],
        "stopped_by": stopped["by"],
        "converged": stopped["by"] == "early_stopping",
        "best_epoch": int(state["epoch"]),
        "epochs_run": epochs_run,
        "epoch_cap": int(config["epochs"]),
        "stopping_step": int(config["stopping_step"]),
        "best_valid_ndcg@10": float(best_score),
        "valid_metric": "NDCG@10 of our validation split, rlhf_ray.metrics, seen excluded (computed in the runner)",
        "valid_curve": validator.curve,
        "build": build,
        "train": train_info,
        "split_check": split,
        "config": {k: config[k] for k in sorted(job.get("config", {}))},
    }
    return model, dataset, info


def time_budget(budget_s: float | None, t0: float) -> dict:
    """End training after the first validation past ``budget_s`` seconds (None: no limit).

    RecBole's fit loop breaks when its ``early_stopping`` helper says stop, after saving an
    improved model; wrapping that helper is the one hook the loop offers. Returns a dict
    whose "by" becomes "time_budget" or "early_stopping" when either ends the run, and
    stays "epochs" when the epoch cap does.
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


def check() -> int:
    """``--check``: the shim works and everything the runner imports is importable."""
    install_shim()
    import numpy as np
    import torch
    from recbole.config import Config  # noqa: F401
    from recbole.data import create_dataset, data_preparation  # noqa: F401
    from recbole.model.general_recommender import BPR, LightGCN  # noqa: F401
    from recbole.model.sequential_recommender import GRU4Rec, SASRec  # noqa: F401
    from recbole.utils import get_model, get_trainer, init_logger, init_seed  # noqa: F401

    load_metrics()
    load_atomic()
    print(json.dumps({"recbole": __import__("recbole").__version__, "torch": torch.__version__,
                      "numpy": np.__version__, "pandas": __import__("pandas").__version__}))
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        return check()
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    wall0, cpu0 = time.perf_counter(), time.process_time()
    job = json.loads(open(argv[0]).read())
    warnings.filterwarnings("ignore", category=FutureWarning)  # RecBole on pandas 2.x / torch 2.x
    warnings.filterwarnings("ignore", category=UserWarning)
    install_shim()
    import numpy as np
    import torch

    threads = int(job.get("threads") or os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    os.chdir(job["work_dir"])  # RecBole writes log/ and log_tensorboard/ into the working directory
    model, dataset, info = train(job)
    t0, c0 = time.perf_counter(), time.process_time()
    t = job["test"]
    scores = score(model, dataset, job["model"], job["n_items"], t["users"], t["histories"])
    if not np.isfinite(scores).all():
        raise RuntimeError("non-finite test scores")
    info["score"] = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2)}
    info["wall_s"] = round(time.perf_counter() - wall0, 2)
    info["cpu_s"] = round(time.process_time() - cpu0, 2)
    info["threads"] = {"requested": threads, "torch": torch.get_num_threads(),
                       "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                       "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS")}
    info["versions"] = {"recbole": __import__("recbole").__version__, "torch": torch.__version__,
                        "numpy": np.__version__}
    np.save(job["out"] + ".scores.npy", scores)
    tmp = job["out"] + ".json.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2, default=str)
    os.replace(tmp, job["out"] + ".json")
    print(json.dumps({k: info[k] for k in ("stopped_by", "best_epoch", "epochs_run", "best_valid_ndcg@10",
                                            "wall_s", "cpu_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
