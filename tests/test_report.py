"""Run reports: the smoke pipeline's own, a run missing stages, a sweep's, bad input; in Chromium (slow)."""
import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

from rlhf_ray.cli import main
from rlhf_ray.report import run as run_report
from rlhf_ray.report import sweep as sweep_report

RUN_FIGURES = {"curves-pretrain.png", "curves-sft.png", "curves-reward.png", "curves-lpo.png", "ppo-training.png",
               "ppo-validation.png", "reward-scores.png", "test-intervals.png", "head-tail.png"}
MD_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


class Page(HTMLParser):
    """What the HTML holds: h2 texts, <img> sources, and any reference to another file."""

    def __init__(self, text: str):
        super().__init__()
        self.h2, self.imgs, self.external, self._in_h2 = [], [], [], False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._in_h2 = tag == "h2"
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag in ("script", "link", "iframe") or (tag != "a" and "src" in a):
            self.external.append((tag, a))

    def handle_endtag(self, tag):
        self._in_h2 = self._in_h2 and tag != "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data.strip())


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()  # decodes every pixel; a truncated or corrupt PNG raises
    return im


def check_page(report_dir, figures: set[str]) -> tuple[str, Page]:
    """report.md links exactly ``figures``, each a real picture, embedded byte for byte in report.html."""
    md = (report_dir / "report.md").read_text()
    links = MD_IMAGE.findall(md)
    assert {p.split("/")[-1] for p in links} == figures
    page = Page((report_dir / "report.html").read_text())
    assert page.external == [] and len(page.imgs) == len(links)
    for src, link in zip(page.imgs, links):
        assert src.startswith("data:image/png;base64,"), src[:40]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data == (report_dir / link).read_bytes()
        im = decoded(data).convert("L")
        assert im.width >= 300 and im.height >= 200 and im.getextrema()[0] < 128  # something drawn on it
    return md, page


def test_pipeline_writes_its_report(smoke_run):
    out, res = smoke_run
    assert res.returncode == 0, res.stderr[-2000:]
    rep = out / "report"
    assert f"[pipeline] report: {rep / 'report.html'}" in res.stdout
    md, page = check_page(rep, RUN_FIGURES)
    assert page.h2 == list(run_report.SECTIONS)
    assert "Skipped" not in md  # the smoke run has every input
    summary = json.loads((out / "summary.json").read_text())
    # the stage table lists every stage with its checkpoint id; the test table's means are the summary's
    for stage in ("pretrain", "sft", "reward", "ppo", "lpo"):
        man = json.loads((out / stage / "manifest.json").read_text())
        assert f"| {stage} | trained |" in md and man["id"] in md
    for policy in ("sft", "ppo", "lpo"):
        assert f"{summary['stages']['eval'][policy]['ndcg@10']:.4f} [" in md
    families = json.loads((out / "reward" / "manifest.json").read_text())["pairs"]["by_family"]
    assert all(f"| {fam} |" in md for fam in families)
    for r in summary["targets"]:  # the targets the pipeline checked, one row each
        assert f"| {r['target']} | " in md


def test_report_skips_sections_it_has_no_inputs_for(smoke_run, tmp_path, capsys):
    """A run with data, pretrain, sft and lpo only and no test evaluation: the report says what it skipped."""
    run = tmp_path / "run"
    shutil.copytree(smoke_run[0], run, ignore=shutil.ignore_patterns("ppo*", "reward*", "predictions-*", "report"))
    summary = json.loads((run / "summary.json").read_text())
    summary["order"] = ["pretrain", "sft", "lpo"]
    summary["stages"] = {k: v for k, v in summary["stages"].items() if k in ("data", "pretrain", "sft", "lpo")}
    del summary["targets"]
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(run)]) == 0
    assert str(run / "report" / "report.html") in capsys.readouterr().out
    md, page = check_page(run / "report", {"curves-pretrain.png", "curves-sft.png", "curves-lpo.png"})
    assert page.h2 == list(run_report.SECTIONS)
    for reason in ("no PPO stage in this run", "no reward model checkpoint in this run",
                   "no test evaluation in this run", "no targets checked in this run"):
        assert f"*Skipped: {reason}" in md


def test_hacking_alerts_are_listed_and_marked_on_the_ppo_plots(smoke_run, tmp_path):
    """An alert in PPO's saved monitor state: a row in the report's table, a line on every PPO panel."""
    from rlhf_ray.report import plots
    from rlhf_ray.report.collect import load_run

    run = tmp_path / "run"
    shutil.copytree(smoke_run[0], run, ignore=shutil.ignore_patterns("reward*", "report"))
    state = run / "ppo.state" / (run / "ppo.state" / "latest").read_text().strip() / "controller.json"
    ctl = json.loads(state.read_text())
    alert = {"iteration": 2, "reward_gain": 0.25, "metric": "val/page_ild", "drop": 0.125, "baseline": 0.8, "now": 0.7}
    ctl["monitor"]["alerts"] = [alert]
    state.write_text(json.dumps(ctl))
    assert main(["report", str(run)]) == 0
    md = (run / "report" / "report.md").read_text()
    assert "Reward-hacking monitor: 1 alert(s)" in md and "| 2 | 0.2500 | val/page_ild | 0.8000 | 0.7000 | 12.5% |" in md
    records = load_run(run).stages["ppo"].records
    iters = [r for r in records if "kl/coef" in r]
    vals = [r for r in records if "kl/coef" not in r]
    for fig in (plots.ppo_training(iters, [alert]), plots.ppo_validation(vals, [alert], {}, None)):
        panels = [ax for ax in fig.axes if ax.get_title()]
        marks = [[tuple(ln.get_xdata()) for ln in ax.get_lines() if ln.get_label() == "reward-hacking alert"]
                 for ax in panels]
        assert len(panels) == 3 and marks == [[(2, 2)]] * 3


def make_sweep(root):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    (root / "plots").mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({
        "name": "sft-lr", "trials": 2, "objective": {"metric": "val/ndcg@10", "mode": "max"},
        "space": {"sft.train.lr": "loguniform(1e-4, 1e-3)"}, "pareto_keys": ["val/ndcg@10", "val/page_ild"]}))
    (root / "results.md").write_text("# Sweep of SFT\n\n| trial | lr | val/ndcg@10 |\n|---|---|---|\n"
                                     "| t1 | 0.0001 | 0.101 |\n| t2 | 0.001 | 0.123 |\n")
    (root / "results.csv").write_text("trial,sft.train.lr,val/ndcg@10\nt1,0.0001,0.101\nt2,0.001,0.123\n")
    (root / "pareto.csv").write_text("trial,status,sft.train.lr,objective,val/ndcg@10,val/page_ild,wall_s\n"
                                     "t2,completed,0.001,0.123456789,0.123456789,0.61,12.5\n")
    for name in ("objective-lr.png", "pareto.png"):
        fig = Figure(figsize=(4, 3))
        FigureCanvasAgg(fig)
        fig.subplots().plot([1, 2], [0.101, 0.123], marker="o")
        fig.savefig(root / "plots" / name)
    index = [{"file": "objective-lr.png", "title": "Objective against lr"},
             {"file": "pareto.png", "title": "Pareto front"},
             {"file": "gone.png", "title": "A figure the sweep lost"}]
    (root / "plots" / "index.json").write_text(json.dumps(index))


def test_sweep_report_embeds_the_sweeps_plots_and_results(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_sweep(sweep)
    assert main(["report", str(sweep)]) == 0
    assert str(sweep / "report" / "report.html") in capsys.readouterr().out
    md, page = check_page(sweep / "report", {"objective-lr.png", "pareto.png"})
    assert page.h2 == list(sweep_report.SECTIONS)
    assert "### Sweep of SFT" in md and "| t2 | 0.001 | 0.123 |" in md  # results.md, nested one level down
    assert "| name | sft-lr |" in md and "| trials | 2 |" in md  # sweep.json's settings
    front = md.split("## Pareto front")[1].split("## Plots")[0]  # trial, knobs, objective, Pareto metrics
    assert "| trial | sft.train.lr | objective | val/ndcg@10 | val/page_ild |\n" in front
    assert "| t2 | 0.001 | 0.1235 | 0.1235 | 0.61 |" in front and "wall_s" not in front.split("\n\n")[1]
    assert "### Objective against lr" in md and "### Pareto front" in md
    assert "gone.png (A figure the sweep lost) is listed in plots/index.json but not in plots/" in md


@pytest.mark.parametrize("index,needle", [
    ('{"file": "a.png"}', "expected a list"),
    ('[{"file": "../a.png", "title": "t"}]', "must be a file name inside plots/"),
    ("[{", "not valid JSON"),
])
def test_bad_sweep_index_exits_2_naming_the_file(tmp_path, capsys, index, needle):
    sweep = tmp_path / "sweep"
    make_sweep(sweep)
    (sweep / "plots" / "index.json").write_text(index)
    assert main(["report", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(sweep / "plots" / "index.json") in err


def test_report_of_a_directory_that_is_neither_run_nor_sweep_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a pipeline run (no summary.json) nor a sweep (no sweep.json)" in capsys.readouterr().err


def test_pipeline_survives_a_failing_report(tmp_path, capsys):
    """A report failure is a warning naming its cause; the finished run is kept."""
    from rlhf_ray.pipeline import write_report_safely

    (tmp_path / "summary.json").write_text("{not json")
    assert write_report_safely(tmp_path) is None
    err = capsys.readouterr().err
    assert "WARNING: the run is complete, but its report failed" in err and "not valid JSON" in err
    assert f"rlhf-ray report {tmp_path}" in err


CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
PROBE = ("<script>window.addEventListener('load', () => { const im = [...document.images]; "
         "document.body.dataset.images = im.length; "
         "document.body.dataset.broken = im.filter(i => !i.complete || i.naturalWidth === 0).length; });</script>")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian/Ubuntu: apt-get install "
                                              "chromium; README, 'Run reports')")
def test_report_renders_in_headless_chromium(smoke_run, tmp_path):
    """Chromium loads the report from disk, decodes every image and logs no error."""
    html = smoke_run[0] / "report" / "report.html"
    probed = tmp_path / "probed.html"  # a copy with a probe counting the images the browser decoded
    probed.write_text(html.read_text().replace("</body>", PROBE + "</body>"))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=5000"]
    res = subprocess.run(flags + ["--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f'data-images="{len(RUN_FIGURES)}"' in res.stdout and 'data-broken="0"' in res.stdout
    assert not [line for line in res.stderr.splitlines() if ":CONSOLE" in line], res.stderr[-2000:]
    shot = tmp_path / "shot.png"
    res = subprocess.run(flags + ["--window-size=1200,2400", f"--screenshot={shot}", html.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    gray = decoded(shot.read_bytes()).convert("L")
    dark = sum(n for v, n in enumerate(gray.histogram()) if v < 128)
    assert dark > 0.005 * gray.width * gray.height  # text and plots, not a blank page
