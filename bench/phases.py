"""The user's experiment plan (issue 29) as one reproducible study: Phases 1-3 and the domain-gap remedies measured
on one chain, photo -> six views -> Gaussians -> renders at held-out cameras.

    python -m bench.phases STEP [--profile gpu|toy] [--root runs] [--out OUT] [--inprocess] [--dry-run]

STEP (each a list of groups; the jobs of a group run at once, on one GPU, a group after the one before):
    train     Phase 1's shared start (the pixel diffusion recipe on synthetic mice) beside Phase 2's GS-LRM
    finetune  the three Phase-1 rows x seeds, fine-tuned from the start's EMA weights (all at once); then Phase 3's
              data (tools.synthesize --from-diffusion --with-truth, one set per row of the Phase-3 seeds)
    phase3    (Phase 3's data where finetune left it unwritten;) Phase 3's GS-LRMs (the Phase-2 GS-LRM fine-tuned on
              each row's data) beside the Phase-2 chained evaluations; then the Phase-3 chained evaluations and the
              baseline (the captured rig views straight into the Phase-2 GS-LRM); then the report
    eval      every evaluation again (Phase 2, Phase 3, baseline; the other steps skip an evaluation that has its
              results.json, as a training that has its export); report  the report alone (bench/phases_report.py)
    all       train, finetune, phase3 (one machine without a call limit, or the toy profile)
    commands  print every command of the study (the plan; nothing runs)

Rows (docs/results.md, "The user's experiment plan (Phases 1-3)"): diffusion (i) synthetic only, (ii) 70/30
synthetic/realistic, (iii) 70/30 with the domain-gap augmentation of the reference; each chained with the Phase-2
GS-LRM (trained on synthetic views) and with its own Phase-3 GS-LRM; baselines in the same table: the captured views
-> the Phase-2 GS-LRM, copying the photo to every view, the generated views themselves. Every row is scored on the
held-out scenes (seed 7) at two held-out cameras, once with clean photos and once with realistic captures of the same
scenes against the same clean truth (configs/studies/phases/heldout_*.yaml): the difference is the row's domain gap.

Profiles: ``gpu`` (one H100 / H200: the configs as they are; the shared trainings (the diffusion start, the Phase-2
GS-LRM) bounded by ``--trainer.max_time``, the rows' (fine-tunes, Phase-3 GS-LRMs) by ``--trainer.max_steps`` so that
rows sharing the GPU unevenly are compared at equal training, with a time as a safety bound; overridable by the
environment: PHASES_BASE_TIME, PHASES_GSLRM_TIME, PHASES_FINETUNE_TIME, PHASES_PHASE3_TIME (dd:hh:mm:ss),
PHASES_FINETUNE_STEPS, PHASES_PHASE3_STEPS, PHASES_EVAL_BATCHES (of 16 held-out scenes, 4), PHASES_SEEDS /
PHASES_PHASE3_SEEDS, e.g. "0 1", PHASES_ROWS, the rows trained, e.g. "i" (default all three), and PHASES_MIN_IOU
(0.5): the Phase-2 GS-LRM's last validation silhouette IoU (``val/iou/all``) below it stops the study, since every
later row stands on that model ("did not learn" in the status, for the train step and again before phase3 or eval),
and PHASES_GSLRM_BACKGROUND, the Phase-2 GS-LRM's training background: random (the default since run G,
gslrm_phase2_random_bg.yaml) or white (runs A-F));
``toy`` (the same commands on a CPU with tiny models, 16 px and two steps: tests/test_phases_study.py). Jobs run as
subprocesses (logs in OUT/logs/) or, with ``--inprocess``, one after the other in this process (the toy test). A
training whose run already has an export is not run again (a step can be repeated after a failure); a job whose inputs
are missing is skipped and said so. Every job's outcome: OUT/phases_status.jsonl. Device calls:
bench/phases_device.sh. Trainings run with ``--resume auto``: repeated after a failure, one that left a checkpoint
continues for the time it had left.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from datamodules import render_cache

CONFIGS = Path("configs/studies/phases")
DIFFUSION_RECIPE = "configs/recipes/diffusion_pixel_procedural64.yaml"
GSLRM_RECIPE = "configs/recipes/gslrm_procedural_128.yaml"
ROWS = {  # Phase 1's rows: data config, what it is
    "i": ("data_synthetic.yaml", "synthetic only"),
    "ii": ("data_mixed.yaml", "70/30 synthetic/realistic"),
    "iii": ("data_mixed_aug.yaml", "70/30 + domain-gap augmentation of the reference"),
}
HELDOUT = {"realistic": CONFIGS / "heldout_realistic.yaml", "clean": CONFIGS / "heldout_clean.yaml"}
HELDOUT_VIEWS = 2  # cameras beyond the rig's in the held-out scenes (heldout_*.yaml: 8 views)
STEPS = ("train", "finetune", "phase3", "eval", "report", "all", "commands")


@dataclasses.dataclass(frozen=True)
class Profile:
    """How big and where: the trainings' time limits, seeds and the overrides every job of a kind gets."""

    name: str
    rows: tuple[str, ...]  # the Phase-1 rows trained and scored (keys of ROWS; the report lists the others not run)
    seeds: tuple[int, ...]
    phase3_seeds: tuple[int, ...]
    times: dict[str, str | None]  # base, gslrm, finetune, phase3: --trainer.max_time (None: the steps decide)
    steps: dict[str, int | None]  # finetune, phase3: --trainer.max_steps (None: the time decides)
    diffusion: tuple[str, ...]  # every diffusion fit
    gslrm: tuple[str, ...]  # every GS-LRM fit
    synthesize: tuple[str, ...]
    evaluate: tuple[str, ...]
    workers: dict[str, int]  # num_workers of the loaders: base, gslrm, finetune, phase3
    timeout_s: float  # a job's wall-clock limit beyond its max_time (startup, validation, export)
    synthesize_timeout_s: float  # a Phase-3 data job's wall-clock limit (it has no max_time: its samples bound it)
    min_iou: float | None = None  # the Phase-2 GS-LRM's last val/iou/all must reach it, else the study stops
    gslrm_background: str = "random"  # the Phase-2 GS-LRM's training background: random (an overlay) or white


def _seeds(name: str, default: str) -> tuple[int, ...]:
    return tuple(int(s) for s in os.environ.get(name, default).split())


def _rows() -> tuple[str, ...]:
    rows = tuple(os.environ.get("PHASES_ROWS", " ".join(ROWS)).split())
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        raise SystemExit(f"PHASES_ROWS={os.environ.get('PHASES_ROWS')!r}: rows are some of {' '.join(ROWS)}")
    return rows


def _background() -> str:
    background = os.environ.get("PHASES_GSLRM_BACKGROUND", "random")
    if background not in ("white", "random"):
        raise SystemExit(f"PHASES_GSLRM_BACKGROUND={background!r}: random or white")
    return background


def gpu_profile() -> Profile:
    env = os.environ.get
    return Profile(
        "gpu", _rows(), _seeds("PHASES_SEEDS", "0 1"), _seeds("PHASES_PHASE3_SEEDS", "0"),
        {"base": env("PHASES_BASE_TIME", "00:00:05:00"), "gslrm": env("PHASES_GSLRM_TIME", "00:00:05:00"),
         "finetune": env("PHASES_FINETUNE_TIME", "00:00:06:00"), "phase3": env("PHASES_PHASE3_TIME", "00:00:04:00")},
        # the rows' trainings stop at a number of steps, so rows and seeds sharing one GPU unevenly (a mixed source
        # renders longer at start-up) are compared at equal training; their times above are only a safety bound
        {"finetune": int(env("PHASES_FINETUNE_STEPS", "500")), "phase3": int(env("PHASES_PHASE3_STEPS", "1000"))},
        diffusion=(), gslrm=(),
        synthesize=("--steps", "25", "--guidance", "1.5", "--batch-size", "32", "--precision", "bf16", "--device",
                    "cuda"),
        evaluate=("--device", "cuda", "--batches", env("PHASES_EVAL_BATCHES", "4"), "--batch-size", "16", "--steps",
                  "25", "--guidance", "1.5", "--precision", "bf16", "--num-workers", "2", "--grid-scenes", "3"),
        # six Phase-3 data sets at once write ~4 samples/s together on an H100 (run E): 6 x 256 samples ~6.5 min
        workers={"base": 6, "gslrm": 4, "finetune": 2, "phase3": 3}, timeout_s=240.0, synthesize_timeout_s=1500.0,
        # a GS-LRM that paints every view opaque white scores ~0.1 (run F); one that learned, ~0.9
        min_iou=float(env("PHASES_MIN_IOU", "0.5")), gslrm_background=_background())


TOY_STEPS = ("--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
             "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_time", "null",
             "--checkpoint.every_n_train_steps", "2", "--data.init_args.batch_size", "2",
             "--data.init_args.val_samples", "2", "--data.init_args.image_size", "16",
             "--data.init_args.persistent_workers", "false", "--trainer.log_every_n_steps", "1",
             "--trainer.num_sanity_val_steps", "0")


def toy_profile() -> Profile:
    return Profile(
        "toy", _rows(), (0,), (0,), {"base": None, "gslrm": None, "finetune": None, "phase3": None}, {},
        diffusion=(*TOY_STEPS, "--model.init_args.max_steps", "2", "--model.init_args.unet_channels", "[8, 16]",
                   "--model.init_args.unet_attention_levels", "[false, true]",
                   "--model.init_args.unet_layers_per_block", "1", "--model.init_args.unet_head_dim", "8",
                   "--model.init_args.cross_attention_dim", "16", "--model.init_args.image_embed_dim", "8",
                   "--model.init_args.view_tokens", "2", "--model.init_args.val_inference_steps", "1",
                   "--model.init_args.val_sample_every_n_steps", "2", "--model.init_args.val_sample_batches", "1"),
        gslrm=(*TOY_STEPS, "--model.init_args.max_steps", "2", "--model.init_args.width", "32",
               "--model.init_args.depth", "1", "--model.init_args.head_dim", "16", "--model.init_args.rasterizer",
               "torch", "--data.init_args.batch_size", "1"),
        synthesize=("--steps", "1", "--guidance", "1.5", "--batch-size", "4", "--limit", "1", "--device", "cpu"),
        evaluate=("--device", "cpu", "--batches", "1", "--batch-size", "1", "--steps", "1", "--guidance", "1.5",
                  "--grid-scenes", "1"),
        workers={"base": 0, "gslrm": 0, "finetune": 0, "phase3": 0}, timeout_s=600.0, synthesize_timeout_s=600.0)


PROFILES: dict[str, Callable[[], Profile]] = {"gpu": gpu_profile, "toy": toy_profile}


@dataclasses.dataclass
class Job:
    """One tool invocation: ``python -m TOOL ARGV``. ``needs``: paths that must exist (else skipped, said why);
    ``makes``: the path it writes (a later job's need; when it exists the job is not run again, unless ``redo``);
    ``prepare``: run first (e.g. write a data config)."""

    name: str
    tool: str
    argv: list[str]
    needs: list[Path] = dataclasses.field(default_factory=list)
    max_time: str | None = None
    prepare: Callable[[], None] | None = None
    limit_s: float | None = None  # wall-clock limit; None: max_time + the profile's timeout_s
    makes: Path | None = None
    redo: bool = False
    check: Callable[[], str | None] | None = None  # after it ran (or was done before): why its result is unusable

    @property
    def done(self) -> Path | None:
        """What it made before (so it is not run again), or None."""
        return self.makes if self.makes is not None and self.makes.exists() and not self.redo else None

    def limit(self, timeout_s: float) -> float:
        return self.limit_s if self.limit_s is not None else _seconds(self.max_time) + timeout_s

    def command(self) -> str:
        return shlex.join(["python", "-m", self.tool, *self.argv])


def gslrm_learned(run_dir: Path, min_iou: float) -> str | None:
    """None when the GS-LRM run's last validation has ``val/iou/all`` >= ``min_iou`` (or logged none: nothing to
    judge); else why not. The white-background collapse (opaque white Gaussians over every pixel, ~14 dB) keeps
    PSNR near a plausible value but its silhouette IoU at the subject's share of the view."""
    from callbacks.run_layout import RunPaths

    rows = [r for r in RunPaths.from_run_dir(run_dir).metric_rows() if r.get("val/iou/all")]
    if not rows:
        return None
    iou, step = float(rows[-1]["val/iou/all"]), rows[-1].get("step", "?")
    if iou >= min_iou:
        return None
    return (f"val/iou/all {iou:.3f} at step {step} (< {min_iou}): its renders cover the view instead of the subject "
            f"(see {run_dir / 'logs' / 'images'})")


# ---- the plan --------------------------------------------------------------------------------------------------------
class Study:
    """The study's runs, data sets and evaluations under ``root``/phases (names in the module docstring)."""

    def __init__(self, profile: Profile, root: Path = Path("runs"), out: Path = Path("out")) -> None:
        self.p, self.root, self.out = profile, Path(root), Path(out)
        self.dir = self.root / "phases"
        self.redo_evaluations = False  # step eval: every evaluation again (else one with results is not repeated)

    # paths
    def run(self, name: str) -> Path:
        return self.dir / name

    def export(self, name: str) -> Path:
        """The run's last export folder (export/step_N with the largest N), or a placeholder naming it."""
        found = sorted(self.run(name).glob("export/step_*"), key=lambda p: int(p.name.split("_")[-1]))
        return found[-1] if found else self.run(name) / "export" / "step_LAST"

    def env(self) -> dict[str, str]:
        """The jobs' environment: every job reads the scenes another one pre-rendered on the GPU
        (``datamodules.render_cache``; a folder already set is kept)."""
        return {render_cache.ENV: os.environ.get(render_cache.ENV, str(self.dir / "prerender_cache"))}

    @staticmethod
    def diffusion_run(row: str, seed: int) -> str:
        return f"diffusion_{row}_s{seed}"

    @staticmethod
    def phase3_run(row: str, seed: int) -> str:
        return f"gslrm_phase3_{row}_s{seed}"

    def phase3_data(self, row: str, seed: int) -> Path:
        return self.dir / "phase3_data" / f"{row}_s{seed}"

    def eval_dir(self, name: str) -> Path:
        return self.dir / "eval" / name

    # jobs
    def _fit(self, name: str, configs: list[str], extra: list[str], kind: str, time_key: str,
             needs: list[Path] | None = None) -> Job:
        argv = [a for c in configs for a in ("-c", c)] + extra  # a --data file first: the overrides after it win
        argv += ["--run.root", str(self.root), "--run.experiment", "phases", "--run.run", name,
                 "--data.init_args.num_workers", str(self.p.workers[time_key]),
                 "--resume", "auto"]  # a step repeated after a failure continues a run cut short (time left)
        argv += list(self.p.diffusion if kind == "diffusion" else self.p.gslrm)
        max_time, max_steps = self.p.times[time_key], self.p.steps.get(time_key)
        if max_time:
            argv += ["--trainer.max_time", max_time]
        if max_steps:
            argv += ["--trainer.max_steps", str(max_steps)]
        return Job(name, "tools.fit", argv, needs or [], max_time=max_time, makes=self.export(name))

    def base(self) -> Job:
        return self._fit("diffusion_base", [DIFFUSION_RECIPE, str(CONFIGS / "diffusion_base.yaml")], [],
                         "diffusion", "base")

    def phase2_gslrm(self) -> Job:
        configs = [GSLRM_RECIPE, str(CONFIGS / "gslrm_phase2.yaml")]
        if self.p.gslrm_background == "random":  # white Gaussians over white get no gradient (run F; run G learned)
            configs.append(str(CONFIGS / "gslrm_phase2_random_bg.yaml"))
        job = self._fit("gslrm_phase2", configs, [], "gslrm", "gslrm")
        if self.p.min_iou is not None:  # every later job stands on it: a dead one stops the study
            job.check = lambda: gslrm_learned(self.run("gslrm_phase2"), self.p.min_iou)
        return job

    def finetune(self, row: str, seed: int) -> Job:
        base = self.export("diffusion_base")
        configs = [DIFFUSION_RECIPE, str(CONFIGS / "diffusion_base.yaml"), str(CONFIGS / "diffusion_finetune.yaml")]
        extra = ["--data", str(CONFIGS / ROWS[row][0]), "--model.init_args.pretrained", str(base),
                 "--model.init_args.unet_subfolder", "unet_ema",
                 "--model.init_args.view_embeddings_path", str(base / "view_embeddings.safetensors"),
                 "--seed_everything", str(seed)]
        return self._fit(self.diffusion_run(row, seed), configs, extra, "diffusion", "finetune", needs=[base])

    def synthesize(self, row: str, seed: int) -> Job:
        diff, out = self.export(self.diffusion_run(row, seed)), self.phase3_data(row, seed)
        argv = ["--from-diffusion", str(diff), "--ema", "--inputs", str(CONFIGS / "phase3_inputs.yaml"), "--kind",
                "all", "--with-truth", "--out", str(out), "--seed", str(seed), "--skip-existing", *self.p.synthesize]
        # --skip-existing: a data set cut short by a step's deadline is continued by the step repeated
        return Job(f"phase3_data_{row}_s{seed}", "tools.synthesize", argv, [diff],
                   limit_s=self.p.synthesize_timeout_s, makes=out / "dataset.json")

    def phase3_config(self, row: str, seed: int) -> Path:
        return self.dir / "phase3_data" / f"{row}_s{seed}.yaml"

    def write_phase3_config(self, row: str, seed: int) -> None:
        """data_phase3.yaml with its generated source pointed at this row's data set."""
        text = (CONFIGS / "data_phase3.yaml").read_text()
        cfg = yaml.safe_load(text.replace("PHASE3_DIR", str(self.phase3_data(row, seed).resolve())))
        path = self.phase3_config(row, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# written by bench/phases.py from {CONFIGS / 'data_phase3.yaml'} for diffusion row {row} "
                        f"seed {seed}\n" + yaml.safe_dump(cfg, sort_keys=False))

    def phase3(self, row: str, seed: int) -> Job:
        configs = [GSLRM_RECIPE, str(CONFIGS / "gslrm_phase2.yaml"), str(CONFIGS / "gslrm_phase3.yaml")]
        phase2 = self.export("gslrm_phase2")
        extra = ["--data", str(self.phase3_config(row, seed)), "--model.init_args.init_from", str(phase2),
                 "--seed_everything", str(seed)]
        job = self._fit(self.phase3_run(row, seed), configs, extra, "gslrm", "phase3",
                        needs=[phase2, self.phase3_data(row, seed) / "dataset.json"])
        job.prepare = lambda: self.write_phase3_config(row, seed)
        return job

    def _evaluate(self, name: str, argv: list[str], needs: list[Path]) -> Job:
        data = [a for label, path in HELDOUT.items() for a in ("--data", f"{label}={path}")]
        out = self.eval_dir(name)
        return Job(f"eval_{name}", "tools.evaluate", [*argv, *data, "--out", str(out), *self.p.evaluate], needs,
                   makes=out / "results.json", redo=self.redo_evaluations)

    def chain_eval(self, row: str, seed: int, gslrm: str) -> Job:
        """Phase 2 (``gslrm`` = "phase2") or Phase 3 of diffusion row ``row`` seed ``seed``, both held-out sets."""
        diff = self.export(self.diffusion_run(row, seed))
        g = self.export("gslrm_phase2" if gslrm == "phase2" else self.phase3_run(row, seed))
        argv = ["--diffusion", f"{row}_s{seed}={diff}", "--diffusion-ema", "--ckpt", f"{gslrm}={g}",
                "--heldout-views", str(HELDOUT_VIEWS)]
        return self._evaluate(f"{row}_s{seed}_{gslrm}", argv, [diff, g])

    def baseline_eval(self) -> Job:
        """The captured (or clean) rig views straight into the Phase-2 GS-LRM, scored at the same held-out cameras."""
        g = self.export("gslrm_phase2")
        return self._evaluate("views_phase2", ["--ckpt", f"views_phase2={g}", "--input-views", "first",
                                               "--num-input-views", "6"], [g])

    def report(self) -> Job:
        return Job("report", "bench.phases_report", ["--root", str(self.root), "--out", str(self.out / "report"),
                                                     "--profile", self.p.name])

    # steps: lists of groups, built when they are reached (a group's paths come from the runs before it)
    def steps(self, step: str, rows: tuple[str, ...] | None = None) -> list[Callable[[], list[Job]]]:
        """``step``'s groups for ``rows`` (the profile's unless given: PHASES_ROWS)."""
        rows = self.p.rows if rows is None else rows
        rows_seeds = [(r, s) for r in rows for s in self.p.seeds]
        p3 = [(r, s) for r in rows for s in self.p.phase3_seeds]
        train = [lambda: [self.base(), self.phase2_gslrm()]]
        finetune = [lambda: [self.finetune(r, s) for r, s in rows_seeds],
                    lambda: [self.synthesize(r, s) for r, s in p3]]
        phase3 = [lambda: [self.synthesize(r, s) for r, s in p3],  # done before, unless finetune ran out of time
                  lambda: [self.phase3(r, s) for r, s in p3] + [self.chain_eval(r, s, "phase2") for r, s in rows_seeds],
                  lambda: [self.chain_eval(r, s, "phase3") for r, s in p3] + [self.baseline_eval()],
                  lambda: [self.report()]]
        evaluate = [lambda: [self.chain_eval(r, s, "phase2") for r, s in rows_seeds]
                    + [self.chain_eval(r, s, "phase3") for r, s in p3] + [self.baseline_eval()],
                    lambda: [self.report()]]
        return {"train": train, "finetune": finetune, "phase3": phase3, "eval": evaluate,
                "report": [lambda: [self.report()]], "all": train + finetune + phase3}[step]

    def missing_inputs(self, job: Job) -> list[Job]:
        """The jobs, in the order they must run, that write what ``job`` needs and is not there (and what they
        need in turn): with ``job`` itself, the commands that reproduce a row not run."""
        makers = {str(j.makes): j for j in self.plan() if j.makes is not None}
        order: list[Job] = []

        def visit(j: Job) -> None:
            for path in j.needs:
                maker = makers.get(str(path))
                if not path.exists() and maker is not None and maker.name not in {o.name for o in order}:
                    visit(maker)
                    order.append(maker)

        visit(job)
        return order

    def plan(self) -> list[Job]:
        """Every job of the study in order, every row's (PHASES_ROWS aside): the report names the commands of the
        rows not run from it."""
        return [job for step in ("train", "finetune", "phase3") for group in self.steps(step, tuple(ROWS))
                for job in group()]


# ---- running ---------------------------------------------------------------------------------------------------------
def _seconds(max_time: str | None) -> float:
    if not max_time:
        return 0.0
    d, h, m, s = (int(x) for x in max_time.split(":"))
    return ((d * 24 + h) * 60 + m) * 60 + s


def _entry(tool: str) -> Callable[[list[str]], int]:
    module = importlib.import_module(tool)
    return module.cli_main if tool == "tools.fit" else module.main


def _log_name(name: str) -> str:
    """A job's log file name (``OUT/logs/<name>.log``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class Stopped(Exception):
    """SIGTERM (the device script's own deadline, before the call's): the running jobs are ended and recorded."""


def _stop(signum: int, frame: Any) -> None:
    raise Stopped(f"signal {signum}")


def _note_startups(records: list[dict[str, Any]], out: Path) -> None:
    """Each training job's seconds from its start to its first training batch (its log's StepTimer line), as
    ``startup_s``."""
    from callbacks.throughput import startup_in_log

    for rec in records:
        log = out / "logs" / f"{_log_name(rec['job'])}.log"
        if "start" in rec and log.is_file() and (startup := startup_in_log(log.read_text(errors="replace"))):
            rec["startup_s"] = startup


def _apply_check(job: Job, rec: dict[str, Any]) -> None:
    """A job that ended well (or was done before) but whose ``check`` objects is recorded as ``did not learn``."""
    if job.check is not None and rec["status"] in ("ok", "done before") and (why := job.check()):
        rec.update(status="did not learn", reason=why)


def run_group(jobs: list[Job], out: Path, inprocess: bool, timeout_s: float,
              env_extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run one group's jobs (at once as subprocesses, with ``env_extra`` in their environment, or one by one here);
    returns their status records. A SIGTERM
    ends the group's processes, records the unfinished ones as ``stopped`` and raises :class:`Stopped` carrying the
    records (``.records``)."""
    records: list[dict[str, Any]] = []
    procs: list[tuple[subprocess.Popen, dict[str, Any], Any, float, Job]] = []
    (out / "logs").mkdir(parents=True, exist_ok=True)
    try:
        for job in jobs:
            rec: dict[str, Any] = {"job": job.name, "command": job.command()}
            records.append(rec)
            missing = [str(p) for p in job.needs if not p.exists()]
            if job.done is not None:
                rec.update(status="done before", output=str(job.done))
                _apply_check(job, rec)
                continue
            if missing:
                rec.update(status="skipped", reason=f"missing {', '.join(missing)}")
                continue
            if job.prepare is not None:
                job.prepare()
            rec["start"] = time.time()
            print(f"[phases] start {job.name}: {job.command()}", flush=True)
            if inprocess:
                try:
                    rc = int(_entry(job.tool)(list(job.argv)) or 0)
                except SystemExit as e:  # argparse errors
                    rc = int(e.code or 0) if not isinstance(e.code, str) else 2
                rec.update(status="ok" if rc == 0 else "failed", rc=rc, seconds=round(time.time() - rec["start"], 1))
                _apply_check(job, rec)
                continue
            log = (out / "logs" / f"{_log_name(job.name)}.log").open("w")
            env = {**os.environ, **(env_extra or {}), "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen([sys.executable, "-m", job.tool, *job.argv], stdout=log, stderr=subprocess.STDOUT,
                                    env=env)
            procs.append((proc, rec, log, job.limit(timeout_s), job))
        for proc, rec, log, limit, job in procs:
            left = max(1.0, rec["start"] + limit - time.time())
            try:
                rc = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
                rec["reason"] = f"killed after {limit:.0f} s"
            log.close()
            rec.update(status="ok" if rc == 0 else "failed", rc=rc, seconds=round(time.time() - rec["start"], 1))
            _apply_check(job, rec)
    except Stopped as e:
        for proc, rec, _, _, _ in procs:
            if proc.poll() is None:
                proc.terminate()
            elif "status" not in rec:  # it had finished
                rec.update(status="ok" if proc.returncode == 0 else "failed", rc=proc.returncode,
                           seconds=round(time.time() - rec["start"], 1))
        for proc, _, log, _, _ in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        for rec in records:
            if "status" not in rec:
                rec.update(status="stopped", reason=str(e),
                           seconds=round(time.time() - rec.get("start", time.time()), 1))
        _note_startups(records, out)
        e.records = records  # type: ignore[attr-defined]
        raise
    _note_startups(records, out)
    for rec in records:
        print(f"[phases] {rec['job']}: {rec['status']}" + (f" ({rec.get('seconds')} s)" if "seconds" in rec else "")
              + (f", first training batch after {rec['startup_s']} s" if "startup_s" in rec else "")
              + (f": {rec['reason']}" if rec.get("reason") else ""), flush=True)
    return records


def run_step(study: Study, step: str, inprocess: bool = False, dry_run: bool = False) -> int:
    """Run ``step``'s groups in order; every record goes to OUT/phases_status.jsonl. Exit code 1 when a job failed."""
    study.out.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return _run_groups(study, step, inprocess, dry_run)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_status(study: Study, step: str, records: list[dict[str, Any]]) -> None:
    with (study.out / "phases_status.jsonl").open("a") as f:
        for rec in records:
            f.write(json.dumps({"step": step, "profile": study.p.name, **rec}) + "\n")


def _run_groups(study: Study, step: str, inprocess: bool, dry_run: bool) -> int:
    failed = 0
    if step in ("phase3", "eval") and not dry_run:  # the steps using the Phase-2 GS-LRM refuse one that did not learn
        gslrm = study.phase2_gslrm()
        rec: dict[str, Any] = {"job": gslrm.name, "status": "done before"}
        if gslrm.done is not None:
            _apply_check(gslrm, rec)
        if rec["status"] == "did not learn":
            _write_status(study, step, [rec])
            print(f"[phases] {step}: {gslrm.name} did not learn ({rec['reason']}); nothing was started", flush=True)
            return 1
    for make in study.steps(step):
        jobs = make()
        if dry_run:
            for job in jobs:
                print(job.command())
            continue
        try:
            records, stopped = run_group(jobs, study.out, inprocess, study.p.timeout_s, study.env()), False
        except Stopped as e:
            records, stopped = e.records, True  # type: ignore[attr-defined]
        _write_status(study, step, records)
        failed += sum(r["status"] in ("failed", "stopped", "did not learn") for r in records)
        if stopped:
            print(f"[phases] {step}: stopped (SIGTERM); the later groups were not started", flush=True)
            break
        if dead := [r["job"] for r in records if r["status"] == "did not learn"]:
            print(f"[phases] {step}: {', '.join(dead)} did not learn; the later groups were not started (its "
                  "export stays for a look; remove its run folder to train it again)", flush=True)
            break
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.phases", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("step", choices=STEPS)
    p.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    p.add_argument("--root", type=Path, default=Path("runs"), help="run root (the study writes ROOT/phases/)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")), help="logs, status, report")
    p.add_argument("--inprocess", action="store_true", help="run the jobs one by one in this process")
    p.add_argument("--dry-run", action="store_true", help="print the step's commands (paths as they are now)")
    args = p.parse_args(argv)
    study = Study(PROFILES[args.profile](), args.root, args.out)
    study.redo_evaluations = args.step == "eval"
    if args.step == "commands":
        for job in study.plan():
            print(job.command())
        return 0
    return run_step(study, args.step, args.inprocess, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
