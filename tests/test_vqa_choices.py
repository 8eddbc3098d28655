"""VQA multiple choice over each question's ingested choices: mapping, scoring, counts, bad QA files at ingest."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from oskar_ray.data import store
from oskar_ray.data.ingest import IngestOptions, ingest
from oskar_ray.data.readers.annotations import read_qa
from oskar_ray.data.readers.video import write_video
from oskar_ray.eval.vqa import choice_accuracy, choice_counts, choice_sets

SMOKE = Path(__file__).resolve().parents[1] / "experiments/configs/smoke.yaml"
VOCAB = ["jump", "run", "Sit Down", "wave", "clap"]


def test_choices_map_to_answer_classes_and_unmappable_questions_are_counted():
    choices = [["jump", "run", "wave"],          # exact
               ["sit  down", "clap"],            # case and spacing differ: still the class "Sit Down"
               ["jump", "fly away"],             # "fly away" has no class: not rankable
               ["run", "wave"],                  # the answer (jump) is not among them: not rankable
               []]                               # no choices: open vocabulary
    answers = torch.tensor([3, 2, 0, 0, 1])
    sets = choice_sets(choices, answers, VOCAB)
    assert sets.has.tolist() == [True, True, True, True, False]
    assert sets.rankable.tolist() == [True, True, False, False, False]
    assert sets.ids[1, :2].tolist() == [2, 4] and sets.ids[2, 1] == -1
    assert choice_counts(sets) == {"mc/questions": 2.0, "mc/skipped": 2.0,
                                   "mc/chance": pytest.approx((1 / 3 + 1 / 2) / 2)}
    # the best-scored class overall (clap, 4) is not among question 0's choices: only its own are ranked
    logits = torch.tensor([[0.0, 1.0, 0.0, 2.0, 9.0], [0.0, 0.0, 3.0, 0.0, 1.0]] + [[0.0] * 5] * 3)
    assert choice_accuracy(logits, answers, sets) == 1.0
    logits[0, 1] = 5.0  # now "run" outscores the answer among question 0's choices
    assert choice_accuracy(logits, answers, sets) == 0.5
    none = choice_sets([[], []], torch.tensor([0, 1]), VOCAB)
    assert choice_counts(none)["mc/questions"] == 0 and math.isnan(choice_counts(none)["mc/chance"])


def test_a_qa_file_whose_choices_miss_the_answer_is_a_named_problem(tmp_path):
    tgif = tmp_path / "Test_transition_question.csv"
    tgif.write_bytes(b"gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey\r\n"
                     b"g1\twhat does he do after sitting ?\tjump\trun\tsit\tnod\tclap\t5\tT1\t7\r\n")
    items, problems = read_qa(tgif)
    assert items == [] and problems[0][0] == "Test_transition_question.csv:2"
    assert problems[0][1].startswith("answer not among its choices (question 'what does he do after sitting ?'")
    nextqa = tmp_path / "val.csv"
    nextqa.write_text("video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"
                      "41,3,6,4,why wave,-1,6,CW,a,b,c,d,e\n")
    assert read_qa(nextqa)[1][0][1].startswith("answer not among its choices (question 'why wave'")
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([
        {"question": "what moves?", "answer": "dog", "video_id": 1, "choices": ["cat", "dog"]},
        {"question": "which one?", "answer": 1, "video_id": 1, "choices": ["cat", "dog"]},
        {"question": "who sings?", "answer": "bird", "video_id": 2, "choices": ["cat", "dog"]},
        {"question": "what?", "answer": "x", "video_id": 2, "choices": "cat"}]))
    items, problems = read_qa(qa)
    assert [(q.answer, q.choices) for q in items] == [("dog", ["cat", "dog"])] * 2
    assert [p[0] for p in problems] == ["qa.json[2]", "qa.json[3]"]
    assert "question 'who sings?': answer 'bird'" in problems[0][1] and "field 'choices'" in problems[1][1]


def test_ingest_reports_the_skip_and_puts_choices_in_the_answer_vocabulary(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "g1.mp4", np.zeros((6, 16, 16, 3), np.uint8))
    tgif = tmp_path / "Test_action_question.csv"
    tgif.write_bytes(b"gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey\r\n"
                     b"g1\twhat does he do ?\tjump\trun\tsit\tnod\tclap\t1\tA1\t7\r\n"
                     b"g1\twhat does she do ?\tjump\trun\tsit\tnod\tclap\t9\tA2\t8\r\n")
    report = ingest(IngestOptions(out=tmp_path / "ds", split="test", videos=videos, qa=tgif, frames=4,
                                  height=16, width=16), progress=False)
    assert report["by_reason"] == {"qa: answer not among its choices": 1}
    assert report["skips"][0]["item"] == "Test_action_question.csv:3"
    assert "question 'what does she do ?'" in report["skips"][0]["reason"]
    assert store.load_manifest(tmp_path / "ds")["vocab"]["answers"] == ["run", "jump", "sit", "nod", "clap"]
    rows = pq.read_table(store.split_paths(tmp_path / "ds", "test")).to_pydict()
    assert rows["choices"][0] == [["jump", "run", "sit", "nod", "clap"]] and rows["answer_ids"][0] == [0]


def _with_choices(dataset, split: str, vocab: list[str]) -> int:
    """Give every other question of ``split`` four choices (its answer first, upper-cased: matched loosely); one
    question gets a choice no class has. Returns how many questions have choices."""
    path = store.split_paths(dataset, split)[0]
    table = pq.read_table(path)
    rows, n, count = table.to_pylist(), 0, 0
    for row in rows:
        row["choices"] = []
        for answer in row["answers"]:
            others = [a for a in vocab if a != answer][n % 3:n % 3 + 3]
            row["choices"].append([answer.upper(), *others] if n % 2 == 0 else [])
            count += n % 2 == 0
            n += 1
    rows[0]["choices"][0] = [rows[0]["answers"][0], "no such answer"]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    return count


def test_vqa_ranks_the_choices_of_questions_that_have_them(synth_dir, tmp_path):
    from oskar_ray.config import load_config
    from oskar_ray.eval import evaluate
    from oskar_ray.model import Oskar

    dataset = tmp_path / "ds"
    shutil.copytree(synth_dir, dataset)
    vocab = store.load_manifest(dataset)["vocab"]["answers"]
    with_choices = _with_choices(dataset, "test", vocab)
    cfg = load_config(SMOKE, [f"data.path={dataset}", "eval.probe_epochs=1", "eval.batch_size=32",
                              "eval.vqa_views=[video]"])
    torch.manual_seed(0)
    metrics = evaluate(Oskar(cfg), dataset, ["vqa"], cfg, log=False, progress=False)
    assert metrics["eval/vqa/mc/questions"] == with_choices - 1 and metrics["eval/vqa/mc/skipped"] == 1
    assert metrics["eval/vqa/mc/chance"] == pytest.approx(0.25)
    assert 0.0 <= metrics["eval/vqa/mc/accuracy"] <= 1.0
    assert 0.0 <= metrics["eval/vqa/mc_accuracy"] <= 1.0  # the questions without choices: the type's answers
