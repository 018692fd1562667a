"""CLEVR-style questions: generated from a scene by templates, or read from CLEVR's files.

Templates, one per family of `llm_decode.qa.programs.FAMILIES` (CLEVR's main families,
reworded; each writes a CLEVR functional program, and the answer is that program executed
on the scene, never written by hand):

- count: "How many red cubes are there?"
- exist: "Are there any large metal things?"
- query_attribute: "What color is the small rubber sphere?"
- compare_count: "Are there more cylinders than gray things?"
- compare_attribute: "Does the large cube have the same material as the red sphere?"
- spatial: "How many things are left of the brown cylinder?" (CLEVR's left/right/in
  front of/behind, from the scene's relationships).

Design decisions
- Filters name one or two attributes; a referred object is described by the fewest
  attributes that single it out (CLEVR's "unique"); a scene with no such object skips the
  families that need one. Filter values come from an object of the scene for count and
  query questions, and half the time from the vocabulary for exist and compare questions, so
  "no" and 0 occur.
- Everything is drawn from `np.random.default_rng([seed, image_index])`: an image's questions
  do not depend on which other images are asked about.
- Real CLEVR v1.0 question files (`CLEVR_v1.0/questions/CLEVR_<split>_questions.json`) are
  read for their `question`, `answer`, `image_index` (and `program`, when present, for the
  family and the knn baseline); `QuestionBank` indexes them by (split, image index), the
  split read from the file (`QuestionBank.add_file`), and counts an identical repeat of a
  question about the same image once.
- Every field of such a file is checked as it is read (`_read_question`): an answer not
  written as CLEVR writes it ("True", "ball"), a null, an image index that is not a whole
  number >= 0, or a program that is not a list of nodes reading earlier nodes is refused in
  one line naming the question, since a quietly coerced value (null -> "none", 0.7 -> 0,
  input -1 -> the last node) would score replies against a question nobody asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm_decode.qa.programs import (
    ATTRIBUTES,
    FAMILIES,
    ProgramError,
    check_program,
    execute,
    family,
)
from strop.runs import RunFolderError, read_json
from strop.scenes import COLORS, MATERIALS, SHAPES, SIZES, Scene

VOCAB = {"color": COLORS, "shape": SHAPES, "material": MATERIALS, "size": SIZES}
#: Words a referring phrase puts its attributes in, before the noun (the shape or "thing").
PHRASE_ORDER = ("size", "color", "material")
RELATION_WORDS = {
    "left": "left of",
    "right": "right of",
    "front": "in front of",
    "behind": "behind",
}


@dataclass(frozen=True)
class Question:
    family: str
    text: str
    answer: str
    program: list[dict[str, Any]] = field(default_factory=list)
    source: str = "generated"  # or "clevr" for a question read from a CLEVR file


Filter = dict[str, str]


def _phrase(filters: Filter, plural: bool) -> str:
    words = [filters[a] for a in PHRASE_ORDER if a in filters]
    noun = filters.get("shape", "thing")
    return " ".join([*words, noun + ("s" if plural else "")])


def _filter_nodes(filters: Filter, start: int) -> list[dict[str, Any]]:
    """`scene` then one filter node per attribute, the first at index `start`."""
    nodes: list[dict[str, Any]] = [{"function": "scene", "inputs": [], "value_inputs": []}]
    for attr in ATTRIBUTES:
        if attr in filters:
            nodes.append(
                {
                    "function": f"filter_{attr}",
                    "inputs": [start + len(nodes) - 1],
                    "value_inputs": [filters[attr]],
                }
            )
    return nodes


def _object_filter(scene: Scene, index: int, rng: np.random.Generator, n_attrs: int) -> Filter:
    obj = scene.objects[index]
    attrs = [str(a) for a in rng.choice(ATTRIBUTES, size=n_attrs, replace=False)]
    return {a: getattr(obj, a) for a in attrs}


def _random_filter(rng: np.random.Generator, n_attrs: int) -> Filter:
    attrs = [str(a) for a in rng.choice(ATTRIBUTES, size=n_attrs, replace=False)]
    return {a: str(rng.choice(VOCAB[a])) for a in attrs}


def unique_filter(scene: Scene, index: int, rng: np.random.Generator) -> Filter | None:
    """The fewest attributes of object `index` that no other object shares (None if none)."""
    obj = scene.objects[index]
    for size in range(1, len(ATTRIBUTES) + 1):
        subsets = [
            tuple(sorted(rng.choice(ATTRIBUTES, size=size, replace=False))) for _ in range(12)
        ]
        for attrs in dict.fromkeys(subsets):
            matches = [
                o for o in scene.objects if all(getattr(o, a) == getattr(obj, a) for a in attrs)
            ]
            if len(matches) == 1:
                return {a: getattr(obj, a) for a in attrs}
    return None


def _unique_nodes(filters: Filter, start: int) -> list[dict[str, Any]]:
    nodes = _filter_nodes(filters, start)
    return [*nodes, {"function": "unique", "inputs": [start + len(nodes) - 1], "value_inputs": []}]


def _referable(scene: Scene, rng: np.random.Generator) -> list[tuple[int, Filter]]:
    out = []
    for i in rng.permutation(len(scene.objects)):
        f = unique_filter(scene, int(i), rng)
        if f is not None:
            out.append((int(i), f))
    return out


def _count(scene: Scene, rng: np.random.Generator) -> tuple[str, list] | None:
    f = _object_filter(scene, int(rng.integers(len(scene.objects))), rng, int(rng.integers(1, 3)))
    nodes = _filter_nodes(f, 0)
    nodes.append({"function": "count", "inputs": [len(nodes) - 1], "value_inputs": []})
    return f"How many {_phrase(f, True)} are there?", nodes


def _exist(scene: Scene, rng: np.random.Generator) -> tuple[str, list] | None:
    n_attrs = int(rng.integers(1, 3))
    f = (
        _object_filter(scene, int(rng.integers(len(scene.objects))), rng, n_attrs)
        if rng.random() < 0.5
        else _random_filter(rng, n_attrs)
    )
    nodes = _filter_nodes(f, 0)
    nodes.append({"function": "exist", "inputs": [len(nodes) - 1], "value_inputs": []})
    article = "an" if _phrase(f, False)[0] in "aeiou" else "a"
    return f"Is there {article} {_phrase(f, False)}?", nodes


def _query(scene: Scene, rng: np.random.Generator) -> tuple[str, list] | None:
    for _index, f in _referable(scene, rng):
        asked = [a for a in ATTRIBUTES if a not in f]
        if not asked:
            continue
        attr = str(rng.choice(asked))
        nodes = _unique_nodes(f, 0)
        nodes.append({"function": f"query_{attr}", "inputs": [len(nodes) - 1], "value_inputs": []})
        return f"What {attr} is the {_phrase(f, False)}?", nodes
    return None


def _compare_count(scene: Scene, rng: np.random.Generator) -> tuple[str, list] | None:
    fa = _object_filter(scene, int(rng.integers(len(scene.objects))), rng, 1)
    fb = (
        _object_filter(scene, int(rng.integers(len(scene.objects))), rng, 1)
        if rng.random() < 0.5
        else _random_filter(rng, 1)
    )
    if fa == fb:
        return None
    a = _filter_nodes(fa, 0)
    a.append({"function": "count", "inputs": [len(a) - 1], "value_inputs": []})
    b = _filter_nodes(fb, len(a))
    b.append({"function": "count", "inputs": [len(a) + len(b) - 1], "value_inputs": []})
    nodes = [*a, *b]
    nodes.append(
        {"function": "greater_than", "inputs": [len(a) - 1, len(nodes) - 1], "value_inputs": []}
    )
    return f"Are there more {_phrase(fa, True)} than {_phrase(fb, True)}?", nodes


def _compare_attribute(scene: Scene, rng: np.random.Generator) -> tuple[str, list] | None:
    refs = _referable(scene, rng)
    if len(refs) < 2:
        return None
    (_, fa), (_, fb) = refs[:2]
    shared = [a for a in ATTRIBUTES if a not in fa and a not in fb] or list(ATTRIBUTES)
    attr = str(rng.choice(shared))
    a = _unique_nodes(fa, 0)
    a.append({"function": f"query_{attr}", "inputs": [len(a) - 1], "value_inputs": []})
    b = _unique_nodes(fb, len(a))
    b.append({"function": f"query_{attr}", "inputs": [len(a) + len(b) - 1], "value_inputs": []})
    nodes = [*a, *b]
    nodes.append(
        {"function": f"equal_{attr}", "inputs": [len(a) - 1, len(nodes) - 1], "value_inputs": []}
    )
    return (
        f"Does the {_phrase(fa, False)} have the same {attr} as the {_phrase(fb, False)}?",
        nodes,
    )


def _spatial(scene: Scene, rng: np.random.Generator) -> tuple[str, list] | None:
    refs = _referable(scene, rng)
    if not refs:
        return None
    _, f = refs[0]
    relation = str(rng.choice(list(RELATION_WORDS)))
    nodes = _unique_nodes(f, 0)
    nodes.append({"function": "relate", "inputs": [len(nodes) - 1], "value_inputs": [relation]})
    nodes.append({"function": "count", "inputs": [len(nodes) - 1], "value_inputs": []})
    return f"How many things are {RELATION_WORDS[relation]} the {_phrase(f, False)}?", nodes


TEMPLATES = {
    "count": _count,
    "exist": _exist,
    "query_attribute": _query,
    "compare_count": _compare_count,
    "compare_attribute": _compare_attribute,
    "spatial": _spatial,
}
assert tuple(TEMPLATES) == FAMILIES


def generate(scene: Scene, seed: int, families: tuple[str, ...] = FAMILIES) -> list[Question]:
    """One question per family the scene allows, answers executed on the scene."""
    rng = np.random.default_rng([seed, scene.image_index])
    out: list[Question] = []
    if not scene.objects:
        return out
    for name in families:
        made = TEMPLATES[name](scene, rng)
        if made is None:
            continue
        text, program = made
        out.append(Question(name, text, execute(program, scene), program))
    return out


# --------------------------------------------------------------------------- real CLEVR


def questions_file(root: Path, split: str) -> Path | None:
    """`CLEVR_<split>_questions.json` under a dataset root (or its CLEVR_v1.0/), if any."""
    for base in (root, root / "CLEVR_v1.0"):
        path = base / "questions" / f"CLEVR_{split}_questions.json"
        if path.is_file():
            return path
    return None


#: CLEVR v1.0's splits, the words a questions file's name may carry (`CLEVR_<split>_questions`)
CLEVR_SPLITS = ("train", "val", "test")


def splits_named(path: Path, known: tuple[str, ...] | set[str] = CLEVR_SPLITS) -> list[str]:
    """The splits among `known` that the file's name carries as a `_`-separated word
    (`CLEVR_val_questions.json` -> [val]; `CLEVR_train_val_questions.json` -> [train, val]),
    sorted, so the answer never depends on the iteration order of a set."""
    words = set(path.name.split(".", 1)[0].split("_"))
    return sorted(words & set(known))


@dataclass
class QuestionBank:
    """Real CLEVR questions by (split, image index), from CLEVR's question files.

    `duplicates` counts questions dropped because the same image already had the same
    question with the same answer (50 copies of one question are one question, n=1)."""

    by_image: dict[tuple[str, int], list[Question]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    duplicates: int = 0

    def add_file(self, path: Path, named: list[str] | tuple[str, ...] = ()) -> None:
        """Index every question of a CLEVR questions file; a file or a question that is not
        CLEVR's shape is refused in one line naming the question and field (`RunFolderError`).

        A question's split is its own `split`, else the file's `info.split`, else the one
        split in `named` (the splits the file's name or its place in a dataset folder says);
        a question with none of these, or with only a name that names several splits, is
        refused: guessing would put it on another image with the same index (a val question
        on a train image, i.e. on a shot example). Checked on: CLEVR v1.0's question files
        as published (`{"info": {"split": ...}, "questions": [{"split", "image_index",
        "image_filename", "question", "answer", "program", ...}]}`), from the dataset's
        documentation and files seen in public repositories; the real CLEVR sample in this
        project's shared data has scene files only, whose `info.split` and per-scene `split`
        follow the same layout.
        """
        try:
            data = read_json(path)
        except RunFolderError as exc:
            raise RunFolderError(f"{exc} (not a CLEVR questions file)") from None
        items = data.get("questions")
        if not isinstance(items, list):
            raise RunFolderError(
                f"{path}: field questions: expected a list of questions, got {_kind(items)}"
            )
        info = data.get("info")
        file_split = info.get("split") if isinstance(info, dict) else None
        if file_split is not None and not isinstance(file_split, str):
            raise RunFolderError(
                f"{path}: field info.split: expected a string, got {_kind(file_split)}"
            )
        seen: dict[tuple[str, int, str], tuple[int, str]] = {}
        for n, item in enumerate(items):
            where = f"{path}: question {n}"
            question, (split, index) = _read_question(item, where)
            split = split or file_split or _split_from_name(path, named, where)
            if file_split is not None and split != file_split:
                raise RunFolderError(
                    f"{where} field split: {split!r} in a file whose info.split is {file_split!r}"
                )
            first = seen.setdefault((split, index, question.text), (n, question.answer))
            if first[0] != n:
                if first[1] != question.answer:
                    raise RunFolderError(
                        f"{where}: asks question {first[0]}'s question about the same image "
                        f"({split} {index}) with answer {question.answer!r}, not {first[1]!r}"
                    )
                self.duplicates += 1
                continue
            self.by_image.setdefault((split, index), []).append(question)
        self.files.append(str(path))

    def get(self, split: str, image_index: int) -> list[Question]:
        return self.by_image.get((split, image_index), [])


def image_index(image_id: str) -> int | None:
    """The number at the end of a CLEVR image id (`CLEVR_val_000012` -> 12)."""
    tail = image_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _kind(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__}"


def _split_from_name(path: Path, named: list[str] | tuple[str, ...], where: str) -> str:
    if len(named) == 1:
        return named[0]
    says = f"several splits ({', '.join(named)})" if named else "no split"
    raise RunFolderError(
        f"{where}: no split: the question has no split field, the file no info.split, and "
        f'its name names {says}; add "split" to each question, as CLEVR\'s files have, or '
        "name the file CLEVR_<split>_questions.json"
    )


def _read_question(item: Any, where: str) -> tuple[Question, tuple[str | None, int]]:
    """One question of a CLEVR file, its fields checked: `question` a string, `answer` a word
    of CLEVR's answer vocabulary as CLEVR writes it, `image_index` a whole number >= 0,
    `split` a string (None when absent: `QuestionBank.add_file` decides), `program` a list
    of nodes whose inputs are earlier nodes. A null answer read as the word "none", an image
    index of 0.7 read as 0, or a program input of -1 read as the last node would score every
    reply against something nobody asked. An answer CLEVR would write otherwise ("True",
    "ball", "Yes") is refused, naming the word it would have to mean: a file that spells
    answers its own way may mean something else by them, and a reply is scored by exact
    match against the file's word."""
    from llm_decode.qa.scoring import VOCABULARY, canonical

    if not isinstance(item, dict):
        raise RunFolderError(f"{where}: expected an object, got {_kind(item)}")

    def field_error(name: str, why: str) -> RunFolderError:
        return RunFolderError(f"{where} field {name}: {why} (got {item.get(name)!r:.60})")

    for name in ("question", "answer", "image_index"):
        if name not in item:
            raise RunFolderError(f"{where}: missing field {name}")
    if not isinstance(item["question"], str) or not item["question"].strip():
        raise field_error("question", "expected a non-empty string")
    answer = item["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int)):
        raise field_error("answer", "expected a string")
    answer = str(answer)  # a count written as a JSON number is the same count
    if answer not in VOCABULARY:
        meant = canonical(answer)
        raise field_error(
            "answer",
            f"not written as CLEVR writes answers; did it mean {meant!r}?"
            if meant in VOCABULARY
            else "not a CLEVR answer (yes/no, 0-10 or an attribute value)",
        )
    index = item["image_index"]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise field_error("image_index", "expected a whole number >= 0")
    own_split = item.get("split")
    if own_split is not None and not isinstance(own_split, str):
        raise field_error("split", "expected a string")
    program = item.get("program") or []
    if not isinstance(program, list) or not all(isinstance(node, dict) for node in program):
        raise field_error("program", "expected a list of program nodes (objects)")
    try:
        check_program(program)
        kind = family(program) if program else "clevr"
    except ProgramError as exc:
        raise RunFolderError(f"{where} field program: {exc}") from None
    question = Question(kind, item["question"], answer, program, "clevr")
    return question, (own_split, index)
