"""`strop-llm qa`: questions about the scene answered from its codes, through decode's machinery.

A QA run is a `llm_decode.runner.Task`: its plan, folder, summary and baseline backends are
defined here; everything else (backends, streaming, retries and the parse retry, resume by
request key, rows, progress) is `llm_decode.runner.decode` itself, so there is no second
copy of any of it.

- Selection: the decode protocol's (`--shots`, `--test`, `--seed`); each test image is
  asked every question it has (one per family from the templates, or its real CLEVR
  questions), each shot image contributes one (codes, question, answer) example, families
  taken in turn so every family is shown.
- Input: the codes (default), or with `--oracle` the true scene JSON instead of codes. The
  oracle separates perception from reasoning: it is the same model and question with a
  perfect perception, so the gap between the two is what the codes fail to carry.
- Baselines (no LLM): `naive` answers each family's majority answer over the shot images'
  questions (ties by answer text); `knn` executes the question's program on the scene of
  the nearest shot program (`llm_decode.backends.baselines.KnnIndex`, as decode's knn), and
  falls back to the family's majority when the program cannot run there (e.g. the object it
  refers to does not exist in that scene) or a real question has no program. Beside knn,
  its `random_shot` control (`llm_decode.controls`): the same questions run on a random
  shot's scene, in summary.json's `baselines.accuracy.random_shot`.
- Questions: a CLEVR questions file given with `--questions` (file or dataset folder), else
  the one beside the run's dataset (`config.json` data.path) when it exists, else the
  templates. Images without real questions fall back to generated ones; the summary counts
  both (`question_sources`). A file named with `--questions` that holds no question, or
  none about any image of the run (another split, another dataset), is refused. Each
  question goes on the image of its own split as the file says it (`QuestionBank.add_file`):
  the file's name speaks only for a file that says none, and only when it names one split,
  so a question reaches a shot (train) image only when the file or its name says train.
- Results: `RUN/llm/qa/<model>[-oracle]/` (`results.jsonl`, `summary.json`,
  `identity.json`), beside decode's `RUN/llm/<model>/` and never mixed with it; one run at
  a time (`decode`'s lock on the folder).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from llm_decode.backends.base import Completion, Message
from llm_decode.backends.baselines import KnnIndex
from llm_decode.controls import qa_control, random_shots
from llm_decode.presets import folder_name
from llm_decode.prompting import PromptBuilder
from llm_decode.protocol import load_scene
from llm_decode.qa.programs import FAMILIES, ProgramError, execute
from llm_decode.qa.questions import (
    CLEVR_SPLITS,
    Question,
    QuestionBank,
    generate,
    image_index,
    questions_file,
    splits_named,
)
from llm_decode.qa.scoring import (
    VOCABULARY,
    QAAnswer,
    canonical,
    parse_qa_answer,
    score_qa,
    summarize_qa,
)
from llm_decode.results import claim_folder, messages_sha256, request_key
from llm_decode.runner import (
    TEMPLATE_HELP,
    DecodeConfig,
    DecodeResult,
    Job,
    Plan,
    RowHook,
    Task,
    decode,
    plan,
    run_summary,
)
from llm_decode.schema import abbreviation_legend
from strop.cli_options import Flag
from strop.runs import Programs, RunFolder, RunFolderError
from strop.scenes import Scene, parse_scene

QA_TEMPLATE = "qa.j2"
BASELINES = ("naive", "knn")


class QAConfig(DecodeConfig):
    """`DecodeConfig` plus what a QA run adds; validated at the edge."""

    template: Annotated[Path | None, Flag()] = Field(
        None, description=TEMPLATE_HELP.format("qa.j2")
    )
    oracle: Annotated[bool, Flag()] = Field(
        False,
        description="Give the LLM the true scene JSON instead of the codes (perception removed).",
    )
    questions: Annotated[Path | None, Flag()] = Field(
        None,
        description="CLEVR questions file (CLEVR_<split>_questions.json) or dataset folder; "
        "default: the one beside the run's dataset, else questions from templates.",
    )


@dataclass
class QAPlan(Plan):
    baseline_answers: dict[str, str] = field(default_factory=dict)  # prompt sha -> answer
    question_sources: dict[str, int] = field(default_factory=dict)
    question_files: list[str] = field(default_factory=list)
    #: knn only: the `random_shot` control's answer per job index (`llm_decode.controls`)
    control_answers: dict[int, str] = field(default_factory=dict)
    question_duplicates: int = 0  # identical questions in the files, counted once


class QABaselineBackend:
    """Answers each prompt with the baseline's answer computed in the plan."""

    def __init__(self, answers: dict[str, str], name: str) -> None:
        self._answers = answers
        self.endpoint = name

    async def complete(self, messages: list[Message], codes: Any) -> Completion:
        return Completion(text=self._answers[messages_sha256(messages)])

    async def aclose(self) -> None:
        return None


def _bank(cfg: QAConfig, run: RunFolder, splits: set[str]) -> QuestionBank:
    bank = QuestionBank()
    root: Path | None = None
    if cfg.questions is not None:
        if cfg.questions.is_file():
            # each question's split is read from the file (QuestionBank.add_file); the name
            # only speaks for a file that says none, and only when it names one split
            bank.add_file(cfg.questions, splits_named(cfg.questions, {*CLEVR_SPLITS, *splits}))
            return bank
        if not cfg.questions.is_dir():
            why = "not a regular file" if cfg.questions.exists() else "no such file or folder"
            raise RunFolderError(f"--questions {cfg.questions}: {why}")
        root = cfg.questions
    elif run.config_path.is_file():
        data = (run.read_config().get("data") or {}).get("path")
        root = Path(data) if data else None
    if root is not None:
        for split in sorted(splits):
            path = questions_file(root, split)
            if path is not None:
                bank.add_file(path, [split])
    return bank


def _check_named_questions(
    bank: QuestionBank, programs: Programs, given: Path, source: str
) -> None:
    """A questions file the user named must be about this run's images: one with no
    question, or none about any image of the run (another split, another dataset), would
    otherwise fall back to generated questions with nothing but a count in summary.json."""
    if not bank.files:  # a folder with no CLEVR_<split>_questions.json for these splits
        raise RunFolderError(
            f"--questions {given}: no questions/CLEVR_<split>_questions.json under it "
            f"(or its CLEVR_v1.0/) for the run's splits ({', '.join(sorted(set(programs.split)))})"
        )
    if not bank.by_image:
        raise RunFolderError(f"--questions {given}: no questions in {', '.join(bank.files)}")
    images = {
        (split, image_index(i)) for split, i in zip(programs.split, programs.image_id, strict=True)
    }
    if not images & set(bank.by_image):
        splits = sorted({split for split, _ in bank.by_image})
        indices = sorted(index for _, index in bank.by_image)
        raise RunFolderError(
            f"--questions {given}: none of its {sum(map(len, bank.by_image.values()))} "
            f"questions (split {', '.join(splits)}, image_index {indices[0]}..{indices[-1]}) "
            f"is about an image of {source}"
        )


def _scene(programs: Programs, row: int, source: str) -> Scene:
    try:
        return parse_scene(json.loads(programs.scene[row] or ""), source=f"{source} row {row}")
    except ValueError as exc:
        raise RunFolderError(str(exc)) from None


def plan_qa(cfg: QAConfig) -> QAPlan:
    """The decode plan (selection, model, sampling) with QA prompts, jobs and baselines."""
    base = plan(cfg.model_copy(update={"template": None, "structured": False}))
    source = str(base.run.programs_path)
    programs = base.run.read_programs(codebook_size=base.k)
    rows = base.selection.test + base.selection.shots
    scenes = {r: _scene(programs, r, source) for r in rows}
    bank = _bank(cfg, base.run, {programs.split[r] for r in rows})
    if cfg.questions is not None:
        _check_named_questions(bank, programs, cfg.questions, source)
    sources: Counter[str] = Counter()

    def questions(row: int) -> list[Question]:
        scene = scenes[row]
        real = bank.get(scene.split or programs.split[row], scene.image_index)
        return real or generate(scene, cfg.protocol.seed)

    shot_examples, pool = _shot_examples(base.selection.shots, programs, source, questions)
    overall = sum(pool.values(), Counter())
    majority = {f: _majority(c) for f, c in pool.items()}
    builder = _qa_builder(cfg, base, shot_examples)
    llm = cfg.backend in ("openai", "vllm")
    identity = {
        **base.identity,
        "endpoint": base.identity["endpoint"] if llm else cfg.backend,
        "naive_definition": None,
        "task": "qa",
        "mode": "scene" if cfg.oracle else "codes",
    }
    knn = KnnIndex([programs.codes[r].tolist() for r in base.selection.shots], base.k)
    jobs: list[Job] = []
    answers: dict[str, str] = {}
    control: dict[int, str] = {}
    draws = random_shots(len(base.selection.test), len(base.selection.shots), base.sampling_seed)
    for n_image, row in enumerate(base.selection.test):
        codes = programs.codes[row].tolist()
        scene_json = load_scene(programs, row, source).to_prompt_json()
        neighbour = scenes[base.selection.shots[knn.nearest(codes)]]
        drawn = scenes[base.selection.shots[draws[n_image]]]
        for q in questions(row):
            sources[q.source] += 1
            messages = builder.messages(codes, question=q.text, scene=scene_json)
            key = request_key(
                model=identity["served_id"] or cfg.backend,
                endpoint=identity["endpoint"],
                messages=messages,
                sampling=base.key_sampling,
                schema=None,
                seed=base.sampling_seed,
            )
            truth = QAAnswer(answer=q.answer, family=q.family, question=q.text)
            job = Job(len(jobs), row, programs.image_id[row], codes, truth, messages, key)
            job.parse, job.score = parse_qa_answer, score_qa
            jobs.append(job)
            fallback = majority.get(q.family) or _majority(overall) or "no"
            if cfg.backend == "naive":
                answers[messages_sha256(messages)] = fallback
            elif cfg.backend == "knn":
                answers[messages_sha256(messages)] = _run_or(q, neighbour, fallback)
                control[job.index] = _run_or(q, drawn, fallback)
    if not jobs:
        raise RunFolderError(f"{source}: no question could be asked of the test images")
    kept = {f.name: getattr(base, f.name) for f in fields(Plan)}
    kept.update(builder=builder, identity=identity, jobs=jobs)
    return QAPlan(
        **kept,
        baseline_answers=answers,
        question_sources=dict(sources),
        question_files=bank.files,
        control_answers=control,
        question_duplicates=bank.duplicates,
    )


def _shot_examples(
    shots: list[int], programs: Programs, source: str, questions: Callable[[int], list[Question]]
) -> tuple[list[dict[str, Any]], dict[str, Counter[str]]]:
    """One question per shot image, the families in turn, for the prompt; and the answers of
    every shot question by family (the naive and knn fallbacks' majority)."""
    shot_examples = []
    pool: dict[str, Counter[str]] = {}
    for n, row in enumerate(shots):
        asked = questions(row)
        for q in asked:
            pool.setdefault(q.family, Counter())[q.answer] += 1
        if not asked:
            continue
        want = FAMILIES[n % len(FAMILIES)]
        q = next((q for q in asked if q.family == want), asked[0])
        shot_examples.append(
            {
                "codes": programs.codes[row].tolist(),
                "scene": load_scene(programs, row, source).to_prompt_json(),
                "question": q.text,
                "answer": q.answer,
            }
        )
    return shot_examples, pool


def _qa_builder(cfg: QAConfig, base: Plan, shot_examples: list[dict[str, Any]]) -> PromptBuilder:
    """The QA template's prompts: codes (or the scene, as the oracle) and the shot questions."""
    return PromptBuilder(
        codebook_size=base.k,
        shots=[],
        think=base.think,
        template=cfg.template,
        package=QA_TEMPLATE,
        extra_vars={
            "input_kind": "scene" if cfg.oracle else "codes",
            "qa_shots": shot_examples,
            "n_shots": len(shot_examples),
            "abbr_legend": abbreviation_legend(),
            "answer_words": "yes or no, a number from 0 to 10, or one attribute value ("
            + ", ".join(sorted(w for w in VOCABULARY if not w.isdigit() and w not in ("yes", "no")))
            + ")",
        },
    )


def _majority(counts: Counter[str]) -> str | None:
    if not counts:
        return None
    return min(counts, key=lambda a: (-counts[a], a))


def _run_or(question: Question, scene: Scene, fallback: str) -> str:
    if not question.program:
        return fallback
    try:
        return execute(question.program, scene)
    except ProgramError:
        return fallback


def qa_folder(run: RunFolder, cfg: QAConfig, p: Plan) -> Path:
    """`RUN/llm/qa/<model>[-oracle]`, unique per identity and protocol (`claim_folder`)."""
    suffix = "-oracle" if cfg.oracle else ""
    identity = {**p.identity, "protocol": p.protocol}
    return claim_folder(run.llm_dir / "qa", folder_name(cfg.model) + suffix, identity)


def qa_summary(rows: list[dict[str, Any] | None], cfg: QAConfig, p: Plan) -> dict[str, Any]:
    def score_rows(answered: list[tuple[dict[str, Any], Job]]) -> dict[str, Any]:
        return summarize_qa([r for r, _ in answered], [j.truth for _, j in answered])

    summary = run_summary(rows, cfg, p, score_rows)
    assert isinstance(p, QAPlan)
    summary["question_sources"] = p.question_sources
    summary["question_files"] = p.question_files
    summary["question_duplicates"] = p.question_duplicates
    summary["oracle"] = cfg.oracle
    if p.control_answers:
        summary["baselines"] = _control(rows, p)
    return summary


def _control(rows: list[dict[str, Any] | None], p: QAPlan) -> dict[str, Any]:
    """knn's answered questions beside the random_shot control's answers to them, by image."""
    by_image: dict[int, tuple[list[bool], list[bool]]] = {}
    for row, job in zip(rows, p.jobs, strict=True):
        if row is not None:
            knn, ctl = by_image.setdefault(job.row, ([], []))
            knn.append(bool(row.get("scores") and row["scores"]["correct"]))
            ctl.append(canonical(p.control_answers[job.index]) == canonical(job.truth.answer))
    return qa_control(list(by_image.values()), p.sampling_seed)


def qa_backend(cfg: QAConfig, p: Plan) -> QABaselineBackend | None:
    if cfg.backend not in BASELINES:
        return None  # the configured LLM backend, built by the runner
    assert isinstance(p, QAPlan)
    return QABaselineBackend(p.baseline_answers, cfg.backend)


QA = Task(plan_qa, qa_folder, qa_summary, qa_backend)


def check_qa_config(cfg: QAConfig) -> None:
    if cfg.oracle and cfg.backend in BASELINES:
        raise ValueError("--oracle gives an LLM the true scene; the naive/knn baselines have none")
    if cfg.structured:
        raise ValueError("--structured: QA answers are one word, there is no JSON schema")


def run_qa(
    cfg: QAConfig,
    on_row: RowHook | None = None,
    on_start: Any = None,
    *,
    stats: Any = None,
    backend: Any = None,
) -> DecodeResult:
    """Run (or resume) one QA experiment through `decode`'s machinery."""
    check_qa_config(cfg)
    return decode(cfg, on_row, on_start, stats=stats, backend=backend, task=QA)
